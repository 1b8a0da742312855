//! End to end with the real daemon (`service-lb run --manifests`, one per node): path-MTU
//! discovery through a ClusterIP, IPv4 and IPv6.
//!
//! ```text
//!  client (node n1) --slbp0-- n1 ==slbu0 (MTU 1280)== switch == n2 --slbp0-- backend (n2)
//! ```
//!
//! The Service (198.19.0.30 / fd00:19::1e, 80/TCP -> 9000) and its EndpointSlices (the
//! backend pod on n2) are manifests both daemons read. The client uploads a few MB to the
//! ClusterIP over TCP with its 1500-byte MTU. n1 DNATs the segments to the backend and
//! must forward them over a 1280-byte link: it answers with ICMP fragmentation-needed /
//! packet-too-big, quoting the DNATed segment (client -> backend). Only if service-lb
//! translates that error back (quoted destination = the ClusterIP) does the client's
//! socket, connected to the ClusterIP, learn the smaller path MTU; without it the transfer
//! stalls (DF / IPv6) and times out. Transfer times are printed, never asserted.
//! Needs root; skipped without it unless CI=true.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use service_lb::dataplane::CounterTotal;
use service_lb_common::{Hook, Reason};
use service_lb_tests::daemon::{serve_one_backend, ManifestDir, OneBackendService};
use service_lb_tests::netns::{run_in, sweep_leftovers};
use service_lb_tests::privileges::require_root;
use service_lb_tests::scenario::dataplane::counters;
use service_lb_tests::topology::{Cluster, ClusterSpec, UNDERLAY_DEV};

/// Bytes the client uploads per family.
const UPLOAD: usize = 4 << 20;
/// MTU of node n1's underlay link (the IPv6 minimum).
const SMALL_MTU: &str = "1280";
/// Every socket operation gives up after this long: a stalled transfer fails the test.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const BACKEND_PORT: u16 = 9000;
const PORT: u16 = 80;
const VIP4: &str = "198.19.0.30";
const VIP6: &str = "fd00:19::1e";
const SERVICE_CIDRS: &str = "198.19.0.0/17,fd00:19::/108";
const READY_BOUND: Duration = Duration::from_secs(30);
const CHANGE_BOUND: Duration = Duration::from_secs(10);

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
fn e2e_pmtu_through_a_clusterip() -> Result<()> {
    if !require_root("e2e_pmtu_through_a_clusterip") {
        return Ok(());
    }
    for leftover in sweep_leftovers() {
        eprintln!("removed a leftover of an earlier run: {leftover}");
    }
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client"], &["backend"]]))
        .context("building the namespace topology")?;
    let n1 = cluster.node(1)?;
    n1.ns.ip(&["link", "set", UNDERLAY_DEV, "mtu", SMALL_MTU])?;
    let client = cluster.pod("client")?;
    let backend = cluster.pod("backend")?;

    let manifests = ManifestDir::create(cluster.prefix())?;
    let mut daemons = serve_one_backend(
        &cluster,
        &manifests,
        &OneBackendService {
            name: "upload",
            vips: [ip(VIP4), ip(VIP6)],
            port_name: "data",
            port: PORT,
            protocol: "TCP",
            backend,
            backend_port: BACKEND_PORT,
        },
        &[format!("--service-cidrs={SERVICE_CIDRS}")],
        READY_BOUND,
        CHANGE_BOUND,
    )?;

    let mut translated_total = 0;
    for (v6, vip) in [(false, VIP4), (true, VIP6)] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let vip = SocketAddr::new(ip(vip), PORT);
        let backend_addr = SocketAddr::new(backend.addr(v6), BACKEND_PORT);
        let before = counters(n1)?;
        let listener = run_in(&backend.ns, || {
            TcpListener::bind(backend_addr).with_context(|| format!("binding {backend_addr}"))
        })?;
        let sink = std::thread::spawn(move || sink_one(&listener));
        let started = Instant::now();
        let upload = run_in(&client.ns, || upload_to(vip));
        let received = sink
            .join()
            .map_err(|_| anyhow::anyhow!("the backend's sink panicked"))?;
        let acknowledged = upload.with_context(|| format!("uploading {UPLOAD} bytes to {vip}"))?;
        let received = received.context("backend sink")?;
        let took = started.elapsed();
        let after = counters(n1)?;
        let translated = packets(&after, Some(Hook::ToPod), Reason::RevNatIcmpError)
            - packets(&before, Some(Hook::ToPod), Reason::RevNatIcmpError);
        translated_total += translated;
        eprintln!(
            "{family} {vip}: {UPLOAD} bytes through a {SMALL_MTU}-byte link in {took:?} \
             ({:.1} MB/s); n1 to_pod revnat_icmp_error: {translated} packets",
            UPLOAD as f64 / took.as_secs_f64() / 1e6
        );
        ensure!(
            received == UPLOAD,
            "{vip}: the backend got {received} bytes"
        );
        ensure!(
            acknowledged == UPLOAD as u64,
            "{vip}: the backend acknowledged {acknowledged} bytes"
        );
        ensure!(
            translated >= 1,
            "{family}: n1 translated no ICMP error towards the client"
        );
    }
    eprintln!("node n1 to_pod revnat_icmp_error: {translated_total} packets in all");

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

/// Accepts one connection, reads it to the end, answers with the byte count (8 bytes,
/// big endian).
fn sink_one(listener: &TcpListener) -> Result<usize> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let (mut conn, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    loop {
        let n = conn
            .read(&mut buf)
            .with_context(|| format!("reading from {peer} after {total} bytes"))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    conn.write_all(&(total as u64).to_be_bytes())?;
    Ok(total)
}

/// Connects to `vip`, writes `UPLOAD` bytes, and returns the count the backend answers.
fn upload_to(vip: SocketAddr) -> Result<u64> {
    let mut conn = TcpStream::connect_timeout(&vip, IO_TIMEOUT).context("connect")?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let chunk = vec![0x5au8; 64 << 10];
    let mut sent = 0;
    while sent < UPLOAD {
        let n = chunk.len().min(UPLOAD - sent);
        conn.write_all(&chunk[..n])
            .with_context(|| format!("writing after {sent} bytes"))?;
        sent += n;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).context("reading the count")?;
    Ok(u64::from_be_bytes(count))
}
