//! The demo's NetworkPolicy and `diff` steps: Pods, a Namespace and a NetworkPolicy
//! written into the same manifests folder the daemons watch; the ClusterIP closes to a
//! client the policy does not name and opens again when the client gets the label.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::http::get_name;
use super::outcome::Step;
use crate::daemon::ManifestDir;
use crate::netns::run_in;
use crate::topology::Cluster;

/// How long a policy change may take to reach both nodes before the demo gives up.
const POLICY_BOUND: Duration = Duration::from_secs(15);
/// Requests per probe of the policy step.
const PROBES: usize = 3;

/// What the policy step saw.
#[derive(Clone, Debug, Default)]
pub struct PolicyOutcome {
    /// Requests answered while the client lacked the label (expected: none).
    pub answered_while_denied: usize,
    /// From writing the policy to the first request that failed.
    pub deny_took: Duration,
    /// Requests answered once the client had the label (expected: all).
    pub answered_when_allowed: usize,
    /// From relabelling the client to the first request answered.
    pub allow_took: Duration,
    /// `service-lb diff` exit code on node n1 (0: maps equal to the manifests).
    pub diff_exit: Option<i32>,
}

fn pod_yaml(cluster: &Cluster, name: &str, labels: &[(&str, &str)]) -> Result<String> {
    let pod = cluster.pod(name)?;
    let node = cluster.node(pod.node)?;
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: {v}\n"))
        .collect();
    Ok(format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n{labels}\
         spec:\n  nodeName: {}\n  containers:\n  - name: main\n    image: demo\n\
         status:\n  phase: Running\n  podIP: {}\n  podIPs:\n  - ip: {}\n  - ip: {}\n",
        node.name, pod.v4, pod.v4, pod.v6
    ))
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    kubernetes.io/metadata.name: default\n";

const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-only-from-frontends
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: web
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - port: 8080
";

fn probe(cluster: &Cluster, client: &str, vip: SocketAddr) -> Result<usize> {
    run_in(&cluster.pod(client)?.ns, || {
        Ok((0..PROBES).filter(|_| get_name(vip).is_ok()).count())
    })
}

/// Polls until `want(answered)` or the bound; returns (answered, time to reach it).
fn wait_for(
    cluster: &Cluster,
    client: &str,
    vip: SocketAddr,
    since: Instant,
    want: impl Fn(usize) -> bool,
) -> Result<(usize, Duration)> {
    loop {
        let answered = probe(cluster, client, vip)?;
        if want(answered) {
            return Ok((answered, since.elapsed()));
        }
        if since.elapsed() > POLICY_BOUND {
            return Ok((answered, since.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The NetworkPolicy step, then `service-lb diff` on node n1.
pub fn run(
    cluster: &Cluster,
    manifests: &ManifestDir,
    binary: &Path,
    client: &str,
    backends: &[&str],
    vip: SocketAddr,
    report: &mut dyn FnMut(Step),
) -> Result<PolicyOutcome> {
    let mut outcome = PolicyOutcome::default();
    manifests.write("namespace-default.yaml", NAMESPACE)?;
    for b in backends {
        manifests.write(
            &format!("pod-{b}.yaml"),
            &pod_yaml(cluster, b, &[("app", "web")])?,
        )?;
    }
    manifests.write(
        &format!("pod-{client}.yaml"),
        &pod_yaml(cluster, client, &[("app", "shell")])?,
    )?;
    manifests.write("policy-web.yaml", POLICY)?;
    let written = Instant::now();
    report(Step::Change(format!(
        "wrote Pods ({client} labelled app=shell; {} labelled app=web) and NetworkPolicy default/web-only-from-frontends: \
         pods app=web accept port 8080 only from pods labelled role=frontend",
        backends.join(", ")
    )));
    let (answered, took) = wait_for(cluster, client, vip, written, |n| n == 0)?;
    outcome.answered_while_denied = answered;
    outcome.deny_took = took;
    report(Step::Seen(format!(
        "{client} -> http://{vip}/: {answered}/{PROBES} answered (the probe that saw it ended {} ms after the write; each unanswered request waits 2 s): the policy is enforced on the \
         translated flow, at the backend's node, so dialling the ClusterIP does not get around it",
        took.as_millis()
    )));

    manifests.write(
        &format!("pod-{client}.yaml"),
        &pod_yaml(cluster, client, &[("app", "shell"), ("role", "frontend")])?,
    )?;
    let relabelled = Instant::now();
    report(Step::Change(format!(
        "added the label role=frontend to pod {client}"
    )));
    let (answered, took) = wait_for(cluster, client, vip, relabelled, |n| n == PROBES)?;
    outcome.answered_when_allowed = answered;
    outcome.allow_took = took;
    report(Step::Seen(format!(
        "{client} -> http://{vip}/: {answered}/{PROBES} answered ({} ms after the relabel)",
        took.as_millis()
    )));
    show_policy(cluster, binary, backends, report)?;

    let node = cluster.node(1)?;
    let out = Command::new(binary)
        .args(["diff", "--manifests"])
        .arg(manifests.path())
        .args(["--node", &node.name, "--bpffs"])
        .arg(node.bpffs.path())
        .output()
        .context("running service-lb diff")?;
    outcome.diff_exit = out.status.code();
    let text = String::from_utf8_lossy(&out.stdout);
    report(Step::Seen(format!(
        "`service-lb diff --manifests {} --node {}` (what the manifests say vs what node {}'s maps hold) exited {}: {}",
        manifests.path().display(),
        node.name,
        node.name,
        out.status.code().map_or("by a signal".into(), |c| c.to_string()),
        text.lines().next().unwrap_or("")
    )));
    Ok(outcome)
}

/// `service-lb inspect policy` on the node of the first backend.
fn show_policy(
    cluster: &Cluster,
    binary: &Path,
    backends: &[&str],
    report: &mut dyn FnMut(Step),
) -> Result<()> {
    let Some(first) = backends.first() else {
        return Ok(());
    };
    let node = cluster.node(cluster.pod(first)?.node)?;
    let table = super::daemon_demo::inspect_table(binary, "policy", node.bpffs.path())?;
    report(Step::Seen(format!(
        "`service-lb inspect policy --bpffs {}` (node {}: its local pods' effective rules):\n{table}",
        node.bpffs.path().display(),
        node.name,
    )));
    Ok(())
}
