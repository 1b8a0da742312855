//! `Syncer` on `FakeMaps`: conversion, ownership, no-op applies, per-Service failure and
//! rollback, conntrack as kube-proxy keeps it (TCP never flushed, drained backends and
//! retired reverse NAT collected once no flow uses them, UDP flushed per frontend for
//! endpoints that stopped serving), full sync adoption, stale and orphan removal.

use std::net::SocketAddr;

use service_lb_common::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    service::{
        BACKEND_STATE_ACTIVE, BACKEND_STATE_DRAINING, BACKEND_STATE_TERMINATING, SCOPE_EXTERNAL,
        SVC_FLAG_CLUSTER_IP,
    },
    CtEntry,
};

use super::{frontend_spec, SyncReport, Syncer};
use crate::{
    dataplane::{FakeCt, FakeMaps, Family, FrontendKey, L4Proto, Op, ServiceWriter},
    model::{DesiredBackend, DesiredFrontend, Protocol, Scope, ServiceDesired, ServiceName},
};

fn name(n: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: n.into(),
    }
}

fn frontend(addr: &str, port: u16, backends: &[&str]) -> DesiredFrontend {
    DesiredFrontend {
        addr: addr.parse().expect("test address"),
        port,
        protocol: Protocol::Tcp,
        scope: Scope::External,
        port_name: String::new(),
        backends: backends
            .iter()
            .map(|b| DesiredBackend {
                addr: b.parse().expect("test backend"),
                terminating: false,
                local: false,
            })
            .collect(),
        serving: backends
            .iter()
            .map(|b| b.parse().expect("test backend"))
            .collect(),
        affinity_timeout_s: 0,
        no_endpoints: Default::default(),
    }
}

/// A UDP frontend: `backends` in the slots, `serving` the serving endpoints.
fn udp_frontend(addr: &str, port: u16, backends: &[&str], serving: &[&str]) -> DesiredFrontend {
    DesiredFrontend {
        protocol: Protocol::Udp,
        serving: serving
            .iter()
            .map(|b| b.parse().expect("test backend"))
            .collect(),
        ..frontend(addr, port, backends)
    }
}

fn desired(n: &str, frontends: Vec<DesiredFrontend>) -> ServiceDesired {
    ServiceDesired {
        name: name(n),
        frontends,
        external: vec![],
        health_check: None,
        skipped: vec![],
        last_change_trigger_time: None,
    }
}

fn key(addr: &str, port: u16) -> FrontendKey {
    FrontendKey {
        addr: addr.parse().expect("test address"),
        port,
        proto: L4Proto::Tcp,
        scope: SCOPE_EXTERNAL,
    }
}

fn syncer(maps: FakeMaps) -> Syncer<FakeMaps> {
    Syncer::new(ServiceWriter::open(maps).expect("open on fake maps"))
}

/// Backend addresses the maps resolve for `key`, as the kernel would.
fn resolved(s: &Syncer<FakeMaps>, key: &FrontendKey) -> Vec<SocketAddr> {
    s.writer()
        .read_frontend(key)
        .expect("consistent maps")
        .map(|spec| spec.backends.iter().map(|b| b.addr).collect())
        .unwrap_or_default()
}

#[test]
fn conversion_sets_scope_flags_state_and_local() {
    let mut f = frontend("198.19.0.10", 80, &["198.18.1.2:8080", "198.18.1.3:8080"]);
    f.protocol = Protocol::Udp;
    f.affinity_timeout_s = 60;
    f.backends[0].terminating = true;
    f.backends[1].local = true;
    let spec = frontend_spec(&f);
    assert_eq!(spec.key.proto, L4Proto::Udp);
    assert_eq!(spec.key.scope, SCOPE_EXTERNAL);
    assert_eq!(spec.flags, SVC_FLAG_CLUSTER_IP);
    assert_eq!(spec.affinity_timeout_s, 60);
    let states: Vec<(u8, bool)> = spec.backends.iter().map(|b| (b.state, b.local)).collect();
    assert_eq!(
        states,
        [
            (BACKEND_STATE_TERMINATING, false),
            (BACKEND_STATE_ACTIVE, true)
        ]
    );
}

#[test]
fn an_unchanged_service_costs_no_map_access_and_a_removed_frontend_is_deleted() {
    let mut s = syncer(FakeMaps::new());
    let web = desired(
        "web",
        vec![
            frontend("198.19.0.10", 80, &["198.18.1.2:80"]),
            frontend("198.19.0.10", 443, &["198.18.1.2:443"]),
        ],
    );
    let report = s.apply(std::slice::from_ref(&web));
    assert_eq!(report.changed.len(), 1);
    assert_eq!(report.frontends_upserted, 2);
    s.writer_mut().store_mut().take_ops();

    let report = s.apply(std::slice::from_ref(&web));
    assert_eq!((report.unchanged, report.changed.len()), (1, 0));
    assert!(s.writer_mut().store_mut().take_ops().is_empty());

    // The Service drops port 443: that frontend goes, port 80 is untouched.
    let report = s.apply(&[desired(
        "web",
        vec![frontend("198.19.0.10", 80, &["198.18.1.2:80"])],
    )]);
    assert_eq!(
        (report.frontends_removed, report.frontends_upserted),
        (1, 0)
    );
    assert!(s.writer().service_id(&key("198.19.0.10", 443)).is_none());
    assert_eq!(
        resolved(&s, &key("198.19.0.10", 80)),
        ["198.18.1.2:80".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(s.owner(&key("198.19.0.10", 80)), Some(&name("web")));

    // Gone entirely: no frontend is left; its backend drains and its reverse NAT stays
    // until garbage collection finds no flow using them.
    s.apply(&[desired("web", vec![])]);
    let maps = s.writer().store();
    assert!(maps.services.is_empty());
    assert!(maps
        .backends
        .values()
        .all(|b| b.state() == BACKEND_STATE_DRAINING));
    assert_eq!(s.owner(&key("198.19.0.10", 80)), None);
    s.collect_garbage(&mut SyncReport::default());
    let maps = s.writer().store();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.revnat.is_empty());
}

/// The id of the backend at `addr` in the maps.
fn backend_id_of(s: &Syncer<FakeMaps>, addr: &str) -> u32 {
    let addr: SocketAddr = addr.parse().expect("test address");
    s.writer()
        .store()
        .backends
        .iter()
        .find(|(_, v)| SocketAddr::new(v.addr(), v.port()) == addr)
        .map(|((_, id), _)| *id)
        .expect("backend in the maps")
}

fn backend_state(s: &Syncer<FakeMaps>, id: u32) -> Option<u8> {
    s.writer()
        .store()
        .backends
        .get(&(Family::V4, id))
        .map(|v| v.state())
}

/// Puts a live conntrack entry of (service, backend) under `flow`.
fn track(s: &mut Syncer<FakeMaps>, flow: u64, proto: u8, service_id: u32, backend_id: u32) {
    s.writer_mut().store_mut().conntrack.insert(
        (Family::V4, flow),
        FakeCt {
            proto,
            entry: CtEntry {
                expires_ns: 1_000,
                backend_id,
                service_id,
                ..Default::default()
            },
        },
    );
}

fn flows(s: &Syncer<FakeMaps>) -> Vec<u64> {
    s.writer()
        .store()
        .conntrack
        .keys()
        .map(|(_, flow)| *flow)
        .collect()
}

fn service_id(s: &Syncer<FakeMaps>, key: &FrontendKey) -> u32 {
    s.writer().service_id(key).expect("programmed frontend")
}

#[test]
fn tcp_flows_survive_endpoint_removal_and_their_backends_drain_until_unused() {
    let mut s = syncer(FakeMaps::new());
    s.apply(&[
        desired(
            "a",
            vec![frontend(
                "198.19.0.10",
                80,
                &["198.18.1.2:80", "198.18.1.3:80"],
            )],
        ),
        desired(
            "b",
            vec![frontend(
                "198.19.0.20",
                80,
                &["198.18.1.4:80", "198.18.1.3:80"],
            )],
        ),
    ]);
    let (a, b) = (
        service_id(&s, &key("198.19.0.10", 80)),
        service_id(&s, &key("198.19.0.20", 80)),
    );
    let (b2, b3, b4) = (
        backend_id_of(&s, "198.18.1.2:80"),
        backend_id_of(&s, "198.18.1.3:80"),
        backend_id_of(&s, "198.18.1.4:80"),
    );
    for (flow, service, backend) in [(1, a, b2), (2, a, b3), (3, b, b4), (4, b, b3)] {
        track(&mut s, flow, IPPROTO_TCP, service, backend);
    }
    s.writer_mut().store_mut().take_ops();

    // a loses .2 (gone from every frontend) and .3 (still used by b); b loses .4.
    let report = s.apply(&[
        desired("a", vec![frontend("198.19.0.10", 80, &[])]),
        desired("b", vec![frontend("198.19.0.20", 80, &["198.18.1.3:80"])]),
    ]);
    assert!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.udp_conntrack_flushed, 0);
    assert_eq!(flows(&s), [1, 2, 3, 4], "TCP conntrack is never flushed");
    assert_eq!(backend_state(&s, b2), Some(BACKEND_STATE_DRAINING));
    assert_eq!(backend_state(&s, b4), Some(BACKEND_STATE_DRAINING));
    assert_eq!(backend_state(&s, b3), Some(BACKEND_STATE_ACTIVE));
    assert_eq!(
        s.writer()
            .draining_backends()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [b2, b4]
    );
    assert!(
        !s.writer_mut()
            .store_mut()
            .take_ops()
            .iter()
            .any(|op| matches!(op, Op::DeleteBackend(_))),
        "no backend is deleted while flows may use it"
    );

    // The flow on .2 ends: the next full sync collects .2, keeps .4 (flow 3 is live).
    s.writer_mut()
        .store_mut()
        .conntrack
        .get_mut(&(Family::V4, 1))
        .expect("flow 1")
        .entry
        .expires_ns = 0;
    let report = s.full_sync(&[
        desired("a", vec![frontend("198.19.0.10", 80, &[])]),
        desired("b", vec![frontend("198.19.0.20", 80, &["198.18.1.3:80"])]),
    ]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(
        (report.garbage.backends, report.garbage.backends_kept),
        (1, 1)
    );
    assert_eq!(backend_state(&s, b2), None);
    assert_eq!(backend_state(&s, b4), Some(BACKEND_STATE_DRAINING));

    // .4 comes back: the same id, active again, no longer draining.
    s.apply(&[desired(
        "b",
        vec![frontend(
            "198.19.0.20",
            80,
            &["198.18.1.3:80", "198.18.1.4:80"],
        )],
    )]);
    assert_eq!(backend_id_of(&s, "198.18.1.4:80"), b4);
    assert_eq!(backend_state(&s, b4), Some(BACKEND_STATE_ACTIVE));
    assert!(s.writer().draining_backends().is_empty());
}

#[test]
fn udp_flows_are_flushed_per_frontend_for_endpoints_that_stopped_serving() {
    let mut s = syncer(FakeMaps::new());
    let both = ["198.18.1.2:53", "198.18.1.3:53"];
    s.apply(&[
        desired("a", vec![udp_frontend("198.19.0.10", 53, &both, &both)]),
        desired(
            "b",
            vec![udp_frontend(
                "198.19.0.20",
                53,
                &["198.18.1.3:53"],
                &["198.18.1.3:53"],
            )],
        ),
    ]);
    let (a, b) = (
        service_id(
            &s,
            &FrontendKey {
                proto: L4Proto::Udp,
                ..key("198.19.0.10", 53)
            },
        ),
        service_id(
            &s,
            &FrontendKey {
                proto: L4Proto::Udp,
                ..key("198.19.0.20", 53)
            },
        ),
    );
    let (b2, b3) = (
        backend_id_of(&s, "198.18.1.2:53"),
        backend_id_of(&s, "198.18.1.3:53"),
    );
    for (flow, service, backend) in [(1, a, b2), (2, a, b3), (3, b, b3), (4, a, b2)] {
        track(&mut s, flow, IPPROTO_UDP, service, backend);
    }
    // A TCP flow with the same ids (another table) is never flushed.
    track(&mut s, 5, IPPROTO_TCP, a, b2);

    // .2 stops serving (not ready, not terminating: gone from a's serving set) and no
    // slot names it any more: it leaves the backends map and the kernel re-balances its
    // flows (`dnat_reselect`); conntrack is not walked. Its id stays reserved.
    let report = s.apply(&[desired(
        "a",
        vec![udp_frontend(
            "198.19.0.10",
            53,
            &["198.18.1.3:53"],
            &["198.18.1.3:53"],
        )],
    )]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.udp_backends_retired, 1, "{report:?}");
    assert_eq!(report.udp_conntrack_flushed, 0, "{report:?}");
    assert_eq!(s.writer().store().conntrack_passes, 0, "no conntrack pass");
    assert_eq!(backend_state(&s, b2), None, "the backend entry is gone");
    assert!(s.writer().draining_backends().contains(&b2));
    assert_eq!(flows(&s), [1, 2, 3, 4, 5]);

    // .2 comes back (same id, active) and .3 stops serving a while b's slot still names
    // it: one pass, a's UDP flows to .3 go, b's and the TCP flow stay.
    let report = s.apply(&[desired(
        "a",
        vec![udp_frontend(
            "198.19.0.10",
            53,
            &["198.18.1.2:53"],
            &["198.18.1.2:53"],
        )],
    )]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(backend_id_of(&s, "198.18.1.2:53"), b2);
    assert_eq!(backend_state(&s, b2), Some(BACKEND_STATE_ACTIVE));
    assert_eq!(report.udp_backends_retired, 0, "{report:?}");
    assert_eq!(report.udp_conntrack_flushed, 1, "{report:?}");
    assert_eq!(flows(&s), [1, 3, 4, 5], "only a's UDP flow to .3 goes");
    assert_eq!(
        s.writer_mut()
            .store_mut()
            .take_ops()
            .into_iter()
            .filter(|op| matches!(op, Op::FlushConntrack { .. }))
            .collect::<Vec<_>>(),
        [Op::FlushConntrack {
            service_id: a,
            backend_id: b3
        }]
    );

    // A serving endpoint that is not eligible (terminating while ready ones exist) keeps
    // its UDP flows, like kube-proxy.
    track(&mut s, 6, IPPROTO_UDP, a, b3);
    let report = s.apply(&[desired(
        "a",
        vec![udp_frontend("198.19.0.10", 53, &["198.18.1.2:53"], &both)],
    )]);
    assert_eq!(report.udp_conntrack_flushed, 0);
    assert!(flows(&s).contains(&6));

    // No serving endpoint left at all: nothing is flushed (kube-proxy skips such Services).
    let report = s.apply(&[desired(
        "a",
        vec![udp_frontend("198.19.0.10", 53, &[], &[])],
    )]);
    assert_eq!(report.udp_conntrack_flushed, 0);
    assert_eq!(report.udp_backends_retired, 0);
    assert_eq!(flows(&s), [1, 3, 4, 5, 6]);
    assert_eq!(
        s.writer().store().conntrack_passes,
        1,
        "one pass, for the one loss that a slot of another frontend still names"
    );
}

#[test]
fn a_full_sync_flushes_udp_flows_to_non_serving_backends_left_from_before_a_restart() {
    let mut s = syncer(FakeMaps::new());
    let both = ["198.18.1.2:53", "198.18.1.3:53"];
    let web = desired("a", vec![udp_frontend("198.19.0.10", 53, &both, &both)]);
    s.apply(std::slice::from_ref(&web));
    let a = service_id(
        &s,
        &FrontendKey {
            proto: L4Proto::Udp,
            ..key("198.19.0.10", 53)
        },
    );
    let (b2, b3) = (
        backend_id_of(&s, "198.18.1.2:53"),
        backend_id_of(&s, "198.18.1.3:53"),
    );
    track(&mut s, 1, IPPROTO_UDP, a, b2);
    track(&mut s, 2, IPPROTO_UDP, a, b3);

    // Restart; meanwhile .2 stopped serving.
    let maps = s.writer().store().clone();
    let mut s = syncer(maps);
    let report = s.full_sync(&[desired(
        "a",
        vec![udp_frontend(
            "198.19.0.10",
            53,
            &["198.18.1.3:53"],
            &["198.18.1.3:53"],
        )],
    )]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.udp_conntrack_flushed, 1);
    assert_eq!(flows(&s), [2]);
}

#[test]
fn a_removed_frontend_keeps_its_reverse_nat_for_live_flows_and_its_id_if_it_returns() {
    let mut s = syncer(FakeMaps::new());
    let web = desired("web", vec![frontend("198.19.0.10", 80, &["198.18.1.2:80"])]);
    s.apply(std::slice::from_ref(&web));
    let id = service_id(&s, &key("198.19.0.10", 80));
    let b = backend_id_of(&s, "198.18.1.2:80");
    track(&mut s, 1, IPPROTO_TCP, id, b);

    s.apply(&[desired("web", vec![])]);
    let maps = s.writer().store();
    assert!(maps.services.is_empty());
    assert!(
        maps.revnat.contains_key(&(Family::V4, id)),
        "replies of flow 1 still translate"
    );
    assert_eq!(s.writer().retired_services().collect::<Vec<_>>(), [id]);

    // It comes back while retired: the same service id (flow 1 stays consistent).
    s.apply(std::slice::from_ref(&web));
    assert_eq!(service_id(&s, &key("198.19.0.10", 80)), id);
    assert_eq!(s.writer().retired_services().count(), 0);

    // Gone again, and the flow ends: the full sync collects the reverse NAT and backend.
    s.apply(&[desired("web", vec![])]);
    s.writer_mut().store_mut().conntrack.clear();
    let report = s.full_sync(&[]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!((report.garbage.revnat, report.garbage.backends), (1, 1));
    let maps = s.writer().store();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.revnat.is_empty());
}

#[test]
fn a_full_map_fails_one_service_leaves_it_as_before_and_applies_the_others() {
    let mut maps = FakeMaps::new();
    maps.services_max = Some(6);
    let mut s = syncer(maps);
    // big: 2 frontends x (master + 1 slot) = 4 entries.
    let big_before = desired(
        "big",
        vec![
            frontend("198.19.0.10", 80, &["198.18.1.2:80"]),
            frontend("198.19.0.10", 81, &["198.18.1.2:81"]),
        ],
    );
    assert!(s.apply(std::slice::from_ref(&big_before)).failed.is_empty());
    let before = s.writer().store().clone();

    // big grows both frontends to 3 backends (8 entries): port 80 fits (6 in all), port 81
    // does not; small (master + slot = 2) fits once big's rollback frees the space again.
    let big_after = desired(
        "big",
        vec![
            frontend(
                "198.19.0.10",
                80,
                &["198.18.1.2:80", "198.18.1.3:80", "198.18.1.4:80"],
            ),
            frontend(
                "198.19.0.10",
                81,
                &["198.18.1.2:81", "198.18.1.3:81", "198.18.1.4:81"],
            ),
        ],
    );
    let small = desired(
        "small",
        vec![frontend("198.19.0.30", 53, &["198.18.2.2:53"])],
    );
    let report = s.apply(&[big_after.clone(), small]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, name("big"));
    assert!(
        report.failed[0].1.contains("SLB_SVC4_V1"),
        "{}",
        report.failed[0].1
    );
    assert_eq!(report.changed.iter().collect::<Vec<_>>(), [&name("small")]);

    // big is exactly as before (ids included), small is programmed.
    let after = s.writer().store();
    let big_keys = [key("198.19.0.10", 80), key("198.19.0.10", 81)];
    for k in &big_keys {
        assert_eq!(
            s.writer().read_frontend(k).unwrap(),
            ServiceWriter::open(before.clone())
                .unwrap()
                .read_frontend(k)
                .unwrap()
        );
        assert_eq!(
            s.writer().service_id(k),
            ServiceWriter::open(before.clone()).unwrap().service_id(k)
        );
    }
    assert_eq!(
        resolved(&s, &key("198.19.0.30", 53)),
        ["198.18.2.2:53".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(after.services.len(), 6);

    // The failed Service is retried by the next apply (its desired state did not "stick").
    let report = s.apply(&[big_after]);
    assert_eq!(report.failed.len(), 1);
}

#[test]
fn a_frontend_owned_by_another_service_is_refused_until_released() {
    let mut s = syncer(FakeMaps::new());
    s.apply(&[desired(
        "a",
        vec![frontend("198.19.0.10", 80, &["198.18.1.2:80"])],
    )]);
    let report = s.apply(&[desired(
        "b",
        vec![frontend("198.19.0.10", 80, &["198.18.1.9:80"])],
    )]);
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.contains("default/a"),
        "{:?}",
        report.failed
    );
    assert_eq!(
        resolved(&s, &key("198.19.0.10", 80)),
        ["198.18.1.2:80".parse::<SocketAddr>().unwrap()]
    );

    // In one batch, b is applied after a lets the frontend go (whatever the order given).
    let id = s.writer().service_id(&key("198.19.0.10", 80));
    let report = s.apply(&[
        desired("b", vec![frontend("198.19.0.10", 80, &["198.18.1.9:80"])]),
        desired("a", vec![]),
    ]);
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(s.owner(&key("198.19.0.10", 80)), Some(&name("b")));
    assert_eq!(
        resolved(&s, &key("198.19.0.10", 80)),
        ["198.18.1.9:80".parse::<SocketAddr>().unwrap()]
    );
    assert!(id.is_some());
}

#[test]
fn full_sync_after_a_restart_adopts_what_is_wanted_and_removes_the_rest() {
    let mut s = syncer(FakeMaps::new());
    let web = desired(
        "web",
        vec![frontend(
            "198.19.0.10",
            80,
            &["198.18.1.2:80", "198.18.1.3:80"],
        )],
    );
    let old = desired("old", vec![frontend("198.19.0.99", 80, &["198.18.1.7:80"])]);
    s.apply(&[web.clone(), old]);
    let web_id = s.writer().service_id(&key("198.19.0.10", 80));
    let mut maps = s.writer().store().clone();
    maps.take_ops();

    // A new process: the maps are all it knows. "old" was deleted while it was down.
    let mut s = syncer(maps);
    let report = s.full_sync(std::slice::from_ref(&web));
    assert_eq!(report.frontends_removed, 1);
    assert_eq!(report.unchanged, 1, "{report:?}");
    assert!(report.changed.is_empty());
    let ops = s.writer_mut().store_mut().take_ops();
    let old_backend = s
        .writer()
        .backend_id("198.18.1.7:80".parse().unwrap(), L4Proto::Tcp);
    assert!(old_backend.is_none(), "collected: no flow uses it");
    assert!(
        ops.iter().all(|op| matches!(
            op,
            Op::DeleteMaster
                | Op::DeleteSlot(_)
                | Op::DeleteRevNat(_)
                | Op::DeleteBackend(_)
                // The drain of the old backend before it was collected.
                | Op::PutBackend(_)
        )) && ops
            .iter()
            .filter(|op| matches!(op, Op::PutBackend(_)))
            .count()
            == 1,
        "the wanted frontend is not rewritten: {ops:?}"
    );
    assert_eq!(s.writer().service_id(&key("198.19.0.10", 80)), web_id);
    assert!(s.writer().service_id(&key("198.19.0.99", 80)).is_none());
    assert_eq!(s.owner(&key("198.19.0.10", 80)), Some(&name("web")));

    // A second full sync of the same state writes nothing.
    let report = s.full_sync(&[web]);
    assert_eq!((report.unchanged, report.frontends_removed), (1, 0));
    assert!(s.writer_mut().store_mut().take_ops().is_empty());
}

#[test]
fn full_sync_repairs_drift_and_deletes_orphan_backends() {
    let mut s = syncer(FakeMaps::new());
    let web = desired("web", vec![frontend("198.19.0.10", 80, &["198.18.1.2:80"])]);
    s.apply(std::slice::from_ref(&web));
    let mut maps = s.writer().store().clone();
    // Drift: someone deleted the slot; a backend nobody names is left over.
    let master = maps
        .services
        .keys()
        .find(|k| k.slot() == 1)
        .copied()
        .unwrap();
    maps.services.remove(&master);
    let orphan = service_lb_common::Backend4::new([198, 18, 9, 9], 80u16.to_be(), 6, 0, 0);
    maps.backends.insert(
        (Family::V4, 4242),
        crate::dataplane::BackendValue::V4(orphan),
    );

    let mut s = syncer(maps);
    let report = s.full_sync(std::slice::from_ref(&web));
    assert!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.changed.len(), 1);
    assert_eq!(
        resolved(&s, &key("198.19.0.10", 80)),
        ["198.18.1.2:80".parse::<SocketAddr>().unwrap()]
    );
    assert!(!s
        .writer()
        .store()
        .backends
        .contains_key(&(Family::V4, 4242)));
}

/// Records what the Syncer asks to reap; answers with a count per call.
struct FakeReaper {
    calls: std::sync::Arc<std::sync::Mutex<Vec<super::ServingBackends>>>,
    destroyed: usize,
}

impl super::UdpSocketReaper for FakeReaper {
    fn reap(
        &mut self,
        serving: &super::ServingBackends,
    ) -> Result<usize, crate::dataplane::sock_destroy::SockDestroyError> {
        self.calls.lock().expect("test mutex").push(serving.clone());
        Ok(self.destroyed)
    }
}

#[test]
fn connected_udp_sockets_are_reaped_for_frontends_that_lost_a_serving_endpoint() {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = syncer(FakeMaps::new()).with_socket_reaper(Box::new(FakeReaper {
        calls: calls.clone(),
        destroyed: 3,
    }));
    let taken = || std::mem::take(&mut *calls.lock().expect("test mutex"));
    let addr = |a: &str| a.parse::<SocketAddr>().expect("test backend");
    let both = ["198.18.1.2:53", "198.18.1.3:53"];
    let b_only = ["198.18.1.3:53"];
    let services = |a_backends: &[&str]| {
        vec![
            desired(
                "a",
                vec![udp_frontend("198.19.0.10", 53, a_backends, a_backends)],
            ),
            desired("b", vec![udp_frontend("198.19.0.20", 53, &b_only, &b_only)]),
        ]
    };
    let report = s.apply(&services(&both));
    assert_eq!(report.udp_sockets_destroyed, 0);
    assert!(taken().is_empty(), "nothing was lost on the first apply");
    let udp = |a: &str| FrontendKey {
        proto: L4Proto::Udp,
        ..key(a, 53)
    };
    let (a, b) = (
        service_id(&s, &udp("198.19.0.10")),
        service_id(&s, &udp("198.19.0.20")),
    );

    // .2 leaves a: only a is checked, against its one serving backend.
    let report = s.apply(&services(&b_only));
    assert_eq!(report.udp_sockets_destroyed, 3);
    assert_eq!(
        taken(),
        [[(a, [addr("198.18.1.3:53")].into_iter().collect())]
            .into_iter()
            .collect::<super::ServingBackends>()]
    );

    // Unchanged: no call at all.
    s.apply(&services(&b_only));
    assert!(taken().is_empty());

    // No endpoint left: unlike the conntrack flush, the sockets still go (their next
    // connect is refused).
    s.apply(&services(&[]));
    assert_eq!(
        taken(),
        [[(a, Default::default())]
            .into_iter()
            .collect::<super::ServingBackends>()]
    );

    // A full sync checks every UDP frontend.
    let report = s.full_sync(&services(&both));
    assert_eq!(report.udp_sockets_destroyed, 3);
    assert_eq!(
        taken(),
        [[
            (a, both.iter().map(|b| addr(b)).collect()),
            (b, [addr("198.18.1.3:53")].into_iter().collect()),
        ]
        .into_iter()
        .collect::<super::ServingBackends>()]
    );
}
/// The names map: what `inspect` and `diff` read without the daemon.
mod names {
    use service_lb_common::names::KIND_CLUSTER_IP;

    use super::*;
    use crate::dataplane::MapStore;

    fn names_of(s: &Syncer<FakeMaps>) -> Vec<(String, String, String, u8)> {
        s.writer()
            .store()
            .names
            .values()
            .map(|n| {
                (
                    n.namespace().to_owned(),
                    n.name().to_owned(),
                    n.port_name().to_owned(),
                    n.kind,
                )
            })
            .collect()
    }

    fn named(port_name: &str, f: DesiredFrontend) -> DesiredFrontend {
        DesiredFrontend {
            port_name: port_name.into(),
            ..f
        }
    }

    #[test]
    fn each_frontend_is_named_by_service_id_and_unnamed_when_it_goes() {
        let mut s = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
        let web = desired(
            "web",
            vec![
                named("http", frontend("198.19.0.10", 80, &["198.18.1.2:8080"])),
                named("https", frontend("198.19.0.10", 443, &["198.18.1.2:8443"])),
            ],
        );
        let report = s.full_sync(std::slice::from_ref(&web));
        assert!(report.errors.is_empty(), "{report:?}");
        let id80 = s.writer().service_id(&key("198.19.0.10", 80)).expect("id");
        let id443 = s.writer().service_id(&key("198.19.0.10", 443)).expect("id");
        let store = s.writer().store();
        assert_eq!(store.names.len(), 2);
        let n80 = store.get_name(id80).expect("reads").expect("named");
        assert_eq!(
            (n80.namespace(), n80.name(), n80.port_name(), n80.kind),
            ("default", "web", "http", KIND_CLUSTER_IP)
        );
        let n443 = store.get_name(id443).expect("reads").expect("named");
        assert_eq!(n443.port_name(), "https");

        // The https port goes: its name goes with it.
        let web = desired(
            "web",
            vec![named(
                "http",
                frontend("198.19.0.10", 80, &["198.18.1.2:8080"]),
            )],
        );
        s.apply(&[web]);
        assert_eq!(
            names_of(&s),
            vec![(
                "default".into(),
                "web".into(),
                "http".into(),
                KIND_CLUSTER_IP
            )]
        );
        // The Service goes.
        s.apply(&[desired("web", vec![])]);
        assert!(names_of(&s).is_empty());
    }

    #[test]
    fn a_full_sync_repairs_names_and_drops_strays() {
        let mut s = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
        let web = desired(
            "web",
            vec![named(
                "http",
                frontend("198.19.0.10", 80, &["198.18.1.2:8080"]),
            )],
        );
        s.full_sync(std::slice::from_ref(&web));
        let id = s.writer().service_id(&key("198.19.0.10", 80)).expect("id");
        // Drift: the name changed under us, and a stray entry for an id nobody has.
        let store = s.writer_mut().store_mut();
        store
            .put_name(
                id,
                &service_lb_common::SvcName::new("x", "y", "z", KIND_CLUSTER_IP),
            )
            .expect("puts");
        store
            .put_name(
                id + 100,
                &service_lb_common::SvcName::new("old", "gone", "", KIND_CLUSTER_IP),
            )
            .expect("puts");
        // An incremental apply of an unchanged Service trusts what it wrote ...
        s.apply(std::slice::from_ref(&web));
        assert_eq!(names_of(&s).len(), 2);
        // ... the full sync compares with the map.
        let report = s.full_sync(std::slice::from_ref(&web));
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(
            names_of(&s),
            vec![(
                "default".into(),
                "web".into(),
                "http".into(),
                KIND_CLUSTER_IP
            )]
        );
    }
}
