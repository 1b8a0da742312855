//! The reconciler and the loop on the in-memory maps, driven by a hand-made channel of
//! source events: nothing is written before every kind has listed, the first write is a
//! full sync that removes what no Service wants, later changes are incremental.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use prometheus_client::registry::Registry;
use serde_json::json;
use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{event_loop, LoopError, LoopTiming, Reconciler};
use crate::{
    dataplane::{
        sync::Syncer, BackendSpec, FakeMaps, FrontendKey, FrontendSpec, L4Proto, ServiceWriter,
    },
    source::{Rejection, SourceEvent},
    telemetry::{
        health::{self, Health},
        metrics::{encode_text, Metrics},
    },
};

fn service(name: &str, ip: &str) -> Arc<Service> {
    Arc::new(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("a valid Service"))
}

fn slice(service: &str, addrs: &[&str]) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n1"}))
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .expect("a valid EndpointSlice"),
    )
}

fn node(name: &str) -> Arc<Node> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).expect("a valid Node"))
}

fn key(ip: &str) -> FrontendKey {
    FrontendKey {
        addr: ip.parse().expect("ip"),
        port: 80,
        proto: L4Proto::Tcp,
        scope: SCOPE_EXTERNAL,
    }
}

/// Maps as a previous daemon left them: one frontend no Service wants any more.
fn maps_left_by_a_previous_run() -> FakeMaps {
    let mut writer = ServiceWriter::open(FakeMaps::new()).expect("opens");
    writer
        .upsert(&FrontendSpec {
            key: key("198.19.0.99"),
            backends: vec![BackendSpec {
                addr: "198.18.1.99:8080".parse().expect("addr"),
                state: BACKEND_STATE_ACTIVE,
                local: true,
            }],
            flags: SVC_FLAG_CLUSTER_IP,
            affinity_timeout_s: 0,
            source_ranges: Vec::new(),
        })
        .expect("programs");
    let mut maps = writer.into_store();
    maps.take_ops();
    maps
}

struct Harness {
    reconciler: Reconciler<FakeMaps>,
    registry: Registry,
    health: Arc<Health>,
}

fn harness() -> Harness {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health::new());
    let writer = ServiceWriter::open(maps_left_by_a_previous_run()).expect("recovers");
    let reconciler = Reconciler::new(Syncer::new(writer), "n1".into(), metrics, health.clone());
    Harness {
        reconciler,
        registry,
        health,
    }
}

impl Harness {
    fn maps(&self) -> &FakeMaps {
        self.reconciler
            .syncer()
            .expect("not syncing")
            .writer()
            .store()
    }

    fn frontends(&self) -> BTreeSet<String> {
        let rows = crate::cli::inspect::services::rows(self.maps()).expect("readable");
        rows.into_iter()
            .map(|r| format!("{} -> {}", r.frontend, r.backends.join(",")))
            .collect()
    }

    fn send(&mut self, event: SourceEvent) {
        self.reconciler.on_event(event);
    }

    /// Every kind's first list; `complete: false` leaves the EndpointSlice list unfinished.
    fn initial_lists(&mut self, complete: bool) {
        self.send(SourceEvent::Service(Box::new(Event::Init)));
        self.send(SourceEvent::Service(Box::new(Event::InitApply(service(
            "web",
            "198.19.0.10",
        )))));
        self.send(SourceEvent::Service(Box::new(Event::InitDone)));
        self.send(SourceEvent::EndpointSlice(Box::new(Event::Init)));
        self.send(SourceEvent::EndpointSlice(Box::new(Event::InitApply(
            slice("web", &["198.18.1.11", "198.18.1.12"]),
        ))));
        self.send(SourceEvent::Node(Box::new(Event::Init)));
        self.send(SourceEvent::Node(Box::new(Event::InitApply(node("n1")))));
        self.send(SourceEvent::Node(Box::new(Event::InitDone)));
        if complete {
            self.send(SourceEvent::EndpointSlice(Box::new(Event::InitDone)));
        }
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn nothing_is_written_before_every_kind_has_listed() {
    let mut h = harness();
    let before = h.frontends();
    h.initial_lists(false);
    assert!(
        !h.reconciler.wants_sync(),
        "the EndpointSlice list is not complete"
    );
    assert_eq!(h.reconciler.sync().await.expect("no error"), None);
    assert!(h.maps().ops.is_empty(), "wrote {:?}", h.maps().ops);
    assert_eq!(
        h.frontends(),
        before,
        "the maps are the truth until the first full sync"
    );
    assert!(!health::readyz(&h.health.snapshot()));
}

#[tokio::test]
async fn the_first_sync_is_full_and_later_ones_incremental() {
    let mut h = harness();
    h.health.set_attached();
    h.initial_lists(true);
    assert!(h.reconciler.wants_sync());
    let done = h.reconciler.sync().await.expect("syncs").expect("did sync");
    assert_eq!(done.kind, crate::telemetry::metrics::SyncKind::Full);
    assert_eq!(
        h.frontends(),
        set(&["198.19.0.10:80/tcp -> 198.18.1.11:8080,198.18.1.12:8080"]),
        "the stale frontend is gone, web is programmed"
    );
    assert!(health::readyz(&h.health.snapshot()));
    assert!(!h.reconciler.wants_sync());

    h.send(SourceEvent::EndpointSlice(Box::new(Event::Apply(slice(
        "web",
        &["198.18.1.12"],
    )))));
    assert!(h.reconciler.wants_sync());
    let done = h.reconciler.sync().await.expect("syncs").expect("did sync");
    assert_eq!(done.kind, crate::telemetry::metrics::SyncKind::Incremental);
    assert_eq!(done.services, 1, "only the dirty Service is computed");
    assert_eq!(
        h.frontends(),
        set(&["198.19.0.10:80/tcp -> 198.18.1.12:8080"])
    );
    assert_eq!(h.health.snapshot().oldest_pending, None);
}

#[tokio::test]
async fn rejections_and_sync_failures_are_counted() {
    let mut h = harness();
    h.initial_lists(true);
    h.reconciler.sync().await.expect("syncs");
    h.send(SourceEvent::Rejected(Rejection {
        origin: "broken.yaml:3".into(),
        reason: "parse_error",
        detail: "mapping values are not allowed here".into(),
    }));
    // A Service too big for a one-entry map: it fails, the others keep their state.
    if let Some(syncer) = h.reconciler.syncer_mut() {
        syncer.writer_mut().store_mut().services_max = Some(4);
    }
    h.send(SourceEvent::Service(Box::new(Event::Apply(service(
        "big",
        "198.19.0.20",
    )))));
    let addrs: Vec<String> = (20..30).map(|i| format!("198.18.1.{i}")).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    h.send(SourceEvent::EndpointSlice(Box::new(Event::Apply(slice(
        "big", &addrs,
    )))));
    let done = h.reconciler.sync().await.expect("syncs").expect("did sync");
    assert_eq!(done.report.failed.len(), 1, "{:?}", done.report);
    assert_eq!(
        h.frontends(),
        set(&["198.19.0.10:80/tcp -> 198.18.1.11:8080,198.18.1.12:8080"]),
        "nothing of the big Service, web untouched"
    );
    let text = encode_text(&h.registry).expect("encodes");
    assert!(
        text.contains("service_lb_objects_skipped_total{kind=\"input\",reason=\"parse_error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("service_lb_sync_failures_total{service=\"default/big\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_loop_syncs_stops_on_cancel_and_reports_a_dead_source() {
    let mut h = harness();
    let timing = LoopTiming {
        min_sync_interval: Duration::from_millis(1),
        resync_interval: Duration::from_secs(3600),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let health = h.health.clone();
    let driver = {
        let cancel = cancel.clone();
        let health = health.clone();
        async move {
            for e in [
                SourceEvent::Service(Box::new(Event::Init)),
                SourceEvent::Service(Box::new(Event::InitApply(service("web", "198.19.0.10")))),
                SourceEvent::Service(Box::new(Event::InitDone)),
                SourceEvent::EndpointSlice(Box::new(Event::Init)),
                SourceEvent::EndpointSlice(Box::new(Event::InitApply(slice(
                    "web",
                    &["198.18.1.11"],
                )))),
                SourceEvent::EndpointSlice(Box::new(Event::InitDone)),
                SourceEvent::Node(Box::new(Event::Init)),
                SourceEvent::Node(Box::new(Event::InitDone)),
            ] {
                tx.send(e).await.expect("loop alive");
            }
            // Wait (bounded) for the first full sync, then stop.
            for _ in 0..500 {
                if health.snapshot().first_full_sync {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cancel.cancel();
            tx
        }
    };
    let (result, tx) = tokio::join!(
        event_loop::run(
            &mut h.reconciler,
            &mut rx,
            timing,
            health.clone(),
            cancel.clone()
        ),
        driver
    );
    result.expect("a cancelled loop ends cleanly");
    assert!(health.snapshot().first_full_sync);
    assert_eq!(
        h.frontends(),
        set(&["198.19.0.10:80/tcp -> 198.18.1.11:8080"])
    );

    drop(tx);
    let result = event_loop::run(
        &mut h.reconciler,
        &mut rx,
        timing,
        health,
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(result, Err(LoopError::SourceEnded)), "{result:?}");
}

fn service_cidr(name: &str, cidrs: &[&str]) -> Arc<k8s_openapi::api::networking::v1::ServiceCIDR> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"cidrs": cidrs}}))
            .expect("a valid ServiceCIDR"),
    )
}

#[tokio::test]
async fn service_cidr_objects_join_the_flag_once_listed_and_never_hold_up_services() {
    use crate::dataplane::{program_service_cidrs, Cidr};
    let cidr = |t: &str| -> Cidr { t.parse().expect("cidr") };
    let flag = [cidr("198.19.0.0/17")];
    // As the daemon starts: the flag's ranges written before the reconciler exists.
    let mut maps = maps_left_by_a_previous_run();
    program_service_cidrs(&mut maps, &flag).expect("programs");
    let mut h = harness();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    h.registry = registry;
    let writer = ServiceWriter::open(maps).expect("recovers");
    h.reconciler = Reconciler::new(Syncer::new(writer), "n1".into(), metrics, h.health.clone())
        .with_service_cidr_flag(&flag);
    let programmed = |h: &Harness| -> Vec<String> {
        h.maps()
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect()
    };

    // Services sync while the ServiceCIDR list has not even started (an API server
    // without the kind never lists it).
    h.initial_lists(true);
    assert!(h.reconciler.wants_sync());
    h.reconciler.sync().await.expect("syncs").expect("did sync");
    assert_eq!(programmed(&h), ["198.19.0.0/17"]);

    h.send(SourceEvent::ServiceCidr(Box::new(Event::Init)));
    h.send(SourceEvent::ServiceCidr(Box::new(Event::InitApply(
        service_cidr("kubernetes", &["198.19.128.0/17", "fd00:19::/108"]),
    ))));
    assert_eq!(
        programmed(&h),
        ["198.19.0.0/17"],
        "an unfinished list is not used"
    );
    h.send(SourceEvent::ServiceCidr(Box::new(Event::InitDone)));
    assert_eq!(
        programmed(&h),
        ["198.19.0.0/17", "198.19.128.0/17", "fd00:19::/108"]
    );

    h.send(SourceEvent::ServiceCidr(Box::new(Event::Delete(
        service_cidr("kubernetes", &[]),
    ))));
    assert_eq!(programmed(&h), ["198.19.0.0/17"], "the flag's range stays");
    let text = encode_text(&h.registry).expect("encodes");
    assert!(
        text.contains("kind=\"ServiceCIDR\""),
        "ServiceCIDR events are counted: {text}"
    );
}

/// Records what the reconciler asks the event sink for.
#[derive(Default)]
struct RecordingSink(std::sync::Mutex<Vec<String>>);

impl super::events::EventSink for RecordingSink {
    fn started(&self, node: &str, services: usize) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("started {node} {services}"));
    }
    fn sync_failed(&self, service: &crate::model::ServiceName, message: &str) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("failed {service}: {message}"));
    }
}

#[tokio::test]
async fn events_on_the_first_full_sync_and_on_failed_services() {
    let mut h = harness();
    let sink = Arc::new(RecordingSink::default());
    h.reconciler =
        std::mem::replace(&mut h.reconciler, harness().reconciler).with_events(sink.clone());
    h.initial_lists(true);
    h.reconciler.sync().await.expect("syncs");
    assert_eq!(
        *sink.0.lock().expect("lock"),
        vec!["started n1 1".to_string()]
    );

    if let Some(syncer) = h.reconciler.syncer_mut() {
        syncer.writer_mut().store_mut().services_max = Some(4);
    }
    h.send(SourceEvent::Service(Box::new(Event::Apply(service(
        "big",
        "198.19.0.20",
    )))));
    let addrs: Vec<String> = (20..30).map(|i| format!("198.18.1.{i}")).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    h.send(SourceEvent::EndpointSlice(Box::new(Event::Apply(slice(
        "big", &addrs,
    )))));
    h.reconciler.sync().await.expect("syncs");
    // A periodic full resync: no second start event.
    h.reconciler.resync().await.expect("resyncs");
    let seen = sink.0.lock().expect("lock").clone();
    assert_eq!(seen[0], "started n1 1");
    assert!(seen.len() >= 2, "{seen:?}");
    for failed in &seen[1..] {
        assert!(
            failed.starts_with("failed default/big: ") && failed.contains("full"),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn a_node_tainted_for_deletion_or_being_deleted_is_not_eligible() {
    let mut h = harness();
    assert!(h.health.snapshot().node_eligible);
    let tainted: Arc<Node> = Arc::new(
        serde_json::from_value(json!({"metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]}}))
        .expect("a valid Node"),
    );
    h.send(SourceEvent::Node(Box::new(Event::Apply(tainted))));
    assert!(!h.health.snapshot().node_eligible, "tainted");
    h.send(SourceEvent::Node(Box::new(Event::Apply(node("n1")))));
    assert!(h.health.snapshot().node_eligible, "taint removed");
    // Another node's taint is not ours.
    let other: Arc<Node> = Arc::new(
        serde_json::from_value(json!({"metadata": {"name": "n2"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}}))
        .expect("a valid Node"),
    );
    h.send(SourceEvent::Node(Box::new(Event::Apply(other))));
    assert!(h.health.snapshot().node_eligible);
    let deleting: Arc<Node> = Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": "n1", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        )
        .expect("a valid Node"),
    );
    h.send(SourceEvent::Node(Box::new(Event::Apply(deleting))));
    assert!(!h.health.snapshot().node_eligible, "being deleted");
}

#[tokio::test]
async fn health_checks_follow_the_services() {
    let mut h = harness();
    h.initial_lists(true);
    h.reconciler.sync().await.expect("syncs");
    assert!(
        h.reconciler.health_checks().is_empty(),
        "a ClusterIP Service has none"
    );
    let lb: Arc<Service> = Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32000, "clusterIP": "198.19.0.10",
                     "ports": [{"name": "http", "port": 80, "nodePort": 31000, "protocol": "TCP"}]}
        }))
        .expect("a valid Service"),
    );
    h.send(SourceEvent::Service(Box::new(Event::Apply(lb.clone()))));
    h.reconciler.sync().await.expect("syncs");
    let checks: Vec<(String, u16, usize)> = h
        .reconciler
        .health_checks()
        .iter()
        .map(|(n, c)| (n.to_string(), c.port, c.local_endpoints))
        .collect();
    assert_eq!(checks, [("default/web".to_owned(), 32000, 2)]);
    h.send(SourceEvent::EndpointSlice(Box::new(Event::Apply(slice(
        "web",
        &["198.18.1.12"],
    )))));
    h.reconciler.sync().await.expect("syncs");
    assert_eq!(
        h.reconciler
            .health_checks()
            .values()
            .next()
            .map(|c| c.local_endpoints),
        Some(1)
    );
    h.send(SourceEvent::Service(Box::new(Event::Delete(lb))));
    h.reconciler.sync().await.expect("syncs");
    assert!(
        h.reconciler.health_checks().is_empty(),
        "gone with the Service"
    );
}

/// A burst of 1,000 EndpointSlice changes queued at once costs one incremental sync
/// (after the first full sync), with the loop's default timing (no minimum interval), and
/// the maps end with the last change.
#[tokio::test]
async fn a_burst_of_changes_costs_one_sync_not_one_per_change() {
    let mut h = harness();
    h.initial_lists(true);
    h.reconciler.sync().await.expect("syncs").expect("did sync");
    assert_eq!(h.reconciler.syncs_run(), 1, "the first full sync");
    let timing = LoopTiming {
        min_sync_interval: Duration::ZERO,
        resync_interval: Duration::from_secs(3600),
    };
    const CHANGES: usize = 1_000;
    let (tx, mut rx) = mpsc::channel(CHANGES);
    for i in 0..CHANGES {
        let addr = format!("198.18.1.{}", 10 + i % 200);
        tx.send(SourceEvent::EndpointSlice(Box::new(Event::Apply(slice(
            "web",
            &[&addr],
        )))))
        .await
        .expect("loop alive");
    }
    let last = format!("198.18.1.{}", 10 + (CHANGES - 1) % 200);
    let cancel = CancellationToken::new();
    let health = h.health.clone();
    let driver = {
        let cancel = cancel.clone();
        let health = health.clone();
        let tx = tx.clone();
        async move {
            // Bounded wait: every event taken and the sync after them done.
            for _ in 0..1_000 {
                let s = health.snapshot();
                if s.first_full_sync
                    && s.oldest_pending.is_none()
                    && tx.capacity() == tx.max_capacity()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancel.cancel();
        }
    };
    let (result, ()) = tokio::join!(
        event_loop::run(&mut h.reconciler, &mut rx, timing, health, cancel.clone()),
        driver
    );
    result.expect("a cancelled loop ends cleanly");
    assert_eq!(
        h.frontends(),
        set(&[&format!("198.19.0.10:80/tcp -> {last}:8080")])
    );
    // One incremental sync for the whole burst (queued before the loop ran).
    assert_eq!(h.reconciler.syncs_run(), 2);
    drop(tx);
}

fn node_with(addresses: &[(&str, &str)]) -> Arc<Node> {
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(kind, addr)| json!({"type": kind, "address": addr}))
        .collect();
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": "n1"}, "status": {"addresses": addresses}}),
        )
        .expect("a valid Node"),
    )
}

/// `SLB_NODEADDR_V1` follows the Node object: its InternalIP per family, rewritten when
/// the Node's addresses change (before the frontends of that sync).
#[tokio::test]
async fn the_snat_addresses_follow_the_node_object() {
    use crate::dataplane::maps::NodeAddresses;
    let mut h = harness();
    h.initial_lists(true);
    h.send(SourceEvent::Node(Box::new(Event::Apply(node_with(&[
        ("InternalIP", "198.19.255.1"),
        ("InternalIP", "fd00:ff::1"),
    ])))));
    h.reconciler.sync().await.expect("syncs");
    assert_eq!(
        h.maps().node_addresses,
        NodeAddresses {
            v4: Some("198.19.255.1".parse().expect("ip")),
            v6: Some("fd00:ff::1".parse().expect("ip")),
        }
    );
    h.send(SourceEvent::Node(Box::new(Event::Apply(node_with(&[(
        "InternalIP",
        "198.19.255.7",
    )])))));
    h.reconciler.sync().await.expect("syncs");
    assert_eq!(
        h.maps().node_addresses,
        NodeAddresses {
            v4: Some("198.19.255.7".parse().expect("ip")),
            v6: None,
        }
    );
}
