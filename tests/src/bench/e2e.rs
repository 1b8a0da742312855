//! End to end in a one-node Cluster of namespaces: sequential connect + one small
//! request/response from a client pod to (a) a pod IP directly, (b) a ClusterIP through
//! service-lb, (c) the same through kube-proxy's iptables layout (on iptables' nf_tables and
//! legacy back ends), (d) its nftables layout,
//! with N services in place; and a bulk TCP stream via the ClusterIP against direct.
//!
//! Each (target, N) gets a cluster of its own; kube-proxy's rules are loaded only inside
//! that cluster's node namespace. The clusters of one N are measured side by side, in
//! rounds. Every loop is bounded in count and in time.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use super::{
    config::{self, BACKENDS_PER_SERVICE},
    control_plane::quantile,
    per_packet::{ServiceSet, VIPS},
    rule_load::{self, Layout, LoadTime},
};
use crate::{
    cgroup::TestCgroup,
    daemon::{
        Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec, ServiceManifest, SliceManifest,
    },
    kube_proxy_rules::{Family, KubeProxyRules, MAX_SERVICES},
    netns::{run_in, NetNs},
    servers::Servers,
    topology::{Cluster, ClusterSpec, Pod},
};

const BACKEND_PODS: [&str; 4] = ["b1", "b2", "b3", "b4"];
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const BULK_PORT: u16 = 5201;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const READY_BOUND: Duration = Duration::from_secs(120);
const NODE_NAME: &str = "n1";

/// Where the client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    ServiceLb,
    /// kube-proxy's iptables mode, nf_tables back end (`iptables-nft`).
    Iptables,
    /// kube-proxy's iptables mode, legacy back end (`iptables-legacy`).
    IptablesLegacy,
    Nftables,
    /// service-lb with socket LB on (`--socket-lb=on`): the client's `connect()` is
    /// translated at the socket (cgroup programs on a folder of this run), not per packet.
    SocketLb,
    /// Diagnosis (`slb-bench --only socket-lb --diagnose`): the pod IP, from the client
    /// of a node where service-lb runs with socket LB on and the client in its cgroup (the
    /// tc and cgroup programs see the flow; nothing is translated).
    PodIpOnServiceLb,
    /// Diagnosis: socket LB with the daemon stopped once the service answers (the pinned
    /// data plane keeps serving): what the daemon process itself costs.
    SocketLbNoDaemon,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Direct,
        Target::ServiceLb,
        Target::Iptables,
        Target::IptablesLegacy,
        Target::Nftables,
        Target::SocketLb,
    ];

    /// The socket-LB rows (`slb-bench --only socket-lb`): the floor, the tc path and the
    /// socket path.
    pub const SOCKET_LB: [Target; 3] = [Target::Direct, Target::ServiceLb, Target::SocketLb];

    /// `slb-bench --only socket-lb --diagnose`: the socket-LB rows and the rows that
    /// split its cost (programs on a plain flow, the daemon process).
    pub const SOCKET_LB_DIAGNOSE: [Target; 5] = [
        Target::Direct,
        Target::ServiceLb,
        Target::SocketLb,
        Target::PodIpOnServiceLb,
        Target::SocketLbNoDaemon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "pod IP (floor)",
            Target::ServiceLb => "ClusterIP via service-lb",
            Target::Iptables => "ClusterIP via kube-proxy iptables (nft back end)",
            Target::IptablesLegacy => "ClusterIP via kube-proxy iptables (legacy back end)",
            Target::Nftables => "ClusterIP via kube-proxy nftables",
            Target::SocketLb => "ClusterIP via service-lb socket LB",
            Target::PodIpOnServiceLb => "pod IP, service-lb socket LB on (diagnosis)",
            Target::SocketLbNoDaemon => "socket LB, daemon stopped (diagnosis)",
        }
    }

    /// The kube-proxy layout of this target, if it is one.
    pub fn layout(self) -> Option<Layout> {
        match self {
            Target::Direct
            | Target::ServiceLb
            | Target::SocketLb
            | Target::PodIpOnServiceLb
            | Target::SocketLbNoDaemon => None,
            Target::Iptables => Some(Layout::Iptables),
            Target::IptablesLegacy => Some(Layout::IptablesLegacy),
            Target::Nftables => Some(Layout::Nftables),
        }
    }
}

/// Bounds and sizes of the latency loop and the bulk stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopBounds {
    pub connections: u32,
    pub warmup: u32,
    pub time: Duration,
    /// 0: no bulk stream.
    pub bulk_bytes: u64,
    /// Bound on loading kube-proxy's ruleset.
    pub load: Duration,
}

/// One (target, N) measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct E2eRow {
    pub target: Target,
    pub services: u32,
    pub p50: Duration,
    pub p99: Duration,
    pub connections_per_s: f64,
    pub connections: usize,
    pub errors: u32,
    pub bulk_gbit_s: Option<f64>,
}

/// The cluster of one measurement; dropped in field order (daemon first).
struct Fixture {
    daemon: Option<Daemon>,
    /// Socket LB: the cgroup folder the programs are attached to; this process is moved
    /// in only while the target's own client runs (the other targets' clients run
    /// outside it, one target at a time).
    cgroup: Option<Mutex<TestCgroup>>,
    _bulk: Vec<BulkSink>,
    _servers: Vec<Servers>,
    _manifests: Option<ManifestDir>,
    cluster: Cluster,
}

/// One target ready to be measured: its cluster, where to connect, where to stream.
struct Prepared {
    target: Target,
    fixture: Fixture,
    vip: SocketAddr,
    bulk_addr: Option<SocketAddr>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.fixture.daemon.take() {
            let _ = daemon.stop();
        }
    }
}

/// What the rounds gathered for one target.
#[derive(Default)]
struct Gathered {
    latencies: Vec<Duration>,
    errors: u32,
    elapsed: Duration,
    bulk: Vec<f64>,
}

/// Rounds the connections of each target are spread over.
const ROUNDS: u32 = 10;

/// Measures every target in `targets` with `services` services in place. All the clusters
/// are built first; then the connections go in rounds, a share of each target in turn,
/// and so do the bulk streams, so a slow spell of the machine falls on every target alike
/// instead of on whichever ran at that moment. A target that cannot be set up is reported
/// on its own; the others are still measured.
pub fn measure_all(
    targets: &[Target],
    services: u32,
    bounds: LoopBounds,
) -> Vec<(Target, anyhow::Result<E2eRow>)> {
    let mut results = Vec::new();
    let mut prepared = Vec::new();
    for &target in targets {
        eprintln!(
            "slb-bench: end to end, setting up {} with {services} services",
            target.name()
        );
        match prepare(target, services, bounds) {
            Ok(p) => prepared.push(p),
            Err(e) => results.push((target, Err(e))),
        }
    }
    eprintln!(
        "slb-bench: end to end, {ROUNDS} rounds over {} targets",
        prepared.len()
    );
    let mut gathered: Vec<anyhow::Result<Gathered>> =
        prepared.iter().map(|_| Ok(Gathered::default())).collect();
    for (p, g) in prepared.iter().zip(&mut gathered) {
        if let Err(e) = warm_up(p, bounds) {
            *g = Err(e);
        }
    }
    let share = bounds.connections.div_ceil(ROUNDS);
    for _ in 0..ROUNDS {
        for (p, g) in prepared.iter().zip(&mut gathered) {
            let Ok(sofar) = g else { continue };
            let left = bounds
                .connections
                .saturating_sub(sofar.latencies.len() as u32 + sofar.errors);
            if left == 0 || sofar.elapsed > bounds.time {
                continue;
            }
            match latency_loop(&p.fixture, p.vip, share.min(left)) {
                Ok((latencies, errors, elapsed)) => {
                    sofar.latencies.extend(latencies);
                    sofar.errors += errors;
                    sofar.elapsed += elapsed;
                }
                Err(e) => *g = Err(e),
            }
        }
    }
    if bounds.bulk_bytes > 0 {
        for _ in 0..BULK_RUNS {
            for (p, g) in prepared.iter().zip(&mut gathered) {
                let (Ok(sofar), Some(addr)) = (&mut *g, p.bulk_addr) else {
                    continue;
                };
                match bulk_stream(&p.fixture, addr, bounds) {
                    Ok(gbit) => sofar.bulk.push(gbit),
                    Err(e) => *g = Err(e),
                }
            }
        }
    }
    for (p, g) in prepared.iter().zip(gathered) {
        results.push((p.target, g.and_then(|g| row_of(p.target, services, g))));
    }
    drop(prepared);
    results.sort_by_key(|(t, _)| targets.iter().position(|x| x == t));
    results
}

fn row_of(target: Target, services: u32, mut g: Gathered) -> anyhow::Result<E2eRow> {
    ensure!(
        !g.latencies.is_empty(),
        "{}: no connection succeeded ({} errors)",
        target.name(),
        g.errors
    );
    g.latencies.sort();
    g.bulk.sort_by(f64::total_cmp);
    Ok(E2eRow {
        target,
        services,
        p50: quantile(&g.latencies, 0.5).unwrap_or_default(),
        p99: quantile(&g.latencies, 0.99).unwrap_or_default(),
        connections_per_s: g.latencies.len() as f64 / g.elapsed.as_secs_f64().max(1e-9),
        connections: g.latencies.len(),
        errors: g.errors,
        bulk_gbit_s: g.bulk.get(g.bulk.len() / 2).copied(),
    })
}

/// Builds the cluster of `target` with `services` services in place, and checks the
/// measured address answers.
fn prepare(target: Target, services: u32, bounds: LoopBounds) -> anyhow::Result<Prepared> {
    let mut pods: Vec<&str> = vec!["client"];
    pods.extend(BACKEND_PODS);
    let cluster = Cluster::new(&ClusterSpec::new(&[&pods])).context("building the cluster")?;
    let mut servers = Vec::new();
    let mut bulk = Vec::new();
    for name in BACKEND_PODS {
        let pod = cluster.pod(name)?;
        let addr = SocketAddr::new(pod.v4.into(), TARGET_PORT);
        servers.push(Servers::start(&pod.ns, name, &[addr], &[])?);
        bulk.push(BulkSink::start(
            &pod.ns,
            SocketAddr::new(pod.v4.into(), BULK_PORT),
        )?);
    }
    let mut fixture = Fixture {
        daemon: None,
        cgroup: None,
        _bulk: bulk,
        _servers: servers,
        _manifests: None,
        cluster,
    };
    let backends: Vec<Ipv4Addr> = BACKEND_PODS
        .iter()
        .map(|n| fixture.cluster.pod(n).map(|p| p.v4))
        .collect::<anyhow::Result<_>>()?;
    let (vip, bulk_addr) = match target {
        Target::Direct => (
            SocketAddr::new(backends[0].into(), TARGET_PORT),
            Some(SocketAddr::new(backends[0].into(), BULK_PORT)),
        ),
        Target::ServiceLb | Target::SocketLb => {
            let vip = start_service_lb(&mut fixture, services, &backends, target)?;
            (
                SocketAddr::V4(vip),
                Some(SocketAddr::V4(SocketAddrV4::new(*vip.ip(), BULK_PORT))),
            )
        }
        Target::PodIpOnServiceLb => {
            start_service_lb(&mut fixture, services, &backends, Target::SocketLb)?;
            let addr = SocketAddr::new(backends[0].into(), TARGET_PORT);
            let client = fixture.cluster.pod("client")?;
            in_cgroup(&fixture, || wait_answer(client, addr))?;
            (addr, None)
        }
        Target::SocketLbNoDaemon => {
            let vip = SocketAddr::V4(start_service_lb(
                &mut fixture,
                services,
                &backends,
                Target::SocketLb,
            )?);
            if let Some(mut daemon) = fixture.daemon.take() {
                daemon.stop().context("stopping the daemon")?;
            }
            let client = fixture.cluster.pod("client")?;
            in_cgroup(&fixture, || wait_answer(client, vip))?;
            (vip, None)
        }
        Target::Iptables | Target::IptablesLegacy | Target::Nftables => {
            let layout = target
                .layout()
                .context("a kube-proxy target has a layout")?;
            let node = fixture.cluster.node(1)?;
            let vip = load_kube_proxy(&node.ns, layout, services, &backends, bounds.load)?;
            wait_answer(fixture.cluster.pod("client")?, vip)?;
            (vip, None)
        }
    };
    Ok(Prepared {
        target,
        fixture,
        vip,
        bulk_addr,
    })
}

/// service-lb on the node: N-1 services with unreachable backends plus the measured one
/// (the last) with the four backend pods; returns its ClusterIP once programmed.
fn start_service_lb(
    fixture: &mut Fixture,
    services: u32,
    backends: &[Ipv4Addr],
    target: Target,
) -> anyhow::Result<SocketAddrV4> {
    let set = ServiceSet { services };
    let manifests = ManifestDir::create(fixture.cluster.prefix())?;
    let measured = services - 1;
    let mut file = String::new();
    for i in 0..measured {
        let vip = set.vip(i);
        let port = set.backend(i, 0).1.port();
        file.push_str(&service_doc(i, *vip.ip(), &[("http", vip.port(), port)]));
        let addrs: Vec<Ipv4Addr> = (0..BACKENDS_PER_SERVICE)
            .map(|s| *set.backend(i, s).1.ip())
            .collect();
        file.push_str(&slice_doc(i, &addrs, &[("http", port)]));
        if (i + 1) % 1_000 == 0 {
            manifests.write(&format!("fill-{:06}.yaml", i / 1_000), &file)?;
            file.clear();
        }
    }
    if !file.is_empty() {
        manifests.write("fill-last.yaml", &file)?;
    }
    // Past 32k services the fill reuses VIPs on further ports: the measured frontend takes
    // a port no fill service has on its address (else it is refused as owned by another).
    let ip = *set.vip(measured).ip();
    let taken: Vec<u16> = (measured % VIPS..measured)
        .step_by(VIPS as usize)
        .map(|i| set.vip(i))
        .filter(|v| *v.ip() == ip)
        .map(|v| v.port())
        .collect();
    let port = (SERVICE_PORT..)
        .find(|p| !taken.contains(p))
        .context("no free port for the measured service")?;
    let vip = SocketAddrV4::new(ip, port);
    let measured_doc = service_doc(
        measured,
        *vip.ip(),
        &[("http", port, TARGET_PORT), ("bulk", BULK_PORT, BULK_PORT)],
    ) + &slice_doc(
        measured,
        backends,
        &[("http", TARGET_PORT), ("bulk", BULK_PORT)],
    );
    manifests.write("measured.yaml", &measured_doc)?;

    let node = fixture.cluster.node(1)?;
    let mut options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        NODE_NAME,
        manifests.log_path(NODE_NAME),
    );
    options.extra_args = config::daemon_map_args(services, 65536);
    if target == Target::SocketLb {
        let cgroup = TestCgroup::create()?;
        options.extra_args.push("--socket-lb=on".into());
        options
            .extra_args
            .push(format!("--cgroup={}", cgroup.path().display()));
        fixture.cgroup = Some(Mutex::new(cgroup));
    }
    let mut daemon = Daemon::start(&node.ns, options)?;
    daemon.wait_ready(READY_BOUND)?;
    fixture._manifests = Some(manifests);
    fixture.daemon = Some(daemon);
    // Ready means synced; still, wait (bounded) until the measured service answers.
    let client = fixture.cluster.pod("client")?;
    in_cgroup(fixture, || wait_answer(client, SocketAddr::V4(vip)))?;
    if target == Target::SocketLb {
        // The row measures the socket path only if connect() really was translated there.
        let translated: u64 = service_lb::dataplane::BpfMaps::open_pinned(node.bpffs.path())?
            .counters()?
            .iter()
            .filter(|c| {
                c.hook == service_lb_common::Hook::SockConnect
                    && c.reason == service_lb_common::Reason::SockTranslated
            })
            .map(|c| c.packets)
            .sum();
        ensure!(
            translated > 0,
            "socket LB on, yet no connect() was translated at the socket"
        );
    }
    Ok(vip)
}

/// A Service document; ports are (name, port, targetPort).
fn service_doc(i: u32, vip: Ipv4Addr, ports: &[(&str, u16, u16)]) -> String {
    let manifest = ServiceManifest {
        namespace: "bench".into(),
        name: format!("svc{i}"),
        cluster_ips: vec![vip.into()],
        ports: ports
            .iter()
            .map(|(name, port, target)| (PortSpec::new(name, *port, "TCP"), *target))
            .collect(),
    };
    format!("---\n{}", manifest.yaml())
}

/// An EndpointSlice document; ports are (name, port) matching the Service's names.
fn slice_doc(i: u32, addrs: &[Ipv4Addr], target_ports: &[(&str, u16)]) -> String {
    let manifest = SliceManifest {
        namespace: "bench".into(),
        name: format!("svc{i}-v4"),
        service: format!("svc{i}"),
        ipv6: false,
        ports: target_ports
            .iter()
            .map(|(name, port)| PortSpec::new(name, *port, "TCP"))
            .collect(),
        endpoints: addrs
            .iter()
            .map(|a| EndpointSpec {
                addr: (*a).into(),
                node: NODE_NAME.into(),
                ready: true,
                terminating: false,
            })
            .collect(),
        trigger_time: None,
    };
    format!("---\n{}", manifest.yaml())
}

/// kube-proxy's layout for `services` services in the node's namespace, the last service
/// pointed at the backend pods; returns its ClusterIP:port.
fn load_kube_proxy(
    node: &NetNs,
    layout: Layout,
    services: u32,
    backends: &[Ipv4Addr],
    bound: Duration,
) -> anyhow::Result<SocketAddr> {
    ensure!(
        services <= MAX_SERVICES,
        "the generator holds at most {MAX_SERVICES} services"
    );
    let rules = KubeProxyRules::new(Family::Ipv4, services, BACKENDS_PER_SERVICE);
    let measured = rules.services().pop().context("no generated service")?;
    let mut text = layout.input(services);
    for (k, (addr, _)) in measured.endpoints.iter().enumerate() {
        let real = backends[k % backends.len()];
        text = replace_address(&text, &addr.to_string(), &real.to_string());
    }
    match rule_load::load_in(node, layout, text, bound)? {
        LoadTime::Took(_) => {}
        other => bail!("{}: {}", layout.name(), other.cell()),
    }
    Ok(SocketAddr::new(measured.cluster_ip, measured.port))
}

/// Replaces every `from` in `text` not followed by another digit (so 198.18.0.2 does not
/// match inside 198.18.0.25).
pub fn replace_address(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let end = at + from.len();
        let next_is_digit = rest[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit());
        let prev_is_digit = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit() || c == '.');
        out.push_str(&rest[..at]);
        out.push_str(if next_is_digit || prev_is_digit {
            from
        } else {
            to
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One connection: connect, the greeting line, one request line and its answer, close.
fn one_exchange(addr: SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    (&stream).write_all(b"ping\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn wait_answer(client: &Pod, addr: SocketAddr) -> anyhow::Result<()> {
    run_in(&client.ns, || {
        let started = Instant::now();
        loop {
            match one_exchange(addr) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() > READY_BOUND => {
                    bail!("{addr} never answered: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// Runs `f` with this process in the fixture's cgroup folder (socket LB), if it has one.
fn in_cgroup<T>(fixture: &Fixture, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let Some(cgroup) = &fixture.cgroup else {
        return f();
    };
    let mut cgroup = cgroup
        .lock()
        .map_err(|_| anyhow::anyhow!("cgroup lock poisoned"))?;
    cgroup.enter()?;
    let result = f();
    cgroup.leave()?;
    result
}

/// The warm-up connections of a target (bounded in time), not measured.
fn warm_up(p: &Prepared, bounds: LoopBounds) -> anyhow::Result<()> {
    let client = p.fixture.cluster.pod("client")?;
    in_cgroup(&p.fixture, || {
        run_in(&client.ns, || {
            let started = Instant::now();
            for _ in 0..bounds.warmup {
                if started.elapsed() > bounds.time {
                    break;
                }
                let _ = one_exchange(p.vip);
            }
            Ok(())
        })
    })
}

/// `count` sequential exchanges from the client: latencies, errors, wall time.
fn latency_loop(
    fixture: &Fixture,
    addr: SocketAddr,
    count: u32,
) -> anyhow::Result<(Vec<Duration>, u32, Duration)> {
    let client = fixture.cluster.pod("client")?;
    in_cgroup(fixture, || {
        run_in(&client.ns, || {
            let mut latencies = Vec::with_capacity(count as usize);
            let mut errors = 0;
            let measured = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                match one_exchange(addr) {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            Ok((latencies, errors, measured.elapsed()))
        })
    })
}

/// Bulk streams per row (in rounds with the other targets); the median is reported.
const BULK_RUNS: usize = 3;

/// Sends `bulk_bytes` over one TCP stream from the client; Gbit/s until the sink has
/// acknowledged the end (it answers one byte after reading everything).
fn bulk_stream(fixture: &Fixture, addr: SocketAddr, bounds: LoopBounds) -> anyhow::Result<f64> {
    let client = fixture.cluster.pod("client")?;
    in_cgroup(fixture, || {
        run_in(&client.ns, || {
            let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                .with_context(|| format!("bulk connect to {addr}"))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_read_timeout(Some(bounds.time))?;
            let chunk = vec![0x5au8; 256 * 1024];
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < bounds.bulk_bytes {
                if started.elapsed() > bounds.time {
                    bail!("bulk stream not done within {:?}", bounds.time);
                }
                let n = chunk.len().min(usize::try_from(bounds.bulk_bytes - sent)?);
                stream.write_all(&chunk[..n])?;
                sent += n as u64;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 1];
            stream
                .read_exact(&mut ack)
                .context("bulk sink acknowledgement")?;
            let secs = started.elapsed().as_secs_f64();
            Ok(sent as f64 * 8.0 / secs / 1e9)
        })
    })
}

/// A TCP server that reads each connection to its end, then answers one byte.
struct BulkSink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BulkSink {
    fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = run_in(ns, || {
            TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let born = Instant::now();
            while !flag.load(Ordering::Relaxed) && born.elapsed() < Duration::from_secs(1_800) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut buf = vec![0u8; 256 * 1024];
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                        let _ = conn.write_all(b"k");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BulkSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replace_address;

    #[test]
    fn addresses_are_replaced_whole() {
        let text =
            "-s 198.18.0.2/32 --to-destination 198.18.0.2:8080 198.18.0.25:8080 1198.18.0.2:1";
        assert_eq!(
            replace_address(text, "198.18.0.2", "198.18.1.9"),
            "-s 198.18.1.9/32 --to-destination 198.18.1.9:8080 198.18.0.25:8080 1198.18.0.2:1"
        );
    }
}
