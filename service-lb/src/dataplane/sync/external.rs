//! NodePort, externalIP and LoadBalancer frontends (`model::ExternalFrontend`) as map
//! entries: the same services-map frontends as ClusterIP ones, keyed (address, port,
//! protocol, scope), with the master flags the programs act on:
//!
//! - the kind (`SVC_FLAG_NODE_PORT` / `_EXTERNAL_IP` / `_LOAD_BALANCER`);
//! - `SVC_FLAG_SNAT` when every client of this entry is SNATed to the node (`Snat::Always`:
//!   eTP=Cluster). `Snat::FromNode` (the Internal twin of an eTP=Local frontend) sets
//!   nothing: pods keep their address, and the node's own connections are the socket LB's
//!   business (kube-proxy masquerades those; see docs/north-south.md);
//! - `SVC_FLAG_DROP_NO_ENDPOINT` when no endpoint is eligible but the Service has some
//!   (eTP=Local on a node without a local endpoint: dropped, not refused);
//! - `SVC_FLAG_SOURCE_RANGES` with the ranges when `loadBalancerSourceRanges` apply.
//!
//! `SVC_FLAG_TWO_SCOPES` is added by `specs_of`, which sees both scopes.

use service_lb_common::{
    names::{KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT},
    service::{
        SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOAD_BALANCER, SVC_FLAG_MAGLEV, SVC_FLAG_NODE_PORT,
        SVC_FLAG_SNAT, SVC_FLAG_SOURCE_RANGES,
    },
};

use super::{backend_specs, frontend_key, no_endpoint_flag};
use crate::{
    dataplane::{vips::Cidr, FrontendSpec},
    model::{ExternalFrontend, FrontendKind, Snat},
};

/// The map entry a north-south frontend becomes.
pub fn external_spec(frontend: &ExternalFrontend) -> FrontendSpec {
    let kind = match frontend.kind {
        FrontendKind::NodePort => SVC_FLAG_NODE_PORT,
        FrontendKind::ExternalIp => SVC_FLAG_EXTERNAL_IP,
        FrontendKind::LoadBalancer => SVC_FLAG_LOAD_BALANCER,
    };
    let snat = match frontend.snat {
        Snat::Always => SVC_FLAG_SNAT,
        Snat::FromNode | Snat::Never => 0,
    };
    let mut source_ranges: Vec<Cidr> = frontend
        .source_ranges
        .iter()
        .filter(|r| r.addr.is_ipv6() == frontend.addr.is_ipv6())
        .filter_map(|r| Cidr::new(r.addr, r.prefix_len))
        .collect();
    source_ranges.sort_unstable();
    source_ranges.dedup();
    let ranges = if source_ranges.is_empty() {
        0
    } else {
        SVC_FLAG_SOURCE_RANGES
    };
    // Maglev: the table is written by the writer before the master carries the flag.
    let maglev = if frontend.maglev { SVC_FLAG_MAGLEV } else { 0 };
    FrontendSpec {
        key: frontend_key(
            frontend.addr,
            frontend.port,
            frontend.protocol,
            frontend.scope,
        ),
        backends: backend_specs(&frontend.backends),
        flags: kind | snat | ranges | maglev | no_endpoint_flag(frontend.no_endpoints),
        affinity_timeout_s: frontend.affinity_timeout_s,
        source_ranges,
    }
}

/// The names map's `kind` of a north-south frontend.
pub fn frontend_kind(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::NodePort => KIND_NODE_PORT,
        FrontendKind::ExternalIp => KIND_EXTERNAL_IP,
        FrontendKind::LoadBalancer => KIND_LOAD_BALANCER,
    }
}

#[cfg(test)]
mod tests;
