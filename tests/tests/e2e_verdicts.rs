//! End to end: refusals with real sockets in namespaces (one node, a client pod and a
//! backend pod; service-lb loaded, attached and programmed through the pinned maps).
//!
//! Per family: `connect()` to a ClusterIP without endpoints gets ECONNREFUSED (TCP reset);
//! a connected UDP socket gets ECONNREFUSED on `recv` (ICMP port unreachable); the same on
//! a port the Service does not define; an unowned address of the service CIDR gets no
//! answer (dropped, counted); the defined port still reaches the backend. Times to
//! refusal are printed, never asserted.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use service_lb::dataplane::{program_service_cidrs, BpfMaps, Cidr, L4Proto};
use service_lb_common::{Hook, Reason};
use service_lb_tests::{
    netns::{run_in, sweep_leftovers},
    privileges::require_root,
    scenario::dataplane::{self, ClusterIp, Endpoint},
    servers::{tcp_ask, Servers},
    topology::{Cluster, ClusterSpec},
};

/// How long a client waits before calling a missing answer a timeout (a refusal takes
/// well under a millisecond; this only bounds the "no answer" cases).
const WAIT: Duration = Duration::from_secs(2);
const BACKEND_PORT: u16 = 8080;

struct Addrs {
    family: &'static str,
    /// ClusterIP with TCP/80 and UDP/53 and no endpoint.
    empty: IpAddr,
    /// ClusterIP with TCP/80 -> the backend.
    served: IpAddr,
    /// Inside the service CIDR, owned by no Service.
    unowned: IpAddr,
    cidr: &'static str,
}

fn families() -> [Addrs; 2] {
    let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
    [
        Addrs {
            family: "IPv4",
            empty: ip("198.19.0.20"),
            served: ip("198.19.0.21"),
            unowned: ip("198.19.0.99"),
            cidr: "198.19.0.0/17",
        },
        Addrs {
            family: "IPv6",
            empty: ip("fd00:19::20"),
            served: ip("fd00:19::21"),
            unowned: ip("fd00:19::99"),
            cidr: "fd00:19::/108",
        },
    ]
}

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

fn packets(counters: &[service_lb::dataplane::CounterTotal], hook: Hook, reason: Reason) -> u64 {
    counters
        .iter()
        .filter(|c| c.hook == hook && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

#[test]
fn e2e_verdicts() -> Result<()> {
    if !require_root("e2e_verdicts") {
        return Ok(());
    }
    for leftover in sweep_leftovers() {
        eprintln!("removed a leftover of an earlier run: {leftover}");
    }
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client", "b1"]]))
        .context("building the namespace topology")?;
    let node = cluster.node(1)?;
    let client = cluster.pod("client")?;
    let backend = cluster.pod("b1")?;

    let listen: Vec<SocketAddr> = [backend.addr(false), backend.addr(true)]
        .into_iter()
        .map(|a| SocketAddr::new(a, BACKEND_PORT))
        .collect();
    let _servers = Servers::start(&backend.ns, "b1", &listen, &[])?;
    dataplane::install(node)?;

    let mut services = Vec::new();
    for f in families() {
        for (port, proto) in [(80, L4Proto::Tcp), (53, L4Proto::Udp)] {
            services.push(ClusterIp {
                vip: SocketAddr::new(f.empty, port),
                proto,
                endpoints: Vec::new(),
            });
        }
        services.push(ClusterIp {
            vip: SocketAddr::new(f.served, 80),
            proto: L4Proto::Tcp,
            endpoints: vec![Endpoint {
                addr: SocketAddr::new(backend.addr(f.empty.is_ipv6()), BACKEND_PORT),
                node: 1,
            }],
        });
    }
    dataplane::program(node, &services)?;
    let cidrs: Vec<Cidr> = families()
        .iter()
        .map(|f| f.cidr.parse())
        .collect::<Result<_, _>>()?;
    let mut maps = BpfMaps::open_pinned(node.bpffs.path())?;
    program_service_cidrs(&mut maps, &cidrs)?;

    let before = dataplane::counters(node)?;
    for f in families() {
        let family = f.family;
        run_in(&client.ns, || {
            expect_refused(
                &format!("{family} TCP connect to a ClusterIP without endpoints"),
                tcp_connect(SocketAddr::new(f.empty, 80)),
            )?;
            expect_refused(
                &format!("{family} UDP to a ClusterIP without endpoints"),
                udp_exchange(SocketAddr::new(f.empty, 53)),
            )?;
            expect_refused(
                &format!("{family} TCP connect to an undefined port of a ClusterIP"),
                tcp_connect(SocketAddr::new(f.served, 81)),
            )?;
            expect_refused(
                &format!("{family} UDP to an undefined port of a ClusterIP"),
                udp_exchange(SocketAddr::new(f.served, 80)),
            )?;
            let answer = tcp_ask(SocketAddr::new(f.served, 80))
                .with_context(|| format!("{family}: the defined port must still answer"))?;
            eprintln!(
                "{family} TCP to the defined port: answered by {}",
                answer.name
            );
            match tcp_connect(SocketAddr::new(f.unowned, 80)) {
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
    let after = dataplane::counters(node)?;
    let moved =
        |reason| packets(&after, Hook::FromPod, reason) - packets(&before, Hook::FromPod, reason);
    // One SYN and one datagram per family.
    assert_eq!(moved(Reason::RejectNoEndpoint), 4, "refused: no endpoint");
    assert_eq!(moved(Reason::RejectNoPort), 4, "refused: undefined port");
    // The SYN and its retransmissions within WAIT.
    let dropped = moved(Reason::DropServiceCidr);
    assert!(
        dropped >= 2,
        "unowned service-CIDR packets counted: {dropped}"
    );
    eprintln!("drop_service_cidr counted {dropped} packets (SYNs and retransmissions)");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// sessionAffinity ClientIP.

/// Connections per batch.
const AFFINITY_CALLS: usize = 24;
/// The short timeout of the expiry phase, and how many expiries are tried.
const SHORT_TIMEOUT_S: u32 = 1;
const EXPIRY_ROUNDS: usize = 10;

/// Names of the backends that answered `calls` TCP connections from the client.
fn ask_batch(
    ns: &service_lb_tests::netns::NetNs,
    vip: SocketAddr,
    calls: usize,
) -> Result<Vec<String>> {
    run_in(ns, || {
        (0..calls)
            .map(|_| tcp_ask(vip).map(|a| a.name))
            .collect::<Result<Vec<_>>>()
    })
}

fn distinct(names: &[String]) -> std::collections::BTreeSet<&str> {
    names.iter().map(String::as_str).collect()
}

#[test]
fn e2e_affinity() -> Result<()> {
    use service_lb::dataplane::{BackendSpec, FrontendKey, FrontendSpec, ServiceWriter};
    use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP};

    if !require_root("e2e_affinity") {
        return Ok(());
    }
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client", "a1", "a2", "a3"]]))
        .context("building the namespace topology")?;
    let node = cluster.node(1)?;
    let client = cluster.pod("client")?;
    dataplane::install(node)?;
    let mut servers = Vec::new();
    for f in families() {
        let v6 = f.served.is_ipv6();
        let mut backends = Vec::new();
        for name in ["a1", "a2", "a3"] {
            let pod = cluster.pod(name)?;
            let addr = SocketAddr::new(pod.addr(v6), BACKEND_PORT);
            servers.push(Servers::start(&pod.ns, name, &[addr], &[])?);
            backends.push(BackendSpec {
                addr,
                state: BACKEND_STATE_ACTIVE,
                local: true,
            });
        }
        let family = f.family;
        let vip = SocketAddr::new(f.served, 80);
        let spec = |timeout_s: u32| FrontendSpec {
            key: FrontendKey {
                addr: vip.ip(),
                port: vip.port(),
                proto: L4Proto::Tcp,
                scope: SCOPE_EXTERNAL,
            },
            backends: backends.clone(),
            flags: SVC_FLAG_CLUSTER_IP,
            affinity_timeout_s: timeout_s,
        };
        let program = |timeout_s: u32| -> Result<()> {
            let maps = BpfMaps::open_pinned(node.bpffs.path())?;
            ServiceWriter::open(maps)?.upsert(&spec(timeout_s))?;
            Ok(())
        };

        // ClientIP with kube-proxy's default timeout: every connection to one backend.
        program(10_800)?;
        let sticky = ask_batch(&client.ns, vip, AFFINITY_CALLS)?;
        eprintln!("{family} affinity on: {:?}", distinct(&sticky));
        assert_eq!(distinct(&sticky).len(), 1, "{family}: {sticky:?}");

        let maps = BpfMaps::open_pinned(node.bpffs.path())?;
        let now = service_lb::cli::inspect::conntrack::boottime_ns()?;
        let rows = service_lb::cli::inspect::affinity::rows(&maps.affinity()?, &maps, now)?;
        let table = service_lb::cli::output::render(&rows, service_lb::cli::output::Format::Table)?;
        eprintln!("`service-lb inspect affinity`:\n{table}");
        let row = rows
            .iter()
            .find(|r| r.client == client.addr(v6))
            .context("the client's affinity entry")?;
        assert!(row.live, "{family}: {row:?}");
        assert_eq!(row.frontend.as_deref(), Some(format!("{vip}/tcp").as_str()));

        // Switched off: new connections spread (all 24 on one of three: 3^-23).
        program(0)?;
        let spread = ask_batch(&client.ns, vip, AFFINITY_CALLS)?;
        eprintln!("{family} affinity off: {:?}", distinct(&spread));
        assert!(distinct(&spread).len() > 1, "{family}: {spread:?}");

        // A short timeout: after it the next connection may go elsewhere.
        program(SHORT_TIMEOUT_S)?;
        let mut after_expiry = ask_batch(&client.ns, vip, 1)?;
        for _ in 0..EXPIRY_ROUNDS {
            std::thread::sleep(Duration::from_millis(
                u64::from(SHORT_TIMEOUT_S) * 1000 + 200,
            ));
            after_expiry.extend(ask_batch(&client.ns, vip, 1)?);
        }
        eprintln!("{family} one connection per expired timeout: {after_expiry:?}");
        assert!(
            distinct(&after_expiry).len() > 1,
            "{family}: expired entries kept their backend: {after_expiry:?}"
        );
    }
    drop(servers);
    Ok(())
}
