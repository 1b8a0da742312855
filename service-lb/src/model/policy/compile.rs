//! One local pod's compiled view: per direction, isolated or not, and the peer prefixes
//! with the ports they may use, flattened for a longest-prefix match (see the module doc).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
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

/// A resolved rule list, compared and hashed by identity: within one recompute, two pods
/// whose directions are made of the same rule lists (and the same ingress named-port
/// resolutions) compile to the same view.
#[derive(Clone, Debug)]
pub(super) struct ByPtr(Arc<Vec<CachedRule>>);

impl PartialEq for ByPtr {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ByPtr {}

impl Hash for ByPtr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// Everything one direction's compiled view depends on: the rule lists of the policies
/// selecting the pod (in order) and, per rule, the ports its ingress named ports resolve to
/// on the pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct MemoKey {
    rules: Vec<ByPtr>,
    extra: Vec<Vec<PortSet>>,
}

/// Compiled directions shared by the pods of one recompute (pods of one Deployment, or any
/// pods selected by the same policies, flatten once). Holds the rule lists it is keyed by,
/// so their identities stay valid; it must not outlive the recompute (the rule cache is
/// invalidated between recomputes).
pub(super) type Memo = HashMap<MemoKey, DirectionPolicy>;

/// Compiles `pod` (a local, active pod) against the stores, filling `cache` and, when
/// given, sharing flattened directions through `memo`.
pub(super) fn compile_pod(
    stores: &Stores,
    cache: &mut RuleCache,
    mut memo: Option<&mut Memo>,
    pod: &PodView,
) -> PodPolicy {
    PodPolicy {
        pod: pod.key.clone(),
        ips: pod.ips.clone(),
        ingress: compile_direction(stores, cache, memo.as_deref_mut(), pod, Direction::Ingress),
        egress: compile_direction(stores, cache, memo, pod, Direction::Egress),
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
    memo: Option<&mut Memo>,
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
    let key = memo.as_ref().map(|_| MemoKey {
        rules: rules.iter().cloned().map(ByPtr).collect(),
        extra: extra.clone(),
    });
    if let (Some(memo), Some(key)) = (memo.as_deref(), key.as_ref()) {
        if let Some(hit) = memo.get(key) {
            return hit.clone();
        }
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
    let compiled = DirectionPolicy {
        isolated,
        entries: flatten(&atoms),
    };
    if let (Some(memo), Some(key)) = (memo, key) {
        memo.insert(key, compiled.clone());
    }
    compiled
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
                // The policy's namespace without a namespaceSelector, else every namespace
                // it matches (each namespace's labels are checked once, not per pod).
                let candidates: Box<dyn Iterator<Item = &PodView>> = match namespaces {
                    None => Box::new(stores.pods_in(namespace)),
                    Some(sel) => Box::new(
                        stores
                            .pods_by_ns
                            .keys()
                            .filter(|ns| sel.matches(stores.namespace_labels(ns)))
                            .flat_map(|ns| stores.pods_in(ns)),
                    ),
                };
                for dst in candidates {
                    if !dst.is_active() || !pod_sel.as_ref().is_none_or(|s| s.matches(&dst.labels))
                    {
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
    let mut plain: HashMap<Prefix, PortSet> = HashMap::new();
    let mut excepting: BTreeMap<Prefix, Vec<(&[Prefix], PortSet)>> = BTreeMap::new();
    for &(prefix, except, ports, extra) in atoms {
        if except.is_empty() {
            let set = plain.entry(prefix).or_default();
            set.union_with(ports);
            if let Some(extra) = extra {
                set.union_with(extra);
            }
        } else {
            let mut set = ports.clone();
            if let Some(extra) = extra {
                set.union_with(extra);
            }
            excepting.entry(prefix).or_default().push((except, set));
        }
    }
    let mut keys: BTreeSet<Prefix> = plain.keys().copied().collect();
    for (prefix, list) in &excepting {
        keys.insert(*prefix);
        for (except, _) in list {
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
