//! `service-lb run`: the daemon (`crate::daemon`). The flags below are the contract the
//! DaemonSet is written against: add flags, do not rename them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{
    attach::{DataplaneArgs, InterfaceArgs},
    socket_lb::SocketLbArgs,
    Failure,
};
use crate::daemon::{self, DaemonConfig, NodeNameSources};

/// Default metrics address: kube-proxy's 10249 is taken while it runs (alongside mode).
pub const DEFAULT_METRICS_ADDR: &str = "[::]:9249";
/// Default health address: kube-proxy's 10256 is taken while it runs (alongside mode).
pub const DEFAULT_HEALTH_ADDR: &str = "[::]:9256";

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    /// kubeconfig file; default: in-cluster config, then ~/.kube/config.
    #[arg(long, env = "SERVICE_LB_KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Read Services, EndpointSlices and Nodes from this folder of manifests instead of the
    /// Kubernetes API (no API server is contacted).
    #[arg(long, env = "SERVICE_LB_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// This node's name (for node-local backends). Falls back to $NODE_NAME, then the
    /// host name.
    #[arg(long, env = "SERVICE_LB_NODE_NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub interfaces: InterfaceArgs,
    #[command(flatten)]
    pub socket_lb: SocketLbArgs,
    /// Prometheus metrics listen address (`/metrics`). `[::]` listens on IPv6 and IPv4
    /// (IPv4 only on a node without IPv6). The default is not kube-proxy's 10249, so both
    /// run side by side; take 10249 over after kube-proxy is gone if scrapers expect it.
    #[arg(long, env = "SERVICE_LB_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Health listen address: `/healthz` (kube-proxy compatible), `/livez`, `/readyz`.
    /// The default is not kube-proxy's 10256 (see --metrics-addr); load balancers that
    /// health-check nodes on 10256 need `[::]:10256` once kube-proxy is gone.
    #[arg(long, env = "SERVICE_LB_HEALTH_ADDR", default_value = DEFAULT_HEALTH_ADDR)]
    pub health_addr: SocketAddr,
    /// Minimum time between two syncs. The default 0 adds no timer: a sync takes every
    /// change queued when it starts, so a burst still costs a few syncs, not one per
    /// change (changes that arrive during a sync wait for the next one).
    #[arg(long, env = "SERVICE_LB_MIN_SYNC_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub min_sync_interval: Duration,
    /// Period of the full resync that repairs drift between the maps and the cluster.
    #[arg(long, env = "SERVICE_LB_RESYNC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// The cluster's service CIDRs (kube-apiserver's `--service-cluster-ip-range`), comma
    /// separated: a packet to an address in them that no Service owns is dropped and
    /// counted (`drop_service_cidr`), as kube-proxy drops "traffic to unallocated
    /// ClusterIPs". Empty: no such drop (refusals of unknown ports of known ClusterIPs
    /// work without it).
    #[arg(long, env = "SERVICE_LB_SERVICE_CIDRS", value_delimiter = ',')]
    pub service_cidrs: Vec<crate::dataplane::Cidr>,
    /// Node addresses that accept NodePort traffic, as kube-proxy's flag: CIDRs, comma
    /// separated (e.g. `198.19.255.0/24,fd00:ff::/64`). Empty: every address of the node
    /// (its Node object's InternalIP/ExternalIP), never a loopback one.
    #[arg(long, env = "SERVICE_LB_NODEPORT_ADDRESSES")]
    pub nodeport_addresses: Option<String>,
    /// Backend choice of north-south frontends (NodePort, externalIPs, LoadBalancer IPs):
    /// `random` (as kube-proxy) or `maglev` (consistent hashing of the client's address
    /// and port: the same backend through every node). A Service's
    /// `service-lb.io/lb-algorithm` annotation overrides it. ClusterIP stays random.
    #[arg(long, env = "SERVICE_LB_LB_ALGORITHM", default_value = "random")]
    pub lb_algorithm: crate::model::maglev::LbAlgorithm,
    /// Entries of each Maglev table (a prime, 251..=16381): about 100 times the largest
    /// backend count keeps Maglev's balance within 1%. 64 KiB per Maglev frontend
    /// whatever the size (the map's value is sized for the maximum).
    #[arg(long, env = "SERVICE_LB_MAGLEV_TABLE_SIZE", default_value = "16381")]
    pub maglev_table_size: crate::model::maglev::TableSize,
    /// Quiet time after a change in the manifests folder before it is read again. The
    /// default 0 reads at once every file changed so far (waiting at most 20 ms only for
    /// the second half of a rename or for a file written in place to be closed).
    #[arg(long, env = "SERVICE_LB_MANIFESTS_DEBOUNCE", default_value = "0s", value_parser = parse_duration)]
    pub manifests_debounce: Duration,
    /// Skip the start-up kernel check (Linux >= 6.6, BTF, TCX, cgroup v2), e.g. on a
    /// vendor kernel that backports TCX to an older version.
    #[arg(long, env = "SERVICE_LB_SKIP_FEATURE_CHECK")]
    pub skip_feature_check: bool,
    /// YAML file of settings: keys are these flags' names (`metrics-addr: "[::]:9249"`).
    /// Flags and SERVICE_LB_* variables override it.
    #[arg(long, env = "SERVICE_LB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (YAML, each value's source) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// NetworkPolicy enforcement: `on` watches Pods, Namespaces and NetworkPolicies and
    /// programs each local pod's compiled policy; `off` watches none of them (the RBAC
    /// may stay as deployed).
    #[arg(long, env = "SERVICE_LB_NETWORK_POLICY", value_enum, default_value_t = OnOff::On)]
    pub network_policy: OnOff,
}

/// A feature switch written `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

/// A Go/Kubernetes duration: a sequence of decimal numbers with units, `1m30s`, `1h`,
/// `150ms`, `2.5s`, `500us`; units ns, us (or µs), ms, s, m, h. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a duration (e.g. 50ms, 2s, 1m30s)");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{text}': {e}"));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad()),
            _ => {
                return Err(format!(
                    "'{text}': unknown unit '{unit}' (ns, us, ms, s, m, h)"
                ))
            }
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("'{text}': {e}"))
}

/// A duration as Go prints it (`1m30s`, `50ms`, `0s`): what `--print-config` shows and
/// `parse_duration` reads back.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let nanos = d.as_nanos();
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let text = format!("{s}.{frac:09}");
        out.push_str(text.trim_end_matches('0'));
        out.push('s');
    }
    out
}

/// Validates the flags (a bad one exits 64 before anything is touched), then runs the
/// daemon until SIGTERM/SIGINT.
pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let config =
        DaemonConfig::from_args(args, NodeNameSources::from_system()).map_err(Failure::usage)?;
    if !args.skip_feature_check {
        super::preflight::run(&super::preflight::Probes::system())?;
    }
    daemon::run_blocking(config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{format_duration, parse_duration};
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn durations_parse_like_go() {
        // Cases from Go's time.ParseDuration documentation and tests.
        let cases: [(&str, Duration); 10] = [
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1.5h", Duration::from_secs(5400)),
            ("300ms", Duration::from_millis(300)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "1m30", "1d", "h", "1..5s", "-"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_print_like_go_and_read_back() {
        let cases: [(Duration, &str); 7] = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(50), "50ms"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_micros(250), "250us"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }
}
