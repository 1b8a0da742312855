//! PURE: cluster objects -> desired data-plane state. No I/O, no kernel, no async.
//! (helper "model" implements this)
//!
//! [`ClusterState`] takes the sources' watcher events, remembers which Services they touch
//! (dirty), and computes per Service the frontends kube-proxy would program
//! ([`ServiceDesired`]).

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher;

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Which clients a frontend entry serves (see `service_lb_common::service::SCOPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every client (the only scope ClusterIP frontends use today).
    External,
    /// In-cluster clients, when internal and external traffic policies differ.
    Internal,
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredBackend {
    pub addr: SocketAddr,
    /// Serving and terminating (used only because no endpoint is ready, KEP-1669).
    pub terminating: bool,
    /// The endpoint's `nodeName` is this node.
    pub local: bool,
}

/// One frontend (address, port, protocol, scope) and its backends, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredFrontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
    /// The Service port's name ("" when unnamed), for logs and inspect.
    pub port_name: String,
    pub backends: Vec<DesiredBackend>,
    /// sessionAffinity ClientIP timeout in seconds, 0 = none.
    pub affinity_timeout_s: u32,
}

/// Something of a Service or its slices that was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// `Service ns/name port 'http'`, `EndpointSlice ns/web-abc endpoint 3`, ...
    pub object: String,
    /// Short stable label for the metric: `invalid_ip`, `invalid_port`, `unsupported_protocol`,
    /// `duplicate_endpoint`, ...
    pub reason: &'static str,
    pub detail: String,
}

/// What the data plane should hold for one Service. `frontends` is empty when the Service is
/// gone, headless, ExternalName or handed to another proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDesired {
    pub name: ServiceName,
    pub frontends: Vec<DesiredFrontend>,
    pub skipped: Vec<Skip>,
    /// Latest `endpoints.kubernetes.io/last-change-trigger-time` of its slices (RFC 3339),
    /// for the network-programming-latency metric.
    pub last_change_trigger_time: Option<String>,
}

/// The objects the sources have reported, and what changed since the last `take_dirty`.
#[derive(Debug, Default)]
pub struct ClusterState {
    _private: (),
}

impl ClusterState {
    /// `node_name`: this node (for `local` backends and the Node object).
    pub fn new(_node_name: Option<String>) -> Self {
        Self::default()
    }
    pub fn apply_service(&mut self, _event: watcher::Event<Service>) {}
    pub fn apply_endpoint_slice(&mut self, _event: watcher::Event<EndpointSlice>) {}
    pub fn apply_node(&mut self, _event: watcher::Event<Node>) {}
    /// Every kind has completed its first list (`InitDone`): deletions are now safe.
    pub fn synced(&self) -> bool {
        false
    }
    /// Services touched since the last call (created, changed, deleted, or one of their
    /// slices changed).
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceName> {
        BTreeSet::new()
    }
    /// Every Service currently known (for a full sync).
    pub fn service_names(&self) -> Vec<ServiceName> {
        Vec::new()
    }
    /// kube-proxy's semantics for one Service, computed from the current objects.
    pub fn desired(&self, name: &ServiceName) -> ServiceDesired {
        ServiceDesired {
            name: name.clone(),
            frontends: Vec::new(),
            skipped: Vec::new(),
            last_change_trigger_time: None,
        }
    }
}
