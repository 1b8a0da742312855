//! Which endpoints a Service port uses, exactly as kube-proxy's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`) decides:
//!
//! - a port uses the **cluster** set unless internal traffic is Local and the port is not
//!   reachable from outside (no nodePort, external IP or LB IP): even an eTP=Local port
//!   needs the cluster set, for pods and the node (short-circuit);
//! - it uses the **local** set when internal traffic is Local, or external traffic is Local
//!   and the port is reachable from outside;
//! - cluster set: the ready endpoints allowed by topology; when there are none, the serving
//!   AND terminating ones anywhere (KEP-1669), topology ignored;
//! - local set: the ready endpoints on this node; when none, the serving AND terminating
//!   ones on this node; topology never applies to it;
//! - topology comes from the endpoints' hints only (the EndpointSlice controller writes them
//!   for `trafficDistribution` and the topology annotation): `PreferSameNode` when every
//!   ready endpoint has a node hint and one names this node; else `PreferSameZone` when
//!   every ready endpoint has a zone hint and one names this node's zone; else none. One
//!   ready endpoint without a hint disables the filter;
//! - "has any endpoints": some endpoint anywhere is usable (ready, or serving and
//!   terminating). With none the port rejects; with some, but none in the set the traffic
//!   would use (iTP/eTP=Local, nothing on this node), it drops.

use std::sync::Arc;

/// What categorization reads of one endpoint (conditions after the API's nil rules).
#[derive(Clone, Copy, Debug)]
pub(super) struct TopologyEndpoint<'a> {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    pub zone_hints: &'a [Arc<str>],
    pub node_hints: &'a [Arc<str>],
}

/// The traffic policies of one Service port, as kube-proxy's `ServicePort` sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PortPolicy {
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (only counts when `externally_accessible`).
    pub external_local: bool,
    /// The port has a nodePort, an external IP or a VIP-mode LB IP.
    pub externally_accessible: bool,
}

impl PortPolicy {
    /// kube-proxy's `UsesClusterEndpoints`.
    pub fn uses_cluster(self) -> bool {
        !self.internal_local || self.externally_accessible
    }

    /// kube-proxy's `UsesLocalEndpoints`.
    pub fn uses_local(self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible)
    }
}

/// Where this node sits, for topology.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeTopology<'a> {
    pub node_name: Option<&'a str>,
    /// The Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<&'a str>,
}

/// The topology filter in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TopologyMode {
    None,
    PreferSameZone,
    PreferSameNode,
}

/// The result of [`categorize`]: indices into the endpoints given, in their order.
/// `None`: the port never uses that kind of endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Categorized {
    pub cluster: Option<Vec<usize>>,
    pub local: Option<Vec<usize>>,
    /// Union of both sets: every endpoint some traffic through this node may reach.
    pub all_reachable: Vec<usize>,
    /// Some endpoint anywhere in the cluster is usable.
    pub has_any: bool,
}

pub(super) fn categorize(
    endpoints: &[TopologyEndpoint<'_>],
    policy: PortPolicy,
    node: NodeTopology<'_>,
) -> Categorized {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    let indices = |keep: &dyn Fn(&TopologyEndpoint<'_>) -> bool| -> Vec<usize> {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| keep(e))
            .map(|(i, _)| i)
            .collect()
    };
    if policy.uses_cluster() {
        let mode = topology_mode(endpoints, node);
        let mut cluster = indices(&|e| e.ready && available_for_topology(e, mode, node));
        if cluster.is_empty() {
            cluster = indices(&|e| e.serving && e.terminating);
        }
        out.has_any = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if !policy.uses_local() {
        out.all_reachable = out.cluster.clone().unwrap_or_default();
        return out;
    }

    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for e in endpoints {
        if e.ready {
            out.has_any = true;
            local_ready |= e.local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_serving_terminating |= e.local;
        }
    }
    let local = if local_ready {
        indices(&|e| e.local && e.ready)
    } else if local_serving_terminating {
        indices(&|e| e.local && e.serving && e.terminating)
    } else {
        Vec::new()
    };
    let mut all: Vec<usize> = out.cluster.iter().flatten().copied().collect();
    all.extend(local.iter().copied());
    all.sort_unstable();
    all.dedup();
    out.all_reachable = all;
    out.local = Some(local);
    out
}

/// kube-proxy's `topologyModeFromHints`.
pub(super) fn topology_mode(
    endpoints: &[TopologyEndpoint<'_>],
    node: NodeTopology<'_>,
) -> TopologyMode {
    let mut any_ready = false;
    let mut all_node_hints = true;
    let mut hint_for_node = false;
    let mut all_zone_hints = true;
    let mut hint_for_zone = false;
    for e in endpoints.iter().filter(|e| e.ready) {
        any_ready = true;
        if e.node_hints.is_empty() {
            all_node_hints = false;
        } else if node
            .node_name
            .is_some_and(|n| e.node_hints.iter().any(|h| &**h == n))
        {
            hint_for_node = true;
        }
        if e.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if e
            .zone_hints
            .iter()
            .any(|h| &**h == node.zone.unwrap_or_default())
        {
            hint_for_zone = true;
        }
    }
    if !any_ready {
        TopologyMode::None
    } else if all_node_hints && hint_for_node {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && hint_for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(
    e: &TopologyEndpoint<'_>,
    mode: TopologyMode,
    node: NodeTopology<'_>,
) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => node
            .node_name
            .is_some_and(|n| e.node_hints.iter().any(|h| &**h == n)),
        TopologyMode::PreferSameZone => e
            .zone_hints
            .iter()
            .any(|h| &**h == node.zone.unwrap_or_default()),
    }
}
