//! North-south frontends as kube-proxy derives them from a Service (`pkg/proxy/serviceport.go`,
//! `pkg/api/v1/service/util.go`, the nftables proxier's external chains):
//!
//! - **NodePort** (`ports[].nodePort`, any Service type that has one) on every node address
//!   of the family that `--nodeport-addresses` allows (default: every node address, never a
//!   loopback one unless a configured CIDR contains it);
//! - **externalIPs** and **LoadBalancer ingress IPs** (VIP mode only), of the family;
//! - eTP=Cluster: one frontend for every client, cluster endpoints, source SNATed to the
//!   node (kube-proxy masquerades all traffic to external destinations, pods' included);
//! - eTP=Local: for clients outside the cluster (scope External) only this node's endpoints,
//!   the client address kept, dropped when there are none but the Service has endpoints
//!   elsewhere; for pods and the node (scope Internal) the cluster endpoints, a pod's address
//!   kept, the node's SNATed (kube-proxy's short-circuit);
//! - **loadBalancerSourceRanges** (whitespace trimmed, of the family; a value that is not a
//!   CIDR is left out) restrict LB IPs only, for every client, pods included; when a range
//!   contains a node address, the LB IP itself is allowed too (a node's connection to its
//!   own LB IP may arrive SNATed to it). kube-proxy reads the spec field only, not the
//!   `service.beta.kubernetes.io/load-balancer-source-ranges` annotation, and so do we;
//! - the **health check node port** for a LoadBalancer Service with eTP=Local.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use super::{DesiredBackend, NoEndpoints, Protocol, Scope};

/// How a Service is reached from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::NodePort => "nodeport",
            Self::ExternalIp => "externalip",
            Self::LoadBalancer => "loadbalancer",
        }
    }
}

/// `externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// Whose new flows get their source rewritten to this node's address (kube-proxy's
/// masquerade mark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Snat {
    /// Every client.
    Always,
    /// Only flows started on the node itself; pods keep their address.
    FromNode,
    /// Nobody: the backend sees the client's address.
    Never,
}

/// A CIDR with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl SourceRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix_len);
                u32::from(net) == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix_len);
                u128::from(net) == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The single address `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        Self {
            addr: ip,
            prefix_len: if ip.is_ipv4() { 32 } else { 128 },
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for SourceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for SourceRange {
    type Err = String;

    /// `a.b.c.d/n` or `x::y/n` (host bits cleared, as Go's `ParseCIDR` does).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not a CIDR (no prefix length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("'{text}' is not a CIDR: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{text}' has a prefix length outside 0..={max}"))?;
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
        };
        Ok(Self { addr, prefix_len })
    }
}

/// One NodePort, externalIP or LoadBalancer frontend and the endpoints it sends to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExternalFrontend {
    pub kind: FrontendKind,
    pub addr: IpAddr,
    /// The nodePort for NodePort frontends, the Service port otherwise.
    pub port: u16,
    pub protocol: Protocol,
    /// External: clients outside the cluster (every client when eTP=Cluster); Internal:
    /// pods and the node itself, only present when eTP=Local.
    pub scope: Scope,
    pub policy: TrafficPolicy,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// Eligible for new flows, in slot order.
    pub backends: Vec<DesiredBackend>,
    pub no_endpoints: NoEndpoints,
    pub snat: Snat,
    /// LoadBalancer frontends: the only client prefixes allowed (empty: any client); others
    /// are dropped.
    pub source_ranges: Vec<SourceRange>,
    /// sessionAffinity ClientIP timeout in seconds, 0 = none.
    pub affinity_timeout_s: u32,
    /// Backends chosen by Maglev consistent hashing (`model::maglev`; the writer sets
    /// `SVC_FLAG_MAGLEV` and writes the table): the `service-lb.io/lb-algorithm`
    /// annotation, else `--lb-algorithm`.
    pub maglev: bool,
}

/// The health check node port of a LoadBalancer Service with eTP=Local.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HealthCheck {
    pub port: u16,
    /// Ready endpoints of the Service on this node (every port, the primary family), as
    /// kube-proxy's `LocalReadyEndpoints` counts them.
    pub local_endpoints: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--nodeport-addresses: {0}")]
pub struct NodePortAddressesError(String);

/// `--nodeport-addresses`: which node addresses accept NodePort traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// `None`: every non-loopback node address.
    cidrs: Option<Vec<SourceRange>>,
}

impl NodePortAddresses {
    /// Every node address except loopback ones (the default).
    pub fn all() -> Self {
        Self::default()
    }

    /// A comma-separated list of CIDRs (empty: [`Self::all`]).
    pub fn parse(list: &str) -> Result<Self, NodePortAddressesError> {
        let cidrs = list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<SourceRange>().map_err(NodePortAddressesError))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cidrs: (!cidrs.is_empty()).then_some(cidrs),
        })
    }

    /// Whether NodePorts listen on `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match &self.cidrs {
            None => !ip.is_loopback() && !ip.is_unspecified(),
            Some(cidrs) => cidrs.iter().any(|c| c.contains(ip)),
        }
    }

    /// The addresses of `node_addresses` that accept NodePort traffic, sorted, once each.
    pub fn select(&self, node_addresses: &[IpAddr]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = node_addresses
            .iter()
            .copied()
            .filter(|ip| self.allows(*ip))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// kube-proxy's `ExternallyAccessible(service)`: LoadBalancer, NodePort, or ClusterIP
/// (also when unset) with external IPs.
pub(super) fn service_externally_accessible(type_: Option<&str>, has_external_ips: bool) -> bool {
    match type_ {
        Some("LoadBalancer") | Some("NodePort") => true,
        None | Some("ClusterIP") => has_external_ips,
        Some(_) => false,
    }
}
