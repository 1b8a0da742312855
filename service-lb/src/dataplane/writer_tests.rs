//! `ServiceWriter` on `FakeMaps`: write order, ids, shared backends, rollback, IPv6.

use std::net::{IpAddr, SocketAddr};

use service_lb_common::service::{
    BACKEND_STATE_ACTIVE, BACKEND_STATE_DRAINING, BACKEND_STATE_TERMINATING, SCOPE_EXTERNAL,
};
use service_lb_common::{proto::IPPROTO_TCP, CtEntry, SvcValue};

use super::{
    fake_maps::{FakeCt, FakeMaps, Op},
    maps::{Family, MapStore, SvcKey},
    writer::{BackendSpec, FrontendKey, FrontendSpec, Garbage, L4Proto, ServiceWriter, WriteError},
};

fn frontend(addr: &str, port: u16) -> FrontendKey {
    FrontendKey {
        addr: addr.parse().unwrap(),
        port,
        proto: L4Proto::Tcp,
        scope: SCOPE_EXTERNAL,
    }
}

fn backend(addr: &str) -> BackendSpec {
    BackendSpec {
        addr: addr.parse().unwrap(),
        state: BACKEND_STATE_ACTIVE,
        local: false,
    }
}

fn spec(key: FrontendKey, backends: &[&str]) -> FrontendSpec {
    FrontendSpec {
        key,
        backends: backends.iter().map(|b| backend(b)).collect(),
        flags: 0,
        affinity_timeout_s: 0,
        source_ranges: Vec::new(),
    }
}

fn master(maps: &FakeMaps, key: &FrontendKey) -> Option<SvcValue> {
    maps.get_service(&SvcKey::new(
        key.addr,
        key.port,
        key.proto.number(),
        key.scope,
        0,
    ))
    .unwrap()
}

/// The backends a reader would see for `key`, resolved through the maps as the kernel does.
fn resolved(maps: &FakeMaps, key: &FrontendKey) -> Vec<SocketAddr> {
    let Some(m) = master(maps, key) else {
        return vec![];
    };
    (1..=m.count as u16)
        .map(|slot| {
            let s = maps
                .get_service(&SvcKey::new(
                    key.addr,
                    key.port,
                    key.proto.number(),
                    key.scope,
                    slot,
                ))
                .unwrap()
                .unwrap();
            let b = maps
                .get_backend(key.family(), s.backend_id)
                .unwrap()
                .unwrap();
            SocketAddr::new(b.addr(), b.port())
        })
        .collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// The state of backend `id` (either family) as the maps hold it.
fn backend_state(maps: &FakeMaps, id: u32) -> Option<u8> {
    Family::ALL
        .iter()
        .find_map(|f| maps.backends.get(&(*f, id)))
        .map(|v| v.state())
}

#[test]
fn create_writes_backends_then_revnat_and_slots_then_master() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let ids = w
        .upsert(&spec(key, &["198.18.1.2:8080", "198.18.1.3:8080"]))
        .unwrap();
    let [b1, b2] = ids.backend_ids[..] else {
        panic!("{ids:?}")
    };
    assert_ne!(b1, b2);
    assert!(ids.service_id != 0 && b1 != 0 && b2 != 0);
    assert_eq!(
        w.store_mut().take_ops(),
        vec![
            Op::PutBackend(b1),
            Op::PutBackend(b2),
            Op::PutRevNat(ids.service_id),
            Op::PutSlot {
                slot: 1,
                backend_id: b1
            },
            Op::PutSlot {
                slot: 2,
                backend_id: b2
            },
            Op::PutMaster { count: 2 },
        ]
    );
    assert_eq!(
        resolved(w.store(), &key),
        addrs(&["198.18.1.2:8080", "198.18.1.3:8080"])
    );
    let rn = w
        .store()
        .get_revnat(Family::V4, ids.service_id)
        .unwrap()
        .unwrap();
    assert_eq!((rn.addr(), rn.port()), (key.addr, 80));
}

#[test]
fn grow_writes_the_new_backend_and_slot_before_the_master() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let first = w.upsert(&spec(key, &["198.18.1.2:80"])).unwrap();
    w.store_mut().take_ops();
    let ids = w
        .upsert(&spec(key, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    assert_eq!(ids.service_id, first.service_id);
    assert_eq!(
        ids.backend_ids[0], first.backend_ids[0],
        "kept backend keeps its id"
    );
    let b2 = ids.backend_ids[1];
    assert_eq!(
        w.store_mut().take_ops(),
        vec![
            Op::PutBackend(b2),
            Op::PutSlot {
                slot: 2,
                backend_id: b2
            },
            Op::PutMaster { count: 2 }
        ],
        "unchanged entries are not rewritten"
    );
}

#[test]
fn shrink_writes_the_master_first_then_deletes_slots_then_drains_unused_backends() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let ids = w
        .upsert(&spec(
            key,
            &["198.18.1.2:80", "198.18.1.3:80", "198.18.1.4:80"],
        ))
        .unwrap();
    let [b1, b2, b3] = ids.backend_ids[..] else {
        panic!()
    };
    w.store_mut().take_ops();
    w.upsert(&spec(key, &["198.18.1.4:80"])).unwrap();
    assert_eq!(
        w.store_mut().take_ops(),
        vec![
            Op::PutSlot {
                slot: 1,
                backend_id: b3
            },
            Op::PutMaster { count: 1 },
            Op::DeleteSlot(2),
            Op::DeleteSlot(3),
            Op::PutBackend(b1),
            Op::PutBackend(b2),
        ]
    );
    assert_eq!(resolved(w.store(), &key), addrs(&["198.18.1.4:80"]));
    for id in [b1, b2] {
        assert_eq!(backend_state(w.store(), id), Some(BACKEND_STATE_DRAINING));
    }
    assert!(
        w.take_released_backends().is_empty(),
        "drained, not deleted"
    );
    // No flow uses them: garbage collection deletes both.
    assert_eq!(w.collect_garbage().unwrap().backends, 2);
    assert_eq!(w.take_released_backends(), vec![b1, b2]);
    assert_eq!(
        w.store_mut().take_ops(),
        vec![Op::DeleteBackend(b1), Op::DeleteBackend(b2)]
    );
}

#[test]
fn delete_removes_master_first_and_garbage_collection_leaves_nothing() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let ids = w
        .upsert(&spec(key, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    w.store_mut().take_ops();
    w.remove(&key).unwrap();
    let [b1, b2] = ids.backend_ids[..] else {
        panic!()
    };
    assert_eq!(
        w.store_mut().take_ops(),
        vec![
            Op::DeleteMaster,
            Op::DeleteSlot(1),
            Op::DeleteSlot(2),
            Op::PutBackend(b1),
            Op::PutBackend(b2),
        ]
    );
    assert!(w.store().revnat.contains_key(&(Family::V4, ids.service_id)));
    w.collect_garbage().unwrap();
    assert_eq!(
        w.store_mut().take_ops(),
        vec![
            Op::DeleteBackend(b1),
            Op::DeleteBackend(b2),
            Op::DeleteRevNat(ids.service_id),
        ]
    );
    let maps = w.store();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.revnat.is_empty());
    // Removing it again is a no-op.
    w.remove(&key).unwrap();
    assert!(w.store_mut().take_ops().is_empty());
}

#[test]
fn a_frontend_without_endpoints_has_a_master_with_count_zero() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.11", 53);
    let ids = w.upsert(&spec(key, &[])).unwrap();
    assert!(ids.backend_ids.is_empty());
    assert_eq!(
        master(w.store(), &key).map(|m| (m.count, m.service_id)),
        Some((0, ids.service_id))
    );
}

#[test]
fn shared_backends_drain_only_when_no_frontend_uses_them() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let b = frontend("198.19.0.20", 80);
    let ids_a = w
        .upsert(&spec(a, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    let ids_b = w.upsert(&spec(b, &["198.18.1.3:80"])).unwrap();
    let shared = ids_a.backend_ids[1];
    assert_eq!(
        ids_b.backend_ids,
        vec![shared],
        "same backend address, same id"
    );
    assert_ne!(ids_a.service_id, ids_b.service_id);

    w.remove(&a).unwrap();
    assert_eq!(
        w.draining_backends().iter().copied().collect::<Vec<_>>(),
        vec![ids_a.backend_ids[0]]
    );
    assert_eq!(backend_state(w.store(), shared), Some(0));
    assert_eq!(resolved(w.store(), &b), addrs(&["198.18.1.3:80"]));

    w.remove(&b).unwrap();
    assert_eq!(
        w.draining_backends().iter().copied().collect::<Vec<_>>(),
        vec![ids_a.backend_ids[0], shared]
    );
    w.collect_garbage().unwrap();
    assert!(w.store().backends.is_empty());
}

#[test]
fn same_address_other_protocol_is_another_backend() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let tcp = frontend("198.19.0.10", 53);
    let udp = FrontendKey {
        proto: L4Proto::Udp,
        ..tcp
    };
    let t = w.upsert(&spec(tcp, &["198.18.1.2:53"])).unwrap();
    let u = w.upsert(&spec(udp, &["198.18.1.2:53"])).unwrap();
    assert_ne!(t.backend_ids, u.backend_ids);
    assert_ne!(t.service_id, u.service_id);
}

#[test]
fn ids_are_recovered_from_the_maps() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let b = frontend("fd00:19::10", 443);
    let ids_a = w
        .upsert(&spec(a, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    let ids_b = w.upsert(&spec(b, &["[fd00:18:0:1::2]:8443"])).unwrap();
    let maps = w.into_store();

    // A new writer on the same maps (a daemon restart) reuses every id.
    let mut w = ServiceWriter::open(maps).unwrap();
    assert_eq!(w.service_id(&a), Some(ids_a.service_id));
    assert_eq!(w.service_id(&b), Some(ids_b.service_id));
    w.store_mut().take_ops();
    assert_eq!(
        w.upsert(&spec(a, &["198.18.1.2:80", "198.18.1.3:80"]))
            .unwrap(),
        ids_a
    );
    assert_eq!(
        w.upsert(&spec(b, &["[fd00:18:0:1::2]:8443"])).unwrap(),
        ids_b
    );
    assert!(
        w.store_mut().take_ops().is_empty(),
        "identical state: nothing rewritten"
    );

    // New ids come after every recovered one, never a recovered id and never 0.
    let c = w
        .upsert(&spec(frontend("198.19.0.30", 80), &["198.18.1.9:80"]))
        .unwrap();
    let max_service = ids_a.service_id.max(ids_b.service_id);
    let max_backend = ids_a
        .backend_ids
        .iter()
        .chain(&ids_b.backend_ids)
        .max()
        .copied()
        .unwrap();
    assert!(c.service_id > max_service, "{c:?}");
    assert!(c.backend_ids[0] > max_backend, "{c:?}");
}

#[test]
fn a_freed_id_is_not_handed_out_again_right_away() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let first = w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    w.remove(&a).unwrap();
    let second = w
        .upsert(&spec(frontend("198.19.0.11", 80), &["198.18.1.5:80"]))
        .unwrap();
    assert_ne!(second.service_id, first.service_id);
    assert_ne!(second.backend_ids, first.backend_ids);
}

#[test]
fn backend_state_changes_rewrite_the_backend_only() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let ids = w.upsert(&spec(key, &["198.18.1.2:80"])).unwrap();
    w.store_mut().take_ops();
    let mut s = spec(key, &["198.18.1.2:80"]);
    s.backends[0].state = BACKEND_STATE_TERMINATING;
    s.backends[0].local = true;
    assert_eq!(w.upsert(&s).unwrap(), ids);
    assert_eq!(
        w.store_mut().take_ops(),
        vec![Op::PutBackend(ids.backend_ids[0])]
    );
    let b = w
        .store()
        .get_backend(Family::V4, ids.backend_ids[0])
        .unwrap()
        .unwrap();
    assert_eq!((b.state(), b.flags()), (BACKEND_STATE_TERMINATING, 1));
}

#[test]
fn family_mismatch_is_refused_before_any_write() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let err = w
        .upsert(&spec(key, &["198.18.1.2:80", "[fd00:18:0:1::2]:80"]))
        .unwrap_err();
    assert!(
        matches!(err, WriteError::FamilyMismatch { backend, .. } if backend.ip().is_ipv6()),
        "{err}"
    );
    assert!(w.store().ops.is_empty());
}

#[test]
fn a_full_services_map_rolls_back_and_keeps_the_previous_frontend() {
    let mut maps = FakeMaps::new();
    maps.services_max = Some(3); // master + 2 slots
    let mut w = ServiceWriter::open(maps).unwrap();
    let key = frontend("198.19.0.10", 80);
    let before = w
        .upsert(&spec(key, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    let snapshot = w.store().clone();
    w.store_mut().take_ops();

    let err = w
        .upsert(&spec(
            key,
            &["198.18.1.2:80", "198.18.1.3:80", "198.18.1.4:80"],
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::MapFull {
                map: "SLB_SVC4_V1",
                ..
            }
        ),
        "{err}"
    );
    let new_backend = match w.store_mut().take_ops()[..] {
        // The new backend was written, the third slot did not fit; the backend is deleted again.
        [Op::PutBackend(id), Op::DeleteBackend(again)] if id == again => id,
        ref other => panic!("unexpected ops {other:?}"),
    };
    assert!(!before.backend_ids.contains(&new_backend));
    assert_eq!(w.store().services, snapshot.services);
    assert_eq!(w.store().backends, snapshot.backends);
    assert_eq!(w.store().revnat, snapshot.revnat);
    assert_eq!(
        resolved(w.store(), &key),
        addrs(&["198.18.1.2:80", "198.18.1.3:80"])
    );

    // The writer is still consistent: the previous spec is a no-op, a smaller one works.
    assert_eq!(
        w.upsert(&spec(key, &["198.18.1.2:80", "198.18.1.3:80"]))
            .unwrap(),
        before
    );
    w.upsert(&spec(key, &["198.18.1.4:80"])).unwrap();
    assert_eq!(resolved(w.store(), &key), addrs(&["198.18.1.4:80"]));
}

#[test]
fn a_full_map_on_a_new_frontend_leaves_nothing_behind() {
    let mut maps = FakeMaps::new();
    maps.revnat_max = Some(1);
    let mut w = ServiceWriter::open(maps).unwrap();
    w.upsert(&spec(frontend("198.19.0.10", 80), &["198.18.1.2:80"]))
        .unwrap();
    let snapshot = w.store().clone();
    let key = frontend("198.19.0.11", 80);
    let err = w.upsert(&spec(key, &["198.18.1.7:80"])).unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::MapFull {
                map: "SLB_RNAT4_V1",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(w.store().services, snapshot.services);
    assert_eq!(w.store().backends, snapshot.backends);
    assert_eq!(w.store().revnat, snapshot.revnat);
    assert_eq!(w.service_id(&key), None);
}

#[test]
fn ipv6_frontends_use_the_v6_maps() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("fd00:19::a", 80);
    let ids = w
        .upsert(&spec(
            key,
            &["[fd00:18:0:1::2]:8080", "[fd00:18:0:2::2]:8080"],
        ))
        .unwrap();
    let maps = w.store();
    assert!(maps.services.keys().all(|k| k.family() == Family::V6));
    assert_eq!(maps.services.len(), 3);
    assert!(maps.backends.keys().all(|(f, _)| *f == Family::V6));
    assert_eq!(
        resolved(maps, &key),
        addrs(&["[fd00:18:0:1::2]:8080", "[fd00:18:0:2::2]:8080"])
    );
    let rn = maps
        .get_revnat(Family::V6, ids.service_id)
        .unwrap()
        .unwrap();
    assert_eq!(rn.addr(), "fd00:19::a".parse::<IpAddr>().unwrap());
}

#[test]
fn garbage_collection_keeps_what_live_flows_name_and_ignores_expired_entries() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let b = frontend("198.19.0.20", 80);
    let ids_a = w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    let ids_b = w.upsert(&spec(b, &["198.18.1.3:80"])).unwrap();
    let entry = |service_id, backend_id, expires_ns| FakeCt {
        proto: IPPROTO_TCP,
        entry: CtEntry {
            expires_ns,
            backend_id,
            service_id,
            ..Default::default()
        },
    };
    let maps = w.store_mut();
    maps.now_ns = 500;
    // a's flow is live; b's flow expired (an expired entry keeps nothing alive).
    maps.conntrack.insert(
        (Family::V4, 1),
        entry(ids_a.service_id, ids_a.backend_ids[0], 900),
    );
    maps.conntrack.insert(
        (Family::V6, 2),
        entry(ids_b.service_id, ids_b.backend_ids[0], 400),
    );
    w.remove(&a).unwrap();
    w.remove(&b).unwrap();
    let garbage = w.collect_garbage().unwrap();
    assert_eq!(
        garbage,
        Garbage {
            backends: 1,
            backends_kept: 1,
            revnat: 1,
            revnat_kept: 1
        }
    );
    let maps = w.store();
    assert!(maps
        .backends
        .contains_key(&(Family::V4, ids_a.backend_ids[0])));
    assert!(maps.revnat.contains_key(&(Family::V4, ids_a.service_id)));
    assert!(!maps.revnat.contains_key(&(Family::V4, ids_b.service_id)));
    // Nothing to collect: the conntrack maps are not even read.
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    w.store_mut()
        .conntrack
        .insert((Family::V4, 1), entry(1, 1, 900));
    assert_eq!(w.collect_garbage().unwrap(), Garbage::default());
}

#[test]
fn id_floors_persist_so_a_restart_never_reuses_an_id_conntrack_may_name() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let ids = w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    w.persist_next_ids().unwrap();
    w.remove(&a).unwrap();
    w.collect_garbage().unwrap();
    // The maps hold nothing that names the old ids any more...
    let maps = w.into_store();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.revnat.is_empty());
    // ...yet after a restart new ids come after them.
    let mut w = ServiceWriter::open(maps).unwrap();
    let again = w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    assert!(again.service_id > ids.service_id, "{again:?} vs {ids:?}");
    assert!(
        again.backend_ids[0] > ids.backend_ids[0],
        "{again:?} vs {ids:?}"
    );
}

#[test]
fn writes_never_list_a_whole_map_and_refcounts_survive_a_reopen() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let a = frontend("198.19.0.10", 80);
    let b = frontend("198.19.0.20", 80);
    w.upsert(&spec(a, &["198.18.1.2:80", "198.18.1.3:80"]))
        .unwrap();
    let ids_b = w
        .upsert(&spec(b, &["198.18.1.3:80", "198.18.1.4:80"]))
        .unwrap();
    let shared = ids_b.backend_ids[0];

    // A restart: the counts are rebuilt from the maps at open (the only listing).
    let mut w = ServiceWriter::open(w.into_store()).unwrap();
    w.store().list_calls.set(0);
    w.upsert(&spec(a, &["198.18.1.2:80"])).unwrap();
    assert!(w.draining_backends().is_empty(), "b still uses .3");
    assert!(w.store().get_backend(Family::V4, shared).unwrap().is_some());
    w.remove(&b).unwrap();
    assert_eq!(
        w.draining_backends().iter().copied().collect::<Vec<_>>(),
        vec![shared, ids_b.backend_ids[1]]
    );
    w.remove(&a).unwrap();
    assert_eq!(w.draining_backends().len(), 3);
    assert_eq!(w.store().list_calls.get(), 0, "no whole-map read per write");
}

#[test]
fn an_unchanged_frontend_costs_no_write() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let s = spec(key, &["198.18.1.2:80", "198.18.1.3:80"]);
    w.upsert(&s).unwrap();
    let writes = w.map_writes();
    w.store_mut().take_ops();
    w.upsert(&s).unwrap();
    assert_eq!(w.map_writes(), writes);
    assert!(w.store_mut().take_ops().is_empty());
}

#[test]
fn read_frontend_returns_what_upsert_wrote() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("fd00:19::a", 443);
    let mut s = spec(key, &["[fd00:18:0:1::2]:8443", "[fd00:18:0:2::2]:8443"]);
    s.backends[1].state = BACKEND_STATE_TERMINATING;
    s.backends[0].local = true;
    s.flags = 2;
    s.affinity_timeout_s = 30;
    w.upsert(&s).unwrap();
    assert_eq!(w.read_frontend(&key).unwrap(), Some(s));
    assert_eq!(w.read_frontend(&frontend("198.19.0.99", 80)).unwrap(), None);
    assert_eq!(w.frontends().copied().collect::<Vec<_>>(), vec![key]);
}

#[test]
fn a_crash_s_leftovers_are_drained_and_collected_by_the_repair() {
    let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
    let key = frontend("198.19.0.10", 80);
    let ids = w.upsert(&spec(key, &["198.18.1.2:80"])).unwrap();
    let mut maps = w.into_store();
    // A backend no slot names (a crash between the backend write and the slot write),
    // a slot beyond the master's count (a crash during a shrink) and a slot of a frontend
    // whose master was already deleted (a crash during a removal).
    let orphan = super::maps::BackendValue::new("198.18.1.9".parse().unwrap(), 80, 6, 0, 0);
    maps.put_backend(99, &orphan).unwrap();
    let beyond = SvcKey::new(key.addr, key.port, IPPROTO_TCP, key.scope, 2);
    maps.put_service(&beyond, &SvcValue::slot(99, ids.service_id))
        .unwrap();
    let headless = SvcKey::new("198.19.0.77".parse().unwrap(), 80, IPPROTO_TCP, 0, 1);
    maps.put_service(&headless, &SvcValue::slot(99, 1234))
        .unwrap();
    let mut w = ServiceWriter::open(maps).unwrap();
    assert_eq!(w.drain_unreferenced_backends().unwrap(), 1);
    assert!(w.store().get_service(&beyond).unwrap().is_none());
    assert!(w.store().get_service(&headless).unwrap().is_none());
    assert_eq!(backend_state(w.store(), 99), Some(BACKEND_STATE_DRAINING));
    assert_eq!(w.collect_garbage().unwrap().backends, 1);
    assert_eq!(w.take_released_backends(), vec![99]);
    assert_eq!(
        w.store().backends.keys().copied().collect::<Vec<_>>(),
        vec![(Family::V4, ids.backend_ids[0])]
    );
    assert_eq!(w.drain_unreferenced_backends().unwrap(), 0);
    assert_eq!(resolved(w.store(), &key), addrs(&["198.18.1.2:80"]));
}
