//! End to end: ClusterIP load balancing by service-lb across two namespace "nodes",
//! IPv4 and IPv6, TCP and UDP (see `service_lb_tests::scenario`).

use std::path::Path;

use anyhow::Result;
use service_lb_common::{Hook, Reason};
use service_lb_tests::netns::NETNS_DIR;
use service_lb_tests::privileges::require_root;
use service_lb_tests::scenario::{clusterip_scenario, FamilyOutcome, Outcome, Spread};

/// Each backend's share of a three-backend batch must lie in this range (percent).
const SHARE_MIN: f64 = 20.0;
const SHARE_MAX: f64 = 47.0;

#[test]
fn e2e_clusterip() -> Result<()> {
    if !require_root("e2e_clusterip") {
        return Ok(());
    }
    let outcome = clusterip_scenario(&mut |step| eprintln!("{step}"))?;
    for family in &outcome.families {
        check_family(&outcome, family);
        check_port_reuse(family);
    }
    check_counters(&outcome);
    check_cleanup(&outcome);
    Ok(())
}

fn check_spread(what: &str, spread: &Spread, backends: &[String], client_side: &FamilyOutcome) {
    assert_eq!(
        spread.failures, 0,
        "{what}: {} calls failed, first: {:?}",
        spread.failures, spread.first_error
    );
    for backend in backends {
        let share = spread.percent(backend);
        assert!(
            (SHARE_MIN..=SHARE_MAX).contains(&share),
            "{what}: {backend} got {share:.1}% of the calls: {:?}",
            spread.per_backend
        );
    }
    let answered: u32 = spread.per_backend.values().sum();
    assert_eq!(
        answered, spread.asked,
        "{what}: answers from unknown servers: {:?}",
        spread.per_backend
    );
    assert_eq!(
        spread.wrong_reply_source, 0,
        "{what}: replies not from the ClusterIP ({client_side:?})"
    );
    assert_eq!(
        spread.client_address_rewritten, 0,
        "{what}: backends saw another client address than {}",
        client_side.client
    );
}

fn check_family(outcome: &Outcome, f: &FamilyOutcome) {
    let family = f.family;
    let all = &outcome.backends;
    let kept: Vec<String> = all
        .iter()
        .filter(|b| **b != outcome.removed)
        .cloned()
        .collect();
    check_spread(&format!("{family} TCP"), &f.tcp, all, f);
    check_spread(&format!("{family} UDP"), &f.udp, all, f);

    for (what, spread) in [("TCP", &f.tcp_after_removal), ("UDP", &f.udp_after_removal)] {
        let what = format!("{family} {what} after removing {}", outcome.removed);
        assert_eq!(
            spread.failures, 0,
            "{what}: first failure {:?}",
            spread.first_error
        );
        assert_eq!(
            spread.answers(&outcome.removed),
            0,
            "{what}: reached the removed backend"
        );
        for backend in &kept {
            assert!(
                spread.answers(backend) > 0,
                "{what}: {backend} never answered: {:?}",
                spread.per_backend
            );
        }
        assert_eq!(
            spread.wrong_reply_source, 0,
            "{what}: replies not from the ClusterIP"
        );
    }

    assert_eq!(
        f.held_kept.len(),
        kept.len(),
        "{family}: held connections to {kept:?}"
    );
    for held in &f.held_kept {
        assert_eq!(
            held.answered, held.pings,
            "{family}: held connection to {} stopped answering: {:?}",
            held.backend, held.first_error
        );
    }
    // kube-proxy never flushes TCP conntrack: the established connection to the endpoint
    // that left the Service keeps its translation and keeps working.
    let removed = f
        .held_removed
        .as_ref()
        .unwrap_or_else(|| panic!("{family}: no held connection to {}", outcome.removed));
    assert_eq!(
        removed.answered, removed.pings,
        "{family}: the held connection to the removed {} broke: {:?}",
        outcome.removed, removed.first_error
    );

    assert_eq!(f.direct.len(), 2, "{family}: direct checks");
    for direct in &f.direct {
        let answer = direct.answer.as_ref().unwrap_or_else(|e| {
            panic!(
                "{family} {} straight to {}: {e}",
                direct.proto, direct.target
            )
        });
        assert_eq!(
            answer.server_seen_by_client, direct.target,
            "{family} {}: the reply must show the pod's real address",
            direct.proto
        );
        assert_eq!(
            answer.client_seen_by_server.ip(),
            f.client,
            "{family} {}: client address",
            direct.proto
        );
    }
}

/// A direct call from a port whose ClusterIP flow is still tracked reaches the same
/// backend, its reply shows the pod's own address, and the backend saw another client
/// port (the rewrite that keeps the two flows' replies apart).
fn check_port_reuse(f: &FamilyOutcome) {
    let family = f.family;
    assert_eq!(f.port_reuse.len(), 2, "{family}: port reuse checks");
    for check in &f.port_reuse {
        let what = format!("{family} {} from port {}", check.proto, check.port);
        let via = check
            .via_service
            .as_ref()
            .unwrap_or_else(|e| panic!("{what} through the ClusterIP: {e}"));
        assert_eq!(
            via.client_seen_by_server.port(),
            check.port,
            "{what}: the ClusterIP flow kept the client's port"
        );
        let target = check.target.expect("target of an answered call");
        let direct = check
            .direct
            .as_ref()
            .unwrap_or_else(|e| panic!("{what} straight to {target}: {e}"));
        assert_eq!(direct.name, via.name, "{what}: another pod answered");
        assert_eq!(
            direct.server_seen_by_client, target,
            "{what}: the reply must show the pod's real address"
        );
        assert_eq!(
            direct.client_seen_by_server.ip(),
            f.client,
            "{what}: client address"
        );
        assert_ne!(
            direct.client_seen_by_server.port(),
            check.port,
            "{what}: the direct flow shares the tracked ClusterIP flow's reply tuple"
        );
    }
}

fn check_counters(outcome: &Outcome) {
    let node1 = outcome
        .counters
        .iter()
        .find(|c| c.node == "n1")
        .expect("counters of node n1");
    let (mut tcp_calls, mut all_calls) = (0u64, 0u64);
    for f in &outcome.families {
        tcp_calls += u64::from(f.tcp.asked + f.tcp_after_removal.asked);
        all_calls += u64::from(
            f.tcp.asked + f.udp.asked + f.tcp_after_removal.asked + f.udp_after_removal.asked,
        );
    }
    let new_flows = node1.packets(Hook::FromPod, Reason::DnatNewFlow);
    let established = node1.packets(Hook::FromPod, Reason::DnatEstablished);
    // Every TCP connection is a new flow (a client port in TIME_WAIT is not reused); a UDP
    // query from a reused client port may ride the flow of an earlier query.
    assert!(
        new_flows >= tcp_calls,
        "node n1 from_pod: {new_flows} new flows for {tcp_calls} TCP connections to ClusterIPs"
    );
    assert!(
        new_flows + established >= all_calls,
        "node n1 from_pod: {new_flows} new + {established} established translations for {all_calls} calls"
    );
    assert!(
        established > 0,
        "no packet of an established flow was translated"
    );
    let replies = node1.packets_any_hook(Reason::RevNatReply);
    assert!(
        replies >= all_calls,
        "node n1 reverse-NATed {replies} replies for {all_calls} answered calls"
    );
    for node in &outcome.counters {
        for reason in [
            Reason::DropMalformed,
            Reason::DropNatFailed,
            Reason::DropCtCreate,
            Reason::DropSlotMissing,
        ] {
            assert_eq!(
                node.packets_any_hook(reason),
                0,
                "node {}: {}",
                node.node,
                reason.name()
            );
        }
    }
}

fn check_cleanup(outcome: &Outcome) {
    assert!(!outcome.namespaces.is_empty());
    for ns in &outcome.namespaces {
        assert!(
            !Path::new(NETNS_DIR).join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
    assert_eq!(outcome.bpffs_dirs.len(), 2);
    for dir in &outcome.bpffs_dirs {
        assert!(!dir.exists(), "bpffs folder {} left behind", dir.display());
    }
    for (node, attached) in &outcome.attachments {
        // from_pod + to_pod on two pod veths, from_net + to_net on the underlay.
        assert_eq!(*attached, 6, "node {node}: attachments");
    }
}
