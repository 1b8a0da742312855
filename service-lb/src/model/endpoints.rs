//! Backends of one frontend from the Service's EndpointSlices, as kube-proxy picks them:
//!
//! - slices of the frontend's family (`addressType` IPv4/IPv6; FQDN never matches);
//! - the slice port whose name equals the Service port's name ("" = unnamed) and whose
//!   protocol matches gives the backend port (so `port` and `targetPort` may differ);
//! - the first address of each endpoint; one address:port listed several times counts once
//!   (first slice by name wins, unless a later one is on this node, like kube-proxy);
//! - the ready endpoints (nil ready = ready); when none is ready, those serving AND
//!   terminating (KEP-1669), marked terminating; never the others;
//! - sorted by address for a deterministic slot order.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{
    reason,
    service::{parse_protocol, valid_port},
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
    node_name: Option<String>,
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

/// The backends of a frontend; `slices` sorted by name.
pub(super) fn select(
    wanted: Wanted<'_>,
    slices: &[&EndpointSlice],
    node_name: Option<&str>,
    skipped: &mut Vec<Skip>,
) -> Vec<DesiredBackend> {
    let is_local = |c: &Candidate| node_name.is_some() && c.node_name.as_deref() == node_name;
    let mut candidates: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
    for slice in slices {
        let slice_name = slice_name(slice);
        let Some(port) = slice_port(slice, &slice_name, wanted, skipped) else {
            continue;
        };
        for (index, endpoint) in slice.endpoints.iter().enumerate() {
            let origin = format!("{slice_name} endpoint {index}");
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

    let any_ready = candidates.values().any(|c| c.ready);
    candidates
        .iter()
        .filter(|(_, c)| {
            if any_ready {
                c.ready
            } else {
                c.serving && c.terminating
            }
        })
        .map(|(addr, c)| DesiredBackend {
            addr: *addr,
            terminating: !any_ready,
            local: is_local(c),
        })
        .collect()
}

fn slice_name(slice: &EndpointSlice) -> String {
    format!(
        "EndpointSlice {}/{}",
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        slice.metadata.name.as_deref().unwrap_or("")
    )
}

/// The slice's port for `wanted`, if the slice is of the wanted family and has one.
fn slice_port(
    slice: &EndpointSlice,
    slice_name: &str,
    wanted: Wanted<'_>,
    skipped: &mut Vec<Skip>,
) -> Option<u16> {
    let family = if wanted.ipv6 { "IPv6" } else { "IPv4" };
    if slice.address_type != family {
        return None;
    }
    let port = slice.ports.iter().flatten().find(|p| {
        p.name.as_deref().unwrap_or("") == wanted.port_name
            && parse_protocol(p.protocol.as_deref()).ok() == Some(wanted.protocol)
    })?;
    // A nil port means "all ports": kube-proxy cannot program that and ignores it.
    let number = port.port?;
    let valid = valid_port(number);
    if valid.is_none() {
        skipped.push(Skip {
            object: format!("{slice_name} port '{}'", wanted.port_name),
            reason: reason::INVALID_PORT,
            detail: format!("port {number} is outside 1..=65535"),
        });
    }
    valid
}

/// The endpoint's first address, if it parses and is of the wanted family.
fn endpoint_ip(
    endpoint: &Endpoint,
    origin: &str,
    ipv6: bool,
    skipped: &mut Vec<Skip>,
) -> Option<IpAddr> {
    let Some(text) = endpoint.addresses.first() else {
        skipped.push(Skip {
            object: origin.to_string(),
            reason: reason::INVALID_IP,
            detail: "no address".into(),
        });
        return None;
    };
    let detail = match text.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == ipv6 => return Some(ip),
        Ok(_) => format!("'{text}' is not of the slice's address type"),
        Err(e) => format!("'{text}': {e}"),
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
fn candidate(endpoint: &Endpoint, origin: String) -> Candidate {
    let conditions = endpoint.conditions.as_ref();
    Candidate {
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        node_name: endpoint.node_name.clone(),
        origin,
    }
}
