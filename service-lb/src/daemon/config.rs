//! The daemon's typed configuration, built from the command line and validated before
//! anything touches the system. Every error here is a usage error (exit 64).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    cli::run::RunArgs,
    dataplane::{interfaces::Roles, DataplaneOptions},
    source::{kube_api::KubeSourceConfig, manifests::ManifestsConfig},
};

/// Where cluster state comes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// The Kubernetes API (the default).
    Kube(KubeSourceConfig),
    /// A folder of manifests (`--manifests`).
    Manifests(ManifestsConfig),
}

impl SourceConfig {
    pub fn describe(&self) -> String {
        match self {
            Self::Kube(c) => match &c.kubeconfig {
                Some(path) => format!("Kubernetes API (kubeconfig {})", path.display()),
                None => "Kubernetes API (in-cluster config, then ~/.kube/config)".into(),
            },
            Self::Manifests(c) => format!("manifests folder {}", c.dir.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub dataplane: DataplaneOptions,
    pub source: SourceConfig,
    pub node_name: String,
    pub pod_interfaces: Vec<String>,
    pub external_interfaces: Vec<String>,
    pub metrics_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub min_sync_interval: Duration,
    pub resync_interval: Duration,
    /// `--service-cidrs`.
    pub service_cidrs: Vec<crate::dataplane::Cidr>,
    /// `--cgroup` when `--socket-lb on`: where the socket programs are attached.
    pub socket_lb_cgroup: Option<PathBuf>,
    /// `--network-policy on`: watch Pods, Namespaces and NetworkPolicies and program the
    /// local pods' policies.
    pub network_policy: bool,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: crate::model::NodePortAddresses,
    /// `--lb-algorithm`.
    pub lb_algorithm: crate::model::maglev::LbAlgorithm,
    /// `--maglev-table-size`.
    pub maglev_table_size: crate::model::maglev::TableSize,
}

impl DaemonConfig {
    /// kube-proxy's health timeout: twice the sync period.
    pub fn health_timeout(&self) -> Duration {
        self.resync_interval.saturating_mul(2)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--manifests and --kubeconfig are exclusive: pick one source")]
    BothSources,
    #[error("--manifests {path}: {problem}")]
    ManifestsDir { path: PathBuf, problem: String },
    #[error("no node name: pass --node-name, set NODE_NAME, or give the host a name")]
    NoNodeName,
    #[error("node name {0:?} is not a valid Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253)")]
    BadNodeName(String),
    #[error("interface globs: {0}")]
    BadGlob(String),
    #[error("--resync-interval must be longer than zero")]
    ZeroResync,
    #[error("--min-sync-interval ({min:?}) must not exceed --resync-interval ({resync:?})")]
    MinSyncTooLong { min: Duration, resync: Duration },
    #[error("--metrics-addr and --health-addr are both {0}")]
    SameAddress(SocketAddr),
    #[error("--{flag} must be at least 1")]
    ZeroMapSize { flag: &'static str },
    #[error(transparent)]
    NodePortAddresses(#[from] crate::model::NodePortAddressesError),
}

/// Where the node name may come from, in order (the flag first).
#[derive(Clone, Debug, Default)]
pub struct NodeNameSources {
    pub env_node_name: Option<String>,
    pub hostname: Option<String>,
}

impl NodeNameSources {
    /// `$NODE_NAME` and the host name of this machine.
    pub fn from_system() -> Self {
        Self {
            env_node_name: std::env::var("NODE_NAME").ok(),
            // The UTS name of this process (what `hostname` prints).
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        }
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl DaemonConfig {
    pub fn from_args(args: &RunArgs, names: NodeNameSources) -> Result<Self, ConfigError> {
        let node_name = non_empty(args.node_name.clone())
            .or_else(|| non_empty(names.env_node_name))
            // Host names may carry capitals; node names never do (kubelet lowercases).
            .or_else(|| non_empty(names.hostname).map(|h| h.to_ascii_lowercase()))
            .ok_or(ConfigError::NoNodeName)?;
        if !valid_node_name(&node_name) {
            return Err(ConfigError::BadNodeName(node_name));
        }

        let source = match (&args.manifests, &args.kubeconfig) {
            (Some(_), Some(_)) => return Err(ConfigError::BothSources),
            (Some(dir), None) => {
                let problem = match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => None,
                    Ok(_) => Some("is not a folder".to_owned()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(problem) = problem {
                    return Err(ConfigError::ManifestsDir {
                        path: dir.clone(),
                        problem,
                    });
                }
                SourceConfig::Manifests(ManifestsConfig {
                    dir: dir.clone(),
                    node_name: Some(node_name.clone()),
                    debounce: args.manifests_debounce,
                })
            }
            (None, kubeconfig) => SourceConfig::Kube(KubeSourceConfig {
                kubeconfig: kubeconfig.clone(),
                node_name: Some(node_name.clone()),
                network_policy: args.network_policy.is_on(),
            }),
        };

        Roles::new(
            &args.interfaces.pod_interfaces,
            &args.interfaces.external_interfaces,
        )
        .map_err(|e| ConfigError::BadGlob(e.to_string()))?;

        if args.resync_interval.is_zero() {
            return Err(ConfigError::ZeroResync);
        }
        if args.min_sync_interval > args.resync_interval {
            return Err(ConfigError::MinSyncTooLong {
                min: args.min_sync_interval,
                resync: args.resync_interval,
            });
        }
        if args.metrics_addr == args.health_addr && args.metrics_addr.port() != 0 {
            return Err(ConfigError::SameAddress(args.metrics_addr));
        }
        let d = &args.dataplane;
        for (flag, value) in [
            ("map-services-max", d.map_services_max),
            ("map-backends-max", d.map_backends_max),
            ("map-revnat-max", d.map_revnat_max),
            ("map-ct-tcp-max", d.map_ct_tcp_max),
            ("map-ct-any-max", d.map_ct_any_max),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroMapSize { flag });
            }
        }

        Ok(Self {
            dataplane: DataplaneOptions {
                sock: args.socket_lb.config(),
                ..d.options()
            },
            socket_lb_cgroup: args.socket_lb.cgroup(),
            source,
            node_name,
            pod_interfaces: args.interfaces.pod_interfaces.clone(),
            external_interfaces: args.interfaces.external_interfaces.clone(),
            metrics_addr: args.metrics_addr,
            health_addr: args.health_addr,
            min_sync_interval: args.min_sync_interval,
            resync_interval: args.resync_interval,
            service_cidrs: args.service_cidrs.clone(),
            network_policy: args.network_policy.is_on(),
            nodeport_addresses: crate::model::NodePortAddresses::parse(
                args.nodeport_addresses.as_deref().unwrap_or_default(),
            )?,
            lb_algorithm: args.lb_algorithm,
            maglev_table_size: args.maglev_table_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["probe"];
        argv.extend_from_slice(extra);
        Probe::try_parse_from(argv).expect("flags parse").run
    }

    fn named(host: &str) -> NodeNameSources {
        NodeNameSources {
            env_node_name: None,
            hostname: Some(host.into()),
        }
    }

    #[test]
    fn service_cidrs_are_a_comma_separated_list() {
        let config = DaemonConfig::from_args(
            &args(&["--service-cidrs", "198.19.0.0/17,fd00:19::/108"]),
            named("n1"),
        )
        .expect("valid");
        let cidrs: Vec<String> = config.service_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["198.19.0.0/17", "fd00:19::/108"]);
        assert!(DaemonConfig::from_args(&args(&[]), named("n1"))
            .expect("valid")
            .service_cidrs
            .is_empty());
        let bad = Probe::try_parse_from(["probe", "--service-cidrs", "198.19.0.0/33"]);
        assert!(bad.is_err(), "a bad CIDR is a usage error");
    }

    #[test]
    fn network_policy_is_on_unless_switched_off() {
        let watches = |c: &DaemonConfig| match &c.source {
            SourceConfig::Kube(k) => k.network_policy,
            SourceConfig::Manifests(_) => panic!("the API source"),
        };
        let on = DaemonConfig::from_args(&args(&[]), named("n1")).expect("valid");
        assert!(on.network_policy && watches(&on));
        let off = DaemonConfig::from_args(&args(&["--network-policy", "off"]), named("n1"))
            .expect("valid");
        assert!(!off.network_policy && !watches(&off));
        let on =
            DaemonConfig::from_args(&args(&["--network-policy=on"]), named("n1")).expect("valid");
        assert!(on.network_policy);
        assert!(Probe::try_parse_from(["probe", "--network-policy", "maybe"]).is_err());
    }

    #[test]
    fn no_source_flag_means_the_kubernetes_api() {
        let config = DaemonConfig::from_args(&args(&[]), named("n1")).expect("valid");
        assert!(matches!(config.source, SourceConfig::Kube(ref k) if k.kubeconfig.is_none()));
        assert_eq!(config.health_timeout(), Duration::from_secs(120));
    }

    #[test]
    fn a_manifests_folder_must_exist() {
        let dir = std::env::temp_dir();
        let dir_text = dir.to_string_lossy().into_owned();
        let config = DaemonConfig::from_args(&args(&["--manifests", &dir_text]), named("n1"))
            .expect("valid");
        assert!(matches!(config.source, SourceConfig::Manifests(ref m) if m.dir == dir));
        let missing = DaemonConfig::from_args(
            &args(&["--manifests", "/nonexistent/slb-manifests"]),
            named("n1"),
        );
        assert!(matches!(missing, Err(ConfigError::ManifestsDir { .. })));
    }

    #[test]
    fn both_sources_are_refused_by_the_parser() {
        let argv = ["probe", "--manifests", "/tmp", "--kubeconfig", "/k"];
        assert!(Probe::try_parse_from(argv).is_err());
    }

    #[test]
    fn node_name_comes_from_the_flag_then_env_then_host() {
        let sources = NodeNameSources {
            env_node_name: Some("from-env".into()),
            hostname: Some("Host-1".into()),
        };
        let flag = DaemonConfig::from_args(&args(&["--node-name", "n7"]), sources.clone());
        assert_eq!(flag.expect("valid").node_name, "n7");
        let env = DaemonConfig::from_args(&args(&[]), sources);
        assert_eq!(env.expect("valid").node_name, "from-env");
        let host = DaemonConfig::from_args(&args(&[]), named("Host-1"));
        assert_eq!(host.expect("valid").node_name, "host-1");
        let none = DaemonConfig::from_args(&args(&[]), NodeNameSources::default());
        assert_eq!(none.unwrap_err(), ConfigError::NoNodeName);
        let bad = DaemonConfig::from_args(&args(&["--node-name", "n_1"]), named("h"));
        assert!(matches!(bad, Err(ConfigError::BadNodeName(_))));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        type Case<'a> = (&'a [&'a str], fn(&ConfigError) -> bool);
        let cases: [Case; 5] = [
            (&["--pod-interfaces", "["], |e| {
                matches!(e, ConfigError::BadGlob(_))
            }),
            (&["--resync-interval", "0s"], |e| {
                *e == ConfigError::ZeroResync
            }),
            (
                &["--min-sync-interval", "2m", "--resync-interval", "1m"],
                |e| matches!(e, ConfigError::MinSyncTooLong { .. }),
            ),
            (
                &[
                    "--metrics-addr",
                    "127.0.0.1:9",
                    "--health-addr",
                    "127.0.0.1:9",
                ],
                |e| matches!(e, ConfigError::SameAddress(_)),
            ),
            (&["--map-services-max", "0"], |e| {
                matches!(
                    e,
                    ConfigError::ZeroMapSize {
                        flag: "map-services-max"
                    }
                )
            }),
        ];
        for (argv, expected) in cases {
            let err = DaemonConfig::from_args(&args(argv), named("n1")).unwrap_err();
            assert!(expected(&err), "{argv:?}: {err}");
        }
    }

    #[test]
    fn lb_algorithm_and_maglev_table_size() {
        use crate::model::maglev::LbAlgorithm;
        let d = DaemonConfig::from_args(&args(&[]), named("n1")).expect("valid");
        assert_eq!(d.lb_algorithm, LbAlgorithm::Random);
        assert_eq!(d.maglev_table_size.get(), 16_381);
        let m = DaemonConfig::from_args(
            &args(&["--lb-algorithm", "maglev", "--maglev-table-size", "4093"]),
            named("n1"),
        )
        .expect("valid");
        assert_eq!(m.lb_algorithm, LbAlgorithm::Maglev);
        assert_eq!(m.maglev_table_size.get(), 4093);
        for bad in [
            ["--maglev-table-size", "4096"],
            ["--maglev-table-size", "65521"],
            ["--lb-algorithm", "roundrobin"],
        ] {
            let mut argv = vec!["probe"];
            argv.extend_from_slice(&bad);
            assert!(Probe::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }
}
