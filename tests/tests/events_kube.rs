//! Kubernetes Events through the real client against the fake API server: the Node event at
//! start and a Service's failed-sync event arrive as `events.k8s.io/v1` creates with the
//! right `regarding`, reason, type and note; a repeat within the rate limit is not sent.
//! No root needed (the fake server listens on 127.0.0.1 of this process).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use service_lb::{
    daemon::events::{EventSink, KubeEvents, REASON_STARTED, REASON_SYNC_FAILED},
    model::ServiceName,
    source::kube_api,
};
use service_lb_tests::fake_apiserver::{EventWrite, FakeApiServer};

/// Hang guard for events that must arrive (not a timing check).
const WAIT: Duration = Duration::from_secs(30);

async fn wait_for(server: &FakeApiServer, count: usize) -> Result<Vec<EventWrite>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = server.events();
        if events.len() >= count {
            return Ok(events);
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {count} events arrived: {events:?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn regarding(e: &EventWrite) -> (String, String, String) {
    let r = &e.body["regarding"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&r["kind"]), s(&r["namespace"]), s(&r["name"]))
}

#[tokio::test]
async fn start_and_failed_sync_events_reach_the_api() -> Result<()> {
    let server = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = server.write_kubeconfig(dir.path())?;
    let client = kube_api::client(Some(&kubeconfig)).await?;
    let sink = KubeEvents::new(client, "n1");
    let web = ServiceName {
        namespace: "shop".into(),
        name: "web".into(),
    };
    let api = ServiceName {
        namespace: "shop".into(),
        name: "api".into(),
    };

    sink.started("n1", 2);
    let started = wait_for(&server, 1).await?.remove(0);
    sink.sync_failed(&web, "frontend 198.19.0.10:80/tcp: map SLB_SVC4_V1 is full");
    // Within the rate limit: not sent at all.
    sink.sync_failed(&web, "frontend 198.19.0.10:80/tcp: map SLB_SVC4_V1 is full");
    wait_for(&server, 2).await?;
    sink.sync_failed(&api, "map SLB_BE4_V1 is full");
    let events = wait_for(&server, 3).await?;
    for e in &events {
        eprintln!("{} {}/{:?}: {}", e.method, e.namespace, e.name, e.body);
    }
    ensure!(events.len() == 3, "{events:?}");

    // The Node event: cluster-scoped object, so the event lives in "default".
    ensure!(started.method == "POST" && started.namespace == "default" && started.name.is_none());
    ensure!(
        regarding(&started) == ("Node".into(), String::new(), "n1".into()),
        "{:?}",
        started.body
    );
    ensure!(started.body["reason"] == REASON_STARTED, "{}", started.body);
    ensure!(started.body["type"] == "Normal", "{}", started.body);
    ensure!(
        started.body["reportingController"] == "service-lb",
        "{}",
        started.body
    );
    ensure!(
        started.body["reportingInstance"] == "service-lb-n1",
        "{}",
        started.body
    );
    let note = started.body["note"].as_str().context("a note")?;
    ensure!(
        note == format!(
            "service-lb started, version {}, 2 services programmed",
            env!("CARGO_PKG_VERSION")
        ),
        "{note}"
    );

    let failed: Vec<&EventWrite> = events
        .iter()
        .filter(|e| e.body["reason"] == REASON_SYNC_FAILED)
        .collect();
    ensure!(failed.len() == 2, "{events:?}");
    for (e, name, detail) in [
        (
            failed.iter().find(|e| e.body["regarding"]["name"] == "web"),
            "web",
            "map SLB_SVC4_V1 is full",
        ),
        (
            failed.iter().find(|e| e.body["regarding"]["name"] == "api"),
            "api",
            "map SLB_BE4_V1 is full",
        ),
    ] {
        let e = e.with_context(|| format!("no event for {name}"))?;
        ensure!(e.method == "POST" && e.namespace == "shop", "{e:?}");
        ensure!(
            regarding(e) == ("Service".into(), "shop".into(), name.into()),
            "{:?}",
            e.body
        );
        ensure!(e.body["type"] == "Warning", "{}", e.body);
        let note = e.body["note"].as_str().context("a note")?;
        ensure!(
            note.contains(detail) && note.contains("last good state"),
            "{note}"
        );
    }
    Ok(())
}
