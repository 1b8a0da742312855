//! End to end with the real daemon (`service-lb run --manifests`, one per node): a
//! 4000-byte UDP request to a ClusterIP and a 4000-byte reply, IPv4 and IPv6, both
//! fragmented by the sending pod's kernel (1500-byte MTU).
//!
//! ```text
//!  client (node n1) --slbp0-- n1 ==== switch ==== n2 --slbp0-- backend (n2)
//! ```
//!
//! The Service (198.19.0.31 / fd00:19::1f, 53/UDP -> 9053) and its EndpointSlices (the
//! backend pod on n2) are manifests both daemons read. n1 DNATs the request's first
//! fragment (it carries the ports) and must give the later ones the same destination, or
//! the backend never reassembles the datagram; the reply's fragments must all get the
//! ClusterIP back as their source at n1's `to_pod`, or the client's socket, connected to
//! the ClusterIP, never sees the reply.
//! Needs root; skipped without it unless CI=true.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use service_lb::dataplane::CounterTotal;
use service_lb_common::{Hook, Reason};
use service_lb_tests::capture::{Capture, Seen};
use service_lb_tests::daemon::{serve_one_backend, ManifestDir, OneBackendService};
use service_lb_tests::netns::{run_in, sweep_leftovers};
use service_lb_tests::privileges::require_root;
use service_lb_tests::scenario::dataplane::counters;
use service_lb_tests::topology::{Cluster, ClusterSpec, POD_DEV};

/// Bytes of the request and of the reply (each > the 1500-byte MTU).
const DATAGRAM: usize = 4000;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKEND_PORT: u16 = 9053;
const PORT: u16 = 53;
const VIP4: &str = "198.19.0.31";
const VIP6: &str = "fd00:19::1f";
const SERVICE_CIDRS: &str = "198.19.0.0/17,fd00:19::/108";
const READY_BOUND: Duration = Duration::from_secs(30);
const CHANGE_BOUND: Duration = Duration::from_secs(10);
/// Attempts per family (UDP: a lost fragment loses the datagram).
const ATTEMPTS: usize = 3;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn packets(totals: &[CounterTotal], hook: Option<Hook>, reason: Reason) -> u64 {
    totals
        .iter()
        .filter(|c| hook.is_none_or(|h| c.hook == h) && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

#[test]
fn e2e_udp_fragments_through_a_clusterip() -> Result<()> {
    if !require_root("e2e_udp_fragments_through_a_clusterip") {
        return Ok(());
    }
    for leftover in sweep_leftovers() {
        eprintln!("removed a leftover of an earlier run: {leftover}");
    }
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client"], &["backend"]]))
        .context("building the namespace topology")?;
    let n1 = cluster.node(1)?;
    let client = cluster.pod("client")?;
    let backend = cluster.pod("backend")?;

    let manifests = ManifestDir::create(cluster.prefix())?;
    let mut daemons = serve_one_backend(
        &cluster,
        &manifests,
        &OneBackendService {
            name: "big-dns",
            vips: [ip(VIP4), ip(VIP6)],
            port_name: "dns",
            port: PORT,
            protocol: "UDP",
            backend,
            backend_port: BACKEND_PORT,
        },
        &[format!("--service-cidrs={SERVICE_CIDRS}")],
        READY_BOUND,
        CHANGE_BOUND,
    )?;

    for (v6, vip) in [(false, VIP4), (true, VIP6)] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let vip = SocketAddr::new(ip(vip), PORT);
        let backend_addr = SocketAddr::new(backend.addr(v6), BACKEND_PORT);
        let before = counters(n1)?;
        let server = run_in(&backend.ns, || {
            UdpSocket::bind(backend_addr).with_context(|| format!("binding {backend_addr}"))
        })?;
        server.set_read_timeout(Some(IO_TIMEOUT * ATTEMPTS as u32))?;
        let echo = std::thread::spawn(move || echo(&server));
        let capture = Capture::start(&client.ns, POD_DEV)?;
        let started = Instant::now();
        let answer = run_in(&client.ns, || ask(vip));
        let took = started.elapsed();
        let echoed = echo
            .join()
            .map_err(|_| anyhow::anyhow!("the backend's echo panicked"))?;
        let seen = capture.finish()?;
        let (from, reply) = answer.with_context(|| format!("{DATAGRAM} bytes to {vip}"))?;
        let (peer, request) = echoed.context("backend echo")?;
        let after = counters(n1)?;
        let moved = |hook, reason| {
            packets(&after, Some(hook), reason) - packets(&before, Some(hook), reason)
        };
        let dnat = moved(Hook::FromPod, Reason::DnatFragment);
        let revnat = moved(Hook::ToPod, Reason::RevNatFragment);
        eprintln!(
            "{family} {vip}: backend got {request} bytes from {peer}, client got {} bytes from \
             {from} in {took:?}; n1 from_pod dnat_fragment {dnat}, to_pod revnat_fragment {revnat}",
            reply.len()
        );
        ensure!(
            request == DATAGRAM,
            "{vip}: the backend got {request} bytes"
        );
        ensure!(from == vip, "{vip}: the reply came from {from}");
        ensure!(
            reply == payload(),
            "{vip}: the reply is not the echoed request"
        );
        // 4008 bytes of UDP: 3 fragments per datagram in both families (2 later ones).
        ensure!(
            dnat >= 2,
            "{family}: n1 translated {dnat} later request fragments (2 at least)"
        );
        ensure!(
            revnat >= 2,
            "{family}: n1 translated {revnat} later reply fragments (2 at least)"
        );
        check_wire(family, vip, backend_addr.ip(), &seen)?;
    }

    for node in &cluster.nodes {
        for c in counters(node)?.iter().filter(|c| c.packets > 0) {
            eprintln!(
                "  {}: {} {} {}",
                node.name,
                c.hook.name(),
                c.reason.name(),
                c.packets
            );
        }
    }
    let totals = counters(n1)?;
    for reason in [Reason::DropMalformed, Reason::DropNatFailed] {
        let drops = packets(&totals, None, reason);
        ensure!(drops == 0, "node n1: {drops} packets {}", reason.name());
    }
    for daemon in daemons.iter_mut() {
        ensure!(
            daemon.exited()?.is_none(),
            "a daemon exited during the test; log:\n{}",
            daemon.log_tail(30)
        );
        let status = daemon.stop()?;
        ensure!(status.success(), "a daemon stopped with {status}");
    }
    Ok(())
}

/// What the client's `eth0` carried: the request's fragments go to the ClusterIP, and
/// every fragment of the reply comes from the ClusterIP (none from the backend's own
/// address, which n1 must have rewritten in each of them). Prints the fragment sizes.
fn check_wire(family: &str, vip: SocketAddr, backend: IpAddr, seen: &[Seen]) -> Result<()> {
    let fragments = |outgoing: bool| -> Vec<&Seen> {
        seen.iter()
            .filter(|s| s.outgoing == outgoing && s.fragment.is_some())
            .collect()
    };
    let describe = |list: &[&Seen]| -> Vec<String> {
        list.iter()
            .map(|s| {
                let f = s.fragment.expect("filtered on fragments");
                format!(
                    "{} bytes @{}{}",
                    s.ip_len,
                    f.offset,
                    if f.more { "+" } else { "" }
                )
            })
            .collect()
    };
    let request = fragments(true);
    let reply = fragments(false);
    eprintln!(
        "{family} on the client's {POD_DEV}: request fragments {:?}; reply fragments {:?} \
         (IP packet sizes, @data offset, + = more follow)",
        describe(&request),
        describe(&reply)
    );
    ensure!(
        request.len() >= 3 && request.iter().all(|s| s.dst == vip.ip()),
        "{family}: the request's fragments: {request:?}"
    );
    ensure!(
        reply.len() >= 3,
        "{family}: {} reply fragments reached the client: {reply:?}",
        reply.len()
    );
    ensure!(
        reply.iter().all(|s| s.src == vip.ip()),
        "{family}: reply fragments not from the ClusterIP {}: {:?}",
        vip.ip(),
        reply
            .iter()
            .filter(|s| s.src != vip.ip())
            .collect::<Vec<_>>()
    );
    ensure!(
        !seen.iter().any(|s| !s.outgoing && s.src == backend),
        "{family}: a packet reached the client from the backend's own address {backend}"
    );
    // One whole datagram: a first fragment (offset 0, more) and a last one (no more).
    ensure!(
        reply
            .iter()
            .any(|s| s.fragment.is_some_and(|f| f.offset == 0 && f.more))
            && reply.iter().any(|s| s.fragment.is_some_and(|f| !f.more)),
        "{family}: the reply's fragments are not a whole datagram: {reply:?}"
    );
    Ok(())
}

fn payload() -> Vec<u8> {
    (0..DATAGRAM).map(|i| (i % 253) as u8).collect()
}

/// Receives one datagram and sends it back; (its sender, its length).
fn echo(socket: &UdpSocket) -> Result<(SocketAddr, usize)> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, peer) = socket.recv_from(&mut buf).context("echo recv")?;
    socket.send_to(&buf[..n], peer).context("echo send")?;
    Ok((peer, n))
}

/// Sends the payload to `vip` from a socket connected to it; (the reply's source, its
/// bytes). Retried a few times: the first datagram may be lost to neighbour resolution.
fn ask(vip: SocketAddr) -> Result<(SocketAddr, Vec<u8>)> {
    let bind: SocketAddr = if vip.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).context("binding the client")?;
    socket
        .connect(vip)
        .with_context(|| format!("connect {vip}"))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut last = None;
    for _ in 0..ATTEMPTS {
        socket.send(&payload()).context("send")?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return Ok((from, buf[..n].to_vec())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from)).context("no reply")
}
