//! The daemon's policy wiring with a recording sink: nothing is programmed before Pods,
//! Namespaces and NetworkPolicies have all listed; the first sync is a full one; changes
//! go incrementally; a relist drops what it no longer lists at `InitDone` only; a failed
//! sync is counted and the next one is full; the inspect snapshot is written.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::runtime::watcher::Event;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::policy::{PolicySync, PolicySyncDone};
use crate::{
    model::policy::{sink::PolicySink, ObjectKey, PolicyChanges, PolicyModel},
    source::SourceEvent,
    telemetry::{metrics::encode_text, policy_metrics::PolicyMetrics},
};

/// What the sink was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// Every pod programmed after a resync, with whether its ingress is isolated.
    Resync(Vec<(String, bool)>),
    Apply {
        updated: Vec<String>,
        removed: Vec<String>,
    },
}

#[derive(Clone, Default)]
struct Recording {
    calls: Arc<Mutex<Vec<Call>>>,
    fail: Arc<Mutex<bool>>,
}

impl Recording {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }

    fn set_failing(&self, fail: bool) {
        *self.fail.lock().expect("lock") = fail;
    }
}

impl PolicySink for Recording {
    fn apply(&mut self, _model: &PolicyModel, changes: &PolicyChanges) -> anyhow::Result<()> {
        let names = |keys: &[ObjectKey]| keys.iter().map(ToString::to_string).collect();
        self.calls.lock().expect("lock").push(Call::Apply {
            updated: names(&changes.updated),
            removed: names(&changes.removed),
        });
        if *self.fail.lock().expect("lock") {
            anyhow::bail!("map full");
        }
        Ok(())
    }

    fn resync(&mut self, model: &PolicyModel) -> anyhow::Result<()> {
        let pods = model
            .compiled()
            .values()
            .map(|p| (p.pod.to_string(), p.ingress.isolated))
            .collect();
        self.calls.lock().expect("lock").push(Call::Resync(pods));
        if *self.fail.lock().expect("lock") {
            anyhow::bail!("map full");
        }
        Ok(())
    }
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
        }))
        .expect("a valid Pod"),
    )
}

fn namespace(name: &str) -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Namespace"))
}

/// Default deny ingress for `app: web` in `ns`.
fn deny_web(ns: &str, name: &str) -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
        }))
        .expect("a NetworkPolicy"),
    )
}

struct Harness {
    policy: PolicySync,
    sink: Recording,
    registry: Registry,
}

fn harness(snapshot: Option<std::path::PathBuf>) -> Harness {
    let mut registry = Registry::default();
    let metrics = PolicyMetrics::register(&mut registry);
    let sink = Recording::default();
    Harness {
        policy: PolicySync::new("n1", Box::new(sink.clone()), metrics, snapshot),
        sink,
        registry,
    }
}

impl Harness {
    fn lists(&mut self, pods: &[Arc<Pod>], policies: &[Arc<NetworkPolicy>]) {
        self.policy.on_pod(Event::Init);
        for p in pods {
            self.policy.on_pod(Event::InitApply(p.clone()));
        }
        self.policy.on_pod(Event::InitDone);
        self.policy.on_namespace(Event::Init);
        self.policy.on_namespace(Event::InitApply(namespace("x")));
        self.policy.on_namespace(Event::InitDone);
        self.policy.on_policy(Event::Init);
        for p in policies {
            self.policy.on_policy(Event::InitApply(p.clone()));
        }
        self.policy.on_policy(Event::InitDone);
    }

    fn metric(&self, name: &str) -> String {
        let text = encode_text(&self.registry).expect("encodes");
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .map(|l| l[name.len() + 1..].to_owned())
            .unwrap_or_default()
    }
}

fn done(full: bool, updated: usize, removed: usize, failed: bool) -> Option<PolicySyncDone> {
    Some(PolicySyncDone {
        full,
        updated,
        removed,
        failed,
    })
}

#[test]
fn nothing_is_programmed_before_every_kind_has_listed() {
    let mut h = harness(None);
    h.policy.on_pod(Event::Init);
    h.policy
        .on_pod(Event::InitApply(pod("x", "a", "web", "198.18.1.10", "n1")));
    h.policy.on_pod(Event::InitDone);
    h.policy.on_policy(Event::Init);
    h.policy.on_policy(Event::InitApply(deny_web("x", "deny")));
    h.policy.on_policy(Event::InitDone);
    // Namespaces have not listed.
    assert!(!h.policy.wants_sync());
    assert_eq!(h.policy.sync(false), None);
    assert_eq!(h.sink.take(), []);

    h.policy.on_namespace(Event::Init);
    h.policy.on_namespace(Event::InitDone);
    assert!(h.policy.wants_sync());
    assert_eq!(h.policy.sync(false), done(true, 1, 0, false));
    assert_eq!(
        h.sink.take(),
        [Call::Resync(vec![("x/a".into(), true)])],
        "the first sync is a full one, with the policy applied"
    );
    assert!(!h.policy.wants_sync());
    assert_eq!(h.metric("service_lb_policy_pods_programmed"), "1");
    assert_eq!(h.metric("service_lb_policies"), "1");
}

#[test]
fn changes_go_incrementally_and_only_local_pods_are_programmed() {
    let mut h = harness(None);
    h.lists(
        &[
            pod("x", "a", "web", "198.18.1.10", "n1"),
            pod("x", "b", "web", "198.18.2.10", "n2"),
        ],
        &[],
    );
    assert_eq!(h.policy.sync(false), done(true, 1, 0, false));
    assert_eq!(h.sink.take(), [Call::Resync(vec![("x/a".into(), false)])]);

    h.policy.on_policy(Event::Apply(deny_web("x", "deny")));
    assert!(h.policy.wants_sync());
    assert_eq!(h.policy.sync(false), done(false, 1, 0, false));
    assert_eq!(
        h.sink.take(),
        [Call::Apply {
            updated: vec!["x/a".into()],
            removed: vec![]
        }]
    );
    assert!(
        h.policy
            .model()
            .pod_policy(&ObjectKey::new("x", "a"))
            .expect("compiled")
            .ingress
            .isolated
    );

    // A change that changes no compiled view programs nothing.
    h.policy
        .on_pod(Event::Apply(pod("x", "b", "web", "198.18.2.10", "n3")));
    assert_eq!(h.policy.sync(false), done(false, 0, 0, false));
    assert_eq!(h.sink.take(), []);

    h.policy
        .on_pod(Event::Delete(pod("x", "a", "web", "198.18.1.10", "n1")));
    assert_eq!(h.policy.sync(false), done(false, 0, 1, false));
    assert_eq!(
        h.sink.take(),
        [Call::Apply {
            updated: vec![],
            removed: vec!["x/a".into()]
        }]
    );
    assert_eq!(h.metric("service_lb_policy_pods_programmed"), "0");
}

#[test]
fn a_relist_removes_what_it_no_longer_lists_at_init_done_only() {
    let mut h = harness(None);
    h.lists(
        &[
            pod("x", "a", "web", "198.18.1.10", "n1"),
            pod("x", "c", "web", "198.18.1.12", "n1"),
        ],
        &[deny_web("x", "deny")],
    );
    h.policy.sync(false);
    h.sink.take();

    // Relist of pods (after a 410): c is gone, a is unchanged.
    h.policy.on_pod(Event::Init);
    h.policy
        .on_pod(Event::InitApply(pod("x", "a", "web", "198.18.1.10", "n1")));
    assert_eq!(
        h.policy.sync(false),
        done(false, 0, 0, false),
        "a half relist removes nothing"
    );
    assert_eq!(h.sink.take(), []);
    assert!(h
        .policy
        .model()
        .pod_policy(&ObjectKey::new("x", "c"))
        .is_some());
    h.policy.on_pod(Event::InitDone);
    assert_eq!(h.policy.sync(false), done(false, 0, 1, false));
    assert_eq!(
        h.sink.take(),
        [Call::Apply {
            updated: vec![],
            removed: vec!["x/c".into()]
        }]
    );

    // Relist of policies without the deny: a's ingress opens.
    h.policy.on_policy(Event::Init);
    h.policy.on_policy(Event::InitDone);
    assert_eq!(h.policy.sync(false), done(false, 1, 0, false));
    assert!(
        !h.policy
            .model()
            .pod_policy(&ObjectKey::new("x", "a"))
            .expect("compiled")
            .ingress
            .isolated
    );
}

#[test]
fn a_failed_sync_is_counted_and_the_next_one_is_full() {
    let mut h = harness(None);
    h.lists(&[pod("x", "a", "web", "198.18.1.10", "n1")], &[]);
    h.policy.sync(false);
    h.sink.take();

    h.sink.set_failing(true);
    h.policy.on_policy(Event::Apply(deny_web("x", "deny")));
    assert_eq!(h.policy.sync(false), done(false, 1, 0, true));
    assert_eq!(h.metric("service_lb_policy_sync_failures_total"), "1");
    assert_eq!(h.sink.take().len(), 1);
    assert!(h.policy.wants_sync(), "a failed sync is retried");

    h.sink.set_failing(false);
    // No change since: the retry still reprograms everything.
    assert_eq!(h.policy.sync(false), done(true, 0, 0, false));
    assert_eq!(h.sink.take(), [Call::Resync(vec![("x/a".into(), true)])]);
    assert!(!h.policy.wants_sync());
    assert_eq!(h.metric("service_lb_policy_sync_failures_total"), "1");
}

#[test]
fn the_inspect_snapshot_is_written_on_sync() {
    let dir = std::env::temp_dir().join(format!("slb-policy-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("policy.json");
    let mut h = harness(Some(path.clone()));
    h.lists(
        &[
            pod("x", "a", "web", "198.18.1.10", "n1"),
            pod("x", "a2", "web", "198.18.1.13", "n1"),
            pod("x", "b", "client", "198.18.2.10", "n2"),
        ],
        &[Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "from-client", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                      "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}
            }))
            .expect("a NetworkPolicy"),
        )],
    );
    h.policy.sync(false);
    let snapshot = crate::cli::inspect::policy::read(&path).expect("written");
    let _ = std::fs::remove_dir_all(&dir);
    let pods = crate::cli::inspect::policy::select(&snapshot, Some("x/a")).expect("x/a");
    let rows = crate::cli::inspect::policy::rows(&snapshot, &pods).expect("consistent");
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(crate::cli::output::TableRow::cells)
        .collect();
    assert_eq!(
        cells,
        [
            [
                "x/a",
                "ingress",
                "x/from-client",
                "198.18.2.10/32",
                "x/b",
                "TCP 80,UDP 53"
            ],
            ["x/a", "egress", "", "*", "", "any (not isolated)"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(snapshot.node, "n1");
    assert_eq!(snapshot.policies, 1);
    // Pods with the same compiled view share it: x/a and x/a2 point at the same two.
    assert_eq!(snapshot.pods.len(), 2);
    assert_eq!(snapshot.directions.len(), 2);
    assert_eq!(
        (snapshot.pods[0].ingress, snapshot.pods[0].egress),
        (snapshot.pods[1].ingress, snapshot.pods[1].egress)
    );
}

#[tokio::test]
async fn the_reconciler_routes_policy_events_and_syncs_them() {
    let sink = Recording::default();
    let mut registry = Registry::default();
    let metrics = crate::telemetry::metrics::Metrics::register(&mut registry);
    let policy_metrics = PolicyMetrics::register(&mut registry);
    let health = Arc::new(crate::telemetry::health::Health::new());
    let writer =
        crate::dataplane::ServiceWriter::open(crate::dataplane::FakeMaps::new()).expect("opens");
    let mut reconciler = super::Reconciler::new(
        crate::dataplane::sync::Syncer::new(writer),
        "n1".into(),
        metrics,
        health,
    )
    .with_policy(PolicySync::new(
        "n1",
        Box::new(sink.clone()),
        policy_metrics,
        None,
    ));
    let send = |r: &mut super::Reconciler<crate::dataplane::FakeMaps>, e| r.on_event(e);
    let h = &mut reconciler;
    send(h, SourceEvent::Pod(Box::new(Event::Init)));
    send(
        h,
        SourceEvent::Pod(Box::new(Event::InitApply(pod(
            "x",
            "a",
            "web",
            "198.18.1.10",
            "n1",
        )))),
    );
    send(h, SourceEvent::Pod(Box::new(Event::InitDone)));
    send(h, SourceEvent::Namespace(Box::new(Event::Init)));
    send(h, SourceEvent::Namespace(Box::new(Event::InitDone)));
    assert!(!h.wants_sync(), "NetworkPolicies have not listed");
    send(h, SourceEvent::NetworkPolicy(Box::new(Event::Init)));
    send(
        h,
        SourceEvent::NetworkPolicy(Box::new(Event::InitApply(deny_web("x", "d")))),
    );
    send(h, SourceEvent::NetworkPolicy(Box::new(Event::InitDone)));
    assert!(h.wants_sync());
    // Services have not listed: the service maps stay untouched, the policy syncs.
    let services = h.sync().await.expect("syncs");
    assert_eq!(services, None);
    assert_eq!(sink.take(), [Call::Resync(vec![("x/a".into(), true)])]);
    assert!(!h.wants_sync());
}
