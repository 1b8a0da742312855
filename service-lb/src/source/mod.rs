//! Where cluster state comes from: the Kubernetes API (`kube`) or a folder of manifests
//! (`manifests`). Both speak the same stream: [`SourceEvent`]s on a channel, with kube's
//! watcher semantics per kind:
//!
//! - a (re)list is `Init`, then one `InitApply` per object, then `InitDone` (objects not in
//!   the new list are gone); a relist after a dropped watch or a 410 Gone looks the same.
//!   Lists of different kinds may interleave, and an object may come twice in one list
//!   (the manifests folder streams file by file): the last one counts;
//! - afterwards `Apply` (created or changed) and `Delete`.
//!
//! A source never sends `Delete` for objects it merely has not seen yet: until a kind's first
//! `InitDone` nothing of that kind may be removed from the data plane.
//!
//! Objects travel as `Arc`s: a source that keeps them (the manifests folder) shares them
//! with the model instead of copying them.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
    networking::v1::ServiceCIDR,
};
use kube::runtime::watcher;

pub mod kube_api;
pub mod manifests;
pub mod strip;

/// Label that hands a Service or EndpointSlice to another proxy (kube-proxy skips it).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label kube-proxy skips: headless Services' EndpointSlices.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label that joins an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One thing a source saw.
#[derive(Debug)]
pub enum SourceEvent {
    Service(Box<watcher::Event<Arc<Service>>>),
    EndpointSlice(Box<watcher::Event<Arc<EndpointSlice>>>),
    /// This node only (the one named by `--node-name`).
    Node(Box<watcher::Event<Arc<Node>>>),
    /// Input that could not be used at all (a file that does not parse, an object of a
    /// known kind that does not deserialize). The source keeps the last good objects of that
    /// origin; the daemon logs a warning and counts it under `reason`.
    Rejected(Rejection),
    /// `networking.k8s.io/v1` ServiceCIDR (cluster-scoped): ranges ClusterIPs come from.
    ServiceCidr(Box<watcher::Event<Arc<ServiceCIDR>>>),
    /// Pods of every namespace (NetworkPolicy), stripped to what the policy model reads
    /// ([`strip::pod`]).
    Pod(Box<watcher::Event<Arc<Pod>>>),
    /// Namespaces (their labels, for namespaceSelectors), stripped ([`strip::namespace`]).
    Namespace(Box<watcher::Event<Arc<Namespace>>>),
    /// `networking.k8s.io/v1` NetworkPolicies, stripped ([`strip::network_policy`]).
    NetworkPolicy(Box<watcher::Event<Arc<NetworkPolicy>>>),
}

/// Why some input was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Where it came from: `file.yaml:12` or `EndpointSlice default/web-abc`.
    pub origin: String,
    /// Short stable label for the metric (`parse_error`, `invalid_object`, ...).
    pub reason: &'static str,
    /// Human-readable detail for the log.
    pub detail: String,
}

/// The same event with its object behind an `Arc`.
pub fn shared<K>(event: watcher::Event<K>) -> watcher::Event<Arc<K>> {
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(Arc::new(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(o) => watcher::Event::Apply(Arc::new(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(Arc::new(o)),
    }
}
