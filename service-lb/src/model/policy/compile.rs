//! One local pod's compiled view: per direction, isolated or not, and the peer prefixes
//! with the ports they may use, flattened for a longest-prefix match (see the module doc).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::{
    ports::PortSet,
    state::Stores,
    view::{
        Direction, ObjectKey, Peer, PodView, PolicyView, PortMatch, Prefix, Proto, Rule, RulePort,
    },
    DirectionPolicy, PodPolicy,
};

/// The resolved rules of one policy in one direction, shared by every local pod it
/// selects (only ingress named ports depend on the selected pod). Dropped whenever the
/// policy, or a pod or namespace its peers depend on, changes.
pub(super) type RuleCache = HashMap<(ObjectKey, Direction), Arc<Vec<CachedRule>>>;

/// One rule, resolved.
#[derive(Debug)]
pub(super) struct CachedRule {
    /// Ingress named ports, resolved against the enforced pod (empty for egress, whose
    /// named ports are resolved per destination into `atoms`).
    named: Vec<(Proto, String)>,
    atoms: Vec<Atom>,
}

/// Compiles `pod` (a local, active pod) against the stores, filling `cache`.
pub(super) fn compile_pod(stores: &Stores, cache: &mut RuleCache, pod: &PodView) -> PodPolicy {
    PodPolicy {
        pod: pod.key.clone(),
        ips: pod.ips.clone(),
        ingress: compile_direction(stores, cache, pod, Direction::Ingress),
        egress: compile_direction(stores, cache, pod, Direction::Egress),
    }
}

/// An allow rule before flattening: addresses in `prefix` outside every `except` may use
/// `ports`.
#[derive(Debug)]
struct Atom {
    prefix: Prefix,
    except: Vec<Prefix>,
    ports: PortSet,
}

fn compile_direction(
    stores: &Stores,
    cache: &mut RuleCache,
    pod: &PodView,
    dir: Direction,
) -> DirectionPolicy {
    let mut isolated = false;
    let mut rules: Vec<Arc<Vec<CachedRule>>> = Vec::new();
    for policy in stores.policies_in(&pod.key.namespace) {
        if !policy.has_type(dir) || !policy.pod_selector.matches(&pod.labels) {
            continue;
        }
        isolated = true;
        let cached = cache
            .entry((policy.key.clone(), dir))
            .or_insert_with(|| Arc::new(resolve_rules(stores, policy, dir)));
        rules.push(Arc::clone(cached));
    }
    if !isolated {
        return DirectionPolicy::default();
    }
    // Ingress named ports: this pod's container ports, added to every atom of the rule.
    let mut extra: Vec<Vec<PortSet>> = Vec::with_capacity(rules.len());
    for policy_rules in &rules {
        extra.push(
            policy_rules
                .iter()
                .map(|rule| {
                    let mut set = PortSet::default();
                    for (proto, name) in &rule.named {
                        for n in pod.named_ports(name, *proto) {
                            set.insert(*proto, n, n);
                        }
                    }
                    set
                })
                .collect(),
        );
    }
    let mut atoms: Vec<(Prefix, &[Prefix], &PortSet, Option<&PortSet>)> = Vec::new();
    for (policy_rules, extra) in rules.iter().zip(&extra) {
        for (rule, extra) in policy_rules.iter().zip(extra) {
            let extra = (!extra.is_empty()).then_some(extra);
            for a in &rule.atoms {
                atoms.push((a.prefix, &a.except, &a.ports, extra));
            }
        }
    }
    DirectionPolicy {
        isolated,
        entries: flatten(&atoms),
    }
}

fn resolve_rules(stores: &Stores, policy: &PolicyView, dir: Direction) -> Vec<CachedRule> {
    policy
        .rules(dir)
        .iter()
        .map(|rule| resolve_rule(stores, &policy.key.namespace, dir, rule))
        .collect()
}

/// The atoms of one rule of a policy in `namespace`.
fn resolve_rule(stores: &Stores, namespace: &str, dir: Direction, rule: &Rule) -> CachedRule {
    let mut atoms = Vec::new();
    // Ports that do not depend on the peer: numeric ones (named ones: see CachedRule).
    let mut fixed = PortSet::default();
    let mut named: Vec<(Proto, String)> = Vec::new();
    if rule.ports.is_empty() {
        fixed = PortSet::all();
    }
    for port in &rule.ports {
        match port {
            RulePort::Invalid => {}
            RulePort::Port { proto, port } => match port {
                PortMatch::Any => fixed.insert(*proto, 0, u16::MAX),
                PortMatch::Range(lo, hi) => fixed.insert(*proto, *lo, *hi),
                PortMatch::Named(name) => named.push((*proto, name.clone())),
            },
        }
    }
    // Egress named ports: resolved per destination pod, on that pod's /32 or /128.
    let egress_named = if dir == Direction::Egress {
        std::mem::take(&mut named)
    } else {
        Vec::new()
    };
    let resolved = |dst: &PodView| {
        let mut set = fixed.clone();
        for (proto, name) in &egress_named {
            for n in dst.named_ports(name, *proto) {
                set.insert(*proto, n, n);
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
        if !egress_named.is_empty() {
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
            block(all, &[], &mut atoms);
        }
        return CachedRule { named, atoms };
    }
    for peer in &rule.peers {
        match peer {
            Peer::Invalid => {}
            Peer::IpBlock { cidr, except } => block(*cidr, except, &mut atoms),
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
    CachedRule { named, atoms }
}

/// Turns the atoms into LPM entries: every atom prefix and every except gets an entry whose
/// value is the union of the ports of every atom that covers it and does not except it, so
/// the longest matching entry alone decides for any address. Entries that repeat their
/// nearest ancestor's value (or are empty with no ancestor: the default deny) are dropped.
/// An atom: (prefix, excepts, ports, more ports).
type AtomRef<'a> = (Prefix, &'a [Prefix], &'a PortSet, Option<&'a PortSet>);

fn flatten(atoms: &[AtomRef<'_>]) -> BTreeMap<Prefix, PortSet> {
    // Atoms without excepts (pod addresses, mostly) merge per prefix first.
    let mut plain: BTreeMap<Prefix, PortSet> = BTreeMap::new();
    let mut excepting: BTreeMap<Prefix, Vec<(&[Prefix], PortSet)>> = BTreeMap::new();
    let mut keys: BTreeSet<Prefix> = BTreeSet::new();
    for &(prefix, except, ports, extra) in atoms {
        keys.insert(prefix);
        let mut set = ports.clone();
        if let Some(extra) = extra {
            set.union_with(extra);
        }
        if except.is_empty() {
            plain.entry(prefix).or_default().union_with(&set);
        } else {
            excepting.entry(prefix).or_default().push((except, set));
            keys.extend(except.iter().copied());
        }
    }
    // Ancestors are looked up only at the prefix lengths in use (per family).
    let lengths = |set: &mut dyn Iterator<Item = &Prefix>| {
        let mut l: Vec<(bool, u8)> = set.map(|p| (p.is_v4(), p.prefix_len())).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let atom_lengths = lengths(&mut plain.keys().chain(excepting.keys()));
    let ancestors = |p: Prefix, lengths: &[(bool, u8)]| {
        lengths
            .iter()
            .rev()
            .filter(move |&&(v4, len)| v4 == p.is_v4() && len <= p.prefix_len())
            .map(move |&(_, len)| Prefix::new(p.addr(), len))
            .collect::<Vec<_>>()
    };
    let mut values: BTreeMap<Prefix, PortSet> = BTreeMap::new();
    for &p in &keys {
        let mut set = PortSet::default();
        for ancestor in ancestors(p, &atom_lengths) {
            if let Some(ports) = plain.get(&ancestor) {
                set.union_with(ports);
            }
            for (except, ports) in excepting.get(&ancestor).into_iter().flatten() {
                if !except.iter().any(|e| e.contains(&p)) {
                    set.union_with(ports);
                }
            }
        }
        values.insert(p, set);
    }
    let key_lengths = lengths(&mut values.keys());
    let empty = PortSet::default();
    let redundant: Vec<Prefix> = values
        .iter()
        .filter(|(p, set)| {
            let parent = ancestors(**p, &key_lengths)
                .into_iter()
                .filter(|a| a != *p)
                .find_map(|a| values.get(&a));
            *set == parent.unwrap_or(&empty)
        })
        .map(|(p, _)| *p)
        .collect();
    for p in redundant {
        values.remove(&p);
    }
    values
}
