//! One local pod's compiled view: per direction, isolated or not, and the peer prefixes
//! with the ports they may use, flattened for a longest-prefix match (see the module doc).

use std::collections::BTreeMap;

use super::{
    ports::PortSet,
    state::Stores,
    view::{Direction, Peer, PodView, PortMatch, Prefix, Proto, Rule, RulePort},
    DirectionPolicy, PodPolicy,
};

/// Compiles `pod` (a local, active pod) against the stores.
pub(super) fn compile_pod(stores: &Stores, pod: &PodView) -> PodPolicy {
    PodPolicy {
        pod: pod.key.clone(),
        ips: pod.ips.clone(),
        ingress: compile_direction(stores, pod, Direction::Ingress),
        egress: compile_direction(stores, pod, Direction::Egress),
    }
}

/// An allow rule before flattening: addresses in `prefix` outside every `except` may use
/// `ports`.
struct Atom {
    prefix: Prefix,
    except: Vec<Prefix>,
    ports: PortSet,
}

fn compile_direction(stores: &Stores, pod: &PodView, dir: Direction) -> DirectionPolicy {
    let mut isolated = false;
    let mut atoms = Vec::new();
    for policy in stores.policies_in(&pod.key.namespace) {
        if !policy.has_type(dir) || !policy.pod_selector.matches(&pod.labels) {
            continue;
        }
        isolated = true;
        for rule in policy.rules(dir) {
            rule_atoms(stores, &policy.key.namespace, pod, dir, rule, &mut atoms);
        }
    }
    DirectionPolicy {
        isolated,
        entries: if isolated {
            flatten(&atoms)
        } else {
            BTreeMap::new()
        },
    }
}

/// The atoms of one rule of a policy in `namespace` selecting `pod`.
fn rule_atoms(
    stores: &Stores,
    namespace: &str,
    pod: &PodView,
    dir: Direction,
    rule: &Rule,
    atoms: &mut Vec<Atom>,
) {
    // Ports that do not depend on the peer: numeric ones, and for ingress the named ones
    // (the destination is the enforced pod itself).
    let mut fixed = PortSet::default();
    let mut named: Vec<(Proto, &str)> = Vec::new();
    if rule.ports.is_empty() {
        fixed = PortSet::all();
    }
    for port in &rule.ports {
        match port {
            RulePort::Invalid => {}
            RulePort::Port { proto, port } => match port {
                PortMatch::Any => fixed.insert(*proto, 0, u16::MAX),
                PortMatch::Range(lo, hi) => fixed.insert(*proto, *lo, *hi),
                PortMatch::Named(name) => match dir {
                    Direction::Ingress => {
                        for n in pod.named_ports(name, *proto) {
                            fixed.insert(*proto, n, n);
                        }
                    }
                    Direction::Egress => named.push((*proto, name)),
                },
            },
        }
    }
    // Egress named ports: resolved per destination pod, on that pod's /32 or /128.
    let resolved = |dst: &PodView| {
        let mut set = fixed.clone();
        for &(proto, name) in &named {
            for n in dst.named_ports(name, proto) {
                set.insert(proto, n, n);
            }
        }
        set
    };
    let block = |cidr: Prefix, except: &[Prefix], atoms: &mut Vec<Atom>| {
        atoms.push(Atom {
            prefix: cidr,
            except: except.to_vec(),
            ports: fixed.clone(),
        });
        if !named.is_empty() {
            for dst in stores.active_pods() {
                for &ip in &dst.ips {
                    if cidr.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip)) {
                        atoms.push(Atom {
                            prefix: Prefix::host(ip),
                            except: Vec::new(),
                            ports: resolved(dst),
                        });
                    }
                }
            }
        }
    };
    if rule.peers.is_empty() {
        for all in Prefix::all() {
            block(all, &[], atoms);
        }
        return;
    }
    for peer in &rule.peers {
        match peer {
            Peer::Invalid => {}
            Peer::IpBlock { cidr, except } => block(*cidr, except, atoms),
            Peer::Pods {
                namespaces,
                pods: pod_sel,
            } => {
                // Only the policy's namespace's pods when no namespaceSelector is set.
                let candidates: Box<dyn Iterator<Item = &PodView>> = match namespaces {
                    None => Box::new(stores.pods_in(namespace).filter(|p| p.is_active())),
                    Some(_) => Box::new(stores.active_pods()),
                };
                for dst in candidates {
                    let ns_ok = match namespaces {
                        None => dst.key.namespace == namespace,
                        Some(sel) => sel.matches(stores.namespace_labels(&dst.key.namespace)),
                    };
                    if !ns_ok || !pod_sel.as_ref().is_none_or(|s| s.matches(&dst.labels)) {
                        continue;
                    }
                    let ports = resolved(dst);
                    for &ip in &dst.ips {
                        atoms.push(Atom {
                            prefix: Prefix::host(ip),
                            except: Vec::new(),
                            ports: ports.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// Turns the atoms into LPM entries: every atom prefix and every except gets an entry whose
/// value is the union of the ports of every atom that covers it and does not except it, so
/// the longest matching entry alone decides for any address. Entries that repeat their
/// nearest ancestor's value (or are empty with no ancestor: the default deny) are dropped.
fn flatten(atoms: &[Atom]) -> BTreeMap<Prefix, PortSet> {
    let mut by_prefix: BTreeMap<Prefix, Vec<&Atom>> = BTreeMap::new();
    for atom in atoms {
        by_prefix.entry(atom.prefix).or_default().push(atom);
    }
    let mut keys: Vec<Prefix> = atoms
        .iter()
        .flat_map(|a| std::iter::once(a.prefix).chain(a.except.iter().copied()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut values: BTreeMap<Prefix, PortSet> = BTreeMap::new();
    for &p in &keys {
        let mut set = PortSet::default();
        for len in (0..=p.prefix_len()).rev() {
            let ancestor = Prefix::new(p.addr(), len);
            for atom in by_prefix.get(&ancestor).into_iter().flatten() {
                if !atom.except.iter().any(|e| e.contains(&p)) {
                    set.union_with(&atom.ports);
                }
            }
        }
        values.insert(p, set);
    }
    let empty = PortSet::default();
    let redundant: Vec<Prefix> = values
        .iter()
        .filter(|(p, set)| {
            let parent = (0..p.prefix_len())
                .rev()
                .find_map(|len| values.get(&Prefix::new(p.addr(), len)));
            *set == parent.unwrap_or(&empty)
        })
        .map(|(p, _)| *p)
        .collect();
    for p in redundant {
        values.remove(&p);
    }
    values
}
