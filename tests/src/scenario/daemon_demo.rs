//! The daemon demo (`slb-demo`, `cargo xtask demo`): the real `service-lb run
//! --manifests` on two namespace nodes, HTTP backends, a manifests edit that removes a
//! backend, the spread of 300 requests before and after, and a kept-alive connection to
//! the removed backend that keeps working (graceful termination, as kube-proxy does it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http::{get_name, HttpServer, KeptAlive};
use super::outcome::Step;
use crate::daemon::{
    frontends, service_lb_binary, Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec,
    ServiceManifest, SliceManifest,
};
use crate::netns::{run_in, sweep_leftovers};
use crate::topology::{Cluster, ClusterSpec};

pub const DEMO_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const DEMO_PORT: u16 = 80;
pub const DEMO_TARGET_PORT: u16 = 8080;
pub const DEMO_CLIENT: &str = "client";
pub const DEMO_BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
pub const DEMO_REMOVED: &str = "b3";
pub const DEMO_REQUESTS: u32 = 300;
const READY_BOUND: Duration = Duration::from_secs(30);
const CHANGE_BOUND: Duration = Duration::from_secs(10);

/// Answers per backend, and failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSpread {
    pub per_backend: BTreeMap<String, u32>,
    pub failures: u32,
    pub first_error: Option<String>,
}

impl HttpSpread {
    pub fn answers(&self, backend: &str) -> u32 {
        self.per_backend.get(backend).copied().unwrap_or(0)
    }
}

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct DemoOutcome {
    pub ready_after: Vec<(String, Duration)>,
    pub before: HttpSpread,
    pub after: HttpSpread,
    /// From the manifests write to both nodes' maps no longer holding the backend.
    pub change_took: Duration,
    /// Requests answered after both daemons were stopped (the data plane stays).
    pub served_after_stop: u32,
    /// Who answered each request sent, after the edit, on a connection that was opened to
    /// the removed backend before it (an error's text when a request failed).
    pub kept_alive_after: Vec<std::result::Result<String, String>>,
    /// The NetworkPolicy step and `service-lb diff`.
    pub policy: super::demo_policy::PolicyOutcome,
}

/// Requests sent on the kept-alive connection after the edit.
pub const DEMO_KEPT_ALIVE_REQUESTS: usize = 5;

/// Runs the demo; everything it creates is removed before it returns.
pub fn daemon_demo(report: &mut dyn FnMut(Step)) -> Result<DemoOutcome> {
    for leftover in sweep_leftovers() {
        report(Step::Setup(format!(
            "removed a leftover of an earlier run: {leftover}"
        )));
    }
    let binary = service_lb_binary()?;
    let cluster = Cluster::new(&ClusterSpec::new(&[&[DEMO_CLIENT, "b1"], &["b2", "b3"]]))
        .context("building the namespace topology")?;
    for node in &cluster.nodes {
        let pods: Vec<String> = cluster
            .pods
            .iter()
            .filter(|p| p.node == node.index)
            .map(|p| format!("{} ({})", p.name, p.v4))
            .collect();
        report(Step::Setup(format!(
            "node {} = network namespace {} (underlay {}), pods: {}",
            node.name,
            node.ns.name(),
            node.v4,
            pods.join(", ")
        )));
    }
    let manifests = ManifestDir::create(cluster.prefix())?;
    let result = run(&cluster, &manifests, &binary, report);
    drop(manifests);
    drop(cluster);
    report(Step::Setup(
        "removed every namespace, pinned map and link, and the manifests folder".into(),
    ));
    result
}

fn run(
    cluster: &Cluster,
    manifests: &ManifestDir,
    binary: &Path,
    report: &mut dyn FnMut(Step),
) -> Result<DemoOutcome> {
    let mut outcome = DemoOutcome::default();
    let _servers = DEMO_BACKENDS
        .iter()
        .map(|b| {
            let pod = cluster.pod(b)?;
            HttpServer::start(&pod.ns, SocketAddr::new(pod.v4.into(), DEMO_TARGET_PORT), b)
        })
        .collect::<Result<Vec<_>>>()?;
    report(Step::Setup(format!(
        "an HTTP server in each of {DEMO_BACKENDS:?} answers its pod name on port {DEMO_TARGET_PORT}"
    )));

    let service = ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ips: vec![IpAddr::V4(DEMO_VIP)],
        ports: vec![(PortSpec::new("http", DEMO_PORT, "TCP"), DEMO_TARGET_PORT)],
    };
    manifests.write("web-service.yaml", &service.yaml())?;
    manifests.write(
        "web-endpoints.yaml",
        &slice(cluster, &DEMO_BACKENDS)?.yaml(),
    )?;
    report(Step::Setup(format!(
        "wrote Service default/web (ClusterIP {DEMO_VIP}:{DEMO_PORT} -> targetPort {DEMO_TARGET_PORT}) and its EndpointSlice ({}) into {}",
        DEMO_BACKENDS.join(", "),
        manifests.path().display()
    )));

    let mut daemons = Vec::new();
    for node in &cluster.nodes {
        let log = manifests.log_path(&node.name);
        let options = DaemonOptions::for_node(node.bpffs.path(), manifests.path(), &node.name, log);
        let mut daemon = Daemon::start(&node.ns, options)?;
        let took = daemon.wait_ready(READY_BOUND)?;
        report(Step::Setup(format!(
            "started `{} run --manifests {} --node-name {} --bpffs {}` inside node {}; /readyz said ready after {} ms (programs attached, first full sync applied)",
            binary.display(),
            manifests.path().display(),
            node.name,
            node.bpffs.path().display(),
            node.name,
            took.as_millis()
        )));
        outcome.ready_after.push((node.name.clone(), took));
        daemons.push(daemon);
    }

    let vip = SocketAddr::new(DEMO_VIP.into(), DEMO_PORT);
    outcome.before = requests(cluster, vip)?;
    report(Step::Seen(format!(
        "{DEMO_REQUESTS} HTTP requests from pod {DEMO_CLIENT} to http://{vip}/: {}",
        describe(&outcome.before)
    )));
    show_inspect(cluster, binary, "services", "", report)?;

    let mut kept = open_to_removed(cluster, vip)?;
    report(Step::Setup(format!(
        "pod {DEMO_CLIENT} opened a kept-alive HTTP connection to http://{vip}/ that {DEMO_REMOVED} answered (think of a long download or a websocket)"
    )));

    manifests.write("web-endpoints.yaml", &slice(cluster, &["b1", "b2"])?.yaml())?;
    let written = Instant::now();
    report(Step::Change(format!(
        "edited web-endpoints.yaml: {DEMO_REMOVED} is no longer an endpoint of default/web"
    )));
    let frontend = format!("{vip}/tcp");
    let removed_addr =
        SocketAddr::new(cluster.pod(DEMO_REMOVED)?.v4.into(), DEMO_TARGET_PORT).to_string();
    for node in &cluster.nodes {
        loop {
            let now = frontends(node.bpffs.path())?;
            let backends = now.get(&frontend).cloned().unwrap_or_default();
            if !backends.is_empty() && !backends.contains(&removed_addr) {
                break;
            }
            if written.elapsed() > CHANGE_BOUND {
                bail!(
                    "node {}: {DEMO_REMOVED} still programmed after {CHANGE_BOUND:?}",
                    node.name
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    outcome.change_took = written.elapsed();
    report(Step::Seen(format!(
        "both daemons saw the edit and rewrote their maps: the change took effect in {} ms (file write -> maps of both nodes updated)",
        outcome.change_took.as_millis()
    )));
    outcome.after = requests(cluster, vip)?;
    report(Step::Seen(format!(
        "{DEMO_REQUESTS} more requests: {}",
        describe(&outcome.after)
    )));
    show_inspect(cluster, binary, "services", " after the edit", report)?;
    outcome.kept_alive_after = (0..DEMO_KEPT_ALIVE_REQUESTS)
        .map(|_| kept.get().map_err(|e| format!("{e:#}")))
        .collect();
    let answered = outcome
        .kept_alive_after
        .iter()
        .filter(|a| a.as_deref() == Ok(DEMO_REMOVED))
        .count();
    report(Step::Seen(format!(
        "the kept-alive connection opened before the edit: {answered}/{DEMO_KEPT_ALIVE_REQUESTS} more requests on it answered by {DEMO_REMOVED}: \
         an endpoint that leaves a Service keeps its established connections (only new ones avoid it), as with kube-proxy"
    )));
    show_inspect(cluster, binary, "backends", " after the edit", report)?;
    drop(kept);

    outcome.policy = super::demo_policy::run(
        cluster,
        manifests,
        binary,
        DEMO_CLIENT,
        &["b1", "b2"],
        vip,
        report,
    )?;

    for (daemon, node) in daemons.iter_mut().zip(&cluster.nodes) {
        let status = daemon.stop()?;
        report(Step::Change(format!(
            "stopped the daemon of node {} with SIGTERM ({status}); it leaves programs and maps in place",
            node.name
        )));
    }
    let still = run_in(&cluster.pod(DEMO_CLIENT)?.ns, || {
        Ok((0..10).filter(|_| get_name(vip).is_ok()).count())
    })?;
    outcome.served_after_stop = u32::try_from(still).unwrap_or(u32::MAX);
    report(Step::Seen(format!(
        "with no daemon running, {still}/10 requests were still answered: the data plane keeps serving; `service-lb cleanup` is what removes it"
    )));
    Ok(outcome)
}

/// A kept-alive connection through `vip` that the removed backend answered: connections
/// are opened until one lands there (each lands on a random backend).
fn open_to_removed(cluster: &Cluster, vip: SocketAddr) -> Result<KeptAlive> {
    run_in(&cluster.pod(DEMO_CLIENT)?.ns, || {
        for _ in 0..100 {
            let kept = KeptAlive::open(vip)?;
            if kept.first == DEMO_REMOVED {
                return Ok(kept);
            }
        }
        bail!("100 connections to {vip}, none answered by {DEMO_REMOVED}")
    })
}

fn slice(cluster: &Cluster, backends: &[&str]) -> Result<SliceManifest> {
    let endpoints = backends
        .iter()
        .map(|b| {
            let pod = cluster.pod(b)?;
            Ok(EndpointSpec {
                addr: pod.v4.into(),
                node: format!("n{}", pod.node),
                ready: true,
                terminating: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SliceManifest {
        namespace: "default".into(),
        name: "web-abc12".into(),
        service: "web".into(),
        ipv6: false,
        ports: vec![PortSpec::new("http", DEMO_TARGET_PORT, "TCP")],
        endpoints,
        trigger_time: None,
    })
}

fn requests(cluster: &Cluster, vip: SocketAddr) -> Result<HttpSpread> {
    run_in(&cluster.pod(DEMO_CLIENT)?.ns, || {
        let mut spread = HttpSpread::default();
        for _ in 0..DEMO_REQUESTS {
            match get_name(vip) {
                Ok(name) => *spread.per_backend.entry(name).or_default() += 1,
                Err(e) => {
                    spread.failures += 1;
                    spread.first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
        Ok(spread)
    })
}

/// "b1 101, b2 99, b3 100 (0 failed)".
pub fn describe(spread: &HttpSpread) -> String {
    let per: Vec<String> = DEMO_BACKENDS
        .iter()
        .map(|b| format!("{b} {}", spread.answers(b)))
        .collect();
    let mut text = format!("{} ({} failed)", per.join(", "), spread.failures);
    if let Some(e) = &spread.first_error {
        text.push_str(&format!("; first error: {e}"));
    }
    text
}

/// Runs `service-lb inspect <what>` on node n1 and reports its table.
fn show_inspect(
    cluster: &Cluster,
    binary: &Path,
    what: &str,
    when: &str,
    report: &mut dyn FnMut(Step),
) -> Result<()> {
    let node = cluster.node(1)?;
    let table = inspect_table(binary, what, node.bpffs.path())?;
    report(Step::Seen(format!(
        "`service-lb inspect {what} --bpffs {}` (node {}{when}, read from its pinned maps):\n{table}",
        node.bpffs.path().display(),
        node.name,
    )));
    Ok(())
}

/// `service-lb inspect <what> --bpffs <bpffs>`'s output, indented for a demo step.
pub(super) fn inspect_table(binary: &Path, what: &str, bpffs: &Path) -> Result<String> {
    let out = Command::new(binary)
        .args(["inspect", what, "--bpffs"])
        .arg(bpffs)
        .output()
        .with_context(|| format!("running service-lb inspect {what}"))?;
    if !out.status.success() {
        bail!(
            "service-lb inspect {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| format!("             {l}"))
        .collect::<Vec<_>>()
        .join("\n"))
}
