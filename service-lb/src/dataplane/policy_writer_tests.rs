//! `PolicyWriter` on the fake policy maps: what it programs (read back the way the kernel
//! looks it up), the make-before-break order (every intermediate state of an update
//! allows what both the old and the new policy allow), port-set interning, resync and
//! recovery after a failed write.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};
use service_lb_common::policy::{
    POL_DIR_EGRESS, POL_DIR_INGRESS, POL_ISOLATED_EGRESS, POL_ISOLATED_INGRESS,
};

use super::{
    policy_maps::{FakePolicyMaps, PeerKey, PolicyOp, PortKey},
    policy_writer::PolicyWriter,
};
use crate::model::policy::{sink::PolicySink, PolicyModel, Prefix, Proto};

const NODE: &str = "n1";

fn ns(name: &str) -> Namespace {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ns": name}},
    }))
    .expect("namespace")
}

fn pod(ns: &str, name: &str, node: &str, v4: &str, v6: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
        ]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": v4}, {"ip": v6}]},
    }))
    .expect("pod")
}

fn netpol(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("policy")
}

/// x/a, x/b local; y/c remote.
fn model() -> PolicyModel {
    let mut m = PolicyModel::new(NODE);
    m.apply_namespace(&ns("x"));
    m.apply_namespace(&ns("y"));
    m.apply_pod(&pod("x", "a", NODE, "198.18.1.10", "fd00:18:0:1::10"));
    m.apply_pod(&pod("x", "b", NODE, "198.18.1.11", "fd00:18:0:1::11"));
    m.apply_pod(&pod("y", "c", "n2", "198.18.2.12", "fd00:18:0:2::12"));
    m
}

fn addrs() -> Vec<IpAddr> {
    [
        "198.18.1.10",
        "198.18.1.11",
        "198.18.2.12",
        "198.18.2.99",
        "198.19.200.5",
        "fd00:18:0:1::10",
        "fd00:18:0:1::11",
        "fd00:18:0:2::12",
        "fd00:c8::5",
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect()
}

const PORTS: [u16; 5] = [80, 81, 1000, 1005, 1011];

/// The kernel's decision for a new flow, computed from the fake maps the way the
/// programs look them up (switch, pod hash, longest peer prefix, port block).
fn fake_allowed(f: &FakePolicyMaps, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
    if !f.enabled {
        return true;
    }
    let egress = f.pods.get(&src).is_none_or(|p| {
        p.flags & POL_ISOLATED_EGRESS == 0 || check(f, p.pod_id, POL_DIR_EGRESS, dst, proto, port)
    });
    let ingress = f.pods.get(&dst).is_none_or(|p| {
        p.flags & POL_ISOLATED_INGRESS == 0 || check(f, p.pod_id, POL_DIR_INGRESS, src, proto, port)
    });
    egress && ingress
}

fn check(f: &FakePolicyMaps, pod_id: u32, dir: u8, peer: IpAddr, proto: Proto, port: u16) -> bool {
    let width = if peer.is_ipv4() { 32 } else { 128 };
    let Some(set_id) = (0..=width).rev().find_map(|len| {
        f.peers.get(&PeerKey {
            pod_id,
            dir,
            prefix: Prefix::new(peer, len),
        })
    }) else {
        return false;
    };
    (0..=16u8).rev().any(|len| {
        let first = (u32::from(port) >> (16 - u32::from(len)) << (16 - u32::from(len))) as u16;
        f.ports.contains(&PortKey {
            set_id: *set_id,
            proto: proto.number(),
            first,
            len,
        })
    })
}

/// Every (src, dst, proto, port) of the grid with its decision.
fn grid(f: &FakePolicyMaps) -> Vec<(IpAddr, IpAddr, Proto, u16, bool)> {
    let mut out = Vec::new();
    for src in addrs() {
        for dst in addrs() {
            if src == dst || src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for proto in [Proto::Tcp, Proto::Udp] {
                for port in PORTS {
                    out.push((
                        src,
                        dst,
                        proto,
                        port,
                        fake_allowed(f, src, dst, proto, port),
                    ));
                }
            }
        }
    }
    out
}

fn allowed(f: &FakePolicyMaps, src: &str, dst: &str, proto: Proto, port: u16) -> bool {
    fake_allowed(
        f,
        src.parse().expect("src"),
        dst.parse().expect("dst"),
        proto,
        port,
    )
}

fn sync(m: &mut PolicyModel, w: &mut PolicyWriter<FakePolicyMaps>) {
    let changes = m.recompute();
    w.apply(m, &changes).expect("apply");
}

fn allow_b_80() -> NetworkPolicy {
    netpol(
        "x",
        "allow-b",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                         "ports": [{"port": 80}]}],
        }),
    )
}

#[test]
fn programs_what_the_spec_allows_and_only_isolated_pods() {
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps::default());
    sync(&mut m, &mut w);
    // No policy: nothing programmed, the switch off.
    assert!(w.store().pods.is_empty() && w.store().peers.is_empty());
    assert!(!w.store().enabled);

    m.apply_policy(&allow_b_80());
    sync(&mut m, &mut w);
    let f = w.store();
    assert!(f.enabled);
    // Only x/a (both addresses) is in the pod hash.
    let pods: Vec<String> = f.pods.keys().map(|ip| ip.to_string()).collect();
    assert_eq!(pods, ["198.18.1.10", "fd00:18:0:1::10"]);
    assert!(allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 80));
    assert!(allowed(
        f,
        "fd00:18:0:1::11",
        "fd00:18:0:1::10",
        Proto::Tcp,
        80
    ));
    assert!(!allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 81));
    assert!(!allowed(f, "198.18.1.11", "198.18.1.10", Proto::Udp, 80));
    assert!(!allowed(f, "198.18.2.12", "198.18.1.10", Proto::Tcp, 80));
    assert!(!allowed(f, "198.19.200.5", "198.18.1.10", Proto::Tcp, 80));
    // Not isolated: x/b admits everything.
    assert!(allowed(f, "198.18.2.12", "198.18.1.11", Proto::Udp, 1005));
}

#[test]
fn the_programmed_maps_agree_with_the_models_lookup_tables() {
    use crate::model::policy::lookup::LookupTables;
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps::default());
    for p in [
        allow_b_80(),
        netpol(
            "x",
            "b-egress",
            json!({
                "podSelector": {"matchLabels": {"pod": "b"}},
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.2.0/24"]}}],
                     "ports": [{"port": 1000, "endPort": 1010}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                     "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]},
                    {"to": [{"ipBlock": {"cidr": "fd00::/8"}}]},
                ],
            }),
        ),
    ] {
        m.apply_policy(&p);
        sync(&mut m, &mut w);
        let tables = LookupTables::build(m.compiled().values());
        for (src, dst, proto, port, got) in grid(w.store()) {
            assert_eq!(
                got,
                tables.allowed(src, dst, proto, port),
                "{src} -> {dst} {proto:?}/{port}"
            );
        }
    }
    // Spot checks from the spec: x/a's ingress still admits only x/b on 80, which x/b's
    // egress does not allow; the range, the except and the named port on y/c.
    let f = w.store();
    assert!(!allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 80));
    assert!(!allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 1005));
    assert!(allowed(f, "198.18.1.11", "198.18.3.7", Proto::Tcp, 1005));
    assert!(!allowed(f, "198.18.1.11", "198.18.3.7", Proto::Tcp, 1011));
    assert!(!allowed(f, "198.18.1.11", "198.18.2.99", Proto::Tcp, 1005));
    assert!(allowed(f, "198.18.1.11", "198.18.2.12", Proto::Udp, 81));
    assert!(!allowed(f, "198.18.1.11", "198.18.2.12", Proto::Tcp, 81));
    assert!(allowed(
        f,
        "fd00:18:0:1::11",
        "fd00:c8::5",
        Proto::Udp,
        1011
    ));
}

/// Replays the update's writes one by one from the old maps: each intermediate state
/// allows every flow both the old and the new state allow.
fn assert_make_before_break(before: &FakePolicyMaps, after: &FakePolicyMaps) {
    let old = grid(before);
    let new = grid(after);
    let mut state = before.clone();
    for (i, op) in after.ops[before.ops.len()..].iter().enumerate() {
        match *op {
            PolicyOp::PutPod(ip, v) => {
                state.pods.insert(ip, v);
            }
            PolicyOp::DeletePod(ip) => {
                state.pods.remove(&ip);
            }
            PolicyOp::PutPeer(k, v) => {
                state.peers.insert(k, v);
            }
            PolicyOp::DeletePeer(k) => {
                state.peers.remove(&k);
            }
            PolicyOp::PutPort(k) => {
                state.ports.insert(k);
            }
            PolicyOp::DeletePort(k) => {
                state.ports.remove(&k);
            }
            PolicyOp::Enabled(on) => state.enabled = on,
        }
        for ((o, n), now) in old.iter().zip(&new).zip(grid(&state)) {
            if o.4 && n.4 {
                assert!(now.4, "after write {i} ({op:?}): {o:?} denied");
            }
        }
    }
    assert_eq!(state.pods, after.pods);
    assert_eq!(state.peers, after.peers);
    assert_eq!(state.ports, after.ports);
}

fn nested_spec() -> Value {
    json!({"podSelector": {"matchLabels": {"pod": "a"}},
           "ingress": [{"from": [
                {"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.2.0/24"]}},
                {"namespaceSelector": {"matchLabels": {"ns": "y"}},
                 "podSelector": {"matchLabels": {"pod": "c"}}},
            ], "ports": [{"port": 80}]}]})
}

#[test]
fn updates_never_deny_what_old_and_new_both_allow() {
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps::default());
    let steps = [
        // Isolate x/a: from x/b on 80.
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"port": 80}]}]}),
        // Widen to a block with an except, and other ports.
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.2.0/24"]}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"port": 80}, {"port": 1000, "endPort": 1010}]}]}),
        // Narrow the except, swap ports; egress too.
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/15", "except": ["198.18.2.12/32"]}}],
                            "ports": [{"port": 81}, {"port": 1005}]}],
               "egress": [{"to": [{"podSelector": {}}]}]}),
        // Everything allowed in, nothing out.
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "policyTypes": ["Ingress", "Egress"],
               "ingress": [{}]}),
        // Nested entries: a block, a hole in it, and y/c inside the hole allowed again
        // (then to a single /0 entry and back: the order of deletes and of adds matters
        // for y/c's address).
        nested_spec(),
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 80}]}]}),
        nested_spec(),
    ];
    for spec in steps {
        let before = w.store().clone();
        m.apply_policy(&netpol("x", "p", spec));
        sync(&mut m, &mut w);
        assert_make_before_break(&before, w.store());
    }
    // Deleting the policy: every state on the way allows what the old one did.
    let before = w.store().clone();
    m.delete_policy("x", "p");
    sync(&mut m, &mut w);
    assert_make_before_break(&before, w.store());
    let f = w.store();
    assert!(f.pods.is_empty() && f.peers.is_empty() && f.ports.is_empty());
    assert!(!f.enabled);
}

#[test]
fn write_order_sets_then_peers_then_pods_then_deletes() {
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps::default());
    m.apply_policy(&allow_b_80());
    sync(&mut m, &mut w);
    let first = w.store().ops.clone();
    let pos = |pred: &dyn Fn(&PolicyOp) -> bool| first.iter().position(pred);
    let last = |pred: &dyn Fn(&PolicyOp) -> bool| first.iter().rposition(pred);
    let last_port = last(&|o| matches!(o, PolicyOp::PutPort(_))).expect("ports");
    let first_peer = pos(&|o| matches!(o, PolicyOp::PutPeer(..))).expect("peers");
    let last_peer = last(&|o| matches!(o, PolicyOp::PutPeer(..))).expect("peers");
    let first_pod = pos(&|o| matches!(o, PolicyOp::PutPod(..))).expect("pods");
    let on = pos(&|o| matches!(o, PolicyOp::Enabled(true))).expect("switch");
    assert!(last_port < first_peer && last_peer < on && on < first_pod);

    // Removal: pod entries first, then peers, then ports, then the switch.
    let n = first.len();
    m.delete_policy("x", "allow-b");
    sync(&mut m, &mut w);
    let ops = &w.store().ops[n..];
    let kind = |o: &PolicyOp| match o {
        PolicyOp::DeletePod(_) => 0,
        PolicyOp::DeletePeer(_) => 1,
        PolicyOp::DeletePort(_) => 2,
        PolicyOp::Enabled(false) => 3,
        other => panic!("unexpected write on removal: {other:?}"),
    };
    let kinds: Vec<u8> = ops.iter().map(kind).collect();
    assert!(kinds.windows(2).all(|k| k[0] <= k[1]), "{ops:?}");
    assert_eq!(kinds.first(), Some(&0));
    assert_eq!(kinds.last(), Some(&3));
}

#[test]
fn equal_port_sets_are_interned_once() {
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps::default());
    // Both local pods admit the same ports from the same peer kind.
    let spec = |pod: &str| {
        json!({"podSelector": {"matchLabels": {"pod": pod}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.200.0/24"}}],
                            "ports": [{"port": 1000, "endPort": 1010}]}]})
    };
    m.apply_policy(&netpol("x", "pa", spec("a")));
    m.apply_policy(&netpol("x", "pb", spec("b")));
    sync(&mut m, &mut w);
    let set_ids: std::collections::BTreeSet<u32> = w.store().peers.values().copied().collect();
    assert_eq!(set_ids.len(), 1, "{:?}", w.store().peers);
    // 1000..=1010 is 1000/13 (1000-1007), 1008/15 (1008-1009), 1010/16: three blocks.
    assert_eq!(w.store().ports.len(), 3);
    // The set outlives one of its users ...
    m.delete_policy("x", "pa");
    sync(&mut m, &mut w);
    assert_eq!(w.store().ports.len(), 3);
    assert!(allowed(
        w.store(),
        "198.19.200.5",
        "198.18.1.11",
        Proto::Tcp,
        1005
    ));
    assert!(allowed(
        w.store(),
        "198.19.200.5",
        "198.18.1.10",
        Proto::Tcp,
        80
    ));
    // ... not the last one.
    m.delete_policy("x", "pb");
    sync(&mut m, &mut w);
    assert!(w.store().ports.is_empty() && w.store().peers.is_empty());
    assert_eq!(w.sizes(), (0, 0, 0));
}

#[test]
fn resync_sweeps_leftovers_and_uses_fresh_ids() {
    let mut m = model();
    m.apply_policy(&allow_b_80());
    m.recompute();
    // A previous run's entries: a pod id and a set id the new writer must not reuse.
    let mut stale = FakePolicyMaps::default();
    let old_peer = PeerKey {
        pod_id: 5,
        dir: POL_DIR_INGRESS,
        prefix: Prefix::new("198.19.200.0".parse().expect("ip"), 24),
    };
    let old_port = PortKey {
        set_id: 3,
        proto: 6,
        first: 0,
        len: 0,
    };
    stale.peers.insert(old_peer, 3);
    stale.ports.insert(old_port);
    stale.pods.insert(
        "198.18.1.11".parse().expect("ip"),
        service_lb_common::policy::PolPod::new(5, POL_ISOLATED_INGRESS),
    );
    stale.enabled = true;
    let mut w = PolicyWriter::new(stale);
    w.resync(&m).expect("resync");
    let f = w.store();
    assert!(!f.peers.contains_key(&old_peer));
    assert!(!f.ports.contains(&old_port));
    assert!(f.peers.keys().all(|k| k.pod_id > 5));
    assert!(f.ports.iter().all(|k| k.set_id > 3));
    // x/b is no longer isolated; x/a is, as the spec says.
    assert!(allowed(f, "198.19.200.5", "198.18.1.11", Proto::Tcp, 81));
    assert!(allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 80));
    assert!(!allowed(f, "198.19.200.5", "198.18.1.10", Proto::Tcp, 80));
    // A second resync writes nothing but the switch (rewritten to repair drift).
    let n = f.ops.len();
    w.resync(&m).expect("resync");
    assert_eq!(w.store().ops[n..], [PolicyOp::Enabled(true)]);
}

#[test]
fn a_failed_write_is_repaired_by_the_next_apply() {
    let mut m = model();
    let mut w = PolicyWriter::new(FakePolicyMaps {
        peers_max: Some(1),
        ..FakePolicyMaps::default()
    });
    m.apply_policy(&netpol(
        "x",
        "two-peers",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.200.0/24"}},
                                     {"ipBlock": {"cidr": "fd00:c8::/64"}}]}]}),
    ));
    let changes = m.recompute();
    let err = w.apply(&m, &changes).expect_err("the peer map is full");
    assert!(format!("{err:#}").contains("full"), "{err:#}");
    // Before the failure nothing pointed x/a at a partial table.
    assert!(w.store().pods.is_empty());
    w.store_mut().peers_max = None;
    let nothing = m.recompute();
    w.apply(&m, &nothing).expect("repaired");
    let f = w.store();
    assert!(allowed(f, "198.19.200.5", "198.18.1.10", Proto::Udp, 1011));
    assert!(allowed(f, "fd00:c8::5", "fd00:18:0:1::10", Proto::Tcp, 80));
    assert!(!allowed(f, "198.18.1.11", "198.18.1.10", Proto::Tcp, 80));
    // Exactly the wanted entries are left (one per family, under one pod id).
    assert_eq!(f.peers.len(), 2);
}
