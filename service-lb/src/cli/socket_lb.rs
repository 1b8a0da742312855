//! The socket-LB flags `run` and `attach` share: whether the cgroup programs are attached,
//! where, and whether sockets of other network namespaces (pods) are left alone.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use service_lb_common::sock::{SockConfig, SOCK_FLAG_HOSTNS_ONLY};

/// `on` / `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Default `--cgroup`: the cgroup v2 root of a node (the DaemonSet mounts it there).
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

#[derive(Clone, Debug, Args)]
pub struct SocketLbArgs {
    /// Socket-level load balancing: cgroup programs translate `connect()`/`sendmsg()` to a
    /// ClusterIP once, for every process in --cgroup (host-network processes included).
    /// `off` detaches them (pods still get the per-packet tc path).
    #[arg(long, env = "SERVICE_LB_SOCKET_LB", value_enum, default_value_t = Switch::Off)]
    pub socket_lb: Switch,
    /// cgroup v2 folder the socket programs are attached to (they apply to its processes
    /// and all its descendants): the cgroup v2 root on a node.
    #[arg(long, env = "SERVICE_LB_CGROUP", default_value = DEFAULT_CGROUP)]
    pub cgroup: PathBuf,
    /// Only sockets of the host's network namespace (the daemon's) are translated at the
    /// socket; pods' sockets are left to the tc programs (per-packet semantics), as
    /// Cilium's `bpf-lb-sock-hostns-only`.
    #[arg(long, env = "SERVICE_LB_SOCKET_LB_HOSTNS_ONLY")]
    pub socket_lb_hostns_only: bool,
}

impl SocketLbArgs {
    /// The cgroup folder to attach to, `None` when socket LB is off.
    pub fn cgroup(&self) -> Option<PathBuf> {
        (self.socket_lb == Switch::On).then(|| self.cgroup.clone())
    }

    /// The `SLB_SOCK` global (the loader fills the host's netns cookie in).
    pub fn config(&self) -> SockConfig {
        SockConfig {
            flags: if self.socket_lb_hostns_only {
                SOCK_FLAG_HOSTNS_ONLY
            } else {
                0
            },
            ..SockConfig::ALL_NAMESPACES
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        sock: SocketLbArgs,
    }

    #[test]
    fn off_by_default_and_flags_reach_the_config() {
        let p = Probe::try_parse_from(["probe"]).expect("parses");
        assert_eq!(p.sock.cgroup(), None);
        assert!(!p.sock.config().hostns_only());
        let p = Probe::try_parse_from([
            "probe",
            "--socket-lb=on",
            "--cgroup=/sys/fs/cgroup/x",
            "--socket-lb-hostns-only",
        ])
        .expect("parses");
        assert_eq!(p.sock.cgroup(), Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert!(p.sock.config().hostns_only());
        assert!(Probe::try_parse_from(["probe", "--socket-lb=maybe"]).is_err());
    }
}
