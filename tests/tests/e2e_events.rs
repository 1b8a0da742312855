//! Kubernetes Events end to end (issue 13): the whole daemon (`service-lb run
//! --kubeconfig`) in a node namespace, against the fake API server of the tests crate
//! serving in that namespace. The `Started` event on the Node arrives at start, and a
//! `SyncFailed` event on the Service whose sync really failed: the backends map is made
//! too small (`--map-backends-max=4`) for the two Services' five endpoints, so writing
//! one of them fails with a full map. The Service the event names must be the one the
//! daemon's `service_lb_sync_failures` metric counts, and the only one whose frontend is
//! missing from the pinned maps.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde_json::Value;
use service_lb::source::LABEL_SERVICE_NAME;
use service_lb_tests::{
    daemon::{frontends, metric_samples, Daemon, DaemonOptions, ManifestDir},
    fake_apiserver::{EventWrite, FakeApiServer},
    netns::{run_in, sweep_leftovers},
    privileges::require_root,
    topology::{Cluster, ClusterSpec},
};

const NODE: &str = "n1";
/// Hang guards (not timing checks).
const READY_BOUND: Duration = Duration::from_secs(30);
const EVENT_WAIT: Duration = Duration::from_secs(30);

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(Some("shop"), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(service: &str, addresses: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some("shop"),
            &format!("{service}-v4"),
            &[(LABEL_SERVICE_NAME, service)],
        ),
        address_type: "IPv4".into(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(NODE.into()),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn regarding(e: &EventWrite) -> (String, String, String) {
    let r = &e.body["regarding"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&r["kind"]), s(&r["namespace"]), s(&r["name"]))
}

#[test]
fn e2e_events_started_on_node_and_sync_failed_on_service() -> Result<()> {
    if !require_root("e2e_events") {
        return Ok(());
    }
    sweep_leftovers();
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client"]])).context("topology")?;
    let node = cluster.node(1)?;
    let manifests = ManifestDir::create(cluster.prefix())?;

    // The server's listening socket is made inside the node's namespace (the daemon's
    // 127.0.0.1); the runtime serving it lives on after `run_in`.
    let (runtime, server) = run_in(&node.ns, || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let server = runtime.block_on(FakeApiServer::start())?;
        Ok((runtime, server))
    })?;
    let kubeconfig = server.write_kubeconfig(manifests.path())?;
    server.apply(&Node {
        metadata: meta(None, NODE, &[]),
        ..Node::default()
    })?;
    // 2 + 3 backends for a map of 4: one of the two Services cannot be written.
    server.apply(&service("web", "198.19.0.10"))?;
    server.apply(&slice("web", &["198.18.1.20", "198.18.1.21"]))?;
    server.apply(&service("big", "198.19.0.11"))?;
    server.apply(&slice(
        "big",
        &["198.18.1.30", "198.18.1.31", "198.18.1.32"],
    ))?;

    let mut options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        NODE,
        manifests.log_path(NODE),
    );
    options.kubeconfig = Some(kubeconfig);
    options
        .extra_args
        .retain(|a| !a.starts_with("--map-backends-max"));
    options.extra_args.push("--map-backends-max=4".into());
    let mut daemon = Daemon::start(&node.ns, options)?;
    let ready = daemon.wait_ready(READY_BOUND);
    let log = std::fs::read_to_string(manifests.log_path(NODE)).unwrap_or_default();
    ready.with_context(|| format!("daemon log:\n{log}"))?;

    let deadline = Instant::now() + EVENT_WAIT;
    let events = loop {
        let events = server.events();
        let has = |reason: &str| events.iter().any(|e| e.body["reason"] == reason);
        if has("Started") && has("SyncFailed") {
            break events;
        }
        ensure!(
            Instant::now() < deadline,
            "events so far: {events:#?}\ndaemon log:\n{}",
            std::fs::read_to_string(manifests.log_path(NODE)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for e in &events {
        eprintln!(
            "{} {}: {} {} {:?} {}",
            e.method,
            e.namespace,
            e.body["type"],
            e.body["reason"],
            regarding(e),
            e.body["note"]
        );
    }

    let started: Vec<_> = events
        .iter()
        .filter(|e| e.body["reason"] == "Started")
        .collect();
    ensure!(started.len() == 1, "one Started event: {started:#?}");
    let started = started[0];
    ensure!(started.method == "POST" && started.namespace == "default");
    ensure!(
        regarding(started) == ("Node".into(), String::new(), NODE.into()),
        "{}",
        started.body
    );
    ensure!(started.body["type"] == "Normal", "{}", started.body);
    ensure!(
        started.body["reportingInstance"] == format!("service-lb-{NODE}"),
        "{}",
        started.body
    );

    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.body["reason"] == "SyncFailed")
        .collect();
    ensure!(failed.len() == 1, "one SyncFailed event: {failed:#?}");
    let failed = failed[0];
    let (kind, namespace, name) = regarding(failed);
    ensure!(
        kind == "Service" && namespace == "shop" && ["web", "big"].contains(&name.as_str()),
        "{}",
        failed.body
    );
    ensure!(
        failed.namespace == "shop",
        "the event lives in the Service's namespace"
    );
    ensure!(failed.body["type"] == "Warning", "{}", failed.body);
    let note = failed.body["note"].as_str().unwrap_or_default();
    ensure!(note.contains("full"), "the note names the full map: {note}");

    // The event names the Service the daemon really failed on: the one its metric counts
    // and the one missing from the maps (the other one is programmed).
    let samples = metric_samples(&daemon.metrics()?);
    let counted: Vec<_> = samples
        .iter()
        .filter(|(series, value)| series.starts_with("service_lb_sync_failures") && **value > 0.0)
        .map(|(series, _)| series.clone())
        .collect();
    ensure!(
        counted.len() == 1 && counted[0].contains(&format!("shop/{name}")),
        "sync failures counted: {counted:?}, event on shop/{name}"
    );
    let programmed: Vec<String> = frontends(node.bpffs.path())?.into_keys().collect();
    let (failed_vip, other_vip) = if name == "web" {
        ("198.19.0.10:", "198.19.0.11:")
    } else {
        ("198.19.0.11:", "198.19.0.10:")
    };
    let has = |vip: &str| programmed.iter().any(|f| f.starts_with(vip));
    ensure!(
        !has(failed_vip) && has(other_vip),
        "frontends in the maps: {programmed:?}"
    );

    daemon.stop()?;
    drop(server);
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
