//! The object stores fed by watcher events, kube-proxy's watch contract, and the dirty set.
//!
//! - Services and EndpointSlices labelled `service.kubernetes.io/service-proxy-name` or
//!   `service.kubernetes.io/headless` are not stored (an object
//!   that gains such a label is treated as deleted). EndpointSlices without a
//!   `kubernetes.io/service-name` label belong to no Service and are not stored either.
//! - A (re)list (`Init`, `InitApply`..., `InitDone`) is buffered and replaces the kind's whole
//!   set at `InitDone`; until then the previous objects keep serving. Objects not relisted
//!   are removed then, and only Services whose objects differ are marked dirty.
//! - A missing `metadata.namespace` means `default` (as `kubectl apply` does).
//! - `synced()` needs Services and EndpointSlices to have completed a list. Nodes are not
//!   required: a manifests folder may hold no Node, and the Node is only used for
//!   information (addresses, zone); `local` backends come from `--node-name` alone.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::watcher;
use tracing::debug;

use super::{
    north_south::NodePortAddresses,
    service::{self, NodeContext},
    view::{NodeNames, ServiceView, SliceView},
    ServiceDesired, ServiceName,
};
use crate::source::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

/// Namespace of an object that names none.
const DEFAULT_NAMESPACE: &str = "default";
/// Label of a Node's topology zone.
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// `namespace/name` of an EndpointSlice.
type SliceId = (String, String);

/// A stored EndpointSlice (what the model reads of it) and the Service it belongs to
/// (from its label).
#[derive(Clone, Debug, PartialEq)]
struct StoredSlice {
    service: ServiceName,
    slice: SliceView,
}

/// What this node's Node object says that service-lb may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `status.addresses` as (type, address), in the object's order.
    pub addresses: Vec<(String, String)>,
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// One kind's list in progress (between `Init` and `InitDone`).
#[derive(Debug)]
struct Relist<K> {
    objects: Vec<K>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
        }
    }
}

/// The objects the sources have reported, and what changed since the last `take_dirty`.
#[derive(Debug, Default)]
pub struct ClusterState {
    node_name: Option<String>,
    services: BTreeMap<ServiceName, ServiceView>,
    slices: BTreeMap<SliceId, StoredSlice>,
    /// Node names shared by the stored endpoints.
    node_names: NodeNames,
    /// Slice names of each Service (same namespace), sorted by name.
    slices_by_service: BTreeMap<ServiceName, BTreeSet<String>>,
    node: Option<Node>,
    service_relist: Option<Relist<(ServiceName, ServiceView)>>,
    slice_relist: Option<Relist<(SliceId, StoredSlice)>>,
    node_relist: Option<Relist<Node>>,
    services_synced: bool,
    slices_synced: bool,
    nodes_synced: bool,
    dirty: BTreeSet<ServiceName>,
    /// `--nodeport-addresses`.
    nodeport: NodePortAddresses,
    /// Addresses of this node's external interfaces (besides the Node object's).
    interface_addresses: Vec<IpAddr>,
    /// `--lb-algorithm`: the north-south frontends' default (`maglev`).
    lb_algorithm: super::maglev::LbAlgorithm,
}

impl ClusterState {
    /// `node_name`: this node (for `local` backends and the Node object).
    pub fn new(node_name: Option<String>) -> Self {
        Self {
            node_name,
            ..Self::default()
        }
    }

    /// Takes a Service event (the object owned or shared: only what the model reads is
    /// kept).
    pub fn apply_service<S: Borrow<Service>>(&mut self, event: watcher::Event<S>) {
        match event {
            watcher::Event::Apply(svc) => self.put_service(svc.borrow()),
            watcher::Event::Delete(svc) => {
                if let Some(name) = service_name(&svc.borrow().metadata) {
                    self.set_service(name, None);
                }
            }
            watcher::Event::Init => self.service_relist = Some(Relist::default()),
            watcher::Event::InitApply(svc) => {
                // Kept as a view right away: a relist of a big cluster never holds the
                // whole objects.
                if let Some(entry) = stored_service(svc.borrow()) {
                    self.service_relist
                        .get_or_insert_with(Relist::default)
                        .objects
                        .push(entry);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.service_relist.take().unwrap_or_default().objects;
                for (name, svc) in relisted(&self.services, listed) {
                    self.set_service(name, svc);
                }
                self.services_synced = true;
            }
        }
    }

    /// Takes an EndpointSlice event (the object owned or shared).
    pub fn apply_endpoint_slice<S: Borrow<EndpointSlice>>(&mut self, event: watcher::Event<S>) {
        match event {
            watcher::Event::Apply(slice) => {
                let slice = slice.borrow();
                if let Some(id) = object_id(&slice.metadata) {
                    let stored = stored_slice(slice, &mut self.node_names);
                    self.set_slice(id, stored);
                }
            }
            watcher::Event::Delete(slice) => {
                if let Some(id) = object_id(&slice.borrow().metadata) {
                    self.set_slice(id, None);
                }
            }
            watcher::Event::Init => self.slice_relist = Some(Relist::default()),
            watcher::Event::InitApply(slice) => {
                let slice = slice.borrow();
                let Some(id) = object_id(&slice.metadata) else {
                    return;
                };
                if let Some(stored) = stored_slice(slice, &mut self.node_names) {
                    self.slice_relist
                        .get_or_insert_with(Relist::default)
                        .objects
                        .push((id, stored));
                }
            }
            watcher::Event::InitDone => {
                let listed = self.slice_relist.take().unwrap_or_default().objects;
                for (id, stored) in relisted(&self.slices, listed) {
                    self.set_slice(id, stored);
                }
                self.slices_synced = true;
            }
        }
    }

    /// `--lb-algorithm` (every Service is recomputed).
    pub fn set_lb_algorithm(&mut self, algorithm: super::maglev::LbAlgorithm) {
        if self.lb_algorithm != algorithm {
            self.lb_algorithm = algorithm;
            self.all_dirty();
        }
    }

    /// `--nodeport-addresses` (every Service is recomputed).
    pub fn set_nodeport_addresses(&mut self, nodeport: NodePortAddresses) {
        if self.nodeport != nodeport {
            self.nodeport = nodeport;
            self.all_dirty();
        }
    }

    /// The addresses of this node's external interfaces, which accept NodePort traffic
    /// as the Node object's addresses do (every Service is recomputed on a change).
    pub fn set_interface_addresses(&mut self, mut addresses: Vec<IpAddr>) {
        addresses.sort_unstable();
        addresses.dedup();
        if self.interface_addresses != addresses {
            self.interface_addresses = addresses;
            self.all_dirty();
        }
    }

    /// This node's addresses: the Node object's InternalIP and ExternalIP ones and the
    /// external interfaces', sorted, once each.
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .node()
            .into_iter()
            .flat_map(|n| n.addresses)
            .filter(|(kind, _)| kind == "InternalIP" || kind == "ExternalIP")
            .filter_map(|(_, text)| text.trim().parse().ok())
            .chain(self.interface_addresses.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The node addresses that accept NodePort traffic (`--nodeport-addresses` applied),
    /// sorted.
    pub fn nodeport_addresses(&self) -> Vec<IpAddr> {
        self.nodeport.select(&self.node_addresses())
    }

    fn all_dirty(&mut self) {
        self.dirty.extend(self.services.keys().cloned());
    }

    /// Keeps this node's object; other nodes are ignored. A change of what the model reads
    /// of it (addresses, zone) recomputes every Service.
    pub fn apply_node<S: Borrow<Node>>(&mut self, event: watcher::Event<S>) {
        let before = self.node();
        self.apply_node_event(event);
        if self.node() != before {
            self.all_dirty();
        }
    }

    fn apply_node_event<S: Borrow<Node>>(&mut self, event: watcher::Event<S>) {
        match event {
            watcher::Event::Apply(node) => {
                if self.is_this_node(node.borrow()) {
                    self.node = Some(node.borrow().clone());
                }
            }
            watcher::Event::Delete(node) => {
                if self.is_this_node(node.borrow()) {
                    self.node = None;
                }
            }
            watcher::Event::Init => self.node_relist = Some(Relist::default()),
            watcher::Event::InitApply(node) => {
                if self.is_this_node(node.borrow()) {
                    self.node_relist
                        .get_or_insert_with(Relist::default)
                        .objects
                        .push(node.borrow().clone());
                }
            }
            watcher::Event::InitDone => {
                let listed = self.node_relist.take().unwrap_or_default().objects;
                self.node = listed.into_iter().next();
                self.nodes_synced = true;
            }
        }
    }

    /// Services and EndpointSlices have completed their first list (`InitDone`): deletions
    /// are now safe. Nodes are not waited for (see the module documentation).
    pub fn synced(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    /// This node's Node object has been listed at least once.
    pub fn nodes_synced(&self) -> bool {
        self.nodes_synced
    }

    /// Services touched since the last call (created, changed, deleted, or one of their
    /// slices changed).
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceName> {
        std::mem::take(&mut self.dirty)
    }

    /// Every Service currently known (for a full sync).
    pub fn service_names(&self) -> Vec<ServiceName> {
        self.services.keys().cloned().collect()
    }

    /// How many Services and EndpointSlices are stored (after the watch contract's filter).
    pub fn object_counts(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// kube-proxy's semantics for one Service, computed from the current objects.
    pub fn desired(&self, name: &ServiceName) -> ServiceDesired {
        let slices: Vec<&SliceView> = self
            .slices_by_service
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|slice| {
                self.slices
                    .get(&(name.namespace.clone(), slice.clone()))
                    .map(|s| &s.slice)
            })
            .collect();
        let node = self.node();
        let addresses = self.node_addresses();
        service::desired(
            name,
            self.services.get(name),
            &slices,
            NodeContext {
                node_name: self.node_name.as_deref(),
                zone: node.as_ref().and_then(|n| n.zone.as_deref()),
                addresses: &addresses,
                nodeport: &self.nodeport,
                lb_algorithm: self.lb_algorithm,
            },
        )
    }

    /// This node's name, as given at start.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// What this node's Node object says, once one was seen.
    pub fn node(&self) -> Option<NodeInfo> {
        let node = self.node.as_ref()?;
        Some(NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .map(|a| (a.type_.clone(), a.address.clone()))
                .collect(),
            zone: label(&node.metadata, LABEL_ZONE).map(str::to_string),
        })
    }

    fn is_this_node(&self, node: &Node) -> bool {
        self.node_name.is_some() && node.metadata.name == self.node_name
    }

    fn put_service(&mut self, svc: &Service) {
        let Some(name) = service_name(&svc.metadata) else {
            debug!("ignoring a Service without a name");
            return;
        };
        let view = wanted_service(svc).then(|| ServiceView::of_service(svc));
        self.set_service(name, view);
    }

    /// Stores (or with `None` forgets) a Service; dirty when it differs from before.
    fn set_service(&mut self, name: ServiceName, svc: Option<ServiceView>) {
        let changed = match svc {
            Some(svc) => {
                self.services.get(&name) != Some(&svc) && {
                    self.services.insert(name.clone(), svc);
                    true
                }
            }
            None => self.services.remove(&name).is_some(),
        };
        if changed {
            self.dirty.insert(name);
        }
    }

    /// Stores (or with `None` forgets) a slice; its Service (old and new, on a label change)
    /// is dirty when the slice differs from before.
    fn set_slice(&mut self, id: SliceId, stored: Option<StoredSlice>) {
        let old = self.slices.get(&id);
        if old == stored.as_ref() {
            return;
        }
        if let Some(old) = old {
            let service = old.service.clone();
            if let Some(names) = self.slices_by_service.get_mut(&service) {
                names.remove(&id.1);
                if names.is_empty() {
                    self.slices_by_service.remove(&service);
                }
            }
            self.dirty.insert(service);
        }
        match stored {
            Some(stored) => {
                self.slices_by_service
                    .entry(stored.service.clone())
                    .or_default()
                    .insert(id.1.clone());
                self.dirty.insert(stored.service.clone());
                self.slices.insert(id, stored);
            }
            None => {
                self.slices.remove(&id);
            }
        }
    }
}

/// What a completed relist sets: `None` for every stored key the list lacks, then each
/// listed entry (the last of a key that came twice).
fn relisted<K: Ord + Clone, S, V>(
    stored: &BTreeMap<K, S>,
    listed: Vec<(K, V)>,
) -> Vec<(K, Option<V>)> {
    let listed: BTreeMap<K, V> = listed.into_iter().collect();
    let mut changes: Vec<(K, Option<V>)> = stored
        .keys()
        .filter(|k| !listed.contains_key(*k))
        .map(|k| (k.clone(), None))
        .collect();
    changes.extend(listed.into_iter().map(|(k, v)| (k, Some(v))));
    changes
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn namespace(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

fn object_id(meta: &ObjectMeta) -> Option<SliceId> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    Some((namespace(meta), name))
}

fn service_name(meta: &ObjectMeta) -> Option<ServiceName> {
    let (namespace, name) = object_id(meta)?;
    Some(ServiceName { namespace, name })
}

/// kube-proxy's watch contract for Services: its informers list Services and
/// EndpointSlices with one label selector, so `service.kubernetes.io/headless` excludes a
/// Service as well as a slice.
fn wanted_service(svc: &Service) -> bool {
    label(&svc.metadata, LABEL_SERVICE_PROXY_NAME).is_none()
        && label(&svc.metadata, LABEL_HEADLESS).is_none()
}

/// A listed Service as stored (`None`: nameless, or not ours by the watch contract).
fn stored_service(svc: &Service) -> Option<(ServiceName, ServiceView)> {
    let name = service_name(&svc.metadata)?;
    wanted_service(svc).then(|| (name, ServiceView::of_service(svc)))
}

/// kube-proxy's watch contract for EndpointSlices, and the join to a Service.
fn stored_slice(slice: &EndpointSlice, nodes: &mut NodeNames) -> Option<StoredSlice> {
    let meta = &slice.metadata;
    if label(meta, LABEL_SERVICE_PROXY_NAME).is_some() || label(meta, LABEL_HEADLESS).is_some() {
        return None;
    }
    let service = label(meta, LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    let service = ServiceName {
        namespace: namespace(meta),
        name: service.to_string(),
    };
    let slice = SliceView::of(slice, &service.namespace, nodes);
    Some(StoredSlice { service, slice })
}
