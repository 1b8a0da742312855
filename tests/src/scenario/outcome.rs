//! What the scenario reports while it runs ([`Step`]) and what it measured ([`Outcome`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use service_lb::dataplane::CounterTotal;
use service_lb_common::{Hook, Reason};

use crate::servers::Answer;

/// One thing the scenario did or saw, in plain words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Something was set up (topology, servers, programs, services).
    Setup(String),
    /// Something was changed while traffic flowed (a backend removed).
    Change(String),
    /// Something was measured.
    Seen(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Setup(s) => write!(f, "[setup]  {s}"),
            Step::Change(s) => write!(f, "[change] {s}"),
            Step::Seen(s) => write!(f, "[seen]   {s}"),
        }
    }
}

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn is_v6(self) -> bool {
        self == IpFamily::V6
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// Who answered a batch of connections or queries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    pub asked: u32,
    /// Answers per backend name.
    pub per_backend: BTreeMap<String, u32>,
    /// Calls that got no (well-formed) answer.
    pub failures: u32,
    pub first_error: Option<String>,
    /// Answers whose source (as the client's socket saw it) was not the address asked.
    pub wrong_reply_source: u32,
    /// Answers where the backend saw another client address than the client's own.
    pub client_address_rewritten: u32,
}

impl Spread {
    /// Records one call to `asked_addr` from `client`.
    pub fn record(
        &mut self,
        asked_addr: SocketAddr,
        client: IpAddr,
        result: anyhow::Result<Answer>,
    ) {
        self.asked += 1;
        match result {
            Ok(answer) => {
                *self.per_backend.entry(answer.name).or_default() += 1;
                if answer.server_seen_by_client != asked_addr {
                    self.wrong_reply_source += 1;
                }
                if answer.client_seen_by_server.ip() != client {
                    self.client_address_rewritten += 1;
                }
            }
            Err(e) => {
                self.failures += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    pub fn answers(&self, backend: &str) -> u32 {
        self.per_backend.get(backend).copied().unwrap_or(0)
    }

    /// Share of all calls answered by `backend`, in percent.
    pub fn percent(&self, backend: &str) -> f64 {
        if self.asked == 0 {
            return 0.0;
        }
        f64::from(self.answers(backend)) * 100.0 / f64::from(self.asked)
    }
}

/// A held TCP connection, pinged after a backend was removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldCheck {
    /// The backend that accepted the connection.
    pub backend: String,
    pub pings: u32,
    /// Pings answered by that same backend.
    pub answered: u32,
    pub first_error: Option<String>,
}

/// One call straight to a pod address (no Service involved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectCheck {
    pub proto: &'static str,
    pub target: SocketAddr,
    pub answer: Result<Answer, String>,
}

/// A client port used for a call through the ClusterIP, then at once for a call straight
/// to the backend that answered (the ClusterIP flow still tracked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortReuseCheck {
    pub proto: &'static str,
    pub port: u16,
    pub via_service: Result<Answer, String>,
    /// The pod address of the backend that answered through the ClusterIP.
    pub target: Option<SocketAddr>,
    pub direct: Result<Answer, String>,
}

/// Everything measured for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyOutcome {
    pub family: IpFamily,
    pub client: IpAddr,
    pub tcp_vip: SocketAddr,
    pub udp_vip: SocketAddr,
    pub tcp: Spread,
    pub udp: Spread,
    pub tcp_after_removal: Spread,
    pub udp_after_removal: Spread,
    /// Held connections to the backends that stayed.
    pub held_kept: Vec<HeldCheck>,
    /// The held connection to the removed backend (what happens to it is reported, not
    /// required).
    pub held_removed: Option<HeldCheck>,
    pub direct: Vec<DirectCheck>,
    pub port_reuse: Vec<PortReuseCheck>,
}

/// Data-path counters of one node, read from its pinned maps before cleanup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCounters {
    pub node: String,
    pub totals: Vec<CounterTotal>,
}

impl NodeCounters {
    pub fn packets(&self, hook: Hook, reason: Reason) -> u64 {
        self.totals
            .iter()
            .filter(|t| t.hook == hook && t.reason == reason)
            .map(|t| t.packets)
            .sum()
    }

    /// Packets counted under `reason` at any hook.
    pub fn packets_any_hook(&self, reason: Reason) -> u64 {
        Hook::ALL.iter().map(|&h| self.packets(h, reason)).sum()
    }
}

/// What the ClusterIP scenario measured, plus what it created (for leak checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Backend names, in the order they were programmed.
    pub backends: Vec<String>,
    /// The backend that was removed half-way.
    pub removed: String,
    pub families: Vec<FamilyOutcome>,
    pub counters: Vec<NodeCounters>,
    /// Namespaces and bpffs folders the scenario created (all gone when it returns).
    pub namespaces: Vec<String>,
    pub bpffs_dirs: Vec<PathBuf>,
    /// Number of program attachments per node.
    pub attachments: BTreeMap<String, usize>,
}
