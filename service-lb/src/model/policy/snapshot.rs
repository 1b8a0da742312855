//! What `service-lb inspect policy` shows without the daemon: each local pod's compiled
//! policy with names the kernel maps do not hold (the policies selecting it, the pods a
//! peer address belongs to). Pure: built from the model; the daemon writes it as JSON on
//! each policy sync and the CLI reads it.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Direction, DirectionPolicy, ObjectKey, PolicyModel, PortSet, Proto};

/// Every local pod's effective policy, as of one sync. Pods selected by the same policies
/// (the replicas of a Deployment...) share one entry of `directions`, so the file grows with
/// the distinct compiled views, not with the pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub node: String,
    /// Seconds since the Unix epoch when it was written.
    pub written_unix: u64,
    /// NetworkPolicies known (every namespace).
    pub policies: usize,
    pub pods: Vec<PodSnapshot>,
    /// The distinct directions, referred to by index from `pods`.
    pub directions: Vec<DirectionSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSnapshot {
    /// `namespace/name`.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// Index into [`PolicySnapshot::directions`].
    pub ingress: usize,
    pub egress: usize,
}

impl PolicySnapshot {
    /// A direction of a pod (`None` only for a malformed file).
    pub fn direction(&self, index: usize) -> Option<&DirectionSnapshot> {
        self.directions.get(index)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirectionSnapshot {
    pub isolated: bool,
    /// The policies (`namespace/name`) that isolate the pod in this direction.
    pub policies: Vec<String>,
    /// Longest-prefix-match entries: the longest matching peer prefix decides; no match
    /// denies (when isolated).
    pub rules: Vec<RuleSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleSnapshot {
    /// `198.18.1.5/32`, `0.0.0.0/0`.
    pub peer: String,
    /// The pod (`namespace/name`) a host prefix is the address of, if any.
    pub peer_pod: Option<String>,
    /// `TCP 80-90`, `UDP 53`, `any`; empty: nothing (an `except` hole).
    pub ports: Vec<String>,
}

/// The readable form of a port set.
pub fn describe_ports(set: &PortSet) -> Vec<String> {
    if *set == PortSet::all() {
        return vec!["any".into()];
    }
    let mut out = Vec::new();
    for proto in Proto::ALL {
        let name = match proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        };
        for &(lo, hi) in set.ranges(proto) {
            out.push(match (lo, hi) {
                (0, u16::MAX) => format!("{name} any"),
                (lo, hi) if lo == hi => format!("{name} {lo}"),
                (lo, hi) => format!("{name} {lo}-{hi}"),
            });
        }
    }
    out
}

impl PolicySnapshot {
    /// The snapshot of every pod the model holds compiled (as of its last recompute).
    pub fn of(model: &PolicyModel, written_unix: u64) -> Self {
        let by_ip: HashMap<IpAddr, &ObjectKey> = model
            .pods()
            .filter(|p| p.is_active())
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, &p.key)))
            .collect();
        let mut directions: Vec<DirectionSnapshot> = Vec::new();
        // (isolating policies, compiled direction) -> index: equal views are described once.
        let mut index: HashMap<(Vec<String>, &DirectionPolicy), usize> = HashMap::new();
        let mut pods = Vec::new();
        for pod in model.compiled().values() {
            let labels = model.pod(&pod.pod).map(|p| &p.labels);
            let mut refs = [0usize; 2];
            for (slot, dir) in refs.iter_mut().zip([Direction::Ingress, Direction::Egress]) {
                let mut policies: Vec<String> = model
                    .policies()
                    .filter(|p| {
                        p.key.namespace == pod.pod.namespace
                            && p.has_type(dir)
                            && labels.is_some_and(|l| p.pod_selector.matches(l))
                    })
                    .map(|p| p.key.to_string())
                    .collect();
                policies.sort();
                let compiled = pod.direction(dir);
                *slot = *index
                    .entry((policies.clone(), compiled))
                    .or_insert_with(|| {
                        directions.push(describe(compiled, policies, &by_ip));
                        directions.len() - 1
                    });
            }
            pods.push(PodSnapshot {
                pod: pod.pod.to_string(),
                ips: pod.ips.clone(),
                ingress: refs[0],
                egress: refs[1],
            });
        }
        Self {
            node: model.node().to_owned(),
            written_unix,
            policies: model.policies().count(),
            pods,
            directions,
        }
    }
}

fn describe(
    compiled: &DirectionPolicy,
    policies: Vec<String>,
    by_ip: &HashMap<IpAddr, &ObjectKey>,
) -> DirectionSnapshot {
    let rules = compiled
        .entries
        .iter()
        .map(|(prefix, ports)| {
            let host = prefix.prefix_len() == if prefix.is_v4() { 32 } else { 128 };
            RuleSnapshot {
                peer: prefix.to_string(),
                peer_pod: host
                    .then(|| by_ip.get(&prefix.addr()).map(|k| k.to_string()))
                    .flatten(),
                ports: describe_ports(ports),
            }
        })
        .collect();
    DirectionSnapshot {
        isolated: compiled.isolated,
        policies,
        rules,
    }
}
