//! What the policy model keeps of Pods, Namespaces and NetworkPolicies: only the fields the
//! v1 semantics read, normalised once (selectors parsed, CIDRs masked, protocols defaulted),
//! so a change to anything else is no change and the compiler and the reference evaluator
//! read the same facts.
//!
//! Objects the API server would reject (a peer with no selector and no ipBlock, an ipBlock
//! next to a selector, `endPort` with a named port, an unknown protocol...) are kept in a
//! form that matches nothing, so a malformed object never opens traffic.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::selector::{Labels, Selector};

/// `namespace/name` of a Pod or NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The L4 protocols a NetworkPolicy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    /// `None` (absent) is TCP; an unknown name is `None`.
    pub fn parse(protocol: Option<&str>) -> Option<Self> {
        match protocol {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// The IP protocol number (the kernel's key).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// An address prefix with its host bits cleared (`198.18.0.0/16`, `fd00:18::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `len` is clamped to the family's width; host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let len = len.min(max_len(addr));
        Self {
            addr: mask(addr, len),
            len,
        }
    }

    /// The /32 or /128 of one address.
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, max_len(addr))
    }

    /// `0.0.0.0/0` and `::/0`.
    pub fn all() -> [Self; 2] {
        [
            Self::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            Self::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        ]
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// `other` is inside this prefix (or equal to it).
    pub fn contains(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains_ip(other.addr)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `addr/len` (host bits are cleared, as older API servers accepted them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("{s:?}: no /len"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if len > max_len(addr) {
            return Err(format!("{s:?}: prefix length too long"));
        }
        Ok(Self::new(addr, len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// One container port: the targets of named ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPortView {
    pub name: String,
    pub port: u16,
    pub protocol: Proto,
}

/// The parts of a Pod the policy model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub key: ObjectKey,
    pub labels: Labels,
    pub node_name: Option<String>,
    /// `status.podIPs` (or `status.podIP`), parsed; empty for host-network pods, whose
    /// address is the node's (an ipBlock decides for them, as upstream).
    pub ips: Vec<IpAddr>,
    /// `status.phase` as written.
    pub phase: Option<String>,
    /// Named container ports (unnamed ones can never be the target of a named port).
    pub ports: Vec<ContainerPortView>,
}

impl PodView {
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let mut ips: Vec<IpAddr> = Vec::new();
        if !host_network {
            let listed = status.and_then(|s| s.pod_ips.as_ref());
            let from_list = listed.into_iter().flatten().map(|p| p.ip.as_str());
            let single = status.and_then(|s| s.pod_ip.as_deref());
            let raw: Vec<&str> = if listed.is_some_and(|l| !l.is_empty()) {
                from_list.collect()
            } else {
                single.into_iter().collect()
            };
            for ip in raw.into_iter().filter_map(|s| s.parse().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        let mut ports: Vec<ContainerPortView> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(ContainerPortView {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    port: u16::try_from(p.container_port).ok().filter(|&n| n != 0)?,
                    protocol: Proto::parse(p.protocol.as_deref())?,
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        Self {
            key: ObjectKey::new(
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone().unwrap_or_default(),
            ),
            labels: meta.labels.clone().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()),
            ips,
            phase: status.and_then(|s| s.phase.clone()),
            ports,
        }
    }

    /// Has addresses and has not finished: only such pods are peers or are enforced.
    pub fn is_active(&self) -> bool {
        !self.ips.is_empty() && !matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// The ports a named port resolves to on this pod for `proto` (one, unless several
    /// containers use the name).
    pub fn named_ports<'a>(
        &'a self,
        name: &'a str,
        proto: Proto,
    ) -> impl Iterator<Item = u16> + 'a {
        self.ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == proto)
            .map(|p| p.port)
    }
}

/// The parts of a Namespace the policy model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceView {
    pub fn of(ns: &Namespace) -> Self {
        Self {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods: `namespaces` `None` = the policy's namespace only; `pods` `None` = every pod
    /// of the selected namespaces. Both set: pods matching `pods` in namespaces matching
    /// `namespaces`.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    /// Every address in `cidr` outside every `except`.
    IpBlock { cidr: Prefix, except: Vec<Prefix> },
    /// Rejected by validation: matches nothing.
    Invalid,
}

impl Peer {
    fn of(peer: &NetworkPolicyPeer) -> Self {
        match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
            (Some(block), None, None) => {
                let Ok(cidr) = block.cidr.parse::<Prefix>() else {
                    return Self::Invalid;
                };
                let mut except = Vec::new();
                for e in block.except.iter().flatten() {
                    match e.parse::<Prefix>() {
                        Ok(p) => except.push(p),
                        Err(_) => return Self::Invalid,
                    }
                }
                except.sort();
                except.dedup();
                Self::IpBlock { cidr, except }
            }
            (None, None, None) | (Some(_), _, _) => Self::Invalid,
            (None, ns, pods) => Self::Pods {
                namespaces: ns.as_ref().map(Selector::of),
                pods: pods.as_ref().map(Selector::of),
            },
        }
    }
}

/// Which destination ports of one protocol a rule port allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Every port (the port is absent).
    Any,
    /// `port..=end_port` (a single port: both equal).
    Range(u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RulePort {
    Port {
        proto: Proto,
        port: PortMatch,
    },
    /// Unknown protocol, port out of range, bad endPort: matches nothing.
    Invalid,
}

impl RulePort {
    fn of(p: &NetworkPolicyPort) -> Self {
        let Some(proto) = Proto::parse(p.protocol.as_deref()) else {
            return Self::Invalid;
        };
        let port = match (&p.port, p.end_port) {
            (None, _) => PortMatch::Any,
            (Some(IntOrString::Int(n)), end) => {
                let Some(lo) = u16::try_from(*n).ok().filter(|&n| n != 0) else {
                    return Self::Invalid;
                };
                let hi = match end {
                    None => lo,
                    Some(e) => match u16::try_from(e) {
                        Ok(e) if e >= lo => e,
                        _ => return Self::Invalid,
                    },
                };
                PortMatch::Range(lo, hi)
            }
            (Some(IntOrString::String(name)), None) if !name.is_empty() => {
                PortMatch::Named(name.clone())
            }
            (Some(IntOrString::String(_)), _) => return Self::Invalid,
        };
        Self::Port { proto, port }
    }
}

/// One ingress or egress rule: `peers` empty = every peer (every address); `ports` empty =
/// every port of every protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<RulePort>,
}

/// The parts of a NetworkPolicy the model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyView {
    pub key: ObjectKey,
    /// `spec.podSelector` (absent: every pod of the namespace).
    pub pod_selector: Selector,
    /// The policy isolates the pods it selects for ingress (after defaulting).
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl PolicyView {
    pub fn of(np: &NetworkPolicy) -> Self {
        let key = ObjectKey::new(
            np.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            np.metadata.name.clone().unwrap_or_default(),
        );
        let Some(spec) = np.spec.as_ref() else {
            // No spec: the API server defaults it to an empty podSelector and Ingress.
            return Self {
                key,
                pod_selector: Selector::everything(),
                ingress_type: true,
                egress_type: false,
                ingress: Vec::new(),
                egress: Vec::new(),
            };
        };
        let rule = |peers: Option<&Vec<NetworkPolicyPeer>>,
                    ports: Option<&Vec<NetworkPolicyPort>>| Rule {
            peers: peers.into_iter().flatten().map(Peer::of).collect(),
            ports: ports.into_iter().flatten().map(RulePort::of).collect(),
        };
        let ingress: Vec<Rule> = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| rule(r.from.as_ref(), r.ports.as_ref()))
            .collect();
        let egress: Vec<Rule> = spec
            .egress
            .iter()
            .flatten()
            .map(|r| rule(r.to.as_ref(), r.ports.as_ref()))
            .collect();
        // SetDefaults_NetworkPolicySpec: no policyTypes -> Ingress, plus Egress when there
        // is at least one egress rule.
        let (ingress_type, egress_type) = match spec.policy_types.as_deref() {
            None | Some([]) => (true, !egress.is_empty()),
            Some(types) => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
        };
        Self {
            key,
            pod_selector: spec
                .pod_selector
                .as_ref()
                .map_or_else(Selector::everything, Selector::of),
            ingress_type,
            egress_type,
            ingress,
            egress,
        }
    }
}

/// A direction of traffic, seen from the enforced pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl PolicyView {
    /// Whether the policy has `dir` in its (defaulted) policyTypes.
    pub fn has_type(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.ingress_type,
            Direction::Egress => self.egress_type,
        }
    }

    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}
