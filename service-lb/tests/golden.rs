//! Golden tests of the whole control path without a kernel: YAML scenario (parse_file) ->
//! ClusterState (a list: Init, InitApply..., InitDone) -> Syncer::full_sync on FakeMaps ->
//! a readable dump of the maps, snapshotted with insta. Then every object is deleted
//! (Delete events, applied incrementally) and the maps must be empty.
//!
//! Scenarios: `tests/golden/*.yaml`; updates: `tests/golden/update/<name>.{before,after}.yaml`.
//! Review a changed dump with `INSTA_UPDATE=always cargo test -p service-lb --test golden`
//! and `git diff service-lb/tests/snapshots/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::watcher::Event;
use rstest::rstest;
use service_lb::{
    dataplane::{
        sync::{SyncReport, Syncer},
        FakeCt, FakeMaps, Family, FrontendKey, L4Proto, MapStore, ServiceWriter,
    },
    model::{ClusterState, ServiceDesired},
    source::manifests::parse::{parse_file, Object},
};
use service_lb_common::{
    service::{
        BACKEND_FLAG_LOCAL, BACKEND_STATE_ACTIVE, BACKEND_STATE_DRAINING,
        BACKEND_STATE_TERMINATING, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_CLUSTER_IP,
    },
    CtEntry, SvcValue,
};

/// This node, for `local` backends.
const NODE: &str = "n1";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(path: &Path) -> Result<Vec<Object>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = parse_file(&text, false).with_context(|| format!("parsing {}", path.display()))?;
    Ok(parsed.objects)
}

/// The objects as one complete list per kind (what a source sends at start).
fn listed(objects: &[Object]) -> ClusterState {
    let mut state = ClusterState::new(Some(NODE.into()));
    state.apply_service(Event::<Service>::Init);
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    state.apply_node(Event::<Node>::Init);
    for object in objects.iter().cloned() {
        match object {
            Object::Service(s) => state.apply_service(Event::InitApply(s)),
            Object::EndpointSlice(s) => state.apply_endpoint_slice(Event::InitApply(s)),
            Object::Node(n) => state.apply_node(Event::InitApply(n)),
            // Not the model's: the daemon programs service CIDRs apart.
            Object::ServiceCidr(_) => {}
            // NetworkPolicy kinds are not part of the Service state.
            Object::Pod(_) | Object::Namespace(_) | Object::NetworkPolicy(_) => {}
        }
    }
    state.apply_service(Event::<Service>::InitDone);
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    state.apply_node(Event::<Node>::InitDone);
    assert!(state.synced());
    state
}

fn all_desired(state: &ClusterState) -> Vec<ServiceDesired> {
    state
        .service_names()
        .iter()
        .map(|n| state.desired(n))
        .collect()
}

/// Applies what the dirty Services want now (what the daemon does after events).
fn apply_dirty(state: &mut ClusterState, syncer: &mut Syncer<FakeMaps>) -> SyncReport {
    let desired: Vec<ServiceDesired> = state
        .take_dirty()
        .iter()
        .map(|n| state.desired(n))
        .collect();
    syncer.apply(&desired)
}

fn meta(object: &Object) -> &ObjectMeta {
    match object {
        Object::Service(s) => &s.metadata,
        Object::EndpointSlice(s) => &s.metadata,
        Object::Node(n) => &n.metadata,
        Object::ServiceCidr(c) => &c.metadata,
        Object::Pod(p) => &p.metadata,
        Object::Namespace(n) => &n.metadata,
        Object::NetworkPolicy(p) => &p.metadata,
    }
}

fn delete(state: &mut ClusterState, object: Object) {
    match object {
        Object::Service(s) => state.apply_service(Event::Delete(s)),
        Object::EndpointSlice(s) => state.apply_endpoint_slice(Event::Delete(s)),
        Object::Node(n) => state.apply_node(Event::Delete(n)),
        Object::ServiceCidr(_) => {}
        Object::Pod(_) | Object::Namespace(_) | Object::NetworkPolicy(_) => {}
    }
}

fn apply(state: &mut ClusterState, object: Object) {
    match object {
        Object::Service(s) => state.apply_service(Event::Apply(s)),
        Object::EndpointSlice(s) => state.apply_endpoint_slice(Event::Apply(s)),
        Object::Node(n) => state.apply_node(Event::Apply(n)),
        Object::ServiceCidr(_) => {}
        Object::Pod(_) | Object::Namespace(_) | Object::NetworkPolicy(_) => {}
    }
}

fn proto_name(proto: u8) -> String {
    L4Proto::from_number(proto).map_or_else(|| format!("proto{proto}"), |p| p.to_string())
}

/// The maps as a reader sees them: every frontend (sorted), its slots resolved to backends,
/// the reverse-NAT entries, and anything left over (unreferenced backends, lone slots).
fn dump(syncer: &Syncer<FakeMaps>, desired: &[ServiceDesired]) -> String {
    let maps = syncer.writer().store();
    let mut out = String::new();
    let mut referenced = BTreeSet::new();
    let mut masters: Vec<_> = maps
        .services
        .iter()
        .filter(|(k, _)| k.slot() == 0)
        .collect();
    masters.sort_by_key(|(k, _)| (k.family(), k.addr(), k.port(), k.proto(), k.scope()));
    out.push_str("frontends:\n");
    for (key, master) in &masters {
        let frontend = FrontendKey {
            addr: key.addr(),
            port: key.port(),
            proto: L4Proto::from_number(key.proto()).unwrap_or(L4Proto::Tcp),
            scope: key.scope(),
        };
        let owner = syncer
            .owner(&frontend)
            .map_or("(no owner)".to_string(), |n| n.to_string());
        let flags = if master.flags == SVC_FLAG_CLUSTER_IP {
            "cluster-ip".to_string()
        } else {
            format!("{:#x}", master.flags)
        };
        let scope = match key.scope() {
            SCOPE_EXTERNAL => "external".to_string(),
            SCOPE_INTERNAL => "internal".to_string(),
            other => format!("scope {other}"),
        };
        let _ = writeln!(
            out,
            "  {}/{} {scope} [{owner}] service_id {} {flags} affinity {}s count {}",
            SocketAddr::new(key.addr(), key.port()),
            proto_name(key.proto()),
            master.service_id,
            master.affinity_timeout_s,
            master.count
        );
        for slot in 1..=master.count as u16 {
            let Some(value) = maps.services.get(&key.with_slot(slot)) else {
                let _ = writeln!(out, "    slot {slot}: MISSING");
                continue;
            };
            referenced.insert((key.family(), value.backend_id));
            let backend = match maps.backends.get(&(key.family(), value.backend_id)) {
                None => "MISSING BACKEND".to_string(),
                Some(b) => {
                    let state = match b.state() {
                        BACKEND_STATE_ACTIVE => "active".to_string(),
                        BACKEND_STATE_TERMINATING => "terminating".to_string(),
                        BACKEND_STATE_DRAINING => "draining".to_string(),
                        other => format!("state {other}"),
                    };
                    let local = if b.flags() & BACKEND_FLAG_LOCAL != 0 {
                        " local"
                    } else {
                        ""
                    };
                    format!(
                        "{}/{} {state}{local}",
                        SocketAddr::new(b.addr(), b.port()),
                        proto_name(b.proto())
                    )
                }
            };
            let service_id = if value.service_id == master.service_id {
                String::new()
            } else {
                format!(" (slot names service {})", value.service_id)
            };
            let _ = writeln!(
                out,
                "    slot {slot} -> backend {} {backend}{service_id}",
                value.backend_id
            );
        }
    }
    let lone_slots: Vec<_> = maps
        .services
        .keys()
        .filter(|k| {
            k.slot() != 0
                && maps
                    .services
                    .get(&k.with_slot(0))
                    .is_none_or(|m| u32::from(k.slot()) > m.count)
        })
        .collect();
    if !lone_slots.is_empty() {
        let _ = writeln!(out, "slots outside any master: {lone_slots:?}");
    }
    out.push_str("revnat:\n");
    let mut revnat: Vec<_> = maps.revnat.iter().collect();
    revnat.sort_by_key(|((family, id), _)| (*family, *id));
    for ((_, id), value) in revnat {
        let _ = writeln!(
            out,
            "  {id} -> {}",
            SocketAddr::new(value.addr(), value.port())
        );
    }
    let unreferenced: Vec<String> = maps
        .backends
        .iter()
        .filter(|(k, _)| !referenced.contains(*k))
        .map(|((_, id), b)| {
            let state = if b.state() == BACKEND_STATE_DRAINING {
                "draining"
            } else {
                "NOT DRAINING"
            };
            format!("{id} {} {state}", SocketAddr::new(b.addr(), b.port()))
        })
        .collect();
    if !unreferenced.is_empty() {
        let _ = writeln!(out, "backends in no slot: {unreferenced:?}");
    }
    let skipped: Vec<String> = desired
        .iter()
        .flat_map(|d| {
            d.skipped
                .iter()
                .map(move |s| format!("  {}: {} {}: {}", d.name, s.reason, s.object, s.detail))
        })
        .collect();
    if !skipped.is_empty() {
        out.push_str("skipped:\n");
        out.push_str(&skipped.join("\n"));
        out.push('\n');
    }
    out
}

fn assert_empty(maps: &FakeMaps) {
    assert!(
        maps.services.is_empty(),
        "services left: {:?}",
        maps.services
    );
    assert!(
        maps.backends.is_empty(),
        "backends left: {:?}",
        maps.backends
    );
    assert!(maps.revnat.is_empty(), "revnat left: {:?}", maps.revnat);
}

/// Snapshots in `tests/snapshots/`, described by the input they come from.
fn settings(input: &str) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_description(format!("maps after a full sync of tests/golden/{input}"));
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// Every scenario file; a file not listed here fails `every_scenario_file_has_a_case`.
const SCENARIOS: &[&str] = &[
    "multiple_slices",
    "named_ports",
    "port_differs_from_target_port",
    "terminating_fallback",
    "dual_stack",
    "ignored_services",
    "sctp_and_udp",
    "invalid_input",
    "duplicate_endpoints",
    "no_endpoints",
];

#[rstest]
#[case::multiple_slices("multiple_slices")]
#[case::named_ports("named_ports")]
#[case::port_differs_from_target_port("port_differs_from_target_port")]
#[case::terminating_fallback("terminating_fallback")]
#[case::dual_stack("dual_stack")]
#[case::ignored_services("ignored_services")]
#[case::sctp_and_udp("sctp_and_udp")]
#[case::invalid_input("invalid_input")]
#[case::duplicate_endpoints("duplicate_endpoints")]
#[case::no_endpoints("no_endpoints")]
fn scenario(#[case] name: &str) -> Result<()> {
    assert!(SCENARIOS.contains(&name));
    let objects = load(&golden_dir().join(format!("{name}.yaml")))?;
    let mut state = listed(&objects);
    let desired = all_desired(&state);
    let mut syncer = Syncer::new(ServiceWriter::open(FakeMaps::new())?);
    let report = syncer.full_sync(&desired);
    if !report.failed.is_empty() || !report.errors.is_empty() {
        bail!("sync failed: {report:?}");
    }
    settings(&format!("{name}.yaml"))
        .bind(|| insta::assert_snapshot!(name, dump(&syncer, &desired)));

    // The same full sync again writes nothing.
    syncer.writer_mut().store_mut().take_ops();
    let again = syncer.full_sync(&all_desired(&state));
    assert!(again.changed.is_empty(), "{again:?}");
    assert!(syncer.writer_mut().store_mut().take_ops().is_empty());

    // Delete every object; the incremental apply leaves no frontend, only drained
    // backends; with no flow using them, garbage collection leaves the maps empty.
    state.take_dirty();
    for object in objects {
        delete(&mut state, object);
    }
    let report = apply_dirty(&mut state, &mut syncer);
    assert!(report.failed.is_empty(), "{report:?}");
    let store = syncer.writer().store();
    assert!(store.services.is_empty(), "{:?}", store.services);
    assert!(store
        .backends
        .values()
        .all(|b| b.state() == BACKEND_STATE_DRAINING));
    syncer.collect_garbage(&mut SyncReport::default());
    assert_empty(syncer.writer().store());
    assert!(state.service_names().is_empty());
    Ok(())
}

#[test]
fn every_scenario_file_has_a_case() -> Result<()> {
    let mut files: Vec<String> = std::fs::read_dir(golden_dir())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_string)
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
    Ok(())
}

/// Objects keyed by kind and namespace/name, to turn two files into Apply/Delete events.
fn by_identity(objects: Vec<Object>) -> BTreeMap<(String, String, String), Object> {
    objects
        .into_iter()
        .map(|o| {
            let kind = match &o {
                Object::Service(_) => "Service",
                Object::EndpointSlice(_) => "EndpointSlice",
                Object::Node(_) => "Node",
                Object::ServiceCidr(_) => "ServiceCIDR",
                Object::Pod(_) => "Pod",
                Object::Namespace(_) => "Namespace",
                Object::NetworkPolicy(_) => "NetworkPolicy",
            };
            let m = meta(&o);
            let id = (
                kind.to_string(),
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            );
            (id, o)
        })
        .collect()
}

/// `before` is listed and fully synced, one live conntrack entry is seeded per slot (its
/// frontend, backend and protocol), then `after` arrives as watch events (Apply for
/// objects in it, Delete for the others).
fn run_update(name: &str, maps: FakeMaps) -> Result<(Syncer<FakeMaps>, SyncReport, String)> {
    let dir = golden_dir().join("update");
    let before = load(&dir.join(format!("{name}.before.yaml")))?;
    let after = load(&dir.join(format!("{name}.after.yaml")))?;
    let mut state = listed(&before);
    let mut syncer = Syncer::new(ServiceWriter::open(maps)?);
    let desired = all_desired(&state);
    let first = syncer.full_sync(&desired);
    if !first.failed.is_empty() {
        bail!("first sync failed: {first:?}");
    }
    let mut out = format!("before:\n{}", dump(&syncer, &desired));

    let store = syncer.writer_mut().store_mut();
    let slots: Vec<(Family, u8, SvcValue)> = store
        .services
        .iter()
        .filter(|(k, _)| k.slot() != 0)
        .map(|(k, v)| (k.family(), k.proto(), *v))
        .collect();
    for (flow, (family, proto, slot)) in slots.into_iter().enumerate() {
        store.conntrack.insert(
            (family, flow as u64),
            FakeCt {
                proto,
                entry: CtEntry {
                    expires_ns: 1,
                    backend_id: slot.backend_id,
                    service_id: slot.service_id,
                    ..Default::default()
                },
            },
        );
    }
    store.take_ops();

    state.take_dirty();
    let mut before = by_identity(before);
    for (id, object) in by_identity(after) {
        before.remove(&id);
        apply(&mut state, object);
    }
    for (_, object) in before {
        delete(&mut state, object);
    }
    let report = apply_dirty(&mut state, &mut syncer);
    let ops = syncer.writer_mut().store_mut().take_ops();
    let _ = writeln!(out, "update:\n  changed {:?} unchanged {} upserted {} removed {} udp conntrack flushed {} failed {:?}",
        report.changed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        report.unchanged, report.frontends_upserted, report.frontends_removed, report.udp_conntrack_flushed, report.failed);
    out.push_str("ops:\n");
    for op in ops {
        let _ = writeln!(out, "  {op:?}");
    }
    let remaining: Vec<u32> = syncer
        .writer()
        .store()
        .conntrack
        .values()
        .map(|e| e.entry.backend_id)
        .collect();
    let _ = writeln!(out, "conntrack entries left for backends {remaining:?}");
    out.push_str(&format!("after:\n{}", dump(&syncer, &all_desired(&state))));
    Ok((syncer, report, out))
}

#[test]
fn update_backend_removed() -> Result<()> {
    let (mut syncer, report, out) = run_update("backend_removed", FakeMaps::new())?;
    // kube-proxy flushes the UDP flows of an endpoint that stopped serving, only those:
    // here without a conntrack pass. The endpoint is UDP and no slot names it any more,
    // so its backend entry is deleted at once: the kernel re-balances each of its flows on
    // the next datagram (a connectionless flow whose backend id is gone picks a live one).
    // Either way no UDP flow may still lead to it; TCP flows are never touched.
    let removed = syncer
        .writer()
        .backend_id("198.18.1.3:53".parse()?, L4Proto::Udp)
        .context("the removed backend's id stays reserved while flows name it")?;
    let store = syncer.writer().store();
    let still_reaches_it = store.backends.keys().any(|(_, id)| *id == removed);
    let flows_on_it = store
        .conntrack
        .values()
        .filter(|e| e.entry.backend_id == removed)
        .count();
    assert!(
        !still_reaches_it || flows_on_it == 0,
        "UDP flows of the removed endpoint still reach it ({flows_on_it} entries)"
    );
    assert_eq!(
        report.udp_conntrack_flushed + report.udp_backends_retired,
        1,
        "one UDP endpoint stopped serving: flushed or retired, once"
    );
    assert!(syncer.writer().draining_backends().contains(&removed));
    // Once no flow names it, garbage collection frees its id.
    syncer.writer_mut().store_mut().conntrack.retain(|_, e| e.entry.backend_id != removed);
    syncer.collect_garbage(&mut SyncReport::default());
    assert!(syncer
        .writer()
        .backend_id("198.18.1.3:53".parse()?, L4Proto::Udp)
        .is_none());
    settings("update/backend_removed.{before,after}.yaml, then the update as events")
        .bind(|| insta::assert_snapshot!("update_backend_removed", out));
    Ok(())
}

#[test]
fn a_full_map_keeps_one_service_at_its_previous_state_and_applies_the_others() -> Result<()> {
    let objects = load(&golden_dir().join("multiple_slices.yaml"))?;
    let mut maps = FakeMaps::new();
    // web: master + 3 slots; a second Service needs 2 more; growing web by 2 does not fit.
    maps.services_max = Some(7);
    let mut state = listed(&objects);
    let mut syncer = Syncer::new(ServiceWriter::open(maps)?);
    assert!(syncer.full_sync(&all_desired(&state)).failed.is_empty());
    let web_before = dump(&syncer, &[]);
    state.take_dirty();

    let more: Vec<Object> = parse_file(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-c
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.4.2]
- addresses: [198.18.4.3]
- addresses: [198.18.4.4]
- addresses: [198.18.4.5]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop}
spec:
  clusterIP: 198.19.0.11
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-1
  namespace: shop
  labels: {kubernetes.io/service-name: other}
addressType: IPv4
ports: [{port: 53, protocol: UDP}]
endpoints: [{addresses: [198.18.5.2]}]
",
        false,
    )?
    .objects;
    for object in more {
        apply(&mut state, object);
    }
    let report = apply_dirty(&mut state, &mut syncer);
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert!(
        failed[0].starts_with("shop/web: ") && failed[0].contains("SLB_SVC4_V1 is full"),
        "{failed:?}"
    );
    assert_eq!(
        report
            .changed
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["shop/other"]
    );

    // web's entries are exactly as before; other is programmed next to them.
    let now = dump(&syncer, &[]);
    for line in web_before.lines() {
        assert!(now.contains(line), "lost `{line}`:\n{now}");
    }
    assert!(now.contains("[shop/other]"), "{now}");
    let store = syncer.writer().store();
    assert_eq!(store.list_services(Family::V4)?.len(), 6, "web 4 + other 2");
    Ok(())
}
