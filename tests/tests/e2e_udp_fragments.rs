//! End to end: a 4000-byte UDP request to a ClusterIP and a 4000-byte reply, IPv4 and
//! IPv6, both fragmented by the sending pod's kernel (1500-byte MTU).
//!
//! ```text
//!  client (node n1) --slbp0-- n1 ==== switch ==== n2 --slbp0-- backend (n2)
//! ```
//!
//! n1 DNATs the request's first fragment (it carries the ports) and must give the later
//! ones the same destination, or the backend never reassembles the datagram; the reply's
//! fragments must all get the ClusterIP back as their source at n1's `to_pod`, or the
//! client's socket, connected to the ClusterIP, never sees the reply.
//! Needs root; skipped without it unless CI=true.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use service_lb::dataplane::L4Proto;
use service_lb_common::{Hook, Reason};
use service_lb_tests::netns::{run_in, sweep_leftovers};
use service_lb_tests::privileges::require_root;
use service_lb_tests::scenario::dataplane::{self, ClusterIp, Endpoint};
use service_lb_tests::topology::{Cluster, ClusterSpec};

/// Bytes of the request and of the reply (each > the 1500-byte MTU).
const DATAGRAM: usize = 4000;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKEND_PORT: u16 = 9053;
/// Attempts per family (UDP: a lost fragment loses the datagram).
const ATTEMPTS: usize = 3;

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
    for node in &cluster.nodes {
        dataplane::install(node)?;
    }
    let n1 = cluster.node(1)?;
    let client = cluster.pod("client")?;
    let backend = cluster.pod("backend")?;

    for (v6, vip) in [(false, "198.19.0.31:53"), (true, "[fd00:19::1f]:53")] {
        let vip: SocketAddr = vip.parse()?;
        let backend_addr = SocketAddr::new(backend.addr(v6), BACKEND_PORT);
        let service = ClusterIp {
            vip,
            proto: L4Proto::Udp,
            endpoints: vec![Endpoint {
                addr: backend_addr,
                node: backend.node,
            }],
        };
        for node in &cluster.nodes {
            dataplane::program(node, std::slice::from_ref(&service))?;
        }
        let server = run_in(&backend.ns, || {
            UdpSocket::bind(backend_addr).with_context(|| format!("binding {backend_addr}"))
        })?;
        server.set_read_timeout(Some(IO_TIMEOUT * ATTEMPTS as u32))?;
        let echo = std::thread::spawn(move || echo(&server));
        let answer = run_in(&client.ns, || ask(vip));
        let echoed = echo
            .join()
            .map_err(|_| anyhow::anyhow!("the backend's echo panicked"))?;
        let (from, reply) = answer.with_context(|| format!("{DATAGRAM} bytes to {vip}"))?;
        let (peer, request) = echoed.context("backend echo")?;
        eprintln!(
            "{vip}: backend got {request} bytes from {peer}, client got {} bytes from {from}",
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
    }

    for node in &cluster.nodes {
        for c in dataplane::counters(node)?.iter().filter(|c| c.packets > 0) {
            eprintln!(
                "  {}: {} {} {}",
                node.name,
                c.hook.name(),
                c.reason.name(),
                c.packets
            );
        }
    }
    let totals = dataplane::counters(n1)?;
    let count = |hook: Hook, reason: Reason| -> u64 {
        totals
            .iter()
            .filter(|c| c.hook == hook && c.reason == reason)
            .map(|c| c.packets)
            .sum()
    };
    let dnat = count(Hook::FromPod, Reason::DnatFragment);
    let revnat = count(Hook::ToPod, Reason::RevNatFragment);
    eprintln!("node n1: from_pod dnat_fragment {dnat}, to_pod revnat_fragment {revnat}");
    // 4008 bytes of UDP: 3 fragments per datagram in both families (2 later ones each).
    ensure!(
        dnat >= 4,
        "n1 translated {dnat} later request fragments (2 per family at least)"
    );
    ensure!(
        revnat >= 4,
        "n1 translated {revnat} later reply fragments (2 per family at least)"
    );
    for reason in [Reason::DropMalformed, Reason::DropNatFailed] {
        let drops: u64 = totals
            .iter()
            .filter(|c| c.reason == reason)
            .map(|c| c.packets)
            .sum();
        ensure!(drops == 0, "node n1: {drops} packets {}", reason.name());
    }
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
