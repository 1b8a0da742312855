//! The health check node port end to end: two namespace nodes, each running the real
//! `service-lb run --manifests` daemon on the same manifests, a LoadBalancer Service with
//! `externalTrafficPolicy: Local` and `healthCheckNodePort`. Asked from inside each node's
//! namespace (kube-proxy's answers): 200 with `localEndpoints` on the node that has the
//! ready endpoint, 503 on the other; the answers follow the EndpointSlice; the port closes
//! when the Service goes. Also `/livez` and `/proxyMode`.
//!
//! kube-proxy opens a health check node port only for `type: LoadBalancer` with eTP=Local
//! (`NeedsHealthCheck`), so the Service here is a LoadBalancer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use service_lb_tests::daemon::{
    http_get, Daemon, DaemonOptions, EndpointSpec, HttpAnswer, ManifestDir, PortSpec, SliceManifest,
};
use service_lb_tests::netns::sweep_leftovers;
use service_lb_tests::privileges::require_root;
use service_lb_tests::topology::{Cluster, ClusterSpec};

const HC_PORT: u16 = 30256;
const READY_BOUND: Duration = Duration::from_secs(30);
/// Generous bound on "a change reaches the health check".
const CHANGE_BOUND: Duration = Duration::from_secs(10);

fn service_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n  clusterIP: 198.19.0.30\n  clusterIPs: [\"198.19.0.30\"]\n  ipFamilies: [IPv4]\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: 30080\n    protocol: TCP\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 198.19.200.200\n"
    )
}

struct Fixture {
    // Field order = drop order: daemons die before the manifests and namespaces go.
    daemons: Vec<Daemon>,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Fixture {
    fn new() -> Result<Self> {
        sweep_leftovers();
        let cluster = Cluster::new(&ClusterSpec::new(&[&["a1"], &["a2"]]))
            .context("building the topology")?;
        let manifests = ManifestDir::create(cluster.prefix())?;
        Ok(Self {
            daemons: Vec::new(),
            manifests,
            cluster,
        })
    }

    /// The slice of `lb`: one endpoint per (pod, node name, ready).
    fn write_slice(&self, endpoints: &[(&str, &str, bool)]) -> Result<()> {
        let endpoints = endpoints
            .iter()
            .map(|(pod, node, ready)| {
                Ok(EndpointSpec {
                    addr: self.cluster.pod(pod)?.v4.into(),
                    node: (*node).to_owned(),
                    ready: *ready,
                    terminating: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let slice = SliceManifest {
            namespace: "default".into(),
            name: "lb-v4".into(),
            service: "lb".into(),
            ipv6: false,
            ports: vec![PortSpec::new("http", 8080, "TCP")],
            endpoints,
            trigger_time: None,
        };
        self.manifests.write("lb-slice.yaml", &slice.yaml())
    }

    fn start_daemons(&mut self) -> Result<()> {
        for index in [1u8, 2] {
            let node = self.cluster.node(index)?;
            let name = format!("n{index}");
            let log = self.manifests.log_path(&name);
            let options =
                DaemonOptions::for_node(node.bpffs.path(), self.manifests.path(), &name, log);
            let mut daemon = Daemon::start(&node.ns, options)?;
            let took = daemon.wait_ready(READY_BOUND)?;
            println!("daemon {name} ready in {took:?}");
            self.daemons.push(daemon);
        }
        Ok(())
    }

    /// GET / on the health check node port from inside node `index`'s namespace.
    fn ask(&self, index: u8) -> Result<HttpAnswer> {
        let node = self.cluster.node(index)?;
        http_get(
            &node.ns.path(),
            SocketAddr::from(([127, 0, 0, 1], HC_PORT)),
            "/",
        )
    }

    /// Polls node `index` until its answer is (`status`, `count`); returns how long it took.
    fn wait_answer(&self, index: u8, status: u16, count: u64, since: Instant) -> Result<Duration> {
        loop {
            let last = match self.ask(index) {
                Ok(answer) => {
                    if answer.status == status && local_endpoints(&answer)? == Some(count) {
                        check_body(&answer, count)?;
                        return Ok(since.elapsed());
                    }
                    format!("{} {}", answer.status, answer.body)
                }
                Err(e) => format!("{e:#}"),
            };
            if since.elapsed() > CHANGE_BOUND {
                bail!(
                    "node {index}: wanted {status} with localEndpoints {count} within {CHANGE_BOUND:?}, last: {last}; log:\n{}",
                    self.daemons[usize::from(index) - 1].log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls node `index` until the port refuses connections.
    fn wait_closed(&self, index: u8, since: Instant) -> Result<Duration> {
        loop {
            match self.ask(index) {
                Err(e) if format!("{e:#}").contains("onnection refused") => {
                    return Ok(since.elapsed())
                }
                other => {
                    if since.elapsed() > CHANGE_BOUND {
                        bail!("node {index}: the port still answers: {other:?}");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn local_endpoints(answer: &HttpAnswer) -> Result<Option<u64>> {
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("not JSON: {:?}", answer.body))?;
    Ok(json["localEndpoints"].as_u64())
}

/// Every field kube-proxy's answer has, with this Service's values.
fn check_body(answer: &HttpAnswer, count: u64) -> Result<()> {
    let json: serde_json::Value = serde_json::from_str(&answer.body)?;
    let want = serde_json::json!({
        "service": {"namespace": "default", "name": "lb"},
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    });
    ensure!(json == want, "body {json} != {want}");
    Ok(())
}

#[test]
fn e2e_health_check_node_port_answers_per_node() -> Result<()> {
    if !require_root("e2e_health_check_node_port_answers_per_node") {
        return Ok(());
    }
    let mut f = Fixture::new()?;
    f.manifests.write("lb-service.yaml", &service_yaml())?;
    f.write_slice(&[("a1", "n1", true)])?;
    f.start_daemons()?;

    let t = Instant::now();
    println!("n1 200/1 after {:?}", f.wait_answer(1, 200, 1, t)?);
    println!("n2 503/0 after {:?}", f.wait_answer(2, 503, 0, t)?);

    // The endpoint on n1 stops being ready; a2 on n2 becomes one.
    let t = Instant::now();
    f.write_slice(&[("a1", "n1", false), ("a2", "n2", true)])?;
    println!(
        "slice change: n1 503/0 after {:?}",
        f.wait_answer(1, 503, 0, t)?
    );
    println!(
        "slice change: n2 200/1 after {:?}",
        f.wait_answer(2, 200, 1, t)?
    );

    // Both ready: one local endpoint on each node.
    let t = Instant::now();
    f.write_slice(&[("a1", "n1", true), ("a2", "n2", true)])?;
    println!(
        "both ready: n1 200/1 after {:?}",
        f.wait_answer(1, 200, 1, t)?
    );
    f.wait_answer(2, 200, 1, t)?;

    // kube-proxy's /livez and /proxyMode.
    let livez = f.daemons[0].health("/livez")?;
    ensure!(livez.status == 200, "/livez: {livez:?}");
    let body: serde_json::Value = serde_json::from_str(&livez.body)?;
    ensure!(
        body["lastUpdated"].is_string() && body["currentTime"].is_string(),
        "/livez body {body}"
    );
    let daemon = &f.daemons[0];
    let mode = http_get(
        &f.cluster.node(1)?.ns.path(),
        daemon.options.metrics_addr,
        "/proxyMode",
    )?;
    ensure!(
        mode.status == 200 && mode.body == "ebpf",
        "/proxyMode: {mode:?}"
    );

    // The Service goes: both ports close.
    let t = Instant::now();
    f.manifests.remove("lb-service.yaml")?;
    println!(
        "service deleted: n1 closed after {:?}",
        f.wait_closed(1, t)?
    );
    println!(
        "service deleted: n2 closed after {:?}",
        f.wait_closed(2, t)?
    );

    for daemon in &mut f.daemons {
        let status = daemon.stop()?;
        ensure!(status.success(), "daemon exit: {status}");
    }
    Ok(())
}
