//! North-south Services end to end (issue 11): two namespace nodes each running the real
//! `service-lb run --manifests` daemon, pods on both, and an external client namespace
//! behind node 1's external device (`slbx0`, 198.19.200.0/24 and fd00:c8::/64). ONE
//! topology and ONE daemon per node serve every case of this file (one test function).
//!
//! ```text
//!  ext client 198.19.200.10 (+ .130)        n1 198.19.255.1            n2 198.19.255.2
//!    eth0 ---- slbx0 (gw 198.19.200.1) n1 ---- slbu0 == switch == slbu0 ---- n2
//!                                      pods c1 (client), b1            pod b2
//! ```
//!
//! Services (both families), the expected outcome being kube-proxy's:
//! - `np-cluster`: NodePort 30080 TCP+UDP, eTP=Cluster, one endpoint b2 (on n2). From the
//!   external client to n1:30080: answered by b2, the client sees n1:30080, the backend
//!   sees n1's address (SNAT). From pod c1 too (pods are masqueraded for NodePorts).
//! - `np-local`: NodePort 30081, eTP=Local, one endpoint b1 (on n1). External client to
//!   n1:30081: b1 answers and sees the client's own address; to n2:30081 (no local
//!   endpoint there): dropped, the client times out (not refused).
//! - `ext`: ClusterIP with externalIPs 198.19.200.11 / fd00:c8::11, endpoint b1.
//! - `lb`: LoadBalancer (LB IP 198.19.200.200 / fd00:c8::200), loadBalancerSourceRanges
//!   198.19.200.0/25 and fd00:c8::/121, endpoint b2: the client's first address is
//!   answered, its second (198.19.200.130 / fd00:c8::90) times out.
//! - `itp`: ClusterIP with internalTrafficPolicy Local and its only endpoint b2 (on n2):
//!   pod c1 on n1 times out (dropped, not refused).
//! - A TCP stream from the external client through n1:30080 (SNAT) keeps answering
//!   across a restart of n1's daemon.
//!
//! The health check node port on both nodes is `e2e_health_check`'s (not repeated here).
//! Every case prints what the client and the backend saw; the test fails at the end with
//! the list of failed cases.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use service_lb_tests::daemon::{
    wait_for_rows, Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec, SliceManifest,
};
use service_lb_tests::netns::{run_in, sweep_leftovers, NetNs};
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::{tcp_ask, tcp_ask_bound, udp_ask, Answer, HeldConnection, Servers};
use service_lb_tests::topology::{Cluster, ClusterSpec, EXTERNAL_DEV, UNDERLAY_DEV};

const READY_BOUND: Duration = Duration::from_secs(60);
const PROGRAM_BOUND: Duration = Duration::from_secs(20);
const BACKEND_PORT: u16 = 8080;
const NP_CLUSTER: u16 = 30080;
const NP_LOCAL: u16 = 30081;
const NP_LB: u16 = 30082;

/// What a request got.
#[derive(Debug)]
enum Outcome {
    Answered(Answer),
    Refused,
    TimedOut,
    Other(String),
}

impl Outcome {
    fn of(result: Result<Answer>) -> Self {
        match result {
            Ok(a) => Self::Answered(a),
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("refused") {
                    Self::Refused
                } else if text.contains("timed out")
                    || text.contains("Resource temporarily unavailable")
                    || text.contains("no udp answer")
                {
                    Self::TimedOut
                } else {
                    Self::Other(text)
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Answered(a) => format!(
                "answered by {}; client saw the server as {}, backend saw the client as {}",
                a.name, a.server_seen_by_client, a.client_seen_by_server
            ),
            Self::Refused => "refused".into(),
            Self::TimedOut => "timed out (dropped)".into(),
            Self::Other(e) => format!("error: {e}"),
        }
    }
}

/// One case's verdict.
struct CaseResult {
    name: String,
    passed: bool,
    detail: String,
}

struct Fixture {
    // Field order = drop order: servers and daemons before the manifests and namespaces.
    servers: Vec<Servers>,
    daemons: Vec<Daemon>,
    manifests: ManifestDir,
    cluster: Cluster,
}

fn addr(v6: bool, v4: &str, v6a: &str) -> IpAddr {
    if v6 { v6a } else { v4 }.parse().expect("test address")
}

fn node_yaml(name: &str, v4: IpAddr, v6: IpAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: \"{v4}\"\n  - type: InternalIP\n    address: \"{v6}\"\n  - type: Hostname\n    address: {name}\n"
    )
}

/// A dual-stack Service manifest; `extra` is appended to `spec`, `status` (if any) after.
fn service_yaml(
    name: &str,
    cluster_ips: [&str; 2],
    ports: &str,
    extra: &str,
    status: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: \"{}\"\n  clusterIPs: [\"{}\", \"{}\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n{extra}  ports:\n{ports}{status}",
        cluster_ips[0], cluster_ips[0], cluster_ips[1]
    )
}

fn port_yaml(name: &str, port: u16, protocol: &str, node_port: Option<u16>) -> String {
    let np = node_port.map_or_else(String::new, |p| format!("    nodePort: {p}\n"));
    format!(
        "  - name: {name}\n    port: {port}\n    targetPort: {BACKEND_PORT}\n    protocol: {protocol}\n{np}"
    )
}

impl Fixture {
    fn new() -> Result<Self> {
        sweep_leftovers();
        let cluster =
            Cluster::new(&ClusterSpec::new(&[&["c1", "b1"], &["b2"]]).with_external_client())
                .context("building the topology")?;
        let manifests = ManifestDir::create(cluster.prefix())?;
        Ok(Self {
            servers: Vec::new(),
            daemons: Vec::new(),
            manifests,
            cluster,
        })
    }

    fn start_backends(&mut self) -> Result<()> {
        for name in ["b1", "b2"] {
            let pod = self.cluster.pod(name)?;
            let addrs = [
                SocketAddr::new(pod.v4.into(), BACKEND_PORT),
                SocketAddr::new(pod.v6.into(), BACKEND_PORT),
            ];
            self.servers
                .push(Servers::start(&pod.ns, name, &addrs, &addrs)?);
        }
        Ok(())
    }

    fn slice(&self, service: &str, pod: &str, ipv6: bool, udp: bool) -> Result<String> {
        let p = self.cluster.pod(pod)?;
        let node = format!("n{}", p.node);
        let mut ports = vec![PortSpec::new("tcp", BACKEND_PORT, "TCP")];
        if udp {
            ports.push(PortSpec::new("udp", BACKEND_PORT, "UDP"));
        }
        Ok(SliceManifest {
            namespace: "default".into(),
            name: format!("{service}-{}", if ipv6 { "v6" } else { "v4" }),
            service: service.into(),
            ipv6,
            ports,
            endpoints: vec![EndpointSpec {
                addr: p.addr(ipv6),
                node,
                ready: true,
                terminating: false,
            }],
            trigger_time: None,
        }
        .yaml())
    }

    fn write_manifests(&self) -> Result<()> {
        for node in &self.cluster.nodes {
            self.manifests.write(
                &format!("node-{}.yaml", node.name),
                &node_yaml(&node.name, node.v4.into(), node.v6.into()),
            )?;
        }
        let tcp_udp = |np| {
            format!(
                "{}{}",
                port_yaml("tcp", 80, "TCP", np),
                port_yaml("udp", 80, "UDP", np)
            )
        };
        let services = [
            (
                "np-cluster",
                service_yaml(
                    "np-cluster",
                    ["198.19.0.80", "fd00:19::80"],
                    &tcp_udp(Some(NP_CLUSTER)),
                    "  type: NodePort\n  externalTrafficPolicy: Cluster\n",
                    "",
                ),
                "b2",
                true,
            ),
            (
                "np-local",
                service_yaml(
                    "np-local",
                    ["198.19.0.81", "fd00:19::81"],
                    &tcp_udp(Some(NP_LOCAL)),
                    "  type: NodePort\n  externalTrafficPolicy: Local\n",
                    "",
                ),
                "b1",
                true,
            ),
            (
                "ext",
                service_yaml(
                    "ext",
                    ["198.19.0.82", "fd00:19::82"],
                    &port_yaml("tcp", 80, "TCP", None),
                    "  type: ClusterIP\n  externalIPs: [\"198.19.200.11\", \"fd00:c8::11\"]\n",
                    "",
                ),
                "b1",
                false,
            ),
            (
                "lb",
                service_yaml(
                    "lb",
                    ["198.19.0.83", "fd00:19::83"],
                    &port_yaml("tcp", 80, "TCP", Some(NP_LB)),
                    "  type: LoadBalancer\n  loadBalancerSourceRanges: [\"198.19.200.0/25\", \"fd00:c8::/121\"]\n",
                    "status:\n  loadBalancer:\n    ingress:\n    - ip: 198.19.200.200\n    - ip: \"fd00:c8::200\"\n",
                ),
                "b2",
                false,
            ),
            (
                "itp",
                service_yaml(
                    "itp",
                    ["198.19.0.84", "fd00:19::84"],
                    &port_yaml("tcp", 80, "TCP", None),
                    "  type: ClusterIP\n  internalTrafficPolicy: Local\n",
                    "",
                ),
                "b2",
                false,
            ),
        ];
        for (name, yaml, backend, udp) in services {
            self.manifests.write(&format!("{name}.yaml"), &yaml)?;
            for ipv6 in [false, true] {
                self.manifests.write(
                    &format!("{name}-slice-{}.yaml", if ipv6 { 6 } else { 4 }),
                    &self.slice(name, backend, ipv6, udp)?,
                )?;
            }
        }
        Ok(())
    }

    fn daemon_args() -> Vec<String> {
        vec!["--nodeport-addresses=198.19.255.0/24,fd00:ff::/64".into()]
    }

    fn start_daemons(&mut self) -> Result<()> {
        // Node 1 also serves the external client's device.
        let first = self.start_node1_daemon()?;
        self.daemons.push(first);
        let node = self.cluster.node(2)?;
        let mut options = DaemonOptions::for_node(
            node.bpffs.path(),
            self.manifests.path(),
            &node.name,
            self.manifests.log_path(&node.name),
        );
        options.extra_args.extend(Self::daemon_args());
        let mut daemon = Daemon::start(&node.ns, options)?;
        let took = daemon.wait_ready(READY_BOUND)?;
        println!("daemon n2 ready in {took:?}");
        self.daemons.push(daemon);
        Ok(())
    }

    fn start_node1_daemon(&self) -> Result<Daemon> {
        let node = self.cluster.node(1)?;
        let mut options = DaemonOptions::for_node(
            node.bpffs.path(),
            self.manifests.path(),
            &node.name,
            self.manifests.log_path(&node.name),
        );
        options.external_interfaces = format!("{UNDERLAY_DEV},{EXTERNAL_DEV}");
        options.extra_args.extend(Self::daemon_args());
        let mut daemon = Daemon::start(&node.ns, options)?;
        let took = daemon.wait_ready(READY_BOUND)?;
        println!("daemon n1 (external devices {UNDERLAY_DEV},{EXTERNAL_DEV}) ready in {took:?}");
        Ok(daemon)
    }

    /// Waits until node `index` has programmed the north-south frontends.
    fn wait_programmed(&self, index: u8) -> Result<()> {
        let node = self.cluster.node(index)?;
        let np = SocketAddr::new(node.v4.into(), NP_CLUSTER).to_string();
        let took = wait_for_rows(
            node.bpffs.path(),
            "north-south frontends",
            PROGRAM_BOUND,
            |rows| {
                rows.iter().any(|r| r.frontend == format!("{np}/tcp"))
                    && rows
                        .iter()
                        .any(|r| r.kind.as_deref() == Some("loadbalancer"))
            },
        )?;
        println!("node n{index}: north-south frontends programmed after {took:?}");
        Ok(())
    }

    fn client_ns(&self) -> Result<&NetNs> {
        Ok(&self.cluster.external()?.ns)
    }

    fn node_addr(&self, index: u8, v6: bool) -> Result<IpAddr> {
        let n = self.cluster.node(index)?;
        Ok(if v6 { n.v6.into() } else { n.v4.into() })
    }

    fn client_addr(&self, v6: bool, allowed: bool) -> Result<IpAddr> {
        let c = self.cluster.external()?;
        Ok(match (v6, allowed) {
            (false, true) => c.v4.into(),
            (false, false) => c.other_v4.into(),
            (true, true) => c.v6.into(),
            (true, false) => c.other_v6.into(),
        })
    }
}

/// Expected outcome of a case.
enum Want {
    /// Answered by `backend`, the client saw `server`, the backend saw the client as
    /// `client_ip` (any port).
    Answer {
        backend: &'static str,
        server: SocketAddr,
        client_ip: IpAddr,
    },
    /// Dropped: the client times out, no refusal.
    Timeout,
}

fn judge(name: String, got: &Outcome, want: &Want) -> CaseResult {
    let passed = match (got, want) {
        (
            Outcome::Answered(a),
            Want::Answer {
                backend,
                server,
                client_ip,
            },
        ) => {
            a.name == *backend
                && a.server_seen_by_client == *server
                && a.client_seen_by_server.ip() == *client_ip
        }
        (Outcome::TimedOut, Want::Timeout) => true,
        _ => false,
    };
    let wanted = match want {
        Want::Answer {
            backend,
            server,
            client_ip,
        } => format!("wanted {backend} answering as {server}, seeing {client_ip}"),
        Want::Timeout => "wanted a timeout (drop)".into(),
    };
    let detail = format!("{}; {wanted}", got.describe());
    println!("{} {name}: {detail}", if passed { "PASS" } else { "FAIL" });
    CaseResult {
        name,
        passed,
        detail,
    }
}

#[test]
fn north_south_end_to_end() -> Result<()> {
    if !require_root("north_south_end_to_end") {
        return Ok(());
    }
    let mut f = Fixture::new()?;
    f.start_backends()?;
    f.write_manifests()?;
    f.start_daemons()?;
    f.wait_programmed(1)?;
    f.wait_programmed(2)?;
    let mut results = Vec::new();

    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        let n1 = f.node_addr(1, v6)?;
        let n2 = f.node_addr(2, v6)?;
        let client = f.client_addr(v6, true)?;
        let denied = f.client_addr(v6, false)?;
        let c1 = f.cluster.pod("c1")?.addr(v6);
        let ext_ns = f.client_ns()?;
        let c1_ns = &f.cluster.pod("c1")?.ns;

        // NodePort eTP=Cluster from outside: TCP and UDP, SNAT to n1.
        let np = SocketAddr::new(n1, NP_CLUSTER);
        let want = Want::Answer {
            backend: "b2",
            server: np,
            client_ip: n1,
        };
        let got = Outcome::of(run_in(ext_ns, || tcp_ask(np)));
        results.push(judge(
            format!("{fam} nodeport eTP=Cluster tcp from outside"),
            &got,
            &want,
        ));
        let got = Outcome::of(run_in(ext_ns, || udp_ask(np)));
        results.push(judge(
            format!("{fam} nodeport eTP=Cluster udp from outside"),
            &got,
            &want,
        ));
        // From a pod on n1 (kube-proxy masquerades pods' NodePort traffic too).
        let got = Outcome::of(run_in(c1_ns, || tcp_ask(np)));
        results.push(judge(
            format!("{fam} nodeport eTP=Cluster tcp from pod c1"),
            &got,
            &want,
        ));
        let got = Outcome::of(run_in(c1_ns, || udp_ask(np)));
        results.push(judge(
            format!("{fam} nodeport eTP=Cluster udp from pod c1"),
            &got,
            &want,
        ));

        // NodePort eTP=Local: the backend sees the client; no local endpoint: dropped.
        let np_local = SocketAddr::new(n1, NP_LOCAL);
        let want = Want::Answer {
            backend: "b1",
            server: np_local,
            client_ip: client,
        };
        let got = Outcome::of(run_in(ext_ns, || tcp_ask(np_local)));
        results.push(judge(
            format!("{fam} nodeport eTP=Local tcp from outside"),
            &got,
            &want,
        ));
        let got = Outcome::of(run_in(ext_ns, || udp_ask(np_local)));
        results.push(judge(
            format!("{fam} nodeport eTP=Local udp from outside"),
            &got,
            &want,
        ));
        let np_local_n2 = SocketAddr::new(n2, NP_LOCAL);
        let got = Outcome::of(run_in(ext_ns, || tcp_ask(np_local_n2)));
        results.push(judge(
            format!("{fam} nodeport eTP=Local on n2 (no local endpoint) from outside"),
            &got,
            &Want::Timeout,
        ));
        // A pod reaches the eTP=Local NodePort through the Internal twin, its address kept.
        let got = Outcome::of(run_in(c1_ns, || tcp_ask(np_local)));
        results.push(judge(
            format!("{fam} nodeport eTP=Local tcp from pod c1"),
            &got,
            &Want::Answer {
                backend: "b1",
                server: np_local,
                client_ip: c1,
            },
        ));

        // externalIPs (eTP=Cluster: SNAT to n1; b1 is local to n1).
        let ext_ip = SocketAddr::new(addr(v6, "198.19.200.11", "fd00:c8::11"), 80);
        let got = Outcome::of(run_in(ext_ns, || tcp_ask(ext_ip)));
        results.push(judge(
            format!("{fam} externalIP tcp from outside"),
            &got,
            &Want::Answer {
                backend: "b1",
                server: ext_ip,
                client_ip: n1,
            },
        ));

        // LoadBalancer IP with source ranges: allowed and denied client addresses.
        let lb = SocketAddr::new(addr(v6, "198.19.200.200", "fd00:c8::200"), 80);
        let got = Outcome::of(run_in(ext_ns, || tcp_ask_bound(lb, client)));
        results.push(judge(
            format!("{fam} LB IP from an allowed source ({client})"),
            &got,
            &Want::Answer {
                backend: "b2",
                server: lb,
                client_ip: n1,
            },
        ));
        let got = Outcome::of(run_in(ext_ns, || tcp_ask_bound(lb, denied)));
        results.push(judge(
            format!("{fam} LB IP from a denied source ({denied})"),
            &got,
            &Want::Timeout,
        ));

        // iTP=Local ClusterIP whose only endpoint is on the other node: dropped.
        let itp = SocketAddr::new(addr(v6, "198.19.0.84", "fd00:19::84"), 80);
        let got = Outcome::of(run_in(c1_ns, || tcp_ask(itp)));
        results.push(judge(
            format!("{fam} iTP=Local ClusterIP from pod c1 (endpoint only on n2)"),
            &got,
            &Want::Timeout,
        ));
    }

    // A NodePort flow (SNAT) survives a restart of n1's daemon.
    let np = SocketAddr::new(f.node_addr(1, false)?, NP_CLUSTER);
    results.push(restart_case(&mut f, np));

    for node in &f.cluster.nodes {
        println!("{} data-path counters (non-zero):", node.name);
        match service_lb::dataplane::BpfMaps::open_pinned(node.bpffs.path())
            .and_then(|m| m.counters())
        {
            Ok(counters) => {
                for c in counters.iter().filter(|c| c.packets > 0) {
                    println!("  {:?} {} {}", c.hook, c.reason.name(), c.packets);
                }
            }
            Err(e) => println!("  unreadable: {e}"),
        }
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.passed).collect();
    println!(
        "north-south end to end: {} of {} cases passed",
        results.len() - failed.len(),
        results.len()
    );
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|r| format!("{}: {}", r.name, r.detail))
            .collect();
        bail!(
            "failed cases:\n{}\nn1 log:\n{}",
            list.join("\n"),
            f.daemons[0].log_tail(30)
        );
    }
    Ok(())
}

/// Opens a TCP stream from the external client to `np`, restarts n1's daemon, and pings
/// the stream before, during and after.
fn restart_case(f: &mut Fixture, np: SocketAddr) -> CaseResult {
    let name = "v4 nodeport eTP=Cluster stream across a restart of n1's daemon".to_owned();
    let result = (|| -> Result<String> {
        let ext_ns = f.client_ns()?;
        let mut held = run_in(ext_ns, || HeldConnection::open(np))?;
        let first = held.first().clone();
        let mut answered = 0u32;
        for _ in 0..5 {
            held.ping()?;
            answered += 1;
        }
        let stopped = Instant::now();
        let mut old = f.daemons.remove(0);
        old.stop()?;
        // The data plane serves while no daemon runs.
        for _ in 0..5 {
            held.ping()?;
            answered += 1;
        }
        let new = f.start_node1_daemon()?;
        f.daemons.insert(0, new);
        println!("n1 daemon restarted in {:?}", stopped.elapsed());
        for _ in 0..20 {
            let a = held.ping()?;
            if a.name != first.name {
                bail!("the stream moved from {} to {}", first.name, a.name);
            }
            answered += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!(
            "{answered} pings answered by {}, backend saw {}",
            first.name, first.client_seen_by_server
        ))
    })();
    let (passed, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}")),
    };
    println!("{} {name}: {detail}", if passed { "PASS" } else { "FAIL" });
    CaseResult {
        name,
        passed,
        detail,
    }
}
