//! `service-lb run`: the daemon (`crate::daemon`). The flags below are the contract the
//! DaemonSet is written against: add flags, do not rename them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{
    attach::{DataplaneArgs, InterfaceArgs},
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
    /// Minimum time between two syncs: bursts of changes are coalesced into one.
    #[arg(long, env = "SERVICE_LB_MIN_SYNC_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub min_sync_interval: Duration,
    /// Period of the full resync that repairs drift between the maps and the cluster.
    #[arg(long, env = "SERVICE_LB_RESYNC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Quiet time after a change in the manifests folder before it is read again.
    #[arg(long, env = "SERVICE_LB_MANIFESTS_DEBOUNCE", default_value = "50ms", value_parser = parse_duration)]
    pub manifests_debounce: Duration,
    /// Skip the start-up kernel check (Linux >= 6.6, BTF, TCX, cgroup v2), e.g. on a
    /// vendor kernel that backports TCX to an older version.
    #[arg(long, env = "SERVICE_LB_SKIP_FEATURE_CHECK")]
    pub skip_feature_check: bool,
}

/// `150ms`, `2s`, `5m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 50ms, 2s, 5m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{text}': {e}"))
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
    use super::parse_duration;
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
}
