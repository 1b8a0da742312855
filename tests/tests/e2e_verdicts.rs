//! End to end with the real daemon (`service-lb run --manifests ... --service-cidrs ...`):
//! ClusterIP verdicts and session affinity, with real sockets in namespaces (one node,
//! pods `client`, `b1`, `a1`, `a2`, `a3`; one daemon for every case, driven only by
//! rewriting the manifests).
//!
//! Verdicts, per family, as kube-proxy gives them: `connect()` to a ClusterIP without
//! endpoints gets ECONNREFUSED (TCP reset); a connected UDP socket gets ECONNREFUSED on
//! `recv` (ICMP port unreachable); the same on a port the Service does not define; an
//! unowned address of the service CIDR gets no answer (dropped, counted); the defined port
//! still reaches the backend. Then the empty Service gains an endpoint in its slice (the
//! same ClusterIP answers) and loses it again (refused again), with no restart. A Service
//! labelled `service.kubernetes.io/headless` is not proxied (its ClusterIP is dropped like
//! an unowned one) until the label goes.
//!
//! Affinity: `sessionAffinity: ClientIP` in the Service manifest (kube-proxy's default
//! timeout first): every connection of one client address lands on one backend, while
//! other client addresses can land elsewhere; when that backend leaves the slices the
//! client sticks to another one; switched off in the manifest, connections spread; with
//! `timeoutSeconds: 1` an expired entry no longer binds the client.
//!
//! Times (to refusal, from a manifest write to the maps and to the new verdict) are
//! printed, never asserted.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use service_lb::dataplane::CounterTotal;
use service_lb_common::{Hook, Reason};
use service_lb_tests::daemon::{
    frontend_key, frontend_rows, metric_samples, metric_sum, start_per_node, wait_for_rows,
    wait_frontends, Daemon, EndpointSpec, ManifestDir, PortSpec, ServiceExtras, ServiceManifest,
    SessionAffinity, SliceManifest,
};
use service_lb_tests::netns::{run_in, sweep_leftovers, NetNs};
use service_lb_tests::privileges::require_root;
use service_lb_tests::scenario::dataplane::counters;
use service_lb_tests::servers::{tcp_ask, tcp_ask_bound, udp_ask, Servers};
use service_lb_tests::topology::{Cluster, ClusterSpec};

/// How long a client waits before calling a missing answer a timeout (a refusal takes
/// well under a millisecond; this only bounds the "no answer" cases).
const WAIT: Duration = Duration::from_secs(2);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
const READY_BOUND: Duration = Duration::from_secs(30);
/// Bound on a manifest change reaching the maps.
const CHANGE_BOUND: Duration = Duration::from_secs(10);
const SERVICE_CIDRS: &str = "198.19.0.0/17,fd00:19::/108";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

const PODS: [&str; 5] = ["client", "b1", "a1", "a2", "a3"];
const STICKY_BACKENDS: [&str; 3] = ["a1", "a2", "a3"];

/// Connections per affinity batch.
const AFFINITY_CALLS: usize = 20;
/// Connections from each other client address.
const OTHER_CLIENT_CALLS: usize = 5;
/// Other client addresses of the client pod (hosts 100.. of its node's pod CIDRs): tried
/// in turn until one lands on another backend than the first client (each does with
/// probability 2/3; all 12 missing: 3^-12).
const OTHER_CLIENTS: u8 = 12;
const FIRST_OTHER_HOST: u8 = 100;
/// The short timeout of the expiry phase, and how many expiries are tried.
const SHORT_TIMEOUT_S: u32 = 1;
const EXPIRY_ROUNDS: usize = 10;

struct Family {
    name: &'static str,
    v6: bool,
    /// Service `empty`: TCP/80 and UDP/53, no endpoint (until the slice gains one).
    empty: IpAddr,
    /// Service `served`: TCP/80 -> b1.
    served: IpAddr,
    /// Inside the service CIDR, owned by no Service.
    unowned: IpAddr,
    /// Service `quiet`: TCP/80 -> b1, labelled headless (at first).
    headless: IpAddr,
    /// Service `sticky`: TCP/80 -> a1, a2, a3 with ClientIP affinity.
    sticky: IpAddr,
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "IPv4",
            v6: false,
            empty: ip("198.19.0.20"),
            served: ip("198.19.0.21"),
            unowned: ip("198.19.0.99"),
            headless: ip("198.19.0.22"),
            sticky: ip("198.19.0.23"),
        },
        Family {
            name: "IPv6",
            v6: true,
            empty: ip("fd00:19::20"),
            served: ip("fd00:19::21"),
            unowned: ip("fd00:19::99"),
            headless: ip("fd00:19::22"),
            sticky: ip("fd00:19::23"),
        },
    ]
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn http() -> PortSpec {
    PortSpec::new("http", TCP_PORT, "TCP")
}

fn dns() -> PortSpec {
    PortSpec::new("dns", UDP_PORT, "UDP")
}

/// A Service over both families' addresses picked by `vip`.
fn service(name: &str, vip: fn(&Family) -> IpAddr, ports: Vec<(PortSpec, u16)>) -> ServiceManifest {
    ServiceManifest {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: families().iter().map(vip).collect(),
        ports,
    }
}

fn empty_service() -> ServiceManifest {
    service(
        "empty",
        |f| f.empty,
        vec![(http(), TCP_TARGET), (dns(), UDP_TARGET)],
    )
}

fn served_service() -> ServiceManifest {
    service("served", |f| f.served, vec![(http(), TCP_TARGET)])
}

fn headless_service() -> ServiceManifest {
    service("quiet", |f| f.headless, vec![(http(), TCP_TARGET)])
}

fn sticky_service() -> ServiceManifest {
    service("sticky", |f| f.sticky, vec![(http(), TCP_TARGET)])
}

// Field order = drop order: the daemon dies before the servers, manifests and namespaces.
struct Fixture {
    daemon: Daemon,
    _servers: Vec<Servers>,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Fixture {
    fn client(&self) -> Result<&NetNs> {
        Ok(&self.cluster.pod("client")?.ns)
    }

    fn bpffs(&self) -> Result<&std::path::Path> {
        Ok(self.cluster.node(1)?.bpffs.path())
    }

    /// Both families' slices of `service` (ports of `ports`) listing `pods`, ready.
    fn write_slices(&self, service: &str, ports: &[PortSpec], pods: &[&str]) -> Result<()> {
        let mut docs = Vec::new();
        for v6 in [false, true] {
            let endpoints = pods
                .iter()
                .map(|name| {
                    Ok(EndpointSpec {
                        addr: self.cluster.pod(name)?.addr(v6),
                        node: "n1".into(),
                        ready: true,
                        terminating: false,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            docs.push(
                SliceManifest {
                    namespace: "default".into(),
                    name: format!("{service}-{}", if v6 { "v6" } else { "v4" }),
                    service: service.into(),
                    ipv6: v6,
                    ports: ports.to_vec(),
                    endpoints,
                    trigger_time: None,
                }
                .yaml(),
            );
        }
        self.manifests
            .write(&format!("{service}-slices.yaml"), &docs.join("---\n"))
    }

    fn write_service(&self, service: &ServiceManifest, extras: &ServiceExtras) -> Result<()> {
        self.manifests.write(
            &format!("{}-service.yaml", service.name),
            &service.yaml_with(extras),
        )
    }

    /// `pod`'s address of the family of `vip`, port `port`, as the maps print it.
    fn backend(&self, pod: &str, vip: IpAddr, port: u16) -> Result<String> {
        Ok(sa(self.cluster.pod(pod)?.addr(vip.is_ipv6()), port).to_string())
    }
}

fn target_ports() -> Vec<PortSpec> {
    vec![
        PortSpec::new("http", TCP_TARGET, "TCP"),
        PortSpec::new("dns", UDP_TARGET, "UDP"),
    ]
}

#[test]
fn e2e_verdicts_and_affinity_through_the_daemon() -> Result<()> {
    if !require_root("e2e_verdicts_and_affinity_through_the_daemon") {
        return Ok(());
    }
    for leftover in sweep_leftovers() {
        eprintln!("removed a leftover of an earlier run: {leftover}");
    }
    let started = Instant::now();
    let cluster = Cluster::new(&ClusterSpec::new(&[&PODS])).context("building the topology")?;
    let mut other_clients = Vec::new();
    for k in 0..OTHER_CLIENTS {
        other_clients.push(cluster.add_pod_address("client", FIRST_OTHER_HOST + k)?);
    }
    let mut servers = Vec::new();
    for name in &PODS[1..] {
        let pod = cluster.pod(name)?;
        servers.push(Servers::start(
            &pod.ns,
            name,
            &[sa(pod.v4.into(), TCP_TARGET), sa(pod.v6.into(), TCP_TARGET)],
            &[sa(pod.v4.into(), UDP_TARGET), sa(pod.v6.into(), UDP_TARGET)],
        )?);
    }
    let manifests = ManifestDir::create(cluster.prefix())?;
    let headless_label = ServiceExtras {
        labels: vec![(HEADLESS_LABEL.into(), String::new())],
        ..ServiceExtras::default()
    };
    let default_affinity = ServiceExtras {
        session_affinity: SessionAffinity::ClientIp { timeout_s: None },
        ..ServiceExtras::default()
    };
    manifests.write("empty-service.yaml", &empty_service().yaml())?;
    manifests.write("served-service.yaml", &served_service().yaml())?;
    manifests.write(
        "quiet-service.yaml",
        &headless_service().yaml_with(&headless_label),
    )?;
    manifests.write(
        "sticky-service.yaml",
        &sticky_service().yaml_with(&default_affinity),
    )?;
    let daemon = start_per_node(
        &cluster,
        &manifests,
        &[format!("--service-cidrs={SERVICE_CIDRS}")],
        READY_BOUND,
    )?
    .pop()
    .context("no daemon")?;
    let f = Fixture {
        daemon,
        _servers: servers,
        manifests,
        cluster,
    };
    f.write_slices("empty", &target_ports(), &[])?;
    f.write_slices("served", &target_ports(), &["b1"])?;
    f.write_slices("quiet", &target_ports(), &["b1"])?;
    f.write_slices("sticky", &target_ports(), &STICKY_BACKENDS)?;

    let mut wanted = Vec::new();
    for fam in families() {
        wanted.push((frontend_key(sa(fam.empty, TCP_PORT), "tcp"), vec![]));
        wanted.push((frontend_key(sa(fam.empty, UDP_PORT), "udp"), vec![]));
        wanted.push((
            frontend_key(sa(fam.served, TCP_PORT), "tcp"),
            vec![f.backend("b1", fam.served, TCP_TARGET)?],
        ));
        let sticky = STICKY_BACKENDS
            .iter()
            .map(|b| f.backend(b, fam.sticky, TCP_TARGET))
            .collect::<Result<Vec<_>>>()?;
        wanted.push((frontend_key(sa(fam.sticky, TCP_PORT), "tcp"), sticky));
    }
    let took = wait_frontends(f.bpffs()?, &wanted, CHANGE_BOUND)?;
    eprintln!(
        "every frontend in the maps {took:?} after the slices were written ({:?} since the start)",
        started.elapsed()
    );
    let pid = f.daemon.pid();

    verdicts(&f)?;
    refusal_follows_the_slices(&f)?;
    headless_label_is_honoured(&f)?;
    affinity(&f, &other_clients)?;

    let mut f = f;
    ensure!(
        f.daemon.exited()?.is_none() && f.daemon.pid() == pid,
        "the daemon must have run throughout; log:\n{}",
        f.daemon.log_tail(30)
    );
    let status = f.daemon.stop()?;
    ensure!(status.success(), "the daemon stopped with {status}");
    eprintln!("whole test: {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Verdicts.

#[derive(Debug)]
enum Outcome {
    Refused(Duration),
    TimedOut,
    Connected,
    /// Read through `Debug` in the failure message.
    #[allow(dead_code)]
    Other(std::io::Error),
}

fn tcp_connect(addr: SocketAddr) -> Outcome {
    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(_) => Outcome::Connected,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Refused(start.elapsed()),
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Outcome::TimedOut
        }
        Err(e) => Outcome::Other(e),
    }
}

fn udp_exchange(addr: SocketAddr) -> Outcome {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    }
    .parse()
    .expect("wildcard");
    let run = || -> std::io::Result<Outcome> {
        let socket = UdpSocket::bind(bind)?;
        socket.connect(addr)?;
        socket.set_read_timeout(Some(WAIT))?;
        let start = Instant::now();
        socket.send(b"ping")?;
        let mut buf = [0u8; 64];
        match socket.recv(&mut buf) {
            Ok(_) => Ok(Outcome::Connected),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                Ok(Outcome::Refused(start.elapsed()))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                Ok(Outcome::TimedOut)
            }
            Err(e) => Ok(Outcome::Other(e)),
        }
    };
    run().unwrap_or_else(Outcome::Other)
}

fn expect_refused(what: &str, outcome: Outcome) -> Result<()> {
    match outcome {
        Outcome::Refused(after) => {
            eprintln!(
                "{what}: ECONNREFUSED after {:.3} ms",
                after.as_secs_f64() * 1e3
            );
            Ok(())
        }
        other => bail!("{what}: expected ECONNREFUSED at once, got {other:?}"),
    }
}

fn packets(counters: &[CounterTotal], hook: Hook, reason: Reason) -> u64 {
    counters
        .iter()
        .filter(|c| c.hook == hook && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

/// `from_pod` packets counted under `reason` between two snapshots.
fn moved(before: &[CounterTotal], after: &[CounterTotal], reason: Reason) -> u64 {
    packets(after, Hook::FromPod, reason) - packets(before, Hook::FromPod, reason)
}

fn verdicts(f: &Fixture) -> Result<()> {
    let node = f.cluster.node(1)?;
    let before = counters(node)?;
    for fam in families() {
        let family = fam.name;
        run_in(f.client()?, || {
            expect_refused(
                &format!("{family} TCP connect to a ClusterIP without endpoints"),
                tcp_connect(sa(fam.empty, TCP_PORT)),
            )?;
            expect_refused(
                &format!("{family} UDP to a ClusterIP without endpoints"),
                udp_exchange(sa(fam.empty, UDP_PORT)),
            )?;
            expect_refused(
                &format!("{family} TCP connect to an undefined port of a ClusterIP"),
                tcp_connect(sa(fam.served, TCP_PORT + 1)),
            )?;
            expect_refused(
                &format!("{family} UDP to an undefined port of a ClusterIP"),
                udp_exchange(sa(fam.served, TCP_PORT)),
            )?;
            let answer = tcp_ask(sa(fam.served, TCP_PORT))
                .with_context(|| format!("{family}: the defined port must still answer"))?;
            ensure!(answer.name == "b1", "{family}: answered by {answer:?}");
            eprintln!(
                "{family} TCP to the defined port: answered by {}",
                answer.name
            );
            match tcp_connect(sa(fam.unowned, TCP_PORT)) {
                Outcome::TimedOut => {
                    eprintln!(
                        "{family} TCP to an unowned service-CIDR address: no answer (dropped)"
                    )
                }
                other => bail!("{family}: an unowned ClusterIP must be dropped, got {other:?}"),
            }
            Ok(())
        })?;
    }
    let after = counters(node)?;
    // One SYN and one datagram per family.
    assert_eq!(
        moved(&before, &after, Reason::RejectNoEndpoint),
        4,
        "refused: no endpoint"
    );
    assert_eq!(
        moved(&before, &after, Reason::RejectNoPort),
        4,
        "refused: undefined port"
    );
    // The SYN and its retransmissions within WAIT.
    let dropped = moved(&before, &after, Reason::DropServiceCidr);
    assert!(
        dropped >= 2,
        "unowned service-CIDR packets counted: {dropped}"
    );
    eprintln!("drop_service_cidr counted {dropped} packets (SYNs and retransmissions)");

    // The daemon's /metrics exports the same counters (cumulative since it started, so at
    // least what this phase counted).
    let samples = metric_samples(&f.daemon.metrics()?);
    for (reason, at_least) in [
        (Reason::RejectNoEndpoint, 4),
        (Reason::RejectNoPort, 4),
        (Reason::DropServiceCidr, dropped),
    ] {
        let label = format!("reason=\"{}\"", reason.name());
        let exported = metric_sum(
            &samples,
            "service_lb_datapath_packets_total",
            &["hook=\"from_pod\"", &label],
        );
        eprintln!("/metrics from_pod {}: {exported}", reason.name());
        ensure!(
            exported >= at_least as f64,
            "/metrics shows {exported} from_pod {} packets, the maps counted {at_least}",
            reason.name()
        );
    }
    Ok(())
}

/// The `empty` Service's slices gain b1: the same ClusterIP answers (TCP and UDP, both
/// families); they lose it: refused again. The daemon is neither restarted nor signalled.
fn refusal_follows_the_slices(f: &Fixture) -> Result<()> {
    let backends = |with_b1: bool| -> Result<Vec<(String, Vec<String>)>> {
        let mut wanted = Vec::new();
        for fam in families() {
            for (port, target, proto) in
                [(TCP_PORT, TCP_TARGET, "tcp"), (UDP_PORT, UDP_TARGET, "udp")]
            {
                let backends = if with_b1 {
                    vec![f.backend("b1", fam.empty, target)?]
                } else {
                    vec![]
                };
                wanted.push((frontend_key(sa(fam.empty, port), proto), backends));
            }
        }
        Ok(wanted)
    };

    let written = Instant::now();
    f.write_slices("empty", &target_ports(), &["b1"])?;
    let programmed = wait_frontends(f.bpffs()?, &backends(true)?, CHANGE_BOUND)?;
    run_in(f.client()?, || {
        for fam in families() {
            let tcp = tcp_ask(sa(fam.empty, TCP_PORT)).with_context(|| {
                format!(
                    "{}: the ClusterIP must answer once its slice lists b1",
                    fam.name
                )
            })?;
            let udp = udp_ask(sa(fam.empty, UDP_PORT)).with_context(|| {
                format!("{}: UDP must answer once the slice lists b1", fam.name)
            })?;
            ensure!(
                tcp.name == "b1" && udp.name == "b1",
                "{}: answered by {tcp:?} / {udp:?}",
                fam.name
            );
        }
        Ok(())
    })?;
    eprintln!(
        "`empty` gained b1 in its slices: in the maps after {programmed:?}, TCP and UDP answered \
         by b1 {:?} after the write (both families)",
        written.elapsed()
    );

    let written = Instant::now();
    f.write_slices("empty", &target_ports(), &[])?;
    let programmed = wait_frontends(f.bpffs()?, &backends(false)?, CHANGE_BOUND)?;
    for fam in families() {
        let family = fam.name;
        run_in(f.client()?, || {
            expect_refused(
                &format!("{family} TCP connect after the slice lost its endpoint"),
                tcp_connect(sa(fam.empty, TCP_PORT)),
            )?;
            expect_refused(
                &format!("{family} UDP after the slice lost its endpoint"),
                udp_exchange(sa(fam.empty, UDP_PORT)),
            )
        })?;
    }
    eprintln!(
        "`empty` lost b1: no backend in the maps after {programmed:?}, refused again {:?} \
         after the write (both families)",
        written.elapsed()
    );
    Ok(())
}

/// `quiet` carries `service.kubernetes.io/headless`: nothing of it is programmed, so its
/// ClusterIP is an unowned service-CIDR address (dropped, counted). Without the label
/// the same Service answers.
fn headless_label_is_honoured(f: &Fixture) -> Result<()> {
    let vips: BTreeSet<String> = families()
        .iter()
        .map(|fam| frontend_key(sa(fam.headless, TCP_PORT), "tcp"))
        .collect();
    let rows = frontend_rows(f.bpffs()?)?;
    let programmed: Vec<&String> = rows
        .iter()
        .map(|r| &r.frontend)
        .filter(|fr| vips.contains(*fr))
        .collect();
    ensure!(
        programmed.is_empty(),
        "a Service labelled {HEADLESS_LABEL} was programmed: {programmed:?}"
    );
    let node = f.cluster.node(1)?;
    let before = counters(node)?;
    for fam in families() {
        match run_in(f.client()?, || Ok(tcp_connect(sa(fam.headless, TCP_PORT))))? {
            Outcome::TimedOut => eprintln!(
                "{} TCP to the ClusterIP of a Service labelled headless: no answer (dropped)",
                fam.name
            ),
            other => bail!(
                "{}: a Service labelled {HEADLESS_LABEL} must not be proxied, got {other:?}",
                fam.name
            ),
        }
    }
    let after = counters(node)?;
    let dropped = moved(&before, &after, Reason::DropServiceCidr);
    ensure!(
        dropped >= 2,
        "the headless Service's ClusterIP: {dropped} packets counted drop_service_cidr"
    );
    for reason in [Reason::RejectNoEndpoint, Reason::RejectNoPort] {
        ensure!(
            moved(&before, &after, reason) == 0,
            "a headless Service's ClusterIP was refused ({}), not dropped",
            reason.name()
        );
    }

    let written = Instant::now();
    f.write_service(&headless_service(), &ServiceExtras::default())?;
    let mut wanted = Vec::new();
    for fam in families() {
        wanted.push((
            frontend_key(sa(fam.headless, TCP_PORT), "tcp"),
            vec![f.backend("b1", fam.headless, TCP_TARGET)?],
        ));
    }
    let programmed = wait_frontends(f.bpffs()?, &wanted, CHANGE_BOUND)?;
    run_in(f.client()?, || {
        for fam in families() {
            let answer = tcp_ask(sa(fam.headless, TCP_PORT))
                .with_context(|| format!("{}: the label is gone", fam.name))?;
            ensure!(answer.name == "b1", "{}: answered by {answer:?}", fam.name);
        }
        Ok(())
    })?;
    eprintln!(
        "headless label removed: in the maps after {programmed:?}, answered by b1 {:?} after \
         the write (both families)",
        written.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// sessionAffinity ClientIP.

/// Names of the backends that answered `calls` TCP connections from `source` (bound
/// explicitly: the client pod has several addresses per family).
fn ask_batch(ns: &NetNs, vip: SocketAddr, source: IpAddr, calls: usize) -> Result<Vec<String>> {
    run_in(ns, || {
        (0..calls)
            .map(|_| tcp_ask_bound(vip, source).map(|a| a.name))
            .collect::<Result<Vec<_>>>()
    })
}

fn distinct(names: &[String]) -> BTreeSet<&str> {
    names.iter().map(String::as_str).collect()
}

/// Waits until both families' `sticky` frontends carry `timeout_s`.
fn wait_affinity(f: &Fixture, timeout_s: u32) -> Result<Duration> {
    let vips: Vec<String> = families()
        .iter()
        .map(|fam| frontend_key(sa(fam.sticky, TCP_PORT), "tcp"))
        .collect();
    wait_for_rows(
        f.bpffs()?,
        &format!("sticky frontends with affinity timeout {timeout_s}"),
        CHANGE_BOUND,
        |rows| {
            vips.iter().all(|vip| {
                rows.iter()
                    .any(|r| r.frontend == *vip && r.affinity_timeout_s == timeout_s)
            })
        },
    )
}

fn affinity(f: &Fixture, other_clients: &[(std::net::Ipv4Addr, std::net::Ipv6Addr)]) -> Result<()> {
    let client = f.cluster.pod("client")?;
    // The manifest says `sessionAffinity: ClientIP` without a timeout: kube-proxy's 10800 s.
    let took = wait_affinity(f, 10_800)?;
    eprintln!("ClientIP affinity without timeoutSeconds: 10800 s in the maps ({took:?})");
    for fam in families() {
        let family = fam.name;
        let vip = sa(fam.sticky, TCP_PORT);
        let sticky = ask_batch(&client.ns, vip, client.addr(fam.v6), AFFINITY_CALLS)?;
        eprintln!(
            "{family} affinity on, {AFFINITY_CALLS} connections from {}: {:?}",
            client.addr(fam.v6),
            distinct(&sticky)
        );
        ensure!(distinct(&sticky).len() == 1, "{family}: {sticky:?}");
        let chosen = sticky[0].clone();

        let maps = service_lb::dataplane::BpfMaps::open_pinned(f.bpffs()?)?;
        let now = service_lb::cli::inspect::conntrack::boottime_ns()?;
        let rows = service_lb::cli::inspect::affinity::rows(&maps.affinity()?, &maps, now)?;
        let table = service_lb::cli::output::render(&rows, service_lb::cli::output::Format::Table)?;
        eprintln!("`service-lb inspect affinity`:\n{table}");
        let row = rows
            .iter()
            .find(|r| r.client == client.addr(fam.v6))
            .context("the client's affinity entry")?;
        ensure!(row.live, "{family}: {row:?}");
        ensure!(
            row.frontend.as_deref() == Some(frontend_key(vip, "tcp").as_str()),
            "{family}: {row:?}"
        );
        ensure!(
            row.backend.map(|b| b.to_string()) == Some(f.backend(&chosen, vip.ip(), TCP_TARGET)?),
            "{family}: the entry names {row:?}, the connections went to {chosen}"
        );

        // Other client addresses: each sticks to its own backend; some land elsewhere.
        let mut elsewhere = None;
        for (k, (v4, v6)) in other_clients.iter().enumerate() {
            let source: IpAddr = if fam.v6 { (*v6).into() } else { (*v4).into() };
            let names = ask_batch(&client.ns, vip, source, OTHER_CLIENT_CALLS)?;
            ensure!(
                distinct(&names).len() == 1,
                "{family}: client {source} was not sticky: {names:?}"
            );
            if names[0] != chosen {
                elsewhere = Some((k + 1, source, names[0].clone()));
                break;
            }
        }
        let Some((tried, source, other)) = elsewhere else {
            bail!(
                "{family}: {} other client addresses all landed on {chosen}",
                other_clients.len()
            );
        };
        eprintln!(
            "{family} another client address ({source}, other address #{tried} tried) sticks to {other}, \
             {} to {chosen}",
            client.addr(fam.v6)
        );

        // The chosen backend leaves the slices: the client's entry no longer binds it; its
        // next connections stick to one of the others. Then the backend comes back.
        let rest: Vec<&str> = STICKY_BACKENDS
            .iter()
            .copied()
            .filter(|b| *b != chosen)
            .collect();
        f.write_slices("sticky", &target_ports(), &rest)?;
        let remaining = rest
            .iter()
            .map(|b| f.backend(b, vip.ip(), TCP_TARGET))
            .collect::<Result<Vec<_>>>()?;
        let took = wait_frontends(
            f.bpffs()?,
            &[(frontend_key(vip, "tcp"), remaining)],
            CHANGE_BOUND,
        )?;
        let moved = ask_batch(&client.ns, vip, client.addr(fam.v6), AFFINITY_CALLS)?;
        eprintln!(
            "{family} {chosen} left the slices (maps after {took:?}): the client's next \
             {AFFINITY_CALLS} connections went to {:?}",
            distinct(&moved)
        );
        ensure!(
            distinct(&moved).len() == 1 && moved[0] != chosen,
            "{family}: after {chosen} left, the client must stick to one other backend: {moved:?}"
        );
        f.write_slices("sticky", &target_ports(), &STICKY_BACKENDS)?;
        let all = STICKY_BACKENDS
            .iter()
            .map(|b| f.backend(b, vip.ip(), TCP_TARGET))
            .collect::<Result<Vec<_>>>()?;
        wait_frontends(f.bpffs()?, &[(frontend_key(vip, "tcp"), all)], CHANGE_BOUND)?;
    }

    // Switched off in the manifest: new connections spread (all 20 on one of three: 3^-19).
    let written = Instant::now();
    f.write_service(&sticky_service(), &ServiceExtras::default())?;
    let took = wait_affinity(f, 0)?;
    eprintln!("affinity removed from the manifest: in the maps after {took:?}");
    for fam in families() {
        let spread = ask_batch(
            &client.ns,
            sa(fam.sticky, TCP_PORT),
            client.addr(fam.v6),
            AFFINITY_CALLS,
        )?;
        eprintln!("{} affinity off: {:?}", fam.name, distinct(&spread));
        ensure!(distinct(&spread).len() > 1, "{}: {spread:?}", fam.name);
    }
    eprintln!(
        "affinity off verified {:?} after the write",
        written.elapsed()
    );

    // A short timeout: after it the next connection may go elsewhere.
    f.write_service(
        &sticky_service(),
        &ServiceExtras {
            session_affinity: SessionAffinity::ClientIp {
                timeout_s: Some(SHORT_TIMEOUT_S),
            },
            ..ServiceExtras::default()
        },
    )?;
    let took = wait_affinity(f, SHORT_TIMEOUT_S)?;
    eprintln!("timeoutSeconds {SHORT_TIMEOUT_S} in the maps after {took:?}");
    for fam in families() {
        let vip = sa(fam.sticky, TCP_PORT);
        let mut after_expiry = ask_batch(&client.ns, vip, client.addr(fam.v6), 1)?;
        for _ in 0..EXPIRY_ROUNDS {
            std::thread::sleep(Duration::from_millis(
                u64::from(SHORT_TIMEOUT_S) * 1000 + 200,
            ));
            after_expiry.extend(ask_batch(&client.ns, vip, client.addr(fam.v6), 1)?);
        }
        eprintln!(
            "{} one connection per expired timeout: {after_expiry:?}",
            fam.name
        );
        ensure!(
            distinct(&after_expiry).len() > 1,
            "{}: expired entries kept their backend: {after_expiry:?}",
            fam.name
        );
    }
    Ok(())
}
