//! `Syncer` on `FakeMaps`: conversion, ownership, no-op applies, per-Service failure and
//! rollback, batched conntrack purge, full sync adoption and stale removal.

use std::net::SocketAddr;

use service_lb_common::{
    service::{
        BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP,
    },
    CtEntry,
};

use super::{frontend_spec, Syncer};
use crate::{
    dataplane::{FakeMaps, Family, FrontendKey, L4Proto, Op, ServiceWriter},
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
        affinity_timeout_s: 0,
    }
}

fn desired(n: &str, frontends: Vec<DesiredFrontend>) -> ServiceDesired {
    ServiceDesired {
        name: name(n),
        frontends,
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

    // Gone entirely.
    s.apply(&[desired("web", vec![])]);
    let maps = s.writer().store();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.revnat.is_empty());
    assert_eq!(s.owner(&key("198.19.0.10", 80)), None);
}

#[test]
fn removed_backends_have_their_conntrack_purged_in_one_pass() {
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
    let ids_a = s
        .writer()
        .read_frontend(&key("198.19.0.10", 80))
        .unwrap()
        .unwrap();
    let id_of = |addr: &str| {
        let maps = s.writer().store();
        maps.backends
            .iter()
            .find(|(_, v)| {
                SocketAddr::new(v.addr(), v.port()) == addr.parse::<SocketAddr>().unwrap()
            })
            .map(|((_, id), _)| *id)
            .expect("backend in the maps")
    };
    let (b2, b3, b4) = (
        id_of("198.18.1.2:80"),
        id_of("198.18.1.3:80"),
        id_of("198.18.1.4:80"),
    );
    assert_eq!(ids_a.backends.len(), 2);
    let maps = s.writer_mut().store_mut();
    for (flow, backend_id) in [(1, b2), (2, b3), (3, b4), (4, b2)] {
        maps.conntrack.insert(
            (Family::V4, flow),
            CtEntry {
                backend_id,
                ..Default::default()
            },
        );
    }
    maps.take_ops();
    maps.conntrack_passes = 0;

    // a loses .2 (gone from every frontend) and .3 (still used by b); b loses .4.
    let report = s.apply(&[
        desired("a", vec![frontend("198.19.0.10", 80, &[])]),
        desired("b", vec![frontend("198.19.0.20", 80, &["198.18.1.3:80"])]),
    ]);
    assert_eq!(report.conntrack_purged, 3);
    assert!(report.failed.is_empty() && report.errors.is_empty());
    let maps = s.writer_mut().store_mut();
    assert_eq!(
        maps.conntrack_passes, 2,
        "one pass per family for the whole batch"
    );
    let ops = maps.take_ops();
    let purges: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op, Op::DeleteConntrack { .. }))
        .collect();
    assert_eq!(
        purges,
        [
            &Op::DeleteConntrack { backend_id: b2 },
            &Op::DeleteConntrack { backend_id: b4 }
        ]
    );
    assert_eq!(
        maps.conntrack
            .values()
            .map(|e| e.backend_id)
            .collect::<Vec<_>>(),
        [b3]
    );
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
    assert!(
        ops.iter().all(|op| matches!(
            op,
            Op::DeleteMaster | Op::DeleteSlot(_) | Op::DeleteRevNat(_) | Op::DeleteBackend(_)
        )),
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
