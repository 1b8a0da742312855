//! A straightforward evaluator of the v1 semantics, written from the API documentation and
//! independent of the compiler (it shares only the views and the selector matching): for
//! one flow, walk every policy and rule.

use std::net::IpAddr;

use super::{
    state::PolicyModel,
    view::{Direction, Peer, PodView, PortMatch, Proto, RulePort},
};

/// Whether a new connection `src -> dst:port/proto` is allowed by the policies in `model`
/// (every pod of the cluster, local or not).
pub fn allowed(model: &PolicyModel, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
    let src_pod = pod_with_ip(model, src);
    let dst_pod = pod_with_ip(model, dst);
    let egress_ok = match src_pod {
        None => true,
        Some(s) => side_allows(
            model,
            s,
            Direction::Egress,
            dst,
            dst_pod,
            dst_pod,
            proto,
            port,
        ),
    };
    let ingress_ok = match dst_pod {
        None => true,
        Some(d) => side_allows(
            model,
            d,
            Direction::Ingress,
            src,
            src_pod,
            Some(d),
            proto,
            port,
        ),
    };
    egress_ok && ingress_ok
}

/// The active pod that owns `ip`, if any.
fn pod_with_ip(model: &PolicyModel, ip: IpAddr) -> Option<&PodView> {
    model.pods().find(|p| {
        p.ips.contains(&ip) && !matches!(p.phase.as_deref(), Some("Succeeded" | "Failed"))
    })
}

/// `pod`'s verdict for `dir`: `peer_ip`/`peer_pod` is the other end, `dst_pod` the
/// destination (whose container ports name the ports).
#[allow(clippy::too_many_arguments)]
fn side_allows(
    model: &PolicyModel,
    pod: &PodView,
    dir: Direction,
    peer_ip: IpAddr,
    peer_pod: Option<&PodView>,
    dst_pod: Option<&PodView>,
    proto: Proto,
    port: u16,
) -> bool {
    let mut isolated = false;
    let mut allowed = false;
    for policy in model.policies() {
        if policy.key.namespace != pod.key.namespace
            || !policy.has_type(dir)
            || !policy.pod_selector.matches(&pod.labels)
        {
            continue;
        }
        isolated = true;
        for rule in policy.rules(dir) {
            let peer_ok = rule.peers.is_empty()
                || rule.peers.iter().any(|peer| match peer {
                    Peer::Invalid => false,
                    Peer::IpBlock { cidr, except } => {
                        cidr.contains_ip(peer_ip) && !except.iter().any(|e| e.contains_ip(peer_ip))
                    }
                    Peer::Pods { namespaces, pods } => peer_pod.is_some_and(|q| {
                        let ns_ok = match namespaces {
                            None => q.key.namespace == policy.key.namespace,
                            Some(sel) => sel.matches(model.namespace_labels(&q.key.namespace)),
                        };
                        let pod_ok = match pods {
                            None => true,
                            Some(sel) => sel.matches(&q.labels),
                        };
                        ns_ok && pod_ok
                    }),
                });
            let port_ok = rule.ports.is_empty()
                || rule.ports.iter().any(|p| match p {
                    RulePort::Invalid => false,
                    RulePort::Port { proto: p, port: m } => {
                        *p == proto
                            && match m {
                                PortMatch::Any => true,
                                PortMatch::Range(lo, hi) => *lo <= port && port <= *hi,
                                PortMatch::Named(name) => dst_pod.is_some_and(|d| {
                                    d.ports.iter().any(|c| {
                                        c.name == *name && c.protocol == proto && c.port == port
                                    })
                                }),
                            }
                    }
                });
            if peer_ok && port_ok {
                allowed = true;
            }
        }
    }
    !isolated || allowed
}
