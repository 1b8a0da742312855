//! The stores, their indexes and the incremental recompute.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};

use super::{
    compile::{compile_pod, Memo, RuleCache},
    selector::Labels,
    view::{Direction, NamespaceView, ObjectKey, Peer, PodView, PolicyView, PortMatch, RulePort},
    PodPolicy, PolicyChanges,
};

/// Every object the model knows, with the indexes the compiler and the dirty tracking use.
#[derive(Debug, Default)]
pub(super) struct Stores {
    pub namespaces: HashMap<String, NamespaceView>,
    pub pods: HashMap<ObjectKey, PodView>,
    pub pods_by_ns: HashMap<String, BTreeSet<ObjectKey>>,
    pub policies: HashMap<ObjectKey, PolicyView>,
    pub policies_by_ns: HashMap<String, BTreeSet<ObjectKey>>,
}

static NO_LABELS: Labels = Labels::new();

impl Stores {
    /// The labels of a namespace; none while the Namespace is unknown.
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        self.namespaces.get(name).map_or(&NO_LABELS, |n| &n.labels)
    }

    pub fn policies_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PolicyView> {
        self.policies_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.policies.get(k))
    }

    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PodView> {
        self.pods_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Pods that can be peers: with addresses, not finished.
    pub fn active_pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().filter(|p| p.is_active())
    }
}

/// The NetworkPolicy model of one node: feed it Namespaces, Pods and NetworkPolicies (in
/// any order), then [`PolicyModel::recompute`] compiles the local pods the changes affect.
#[derive(Debug)]
pub struct PolicyModel {
    node: String,
    stores: Stores,
    /// Which local pods each policy selects (either direction).
    selects: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    compiled: BTreeMap<ObjectKey, PodPolicy>,
    /// Each policy's resolved rules, shared by the pods it selects.
    rules: RuleCache,
    /// Pods (local now or before) to recompile.
    dirty: BTreeSet<ObjectKey>,
}

impl PolicyModel {
    /// The model of node `node` (pods whose `spec.nodeName` is this are local).
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            stores: Stores::default(),
            selects: HashMap::new(),
            compiled: BTreeMap::new(),
            rules: RuleCache::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) {
        self.put_namespace(NamespaceView::of(ns));
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if let Some(old) = self.stores.namespaces.remove(name) {
            self.namespace_changed(Some(&old.labels), None);
        }
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        self.put_pod(PodView::of(pod));
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let key = ObjectKey::new(namespace, name);
        if let Some(old) = self.stores.pods.remove(&key) {
            if let Some(set) = self.stores.pods_by_ns.get_mut(namespace) {
                set.remove(&key);
                if set.is_empty() {
                    self.stores.pods_by_ns.remove(namespace);
                }
            }
            self.pod_changed(Some(&old), None);
        }
    }

    pub fn apply_policy(&mut self, np: &NetworkPolicy) {
        self.put_policy(PolicyView::of(np));
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        let key = ObjectKey::new(namespace, name);
        if self.stores.policies.remove(&key).is_some() {
            if let Some(set) = self.stores.policies_by_ns.get_mut(namespace) {
                set.remove(&key);
                if set.is_empty() {
                    self.stores.policies_by_ns.remove(namespace);
                }
            }
            if let Some(old) = self.selects.remove(&key) {
                self.dirty.extend(old);
            }
            self.forget_rules(&key);
        }
    }

    pub fn put_namespace(&mut self, ns: NamespaceView) {
        let old = self
            .stores
            .namespaces
            .get(&ns.name)
            .map(|o| o.labels.clone());
        if old.as_ref() == Some(&ns.labels) {
            return;
        }
        let name = ns.name.clone();
        let labels = ns.labels.clone();
        self.stores.namespaces.insert(name.clone(), ns);
        self.namespace_changed(old.as_ref(), Some(&labels));
    }

    pub fn put_pod(&mut self, pod: PodView) {
        let old = self.stores.pods.get(&pod.key).cloned();
        if old.as_ref() == Some(&pod) {
            return;
        }
        self.stores
            .pods_by_ns
            .entry(pod.key.namespace.clone())
            .or_default()
            .insert(pod.key.clone());
        self.stores.pods.insert(pod.key.clone(), pod.clone());
        self.pod_changed(old.as_ref(), Some(&pod));
    }

    pub fn put_policy(&mut self, policy: PolicyView) {
        let key = policy.key.clone();
        if self.stores.policies.get(&key) == Some(&policy) {
            return;
        }
        self.stores
            .policies_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.clone());
        let selected: BTreeSet<ObjectKey> = self
            .stores
            .pods_in(&key.namespace)
            .filter(|p| self.is_local(p) && policy.pod_selector.matches(&p.labels))
            .map(|p| p.key.clone())
            .collect();
        self.stores.policies.insert(key.clone(), policy);
        self.forget_rules(&key);
        if let Some(old) = self.selects.insert(key, selected.clone()) {
            self.dirty.extend(old);
        }
        self.dirty.extend(selected);
    }

    /// Compiles the local pods the changes since the last call affect; reports the pods
    /// whose compiled view changed or went away.
    pub fn recompute(&mut self) -> PolicyChanges {
        let mut changes = PolicyChanges::default();
        let mut memo = Memo::new();
        for key in std::mem::take(&mut self.dirty) {
            let pod = self.stores.pods.get(&key).filter(|p| self.is_local(p));
            match pod {
                Some(pod) => {
                    let new = compile_pod(&self.stores, &mut self.rules, Some(&mut memo), pod);
                    if self.compiled.get(&key) != Some(&new) {
                        self.compiled.insert(key.clone(), new);
                        changes.updated.push(key);
                    }
                }
                None => {
                    if self.compiled.remove(&key).is_some() {
                        changes.removed.push(key);
                    }
                }
            }
        }
        changes
    }

    /// Compiles every local pod from scratch, ignoring the incremental state and sharing
    /// nothing between pods (a full resync check, and the tests' reference for the
    /// incremental path).
    pub fn compile_all(&self) -> BTreeMap<ObjectKey, PodPolicy> {
        let mut rules = RuleCache::new();
        self.stores
            .pods
            .values()
            .filter(|p| self.is_local(p))
            .map(|p| {
                (
                    p.key.clone(),
                    compile_pod(&self.stores, &mut rules, None, p),
                )
            })
            .collect()
    }

    fn forget_rules(&mut self, policy: &ObjectKey) {
        for dir in [Direction::Ingress, Direction::Egress] {
            self.rules.remove(&(policy.clone(), dir));
        }
    }

    /// The compiled view of a local pod (as of the last [`Self::recompute`]).
    pub fn pod_policy(&self, key: &ObjectKey) -> Option<&PodPolicy> {
        self.compiled.get(key)
    }

    /// Every local pod's compiled view, by key.
    pub fn compiled(&self) -> &BTreeMap<ObjectKey, PodPolicy> {
        &self.compiled
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodView> {
        self.stores.pods.values()
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&PodView> {
        self.stores.pods.get(key)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceView> {
        self.stores.namespaces.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &PolicyView> {
        self.stores.policies.values()
    }

    /// A namespace's labels (none while it is unknown).
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        self.stores.namespace_labels(name)
    }

    fn is_local(&self, pod: &PodView) -> bool {
        pod.is_active() && pod.node_name.as_deref() == Some(self.node.as_str())
    }

    fn namespace_changed(&mut self, old: Option<&Labels>, new: Option<&Labels>) {
        let empty = Labels::new();
        let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        let mut affected = Vec::new();
        for policy in self.stores.policies.values() {
            let depends = [Direction::Ingress, Direction::Egress].iter().any(|&d| {
                policy.rules(d).iter().flat_map(|r| &r.peers).any(|p| {
                    matches!(p, Peer::Pods { namespaces: Some(sel), .. }
                        if sel.matches(old) != sel.matches(new))
                })
            });
            if depends {
                affected.push(policy.key.clone());
            }
        }
        for key in affected {
            self.forget_rules(&key);
            if let Some(sel) = self.selects.get(&key) {
                self.dirty.extend(sel.iter().cloned());
            }
        }
    }

    fn pod_changed(&mut self, old: Option<&PodView>, new: Option<&PodView>) {
        let key = old.or(new).map(|p| p.key.clone());
        let Some(key) = key else { return };
        let was_local = old.is_some_and(|p| self.is_local(p));
        let is_local = new.is_some_and(|p| self.is_local(p));
        if was_local || is_local {
            self.dirty.insert(key.clone());
            // Which of its namespace's policies select it now.
            let ns_policies: Vec<ObjectKey> = self
                .stores
                .policies_by_ns
                .get(&key.namespace)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            for pk in ns_policies {
                let selects = is_local
                    && new.is_some_and(|p| {
                        self.stores
                            .policies
                            .get(&pk)
                            .is_some_and(|pol| pol.pod_selector.matches(&p.labels))
                    });
                let set = self.selects.entry(pk).or_default();
                if selects {
                    set.insert(key.clone());
                } else {
                    set.remove(&key);
                }
            }
        }
        // As a peer: the policies that name it (before or after) recompile what they select.
        let mut affected = Vec::new();
        for policy in self.stores.policies.values() {
            if [old, new]
                .into_iter()
                .flatten()
                .any(|p| self.peer_depends_on(policy, p))
            {
                affected.push(policy.key.clone());
            }
        }
        for pk in affected {
            self.forget_rules(&pk);
            if let Some(sel) = self.selects.get(&pk) {
                self.dirty.extend(sel.iter().cloned());
            }
        }
    }

    /// Whether `policy`'s rules could read anything of `pod` as a peer: it is selected by a
    /// pod peer, or it is the destination of an egress rule with named ports.
    fn peer_depends_on(&self, policy: &PolicyView, pod: &PodView) -> bool {
        if !pod.is_active() {
            return false;
        }
        let ns_labels = self.stores.namespace_labels(&pod.key.namespace);
        let selected = |peer: &Peer| match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    None => pod.key.namespace == policy.key.namespace,
                    Some(sel) => sel.matches(ns_labels),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            Peer::IpBlock { .. } | Peer::Invalid => false,
        };
        let in_block = |peer: &Peer| match peer {
            Peer::IpBlock { cidr, .. } => pod.ips.iter().any(|&ip| cidr.contains_ip(ip)),
            Peer::Pods { .. } => selected(peer),
            Peer::Invalid => false,
        };
        let pod_peer = [Direction::Ingress, Direction::Egress]
            .iter()
            .any(|&d| policy.rules(d).iter().flat_map(|r| &r.peers).any(&selected));
        let named_dst = policy.egress.iter().any(|r| {
            let named = r.ports.iter().any(|p| {
                matches!(
                    p,
                    RulePort::Port {
                        port: PortMatch::Named(_),
                        ..
                    }
                )
            });
            named && (r.peers.is_empty() || r.peers.iter().any(&in_block))
        });
        pod_peer || named_dst
    }
}
