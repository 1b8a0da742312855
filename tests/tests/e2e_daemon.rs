//! End to end with the real `service-lb run --manifests` daemon inside a namespace node
//! (see `service_lb_tests::daemon`). Timings are measured and printed; only generous
//! bounds are asserted.
//!
//! One node, pods `client`, `b1`, `b2`, `b3` (one veth each), a ClusterIP Service
//! 198.19.0.10 / fd00:19::10 port 80/TCP -> 8080 and 53/UDP -> 5353.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use service_lb_tests::daemon::{
    frontends, metric_samples, metric_sum, Daemon, DaemonOptions, EndpointSpec, ManifestDir,
    PortSpec, ServiceManifest, SliceManifest,
};
use service_lb_tests::netns::{run_in, sweep_leftovers, NetNs};
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::{tcp_ask, udp_ask, HeldConnection, Servers};
use service_lb_tests::topology::{gateways, Cluster, ClusterSpec, Node, Pod, POD_DEV};

const VIP4: &str = "198.19.0.10";
const VIP6: &str = "fd00:19::10";
const VIP_NEW: &str = "198.19.0.11";
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
/// Generous bound on "a change reaches the data plane" (the target is 1 s).
const CHANGE_BOUND: Duration = Duration::from_secs(5);
const READY_BOUND: Duration = Duration::from_secs(30);

struct Fixture {
    // Field order = drop order: the daemon dies before the maps and namespaces go.
    daemon: Option<Daemon>,
    _servers: Vec<Servers>,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Fixture {
    fn new(backends: &[&str]) -> Result<Self> {
        sweep_leftovers();
        let cluster = Cluster::new(&ClusterSpec::new(&[&["client", "b1", "b2", "b3"]]))
            .context("building the topology")?;
        let manifests = ManifestDir::create(cluster.prefix())?;
        let mut servers = Vec::new();
        for name in ["b1", "b2", "b3"] {
            let pod = cluster.pod(name)?;
            servers.push(Servers::start(
                &pod.ns,
                name,
                &[sa(pod.v4.into(), TCP_TARGET), sa(pod.v6.into(), TCP_TARGET)],
                &[sa(pod.v4.into(), UDP_TARGET), sa(pod.v6.into(), UDP_TARGET)],
            )?);
        }
        let fixture = Self {
            daemon: None,
            _servers: servers,
            manifests,
            cluster,
        };
        fixture.write_web(backends)?;
        Ok(fixture)
    }

    fn node(&self) -> Result<&Node> {
        self.cluster.node(1)
    }

    fn client(&self) -> Result<&Pod> {
        self.cluster.pod("client")
    }

    fn options(&self, extra: &[&str]) -> Result<DaemonOptions> {
        let node = self.node()?;
        let log = self.manifests.log_path("n1");
        let mut options =
            DaemonOptions::for_node(node.bpffs.path(), self.manifests.path(), "n1", log);
        for arg in extra {
            // A flag given here replaces the default of the same name.
            let flag = arg.split('=').next().unwrap_or_default();
            options
                .extra_args
                .retain(|a| a.split('=').next() != Some(flag));
            options.extra_args.push((*arg).to_owned());
        }
        Ok(options)
    }

    fn start(&mut self, extra: &[&str]) -> Result<Duration> {
        let options = self.options(extra)?;
        let mut daemon = Daemon::start(&self.node()?.ns, options)?;
        let took = daemon.wait_ready(READY_BOUND)?;
        self.daemon = Some(daemon);
        Ok(took)
    }

    fn daemon(&mut self) -> Result<&mut Daemon> {
        self.daemon.as_mut().context("no daemon running")
    }

    /// The `web` Service and its two slices with `backends` as endpoints.
    fn write_web(&self, backends: &[&str]) -> Result<()> {
        self.manifests
            .write("web-service.yaml", &web_service().yaml())?;
        self.write_web_slices(backends)
    }

    fn write_web_slices(&self, backends: &[&str]) -> Result<()> {
        let text = [false, true]
            .iter()
            .map(|&v6| self.slice("web", "web", v6, backends).map(|s| s.yaml()))
            .collect::<Result<Vec<_>>>()?
            .join("---\n");
        self.manifests.write("web-slices.yaml", &text)
    }

    fn slice(
        &self,
        service: &str,
        name: &str,
        v6: bool,
        backends: &[&str],
    ) -> Result<SliceManifest> {
        let endpoints = backends
            .iter()
            .map(|b| {
                let pod = self.cluster.pod(b)?;
                Ok(EndpointSpec {
                    addr: pod.addr(v6),
                    node: "n1".into(),
                    ready: true,
                    terminating: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SliceManifest {
            namespace: "default".into(),
            name: format!("{name}-{}", if v6 { "v6" } else { "v4" }),
            service: service.into(),
            ipv6: v6,
            ports: vec![
                PortSpec::new("http", TCP_TARGET, "TCP"),
                PortSpec::new("dns", UDP_TARGET, "UDP"),
            ],
            endpoints,
            trigger_time: None,
        })
    }

    fn backend_addr(&self, name: &str, port: u16) -> Result<String> {
        Ok(sa(self.cluster.pod(name)?.v4.into(), port).to_string())
    }

    /// Polls the pinned maps until `frontend` has exactly `wanted` backends; returns when.
    fn wait_backends(
        &self,
        frontend: &str,
        wanted: &BTreeSet<String>,
        since: Instant,
    ) -> Result<Duration> {
        let bpffs = self.node()?.bpffs.path().to_path_buf();
        loop {
            let now = frontends(&bpffs)?;
            let have: BTreeSet<String> = now.get(frontend).into_iter().flatten().cloned().collect();
            if have == *wanted {
                return Ok(since.elapsed());
            }
            if since.elapsed() > CHANGE_BOUND {
                bail!("{frontend}: maps hold {have:?}, wanted {wanted:?} within {CHANGE_BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Connects to `addr` from the client until `backend` answers; returns when.
    fn wait_answer_from(
        &self,
        addr: SocketAddr,
        backend: &str,
        since: Instant,
    ) -> Result<Duration> {
        run_in(&self.client()?.ns, || loop {
            if let Ok(answer) = tcp_ask(addr) {
                if answer.name == backend {
                    return Ok(since.elapsed());
                }
            }
            if since.elapsed() > CHANGE_BOUND {
                bail!("{backend} never answered on {addr} within {CHANGE_BOUND:?}");
            }
        })
    }

    /// `count` TCP connections to `addr` from the client: who answered.
    fn spread(&self, addr: SocketAddr, count: u32) -> Result<Vec<String>> {
        run_in(&self.client()?.ns, || {
            (0..count)
                .map(|_| tcp_ask(addr).map(|a| a.name))
                .collect::<Result<Vec<_>>>()
        })
    }
}

fn web_service() -> ServiceManifest {
    ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ips: vec![ip(VIP4), ip(VIP6)],
        ports: vec![
            (PortSpec::new("http", TCP_PORT, "TCP"), TCP_TARGET),
            (PortSpec::new("dns", UDP_PORT, "UDP"), UDP_TARGET),
        ],
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn tcp_frontend(vip: &str) -> String {
    format!("{}/tcp", sa(ip(vip), TCP_PORT))
}

fn names(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn e2e_daemon_manifest_changes_reach_new_connections() -> Result<()> {
    if !require_root("e2e_daemon_manifest_changes_reach_new_connections") {
        return Ok(());
    }
    let mut f = Fixture::new(&["b1", "b2"])?;
    let ready = f.start(&[])?;
    eprintln!("daemon ready (attached + first full sync) {ready:?} after start");
    let vip = sa(ip(VIP4), TCP_PORT);
    let first = f.spread(vip, 40)?;
    let seen: BTreeSet<String> = first.iter().cloned().collect();
    assert_eq!(seen, names(&["b1", "b2"]), "initial spread: {first:?}");
    let udp = run_in(&f.client()?.ns, || udp_ask(sa(ip(VIP6), UDP_PORT)))?;
    assert!(["b1", "b2"].contains(&udp.name.as_str()), "{udp:?}");

    // a) add a backend
    let frontend = tcp_frontend(VIP4);
    let all3: BTreeSet<String> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| f.backend_addr(b, TCP_TARGET))
        .collect::<Result<_>>()?;
    let written = Instant::now();
    f.write_web_slices(&["b1", "b2", "b3"])?;
    let to_map = f.wait_backends(&frontend, &all3, written)?;
    let to_conn = f.wait_answer_from(vip, "b3", written)?;
    eprintln!("MEASURED add backend: file write -> map update {to_map:?}, -> first connection to b3 {to_conn:?}");

    // remove a backend: no new connection reaches it afterwards
    let two: BTreeSet<String> = ["b2", "b3"]
        .iter()
        .map(|b| f.backend_addr(b, TCP_TARGET))
        .collect::<Result<_>>()?;
    let written = Instant::now();
    f.write_web_slices(&["b2", "b3"])?;
    let removed_in = f.wait_backends(&frontend, &two, written)?;
    let after = f.spread(vip, 60)?;
    eprintln!("MEASURED remove backend: file write -> map update {removed_in:?}");
    assert!(
        !after.iter().any(|b| b == "b1"),
        "b1 still reached: {after:?}"
    );

    // a new Service
    let mut svc = web_service();
    svc.name = "api".into();
    svc.cluster_ips = vec![ip(VIP_NEW)];
    let slice = f.slice("api", "api", false, &["b1"])?;
    let written = Instant::now();
    f.manifests
        .write("api.yaml", &format!("{}---\n{}", svc.yaml(), slice.yaml()))?;
    let api_map = f.wait_backends(
        &tcp_frontend(VIP_NEW),
        &names(&[&f.backend_addr("b1", TCP_TARGET)?]),
        written,
    )?;
    let api_conn = f.wait_answer_from(sa(ip(VIP_NEW), TCP_PORT), "b1", written)?;
    eprintln!("MEASURED new Service: file write -> map update {api_map:?}, -> first connection {api_conn:?}");
    for t in [to_map, removed_in, api_map] {
        assert!(t < CHANGE_BOUND);
    }

    // health and metrics
    let daemon = f.daemon()?;
    let healthz = daemon.health("/healthz")?;
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    let json: serde_json::Value = serde_json::from_str(&healthz.body)?;
    for key in ["lastUpdated", "currentTime", "nodeEligible"] {
        assert!(json.get(key).is_some(), "/healthz lacks {key}: {json}");
    }
    assert_eq!(json["nodeEligible"], serde_json::Value::Bool(true));
    assert_eq!(daemon.health("/livez")?.status, 200);
    assert_eq!(daemon.health("/readyz")?.status, 200);
    // Map entries are sampled off the scrape path (about 1 s after a sync): poll a little.
    let sampled_by = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let samples = metric_samples(&daemon.metrics()?);
        let svc4 = metric_sum(&samples, "service_lb_map_entries", &["map=\"SLB_SVC4_V1\""]);
        if svc4 >= 4.0 || Instant::now() > sampled_by {
            break samples;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metric_sum(&samples, "service_lb_sync_duration_seconds_count", &[]) >= 4.0);
    assert!(metric_sum(&samples, "service_lb_map_entries", &["map=\"SLB_SVC4_V1\""]) >= 4.0);
    assert!(metric_sum(&samples, "process_open_fds", &[]) >= 3.0);
    assert!(metric_sum(&samples, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        metric_sum(
            &samples,
            "service_lb_map_capacity_entries",
            &["map=\"SLB_SVC4_V1\""]
        ),
        1024.0
    );
    assert!(
        metric_sum(
            &samples,
            "service_lb_datapath_packets_total",
            &["hook=\"from_pod\"", "reason=\"dnat_new_flow\""]
        ) >= 100.0,
        "new flows counted at scrape time"
    );
    assert!(samples
        .keys()
        .any(|k| k.starts_with("service_lb_datapath_bytes_total")));

    // SIGTERM: a clean exit that leaves the data plane serving.
    let status = daemon.stop()?;
    assert!(status.success(), "{status}");
    let log = daemon.log_tail(5);
    let still = f.spread(vip, 10)?;
    assert_eq!(still.len(), 10, "served after the daemon stopped");
    assert!(log.contains("keeps serving"), "{log}");
    Ok(())
}

#[test]
fn e2e_daemon_kill9_restart_fails_no_connection() -> Result<()> {
    if !require_root("e2e_daemon_kill9_restart_fails_no_connection") {
        return Ok(());
    }
    let mut f = Fixture::new(&["b1", "b2", "b3"])?;
    f.start(&[])?;
    let mut old = f.daemon.take().context("no daemon running")?;
    let client_ns: &NetNs = &f.client()?.ns;
    let vip_tcp = sa(ip(VIP4), TCP_PORT);
    let vip_udp = sa(ip(VIP4), UDP_PORT);
    let mut held = run_in(client_ns, || HeldConnection::open(sa(ip(VIP6), TCP_PORT)))?;
    let held_backend = held.first().name.clone();
    let bpffs = f.node()?.bpffs.path().to_path_buf();

    let stop = AtomicBool::new(false);
    let (ok, failed, empty_seen, polls) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let mut first_failure = None;
    let mut restart_ready = Duration::ZERO;
    let mut restarted = None;
    let options = f.options(&[])?;
    let node_ns = &f.node()?.ns;
    std::thread::scope(|scope| -> Result<()> {
        let client = scope.spawn(|| {
            run_in(client_ns, || {
                let mut first = None;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    for result in [tcp_ask(vip_tcp).map(drop), udp_ask(vip_udp).map(drop)] {
                        match result {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                first.get_or_insert(format!("{e:#}"));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(first)
            })
        });
        let watcher = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match frontends(&bpffs) {
                    Ok(map) if map.get(&tcp_frontend(VIP4)).is_some_and(|b| b.len() == 3) => {}
                    _ => {
                        empty_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut run = || -> Result<()> {
            std::thread::sleep(Duration::from_millis(500));
            old.kill9()?;
            std::thread::sleep(Duration::from_millis(500));
            let mut daemon = Daemon::start(node_ns, options.clone())?;
            restart_ready = daemon.wait_ready(READY_BOUND)?;
            restarted = Some(daemon);
            std::thread::sleep(Duration::from_millis(1000));
            Ok(())
        };
        let result = run();
        stop.store(true, Ordering::Relaxed);
        first_failure = client
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))??;
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
        result
    })?;
    f.daemon = restarted;
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!(
        "MEASURED kill -9 + restart: {ok} calls answered, {failed} failed; restarted daemon ready in {restart_ready:?}; {} map polls, {} without the full service",
        polls.load(Ordering::Relaxed),
        empty_seen.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed, 0,
        "failed calls across the restart, first: {first_failure:?}"
    );
    assert!(
        ok > 50,
        "the client made too few calls to mean anything: {ok}"
    );
    assert_eq!(
        empty_seen.into_inner(),
        0,
        "the service lost its backends in the maps during the restart"
    );
    let answer = held.ping()?;
    assert_eq!(answer.name, held_backend, "the held connection moved");
    assert_eq!(f.daemon()?.health("/readyz")?.status, 200);
    Ok(())
}

#[test]
fn e2e_daemon_attaches_a_new_pod_interface() -> Result<()> {
    if !require_root("e2e_daemon_attaches_a_new_pod_interface") {
        return Ok(());
    }
    let mut f = Fixture::new(&["b1", "b2"])?;
    f.start(&[])?;
    let node = f.node()?;
    let late_ns = NetNs::create(&format!("{}-late", f.cluster.prefix()))?;
    let (gw4, _) = gateways(node.index);
    let late_ip = "198.18.1.60";
    let veth = "slbp9";
    let links = node.bpffs.path().join("links");

    let created = Instant::now();
    node.ns.ip(&[
        "link",
        "add",
        veth,
        "type",
        "veth",
        "peer",
        "name",
        POD_DEV,
        "netns",
        late_ns.name(),
    ])?;
    let attached_in = loop {
        let pins: Vec<String> = std::fs::read_dir(&links)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(&format!("-{veth}-")))
            .collect();
        if pins.len() == 2 {
            break created.elapsed();
        }
        ensure!(
            created.elapsed() < CHANGE_BOUND,
            "{veth} not attached within {CHANGE_BOUND:?}: {pins:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("MEASURED new interface {veth}: created -> both programs attached {attached_in:?}");

    node.ns
        .ip(&["addr", "add", &format!("{gw4}/32"), "dev", veth])?;
    node.ns.ip(&["link", "set", veth, "up"])?;
    node.ns
        .ip(&["route", "add", &format!("{late_ip}/32"), "dev", veth])?;
    late_ns.ip(&["addr", "add", &format!("{late_ip}/32"), "dev", POD_DEV])?;
    late_ns.ip(&["link", "set", POD_DEV, "up"])?;
    late_ns.ip(&[
        "route",
        "add",
        &gw4.to_string(),
        "dev",
        POD_DEV,
        "scope",
        "link",
    ])?;
    late_ns.ip(&[
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        &gw4.to_string(),
        "dev",
        POD_DEV,
    ])?;
    let answers = run_in(&late_ns, || {
        (0..20)
            .map(|_| tcp_ask(sa(ip(VIP4), TCP_PORT)))
            .collect::<Result<Vec<_>>>()
    })?;
    for a in &answers {
        assert!(["b1", "b2"].contains(&a.name.as_str()), "{a:?}");
        assert_eq!(
            a.server_seen_by_client,
            sa(ip(VIP4), TCP_PORT),
            "reply not reverse-NATed"
        );
    }

    // A vanished interface is forgotten: its link pins go.
    node.ns.ip(&["link", "del", veth])?;
    let deleted = Instant::now();
    loop {
        let left = std::fs::read_dir(&links)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(&format!("-{veth}-")))
            .count();
        if left == 0 {
            break;
        }
        ensure!(
            deleted.elapsed() < CHANGE_BOUND,
            "pins of {veth} still there"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(f.daemon()?.exited()?.is_none(), "the daemon died");
    Ok(())
}

#[test]
fn e2e_daemon_bad_input_keeps_the_last_good_state() -> Result<()> {
    if !require_root("e2e_daemon_bad_input_keeps_the_last_good_state") {
        return Ok(());
    }
    let mut f = Fixture::new(&["b1", "b2"])?;
    // 2 frontends x (master + 2 slots) per family = 6 of 8 entries.
    f.start(&["--map-services-max=8"])?;
    let vip = sa(ip(VIP4), TCP_PORT);
    let frontend = tcp_frontend(VIP4);
    let good: BTreeSet<String> = ["b1", "b2"]
        .iter()
        .map(|b| f.backend_addr(b, TCP_TARGET))
        .collect::<Result<_>>()?;
    f.wait_backends(&frontend, &good, Instant::now())?;

    // Malformed YAML, an unknown kind, an invalid IP, and a Service too big for the map.
    f.manifests.write(
        "broken.yaml",
        "kind: Service\nmetadata: [unclosed\n  name: x: y\n",
    )?;
    f.manifests.write("configmap.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: default\ndata:\n  a: b\n")?;
    let mut bad_ip = f.slice("web", "web-bad", false, &["b3"])?;
    bad_ip.endpoints[0].addr = ip("198.18.1.250");
    let bad_ip_yaml = bad_ip.yaml().replace("198.18.1.250", "198.18.1.999");
    f.manifests.write("bad-ip.yaml", &bad_ip_yaml)?;
    let mut big = web_service();
    big.name = "big".into();
    big.cluster_ips = vec![ip(VIP_NEW)];
    let mut big_slice = f.slice("big", "big", false, &["b1", "b2", "b3"])?;
    for k in 0..10u8 {
        big_slice.endpoints.push(EndpointSpec {
            addr: IpAddr::from([198, 18, 1, 100 + k]),
            node: "n1".into(),
            ready: true,
            terminating: false,
        });
    }
    f.manifests.write(
        "big.yaml",
        &format!("{}---\n{}", big.yaml(), big_slice.yaml()),
    )?;
    // The good Service's own file turns malformed: its last good objects stay.
    f.manifests.write("web-slices.yaml", "endpoints: [\n")?;

    let since = Instant::now();
    let samples = loop {
        let daemon = f.daemon()?;
        ensure!(
            daemon.exited()?.is_none(),
            "the daemon died:\n{}",
            daemon.log_tail(30)
        );
        let samples = metric_samples(&daemon.metrics()?);
        let failures = metric_sum(
            &samples,
            "service_lb_sync_failures_total",
            &["service=\"default/big\""],
        );
        let parse = metric_sum(&samples, "service_lb_objects_skipped_total", &[]);
        if failures >= 1.0 && parse >= 3.0 {
            break samples;
        }
        ensure!(
            since.elapsed() < CHANGE_BOUND,
            "bad input not counted: failures {failures}, skipped {parse}\n{}",
            daemon.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let skipped: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(k, _)| k.starts_with("service_lb_objects_skipped_total"))
        .collect();
    eprintln!("skips counted: {skipped:?}");

    let now = frontends(f.node()?.bpffs.path())?;
    let have: BTreeSet<String> = now.get(&frontend).into_iter().flatten().cloned().collect();
    assert_eq!(
        have, good,
        "the good Service lost its last good state: {now:?}"
    );
    // Its endpoints cannot fit, so it is either absent (its Service was first seen together
    // with the oversized slice) or at the state it had before the slice arrived: frontends
    // with no backend. Never some of its backends.
    let oversized: Vec<_> = now
        .iter()
        .filter(|(frontend, _)| frontend.starts_with(&format!("{VIP_NEW}:")))
        .collect();
    assert!(
        oversized.iter().all(|(_, backends)| backends.is_empty()),
        "the oversized Service is half-written: {now:?}"
    );
    let answers = f.spread(vip, 20)?;
    assert!(
        answers.iter().all(|b| b == "b1" || b == "b2"),
        "{answers:?}"
    );
    let daemon = f.daemon()?;
    assert_eq!(daemon.health("/readyz")?.status, 200);
    assert!(daemon.exited()?.is_none());
    Ok(())
}

/// The service CIDRs the daemon programmed, both families, as text.
fn programmed_service_cidrs(node: &Node) -> Result<BTreeSet<String>> {
    use service_lb::dataplane::{BpfMaps, Family, MapStore};
    let maps = BpfMaps::open_pinned(node.bpffs.path())?;
    let mut all = BTreeSet::new();
    for family in Family::ALL {
        all.extend(
            maps.list_service_cidrs(family)?
                .iter()
                .map(ToString::to_string),
        );
    }
    Ok(all)
}

/// Packets of the pods' hook dropped as unowned service-CIDR addresses.
fn service_cidr_drops(node: &Node) -> Result<u64> {
    use service_lb_common::{Hook, Reason};
    let counters = service_lb_tests::scenario::dataplane::counters(node)?;
    Ok(counters
        .iter()
        .filter(|c| c.hook == Hook::FromPod && c.reason == Reason::DropServiceCidr)
        .map(|c| c.packets)
        .sum())
}

/// A TCP connect from the client pod with a short timeout; its outcome does not matter,
/// the counters tell what the data path did with the SYN.
fn poke(f: &Fixture, addr: SocketAddr) -> Result<()> {
    run_in(&f.client()?.ns, || {
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
        Ok(())
    })
}

#[test]
fn e2e_daemon_service_cidr_objects_make_unowned_addresses_drop() -> Result<()> {
    if !require_root("e2e_daemon_service_cidr_objects_make_unowned_addresses_drop") {
        return Ok(());
    }
    let mut f = Fixture::new(&["b1"])?;
    // The ranges come from a ServiceCIDR object only: no --service-cidrs flag.
    let object =
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: kubernetes\n\
                  spec:\n  cidrs: [198.19.0.0/17, fd00:19::/108]\n";
    f.manifests.write("service-cidr.yaml", object)?;
    f.start(&[])?;
    let node = f.node()?;
    let wanted: BTreeSet<String> = ["198.19.0.0/17", "fd00:19::/108"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let started = Instant::now();
    while programmed_service_cidrs(node)? != wanted {
        ensure!(
            started.elapsed() < CHANGE_BOUND,
            "service CIDRs not programmed from the object: {:?}",
            programmed_service_cidrs(node)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "MEASURED ServiceCIDR object programmed {:?} after ready",
        started.elapsed()
    );

    let unowned4 = sa(ip("198.19.0.99"), TCP_PORT);
    let unowned6 = sa(ip("fd00:19::99"), TCP_PORT);
    let before = service_cidr_drops(node)?;
    poke(&f, unowned4)?;
    poke(&f, unowned6)?;
    let dropped = service_cidr_drops(node)? - before;
    ensure!(
        dropped >= 2,
        "a SYN to an unowned address of each family is dropped: {dropped}"
    );
    // The Service inside the range still answers.
    let answer = run_in(&f.client()?.ns, || tcp_ask(sa(ip(VIP4), TCP_PORT)))?;
    assert_eq!(answer.name, "b1");

    // The object goes: so does the range, and nothing is dropped as unowned any more.
    f.manifests.remove("service-cidr.yaml")?;
    let removed = Instant::now();
    while !programmed_service_cidrs(node)?.is_empty() {
        ensure!(
            removed.elapsed() < CHANGE_BOUND,
            "service CIDRs left after the object went: {:?}",
            programmed_service_cidrs(node)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "MEASURED ServiceCIDR object removed from the maps {:?} after the file went",
        removed.elapsed()
    );
    let before = service_cidr_drops(node)?;
    poke(&f, unowned4)?;
    poke(&f, unowned6)?;
    assert_eq!(
        service_cidr_drops(node)?,
        before,
        "no range, no unowned drop"
    );
    Ok(())
}
