//! PURE: cluster objects -> desired data-plane state. No I/O, no kernel, no async.
//!
//! [`ClusterState`] takes the sources' watcher events, remembers which Services they touch
//! (dirty), and computes per Service the frontends kube-proxy would program
//! ([`ServiceDesired`]).
//!
//! - `state`: the stores, the watch contract (labels, service-name join), init/relist
//!   handling and the dirty set;
//! - `service`: a Service's frontends (IPs, ports, protocols, affinity);
//! - `endpoints`: the endpoints of one Service port from the Service's EndpointSlices;
//! - `topology`: kube-proxy's `CategorizeEndpoints` (cluster/local sets, terminating
//!   fallback, topology hints);
//! - `north_south`: NodePort, externalIP and LoadBalancer frontends, source ranges,
//!   `--nodeport-addresses`, the health check node port;
//! - `view`: the compact part of each object the model keeps.

mod endpoints;
pub mod maglev;
mod north_south;
mod service;
mod state;
mod topology;
mod view;

pub mod policy;

#[cfg(test)]
mod lb_algorithm_tests;
#[cfg(test)]
mod north_south_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topology_tests;

pub use north_south::{
    ExternalFrontend, FrontendKind, HealthCheck, NodePortAddresses, NodePortAddressesError, Snat,
    SourceRange, TrafficPolicy,
};
pub use state::{ClusterState, NodeInfo};

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

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
    /// Eligible for new connections (the slots), in a stable order.
    pub backends: Vec<DesiredBackend>,
    /// Every serving endpoint, sorted (a superset of `backends` unless only terminating
    /// ones are left): the UDP flows of any other backend are flushed, as kube-proxy's
    /// conntrack clean-up does. TCP flows are never flushed.
    pub serving: Vec<SocketAddr>,
    /// sessionAffinity ClientIP timeout in seconds, 0 = none.
    pub affinity_timeout_s: u32,
    /// What new flows get while `backends` is empty.
    pub no_endpoints: NoEndpoints,
}

/// What a new flow to a frontend without backends gets (kube-proxy: reject when the
/// Service has no usable endpoint anywhere; drop when it has some, but none that this
/// traffic policy allows from this node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoEndpoints {
    #[default]
    Reject,
    Drop,
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
    /// NodePort, externalIP and LoadBalancer frontends (not yet programmed: a later round
    /// adds their kernel path), sorted.
    pub external: Vec<ExternalFrontend>,
    /// The health check node port, for a LoadBalancer Service with eTP=Local.
    pub health_check: Option<HealthCheck>,
    pub skipped: Vec<Skip>,
    /// Latest `endpoints.kubernetes.io/last-change-trigger-time` of its slices (RFC 3339),
    /// for the network-programming-latency metric.
    pub last_change_trigger_time: Option<String>,
}

/// The [`Skip::reason`] labels (stable: they are metric label values).
pub mod reason {
    /// An address that does not parse, or of the wrong family.
    pub const INVALID_IP: &str = "invalid_ip";
    /// A port outside 1..=65535 (Service or EndpointSlice).
    pub const INVALID_PORT: &str = "invalid_port";
    /// SCTP, or a protocol service-lb does not know.
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    /// The same port and protocol twice in one Service.
    pub const DUPLICATE_PORT: &str = "duplicate_port";
    /// One address:port listed by several slices with different conditions or nodes.
    pub const DUPLICATE_ENDPOINT: &str = "duplicate_endpoint";
    /// A sessionAffinity ClientIP timeout outside 1..=86400 s (the default is used).
    pub const INVALID_AFFINITY_TIMEOUT: &str = "invalid_affinity_timeout";
    /// A loadBalancerSourceRanges entry that is not a CIDR (left out, as kube-proxy does).
    pub const INVALID_SOURCE_RANGE: &str = "invalid_source_range";
    /// A `service-lb.io/lb-algorithm` annotation that names no algorithm (the daemon's
    /// `--lb-algorithm` is used).
    pub const INVALID_LB_ALGORITHM: &str = "invalid_lb_algorithm";
}
