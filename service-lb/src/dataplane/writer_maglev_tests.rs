//! `ServiceWriter`'s Maglev tables on `FakeMaps`: write order (table before the master
//! that sets the flag, deleted after the master that clears it), writes only on change,
//! and the same table (by backend address) from writers whose backend ids differ.

use std::{collections::BTreeSet, net::SocketAddr};

use service_lb_common::{
    maglev::MaglevKey,
    service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_MAGLEV},
};

use super::{
    fake_maps::{FakeMaps, Op},
    maps::{MapStore, SvcKey},
    writer::{BackendSpec, FrontendKey, FrontendSpec, L4Proto, ServiceWriter},
};
use crate::model::maglev::TableSize;

const M: u32 = 251;

fn nodeport() -> FrontendKey {
    FrontendKey {
        addr: "198.19.255.1".parse().unwrap(),
        port: 30080,
        proto: L4Proto::Tcp,
        scope: SCOPE_EXTERNAL,
    }
}

fn spec(key: FrontendKey, backends: &[&str], flags: u16) -> FrontendSpec {
    FrontendSpec {
        key,
        backends: backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.parse().unwrap(),
                state: BACKEND_STATE_ACTIVE,
                local: false,
            })
            .collect(),
        flags,
        affinity_timeout_s: 0,
        source_ranges: vec![],
    }
}

fn writer(maps: FakeMaps) -> ServiceWriter<FakeMaps> {
    let mut w = ServiceWriter::open(maps).unwrap();
    w.set_maglev_table_size(TableSize::new(M).unwrap());
    w
}

fn service_id(w: &ServiceWriter<FakeMaps>, key: &FrontendKey) -> u32 {
    w.service_id(key).unwrap()
}

/// The stored table, each slot resolved to its backend's address through the backends
/// map (as the kernel resolves it).
fn table_addrs(w: &ServiceWriter<FakeMaps>, key: &FrontendKey) -> Option<Vec<SocketAddr>> {
    let maps = w.store();
    let table = maps
        .get_maglev(&MaglevKey::new(service_id(w, key), key.scope))
        .unwrap()?;
    Some(
        table
            .iter()
            .map(|id| {
                let b = maps.get_backend(key.family(), *id).unwrap().unwrap();
                SocketAddr::new(b.addr(), b.port())
            })
            .collect(),
    )
}

fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn master_count(w: &ServiceWriter<FakeMaps>, key: &FrontendKey) -> Option<u32> {
    w.store()
        .get_service(&SvcKey::new(
            key.addr,
            key.port,
            key.proto.number(),
            key.scope,
            0,
        ))
        .unwrap()
        .map(|m| m.count)
}

fn maglev_ops(ops: &[Op]) -> Vec<Op> {
    ops.iter()
        .copied()
        .filter(|op| {
            matches!(
                op,
                Op::PutMaglev { .. }
                    | Op::DeleteMaglev { .. }
                    | Op::PutMaster { .. }
                    | Op::DeleteMaster
            )
        })
        .collect()
}

const B: [&str; 4] = [
    "198.18.1.10:8080",
    "198.18.1.11:8080",
    "198.18.2.10:8080",
    "198.18.2.11:8080",
];

#[test]
fn the_table_is_written_before_the_master_and_names_only_the_frontends_backends() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B[..3], SVC_FLAG_MAGLEV)).unwrap();
    let sid = service_id(&w, &key);
    let ops = w.store_mut().take_ops();
    assert_eq!(
        maglev_ops(&ops),
        vec![
            Op::PutMaglev {
                service_id: sid,
                scope: SCOPE_EXTERNAL
            },
            Op::PutMaster { count: 3 },
        ]
    );
    // Every backend write came before the table.
    let table_at = ops
        .iter()
        .position(|op| matches!(op, Op::PutMaglev { .. }))
        .unwrap();
    assert!(ops[table_at..]
        .iter()
        .all(|op| !matches!(op, Op::PutBackend(_))));
    let table = table_addrs(&w, &key).unwrap();
    assert_eq!(table.len(), M as usize);
    assert_eq!(
        table.iter().copied().collect::<BTreeSet<_>>(),
        addrs(&B[..3])
    );
    // Balanced: 251 = 84 + 84 + 83.
    for b in addrs(&B[..3]) {
        let n = table.iter().filter(|a| **a == b).count();
        assert!((83..=84).contains(&n), "{b}: {n}");
    }
}

#[test]
fn an_unchanged_frontend_writes_nothing_even_after_a_restart() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B[..3], SVC_FLAG_MAGLEV)).unwrap();
    w.store_mut().take_ops();
    // Same set, other order: the same table.
    w.upsert(&spec(key, &[B[2], B[0], B[1]], SVC_FLAG_MAGLEV))
        .unwrap();
    let ops = w.store_mut().take_ops();
    assert!(
        ops.iter().all(|op| !matches!(op, Op::PutMaglev { .. })),
        "{ops:?}"
    );
    // A new writer over the same maps (a daemon restart) rebuilds, compares, and writes
    // no table.
    let mut w = writer(w.into_store());
    w.upsert(&spec(key, &B[..3], SVC_FLAG_MAGLEV)).unwrap();
    let ops = w.store_mut().take_ops();
    assert!(
        ops.iter().all(|op| !matches!(op, Op::PutMaglev { .. })),
        "{ops:?}"
    );
}

#[test]
fn a_backend_leaving_rewrites_the_table_before_the_smaller_master() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B, SVC_FLAG_MAGLEV)).unwrap();
    let before = table_addrs(&w, &key).unwrap();
    w.store_mut().take_ops();
    w.upsert(&spec(key, &[B[0], B[1], B[3]], SVC_FLAG_MAGLEV))
        .unwrap();
    let sid = service_id(&w, &key);
    assert_eq!(
        maglev_ops(&w.store_mut().take_ops()),
        vec![
            Op::PutMaglev {
                service_id: sid,
                scope: SCOPE_EXTERNAL
            },
            Op::PutMaster { count: 3 },
        ]
    );
    let after = table_addrs(&w, &key).unwrap();
    let gone: SocketAddr = B[2].parse().unwrap();
    assert!(!after.contains(&gone));
    // The entries of the remaining backends mostly stay where they were.
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    let own = before.iter().filter(|b| **b == gone).count();
    println!("writer: removing 1 of 4 moved {own} own + {moved} other entries of {M}");
    assert!(moved < own, "{moved} other entries moved (own {own})");
}

#[test]
fn clearing_the_flag_or_the_backends_deletes_the_table_after_the_master() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B[..2], SVC_FLAG_MAGLEV)).unwrap();
    let sid = service_id(&w, &key);
    w.store_mut().take_ops();
    w.upsert(&spec(key, &B[..2], 0)).unwrap();
    assert_eq!(
        maglev_ops(&w.store_mut().take_ops()),
        vec![
            Op::PutMaster { count: 2 },
            Op::DeleteMaglev {
                service_id: sid,
                scope: SCOPE_EXTERNAL
            },
        ]
    );
    assert!(w.store().maglev.is_empty());

    // Flag back on: a table again. No endpoint left: the master (count 0) first, then
    // the table goes.
    w.upsert(&spec(key, &B[..2], SVC_FLAG_MAGLEV)).unwrap();
    assert_eq!(w.store().maglev.len(), 1);
    w.store_mut().take_ops();
    w.upsert(&spec(key, &[], SVC_FLAG_MAGLEV)).unwrap();
    assert_eq!(master_count(&w, &key), Some(0));
    assert_eq!(
        maglev_ops(&w.store_mut().take_ops()),
        vec![
            Op::PutMaster { count: 0 },
            Op::DeleteMaglev {
                service_id: sid,
                scope: SCOPE_EXTERNAL
            },
        ]
    );
    assert!(w.store().maglev.is_empty());
}

#[test]
fn removing_the_frontend_deletes_its_table_after_the_master_also_after_a_restart() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B[..2], SVC_FLAG_MAGLEV)).unwrap();
    let sid = service_id(&w, &key);
    // Restart: the new writer knows the table only from the master's flag.
    let mut w = writer(w.into_store());
    w.store_mut().take_ops();
    w.remove(&key).unwrap();
    assert_eq!(
        maglev_ops(&w.store_mut().take_ops()),
        vec![
            Op::DeleteMaster,
            Op::DeleteMaglev {
                service_id: sid,
                scope: SCOPE_EXTERNAL
            },
        ]
    );
    assert!(w.store().maglev.is_empty());
}

#[test]
fn frontends_without_the_flag_never_touch_the_maglev_map() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B, 0)).unwrap();
    w.upsert(&spec(key, &B[..1], 0)).unwrap();
    w.remove(&key).unwrap();
    let ops = w.store_mut().take_ops();
    assert!(
        ops.iter()
            .all(|op| !matches!(op, Op::PutMaglev { .. } | Op::DeleteMaglev { .. })),
        "{ops:?}"
    );
}

#[test]
fn a_new_table_size_rewrites_the_table() {
    let key = nodeport();
    let mut w = writer(FakeMaps::new());
    w.upsert(&spec(key, &B, SVC_FLAG_MAGLEV)).unwrap();
    w.set_maglev_table_size(TableSize::new(257).unwrap());
    w.upsert(&spec(key, &B, SVC_FLAG_MAGLEV)).unwrap();
    assert_eq!(table_addrs(&w, &key).unwrap().len(), 257);
}

/// Two nodes: their writers hand out different backend ids (node 2 met the backends in
/// another order, through another Service first), yet their tables name the same backend
/// address in every slot.
#[test]
fn two_writers_with_different_ids_build_the_same_table_by_address() {
    let key = nodeport();
    let mut node1 = writer(FakeMaps::new());
    node1.upsert(&spec(key, &B, SVC_FLAG_MAGLEV)).unwrap();

    let mut node2 = writer(FakeMaps::new());
    let other = FrontendKey {
        port: 30081,
        ..nodeport()
    };
    node2.upsert(&spec(other, &[B[3], B[1]], 0)).unwrap();
    node2
        .upsert(&spec(key, &[B[2], B[3], B[0], B[1]], SVC_FLAG_MAGLEV))
        .unwrap();

    let id = |w: &ServiceWriter<FakeMaps>, a: &str| {
        w.backend_id(a.parse().unwrap(), L4Proto::Tcp).unwrap()
    };
    assert_ne!(
        B.map(|b| id(&node1, b)),
        B.map(|b| id(&node2, b)),
        "the ids should differ for the test to mean something"
    );
    assert_eq!(table_addrs(&node1, &key), table_addrs(&node2, &key));
}
