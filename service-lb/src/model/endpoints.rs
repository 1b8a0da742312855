//! Backends of one frontend from the Service's EndpointSlices, as kube-proxy picks them:
//!
//! - slices of the frontend's family (`addressType` IPv4/IPv6; FQDN never matches);
//! - the slice port whose name equals the Service port's name ("" = unnamed) and whose
//!   protocol matches gives the backend port (so `port` and `targetPort` may differ);
//! - the first address of each endpoint; one address:port listed several times counts once
//!   (first slice by name wins, unless a later one is on this node, like kube-proxy);
//! - categorized into the cluster and local sets by kube-proxy's rules (`topology`):
//!   ready endpoints, the serving-and-terminating fallback (KEP-1669, marked
//!   terminating), traffic policies and topology hints;
//! - sorted by address for a deterministic slot order;
//! - besides, every *serving* endpoint (serving condition, nil = true): kube-proxy's UDP
//!   conntrack clean-up keeps flows to those and flushes flows to any other.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    reason,
    service::{parse_protocol, valid_port},
    topology::{categorize, NodeTopology, PortPolicy, TopologyEndpoint},
    view::{AddressType, EndpointAddress, EndpointView, SliceView},
    DesiredBackend, Protocol, Skip,
};

/// What a frontend needs from the slices.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wanted<'a> {
    pub ipv6: bool,
    /// The Service port's name, "" when unnamed.
    pub port_name: &'a str,
    pub protocol: Protocol,
}

/// One endpoint address:port and what its slice says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<Arc<str>>,
    zone_hints: Vec<Arc<str>>,
    node_hints: Vec<Arc<str>>,
    /// `EndpointSlice ns/name endpoint i`, for a duplicate's Skip.
    origin: String,
}

impl Candidate {
    fn same_facts(&self, other: &Candidate) -> bool {
        (self.ready, self.serving, self.terminating, &self.node_name)
            == (
                other.ready,
                other.serving,
                other.terminating,
                &other.node_name,
            )
    }
}

/// The endpoints of a Service port, categorized as kube-proxy does; `slices` sorted by name.
pub(super) fn select(
    wanted: Wanted<'_>,
    slices: &[&SliceView],
    node: NodeTopology<'_>,
    policy: PortPolicy,
    skipped: &mut Vec<Skip>,
) -> Selected {
    let node_name = node.node_name;
    let is_local = |c: &Candidate| node_name.is_some() && c.node_name.as_deref() == node_name;
    let mut candidates: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice_port(slice, wanted, skipped) else {
            continue;
        };
        for (index, endpoint) in slice.endpoints.iter().enumerate() {
            let origin = format!("{} endpoint {index}", slice.origin);
            let Some(ip) = endpoint_ip(endpoint, &origin, wanted.ipv6, skipped) else {
                continue;
            };
            let candidate = candidate(endpoint, origin);
            match candidates.entry(SocketAddr::new(ip, port)) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(candidate);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if e.get().same_facts(&candidate) {
                        continue;
                    }
                    let replace = is_local(&candidate) && !is_local(e.get());
                    let (kept, dropped) = if replace {
                        (&candidate, e.get())
                    } else {
                        (e.get(), &candidate)
                    };
                    skipped.push(Skip {
                        object: dropped.origin.clone(),
                        reason: reason::DUPLICATE_ENDPOINT,
                        detail: format!(
                            "{} is also listed by {} with other conditions or node; that one is used",
                            e.key(),
                            kept.origin
                        ),
                    });
                    if replace {
                        e.insert(candidate);
                    }
                }
            }
        }
    }

    let listed: Vec<(&SocketAddr, &Candidate)> = candidates.iter().collect();
    let topology: Vec<TopologyEndpoint<'_>> = listed
        .iter()
        .map(|(_, c)| TopologyEndpoint {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
            local: is_local(c),
            zone_hints: &c.zone_hints,
            node_hints: &c.node_hints,
        })
        .collect();
    let categorized = categorize(&topology, policy, node);
    let backends = |set: &Option<Vec<usize>>| -> Option<Vec<DesiredBackend>> {
        set.as_ref().map(|indices| {
            indices
                .iter()
                .map(|&i| {
                    let (addr, c) = listed[i];
                    DesiredBackend {
                        addr: *addr,
                        // In a set although not ready: the serving-terminating fallback.
                        terminating: !c.ready,
                        local: is_local(c),
                    }
                })
                .collect()
        })
    };
    let serving = candidates
        .iter()
        .filter(|(_, c)| c.serving)
        .map(|(addr, _)| *addr)
        .collect();
    let local_ready = candidates
        .values()
        .filter(|c| c.ready && is_local(c))
        .count();
    Selected {
        cluster: backends(&categorized.cluster),
        local: backends(&categorized.local),
        has_any: categorized.has_any,
        serving,
        local_ready,
    }
}

/// The endpoints of one Service port, as the data plane uses them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Selected {
    /// The cluster-wide set (`None`: the port never uses it), in slot order.
    pub cluster: Option<Vec<DesiredBackend>>,
    /// The set on this node (`None`: the port never uses it), in slot order.
    pub local: Option<Vec<DesiredBackend>>,
    /// Some endpoint anywhere is usable: an empty set then drops instead of rejecting.
    pub has_any: bool,
    /// Every serving endpoint (ready or not, terminating or not), sorted: kube-proxy keeps
    /// the UDP flows of these and flushes the others.
    pub serving: Vec<SocketAddr>,
    /// Ready endpoints on this node (the health check node port's `localEndpoints`).
    pub local_ready: usize,
}

/// The slice's port for `wanted`, if the slice is of the wanted family and has one.
fn slice_port(slice: &SliceView, wanted: Wanted<'_>, skipped: &mut Vec<Skip>) -> Option<u16> {
    let family = if wanted.ipv6 {
        AddressType::Ipv6
    } else {
        AddressType::Ipv4
    };
    if slice.address_type != family {
        return None;
    }
    let port = slice.ports.iter().find(|p| {
        p.name.as_deref().unwrap_or("") == wanted.port_name
            && parse_protocol(p.protocol.as_deref()).ok() == Some(wanted.protocol)
    })?;
    // A nil port means "all ports": kube-proxy cannot program that and ignores it.
    let number = port.port?;
    let valid = valid_port(number);
    if valid.is_none() {
        skipped.push(Skip {
            object: format!("{} port '{}'", slice.origin, wanted.port_name),
            reason: reason::INVALID_PORT,
            detail: format!("port {number} is outside 1..=65535"),
        });
    }
    valid
}

/// The endpoint's first address, if it parses and is of the wanted family.
fn endpoint_ip(
    endpoint: &EndpointView,
    origin: &str,
    ipv6: bool,
    skipped: &mut Vec<Skip>,
) -> Option<IpAddr> {
    let detail = match &endpoint.address {
        EndpointAddress::Ip(ip) if ip.is_ipv6() == ipv6 => return Some(*ip),
        EndpointAddress::Ip(ip) => format!("'{ip}' is not of the slice's address type"),
        EndpointAddress::Invalid(text, e) => format!("'{text}': {e}"),
        EndpointAddress::Missing => "no address".into(),
    };
    skipped.push(Skip {
        object: origin.to_string(),
        reason: reason::INVALID_IP,
        detail,
    });
    None
}

/// The endpoint's conditions with the API's nil rules: ready and serving default to true,
/// terminating to false.
fn candidate(endpoint: &EndpointView, origin: String) -> Candidate {
    Candidate {
        ready: endpoint.ready.unwrap_or(true),
        serving: endpoint.serving.unwrap_or(true),
        terminating: endpoint.terminating.unwrap_or(false),
        node_name: endpoint.node_name.clone(),
        zone_hints: endpoint.zone_hints.clone(),
        node_hints: endpoint.node_hints.clone(),
        origin,
    }
}
