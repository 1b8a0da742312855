//! kube-proxy's `TestCategorizeEndpoints` (pkg/proxy/topology_test.go), case by case: same
//! inputs, same expected sets, written from upstream's expectations. Addresses are kept as
//! labels ("10.1.2.3:80" there is `3` here; every endpoint has its own label). Upstream
//! defaults apply: an endpoint is not serving and not terminating unless the case says so.
//! The node-hint cases (PreferSameNode) follow `topologyModeFromHints` in topology.go.

use std::sync::Arc;

use proptest::prelude::*;
use rstest::rstest;

use super::topology::{
    categorize, topology_mode, NodeTopology, PortPolicy, TopologyEndpoint, TopologyMode,
};

const NODE: &str = "test-node";

/// One endpoint of a case: label, zone hints, node hints, ready, serving, terminating, local.
#[derive(Clone, Debug)]
struct Ep {
    label: u32,
    zones: Vec<Arc<str>>,
    nodes: Vec<Arc<str>>,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

fn ep(label: u32) -> Ep {
    Ep {
        label,
        zones: vec![],
        nodes: vec![],
        ready: false,
        serving: false,
        terminating: false,
        local: false,
    }
}

impl Ep {
    fn zones(mut self, zones: &[&str]) -> Self {
        self.zones = zones.iter().map(|z| Arc::from(*z)).collect();
        self
    }
    fn nodes(mut self, nodes: &[&str]) -> Self {
        self.nodes = nodes.iter().map(|n| Arc::from(*n)).collect();
        self
    }
    fn ready(mut self) -> Self {
        self.ready = true;
        self
    }
    fn serving_terminating(mut self) -> Self {
        self.serving = true;
        self.terminating = true;
        self
    }
    fn local(mut self) -> Self {
        self.local = true;
        self
    }
}

/// Upstream's `BaseServicePortInfo` flags: iTP=Local, eTP=Local, and a nodePort (the only
/// way the cases make a port externally accessible).
fn policy(internal_local: bool, external_local: bool, node_port: bool) -> PortPolicy {
    PortPolicy {
        internal_local,
        external_local,
        externally_accessible: node_port,
    }
}

const CLUSTER: PortPolicy = PortPolicy {
    internal_local: false,
    external_local: false,
    externally_accessible: false,
};

/// Runs a case: `None` = the set is not used (upstream's nil).
fn check(
    zone: Option<&str>,
    svc: PortPolicy,
    eps: &[Ep],
    cluster: Option<&[u32]>,
    local: Option<&[u32]>,
    all: Option<&[u32]>,
    only_remote: bool,
) {
    let views: Vec<TopologyEndpoint<'_>> = eps
        .iter()
        .map(|e| TopologyEndpoint {
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            local: e.local,
            zone_hints: &e.zones,
            node_hints: &e.nodes,
        })
        .collect();
    let got = categorize(
        &views,
        svc,
        NodeTopology {
            node_name: Some(NODE),
            zone,
        },
    );
    let labels = |set: &[usize]| -> Vec<u32> {
        let mut l: Vec<u32> = set.iter().map(|&i| eps[i].label).collect();
        l.sort_unstable();
        l
    };
    let sorted = |set: &[u32]| -> Vec<u32> {
        let mut s = set.to_vec();
        s.sort_unstable();
        s
    };
    // Upstream compares nil expectations strictly and empty sets loosely (nil == empty).
    match cluster {
        None => assert_eq!(got.cluster, None, "cluster endpoints not used"),
        Some(want) => assert_eq!(
            labels(got.cluster.as_deref().unwrap_or_default()),
            sorted(want),
            "cluster"
        ),
    }
    match local {
        None => assert_eq!(got.local, None, "local endpoints not used"),
        Some(want) => assert_eq!(
            labels(got.local.as_deref().unwrap_or_default()),
            sorted(want),
            "local"
        ),
    }
    let want_all: Vec<u32> = match (cluster, local) {
        (Some(c), None) => sorted(c),
        (None, Some(l)) => sorted(l),
        _ => sorted(all.expect("the case gives allEndpoints")),
    };
    assert_eq!(labels(&got.all_reachable), want_all, "all reachable");
    assert_eq!(
        got.has_any,
        !want_all.is_empty() || only_remote,
        "has any endpoints"
    );
}

fn abcd(z: [&str; 4]) -> Vec<Ep> {
    vec![
        ep(3).zones(&[z[0]]).ready(),
        ep(4).zones(&[z[1]]).ready(),
        ep(5).zones(&[z[2]]).ready(),
        ep(6).zones(&[z[3]]).ready(),
    ]
}

#[rstest]
#[case::uses_topology_when_all_endpoints_have_hints_and_one_is_for_the_zone(
    Some("zone-a"), CLUSTER, abcd(["zone-a", "zone-b", "zone-c", "zone-a"]),
    Some(&[3, 6][..]), None, None, false)]
#[case::etp_local_topology_ignored_for_local_endpoints(
    Some("zone-a"), policy(false, true, true),
    vec![ep(3).zones(&["zone-a"]).ready().local(), ep(4).zones(&["zone-b"]).ready().local(),
         ep(5).zones(&["zone-c"]).ready(), ep(6).zones(&["zone-a"]).ready()],
    Some(&[3, 6][..]), Some(&[3, 4][..]), Some(&[3, 4, 6][..]), false)]
#[case::itp_local_topology_ignored_for_local_endpoints(
    Some("zone-a"), policy(true, false, true),
    vec![ep(3).zones(&["zone-a"]).ready().local(), ep(4).zones(&["zone-b"]).ready().local(),
         ep(5).zones(&["zone-c"]).ready(), ep(6).zones(&["zone-a"]).ready()],
    Some(&[3, 6][..]), Some(&[3, 4][..]), Some(&[3, 4, 6][..]), false)]
#[case::empty_node_labels(None, CLUSTER, vec![ep(3).zones(&["zone-a"]).ready()],
    Some(&[3][..]), None, None, false)]
#[case::empty_zone_label(Some(""), CLUSTER, vec![ep(3).zones(&["zone-a"]).ready()],
    Some(&[3][..]), None, None, false)]
#[case::node_in_different_zone_no_filtering(Some("zone-b"), CLUSTER,
    vec![ep(3).zones(&["zone-a"]).ready()], Some(&[3][..]), None, None, false)]
#[case::unready_endpoint(Some("zone-a"), CLUSTER,
    vec![ep(3).zones(&["zone-a"]).ready(), ep(4).zones(&["zone-b"]).ready(),
         ep(5).zones(&["zone-c"]).ready(), ep(6).zones(&["zone-a"])],
    Some(&[3][..]), None, None, false)]
#[case::only_unready_endpoints_in_same_zone_should_not_filter(Some("zone-a"), CLUSTER,
    vec![ep(3).zones(&["zone-a"]), ep(4).zones(&["zone-b"]).ready(),
         ep(5).zones(&["zone-c"]).ready(), ep(6).zones(&["zone-a"])],
    Some(&[4, 5][..]), None, None, false)]
#[case::missing_hints_no_filtering(Some("zone-a"), CLUSTER,
    vec![ep(3).zones(&["zone-a"]).ready(), ep(4).zones(&["zone-b"]).ready(),
         ep(5).ready(), ep(6).zones(&["zone-a"]).ready()],
    Some(&[3, 4, 5, 6][..]), None, None, false)]
#[case::multiple_hints_per_endpoint(Some("zone-c"), CLUSTER,
    vec![ep(3).zones(&["zone-a", "zone-b", "zone-c"]).ready(),
         ep(4).zones(&["zone-b", "zone-c"]).ready(),
         ep(5).zones(&["zone-b", "zone-d"]).ready(), ep(6).zones(&["zone-c"]).ready()],
    Some(&[3, 4, 6][..]), None, None, false)]
#[case::conflicting_topology_and_localness_merge_all(Some("zone-a"), policy(false, true, true),
    vec![ep(0).zones(&["zone-a"]).ready().local(), ep(1).zones(&["zone-b"]).ready().local(),
         ep(2).zones(&["zone-a"]).ready(), ep(3).zones(&["zone-b"]).ready()],
    Some(&[0, 2][..]), Some(&[0, 1][..]), Some(&[0, 1, 2][..]), false)]
#[case::itp_local_with_empty_endpoints(None, policy(true, false, false), vec![],
    None, Some(&[][..]), None, false)]
#[case::itp_local_all_endpoints_remote(None, policy(true, false, false),
    vec![ep(0).ready(), ep(1).ready()], None, Some(&[][..]), None, true)]
#[case::itp_local_all_endpoints_local(None, policy(true, false, false),
    vec![ep(0).ready().local(), ep(1).ready().local()], None, Some(&[0, 1][..]), None, false)]
#[case::itp_local_some_endpoints_local(None, policy(true, false, false),
    vec![ep(0).ready().local(), ep(1).ready()], None, Some(&[0][..]), None, false)]
#[case::cluster_endpoints_not_ready(None, CLUSTER, vec![ep(0), ep(1)],
    Some(&[][..]), None, None, false)]
#[case::cluster_some_endpoints_ready(None, CLUSTER, vec![ep(0), ep(1).ready()],
    Some(&[1][..]), None, None, false)]
#[case::cluster_all_endpoints_terminating(None, CLUSTER,
    vec![ep(0).serving_terminating().local(), ep(1).serving_terminating()],
    Some(&[0, 1][..]), None, None, false)]
#[case::itp_local_etp_cluster_some_local(None, policy(true, false, true),
    vec![ep(0).ready().local(), ep(1).ready()],
    Some(&[0, 1][..]), Some(&[0][..]), Some(&[0, 1][..]), false)]
#[case::itp_cluster_etp_local_some_local(None, policy(false, true, true),
    vec![ep(0).ready().local(), ep(1).ready()],
    Some(&[0, 1][..]), Some(&[0][..]), Some(&[0, 1][..]), false)]
#[case::itp_local_etp_local_some_local(None, policy(true, true, true),
    vec![ep(0).ready().local(), ep(1).ready()],
    Some(&[0, 1][..]), Some(&[0][..]), Some(&[0, 1][..]), false)]
#[case::itp_local_etp_local_all_remote(None, policy(true, true, true),
    vec![ep(0).ready(), ep(1).ready()],
    Some(&[0, 1][..]), Some(&[][..]), Some(&[0, 1][..]), false)]
#[case::itp_local_etp_local_all_remote_and_terminating(None, policy(true, true, true),
    vec![ep(0).serving_terminating(), ep(1).serving_terminating()],
    Some(&[0, 1][..]), Some(&[][..]), Some(&[0, 1][..]), true)]
#[case::itp_cluster_etp_local_with_terminating(None, policy(false, true, true),
    vec![ep(0).ready(), {let mut e = ep(1).local(); e.serving = false; e},
         ep(2).serving_terminating().local(), ep(3).serving_terminating()],
    Some(&[0][..]), Some(&[2][..]), Some(&[0, 2][..]), false)]
#[case::etp_ignored_if_not_externally_accessible(None, policy(false, true, false),
    vec![ep(0).ready(), ep(1).ready().local()],
    Some(&[0, 1][..]), None, Some(&[0, 1][..]), false)]
#[case::no_cluster_endpoints_for_itp_local_internal_only(None, policy(true, false, false),
    vec![ep(0).ready(), ep(1).ready().local()], None, Some(&[1][..]), Some(&[1][..]), false)]
// topologyModeFromHints with node hints (PreferSameNode, on by default since 1.34).
#[case::node_hints_for_this_node_win_over_zone_hints(Some("zone-a"), CLUSTER,
    vec![ep(0).zones(&["zone-a"]).nodes(&[NODE]).ready(),
         ep(1).zones(&["zone-a"]).nodes(&["other-node"]).ready()],
    Some(&[0][..]), None, None, false)]
#[case::one_endpoint_without_node_hint_falls_back_to_zone(Some("zone-a"), CLUSTER,
    vec![ep(0).zones(&["zone-a"]).nodes(&[NODE]).ready(),
         ep(1).zones(&["zone-a"]).ready(), ep(2).zones(&["zone-b"]).ready()],
    Some(&[0, 1][..]), None, None, false)]
#[case::node_hints_for_other_nodes_only_fall_back_to_zone(Some("zone-b"), CLUSTER,
    vec![ep(0).zones(&["zone-a"]).nodes(&["n2"]).ready(),
         ep(1).zones(&["zone-b"]).nodes(&["n3"]).ready()],
    Some(&[1][..]), None, None, false)]
#[case::node_hints_with_no_ready_endpoint_for_node_falls_back_to_terminating(Some("zone-a"), CLUSTER,
    vec![ep(0).nodes(&[NODE]).serving_terminating(), ep(1).serving_terminating()],
    Some(&[0, 1][..]), None, None, false)]
fn categorize_endpoints_as_upstream(
    #[case] zone: Option<&str>,
    #[case] svc: PortPolicy,
    #[case] eps: Vec<Ep>,
    #[case] cluster: Option<&[u32]>,
    #[case] local: Option<&[u32]>,
    #[case] all: Option<&[u32]>,
    #[case] only_remote: bool,
) {
    check(zone, svc, &eps, cluster, local, all, only_remote);
}

#[test]
fn topology_mode_needs_a_ready_endpoint() {
    let eps = [ep(0).zones(&["zone-a"]).nodes(&[NODE])];
    let views: Vec<TopologyEndpoint<'_>> = eps
        .iter()
        .map(|e| TopologyEndpoint {
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            local: e.local,
            zone_hints: &e.zones,
            node_hints: &e.nodes,
        })
        .collect();
    let node = NodeTopology {
        node_name: Some(NODE),
        zone: Some("zone-a"),
    };
    assert_eq!(topology_mode(&views, node), TopologyMode::None);
}

fn arb_ep() -> impl Strategy<Value = Ep> {
    (
        0u8..4,
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(zone, node, ready, serving, terminating, local)| {
            let zones: &[&str] = match zone {
                0 => &[],
                1 => &["zone-a"],
                2 => &["zone-b"],
                _ => &["zone-a", "zone-b"],
            };
            let nodes: &[&str] = match node {
                0 => &[],
                1 => &[NODE],
                _ => &["other"],
            };
            Ep {
                label: 0,
                zones: zones.iter().map(|z| Arc::from(*z)).collect(),
                nodes: nodes.iter().map(|n| Arc::from(*n)).collect(),
                ready,
                serving,
                terminating,
                local,
            }
        })
}

proptest! {
    /// Invariants upstream's comments promise: the sets are what the policy uses; every
    /// endpoint in a set is ready, or the set is the serving-terminating fallback; the
    /// local set holds only local endpoints; all-reachable is their union; a ready endpoint
    /// anywhere means the cluster set is never empty; has-any is exactly "some endpoint is
    /// ready or serving+terminating" whenever a set could hold it.
    #[test]
    fn categorization_invariants(
        eps in proptest::collection::vec(arb_ep(), 0..8),
        internal_local: bool, external_local: bool, accessible: bool,
        zone in prop_oneof![Just(None), Just(Some("zone-a")), Just(Some("zone-b"))],
    ) {
        let svc = PortPolicy { internal_local, external_local, externally_accessible: accessible };
        let views: Vec<TopologyEndpoint<'_>> = eps.iter().map(|e| TopologyEndpoint {
            ready: e.ready, serving: e.serving, terminating: e.terminating, local: e.local,
            zone_hints: &e.zones, node_hints: &e.nodes,
        }).collect();
        let got = categorize(&views, svc, NodeTopology { node_name: Some(NODE), zone });
        let usable = |e: &Ep| e.ready || (e.serving && e.terminating);
        if eps.is_empty() {
            prop_assert!(!got.has_any);
            return Ok(());
        }
        prop_assert_eq!(got.cluster.is_some(), svc.uses_cluster());
        prop_assert_eq!(got.local.is_some(), svc.uses_local());
        for set in [&got.cluster, &got.local].into_iter().flatten() {
            let all_ready = set.iter().all(|&i| eps[i].ready);
            let all_fallback = set.iter().all(|&i| eps[i].serving && eps[i].terminating);
            prop_assert!(all_ready || all_fallback);
        }
        if let Some(local) = &got.local {
            prop_assert!(local.iter().all(|&i| eps[i].local));
        }
        if let Some(cluster) = &got.cluster {
            if eps.iter().any(|e| e.ready) {
                prop_assert!(!cluster.is_empty());
                prop_assert!(cluster.iter().all(|&i| eps[i].ready));
            }
        }
        let mut union: Vec<usize> = got.cluster.iter().chain(got.local.iter()).flatten().copied().collect();
        union.sort_unstable();
        union.dedup();
        prop_assert_eq!(&got.all_reachable, &union);
        prop_assert_eq!(got.has_any, eps.iter().any(usable));
    }
}
