//! BPF_PROG_TEST_RUN fixtures for north-south frontends (NodePort, externalIPs,
//! LoadBalancer IPs; `service_lb_common::northsouth`): DNAT with and without SNAT, the
//! replies of SNATed flows at `from_net` (remote backend) and `from_pod` (local backend),
//! established packets, source ranges, traffic policy Local without endpoints, not-ours
//! traffic on the external device and source port clashes. Expected packets are built
//! independently (own checksums); every verdict, counter, conntrack and SNAT entry is
//! checked. Needs root (BPF); skipped without it unless CI=true.
//!
//! Semantics follow kube-proxy (pkg/proxy/nftables): a LoadBalancer source-range miss is
//! dropped (never rejected); externalTrafficPolicy Local without a local endpoint is
//! dropped; eTP=Cluster traffic from outside is masqueraded to the node's address;
//! eTP=Local keeps the client's address.

use std::net::{IpAddr, SocketAddr};

use anyhow::{ensure, Context as _};
use rstest::rstest;
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_NORTH_SOUTH, CT_FLAG_PORT_NAT, CT_FLAG_SEEN_REPLY,
        CT_FLAG_SNAT, CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    northsouth::{NodeAddrs, NODEADDR_HAS_V4, NODEADDR_HAS_V6, SNAT_PORT_MIN, SNAT_PORT_SPAN},
    proto::{IPPROTO_TCP, IPPROTO_UDP, VERDICT_DROP, VERDICT_PASS},
    service::{
        SCOPE_INTERNAL, SVC_FLAG_CLUSTER_IP, SVC_FLAG_DROP_NO_ENDPOINT, SVC_FLAG_LOAD_BALANCER,
        SVC_FLAG_NODE_PORT, SVC_FLAG_SNAT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    },
    CtEntry, CtKey4, CtKey6, DataplaneConfig, Hook, Reason,
};
use service_lb_tests::{
    packet::{clock::boot_ns, ct_record, CtRecord, Dataplane, Frontend, PacketSpec, L4},
    privileges::require_root,
};

const CONFIG: DataplaneConfig = DataplaneConfig {
    ct_tcp_syn_s: 31,
    ct_tcp_established_s: 3_601,
    ct_tcp_closing_s: 7,
    ct_other_s: 45,
    ct_tcp_half_closed_s: 1_801,
};

const SERVICE_ID: u32 = 11;
const NODE_PORT: u16 = 30_080;
const BACKEND_ID: u32 = 100;
const BACKEND_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn node(self) -> IpAddr {
        match self {
            Fam::V4 => "198.19.255.1",
            Fam::V6 => "fd00:ff::1",
        }
        .parse()
        .expect("node address")
    }

    /// External client number `i` (same source port for all).
    fn client(self, i: u8) -> SocketAddr {
        let ip: IpAddr = match self {
            Fam::V4 => format!("198.19.200.{}", 7 + i),
            Fam::V6 => format!("fd00:c8::{:x}", 7 + i),
        }
        .parse()
        .expect("client address");
        SocketAddr::new(ip, 40_000)
    }

    /// A client outside the allowed source range (see `lb_frontend`).
    fn denied_client(self) -> SocketAddr {
        match self {
            Fam::V4 => "198.19.200.77:40000",
            Fam::V6 => "[fd00:c8::77]:40000",
        }
        .parse()
        .expect("denied client")
    }

    /// The allowed source range: a /28 (v4) or /124 (v6) holding the clients 7..15.
    fn allowed_range(self) -> (IpAddr, u32) {
        match self {
            Fam::V4 => ("198.19.200.0".parse().expect("range"), 28),
            Fam::V6 => ("fd00:c8::".parse().expect("range"), 124),
        }
    }

    fn lb_ip(self) -> &'static str {
        match self {
            Fam::V4 => "198.19.200.100",
            Fam::V6 => "fd00:c8::100",
        }
    }

    fn cluster_ip(self) -> &'static str {
        match self {
            Fam::V4 => "198.19.0.10",
            Fam::V6 => "fd00:19::a",
        }
    }

    fn backend(self) -> SocketAddr {
        let ip: IpAddr = match self {
            Fam::V4 => "198.18.2.10",
            Fam::V6 => "fd00:18:0:2::a",
        }
        .parse()
        .expect("backend");
        SocketAddr::new(ip, BACKEND_PORT)
    }

    fn node_port(self) -> SocketAddr {
        SocketAddr::new(self.node(), NODE_PORT)
    }

    /// A NodePort frontend on this node's address with `flags` (besides the kind) and one
    /// backend, or none.
    fn node_port_frontend(self, proto: u8, flags: u16, backends: u32) -> Frontend {
        let mut f = Frontend::new(&self.node().to_string(), NODE_PORT, proto, SERVICE_ID);
        f.flags = SVC_FLAG_NODE_PORT | flags;
        if backends > 0 {
            f = f.backend(BACKEND_ID, &self.backend().ip().to_string(), BACKEND_PORT);
        }
        f
    }

    fn lb_frontend(self, proto: u8, flags: u16) -> Frontend {
        let mut f = Frontend::new(self.lb_ip(), 80, proto, SERVICE_ID).backend(
            BACKEND_ID,
            &self.backend().ip().to_string(),
            BACKEND_PORT,
        );
        f.flags = SVC_FLAG_LOAD_BALANCER | SVC_FLAG_SOURCE_RANGES | flags;
        f
    }
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp(_) => IPPROTO_TCP,
        _ => IPPROTO_UDP,
    }
}

/// Both node addresses written, as the daemon does from the Node's InternalIPs.
fn both_node_addrs() -> NodeAddrs {
    let (IpAddr::V4(v4), IpAddr::V6(v6)) = (Fam::V4.node(), Fam::V6.node()) else {
        unreachable!("the node addresses are one per family")
    };
    NodeAddrs {
        addr4: v4.octets(),
        addr6: v6.octets(),
        flags: NODEADDR_HAS_V4 | NODEADDR_HAS_V6,
    }
}

fn load(test: &str) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    let mut dp = Dataplane::load_with(CONFIG)?;
    dp.set_node_addrs(both_node_addrs())?;
    Ok(Some(dp))
}

fn same_bytes(actual: &[u8], expected: &[u8]) -> anyhow::Result<()> {
    if actual == expected {
        return Ok(());
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    anyhow::bail!(
        "output differs at byte {first} (len {} vs {})\n  actual:   {actual:02x?}\n  expected: {expected:02x?}",
        actual.len(),
        expected.len()
    )
}

/// A conntrack entry as the programs write it (expiry checked separately).
fn ct_entry(flags: u16, state: u8, nat_port: u16) -> CtEntry {
    CtEntry {
        expires_ns: 0,
        backend_id: BACKEND_ID,
        service_id: SERVICE_ID,
        flags,
        state,
        nat_port_be: nat_port.to_be(),
        ..CtEntry::default()
    }
}

/// Fails unless conntrack holds exactly `expected` (expiry `lifetime_s` after a moment
/// in `[t0, t1]`).
fn expect_conntrack(
    dp: &Dataplane,
    expected: &[CtRecord],
    lifetime_s: u32,
    t0: u64,
    t1: u64,
) -> anyhow::Result<()> {
    let actual = dp.conntrack()?;
    ensure!(
        actual.len() == expected.len(),
        "conntrack has {} entries, expected {}: {actual:#?}",
        actual.len(),
        expected.len()
    );
    let strip = |r: &CtRecord| {
        let mut r = *r;
        match &mut r {
            CtRecord::V4 { entry, .. } | CtRecord::V6 { entry, .. } => entry.expires_ns = 0,
        }
        r
    };
    let life = u64::from(lifetime_s) * 1_000_000_000;
    for want in expected {
        let found = actual
            .iter()
            .find(|a| strip(a) == strip(want))
            .with_context(|| format!("missing conntrack entry {want:?}\nhave: {actual:#?}"))?;
        let expires = found.entry().expires_ns;
        ensure!(
            (t0 + life..=t1 + life).contains(&expires),
            "entry {want:?}: expires {expires}, expected {life} ns after [{t0}, {t1}]"
        );
    }
    Ok(())
}

/// The SNAT entries of the family: (reply tuple as (backend, node:port, proto), client).
fn snat_entries(
    dp: &Dataplane,
    fam: Fam,
) -> anyhow::Result<Vec<(SocketAddr, SocketAddr, u8, SocketAddr)>> {
    let sock = |ip: IpAddr, port_be: u16| SocketAddr::new(ip, u16::from_be(port_be));
    Ok(match fam {
        Fam::V4 => dp
            .snat4()?
            .into_iter()
            .map(|(k, v): (CtKey4, _)| {
                ensure!(
                    k.dir == CT_DIR_REPLY,
                    "SNAT key {k:?} not in the reply direction"
                );
                Ok((
                    sock(IpAddr::from(k.saddr), k.sport_be),
                    sock(IpAddr::from(k.daddr), k.dport_be),
                    k.proto,
                    sock(IpAddr::from(v.client_addr), v.client_port_be),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        Fam::V6 => dp
            .snat6()?
            .into_iter()
            .map(|(k, v): (CtKey6, _)| {
                ensure!(
                    k.dir == CT_DIR_REPLY,
                    "SNAT key {k:?} not in the reply direction"
                );
                Ok((
                    sock(IpAddr::from(k.saddr), k.sport_be),
                    sock(IpAddr::from(k.daddr), k.dport_be),
                    k.proto,
                    sock(IpAddr::from(v.client_addr), v.client_port_be),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// The source port the flow of `client` was given: the one SNAT entry naming it, to the
/// backend and this node's address; in the SNAT range.
fn snat_port_of(dp: &Dataplane, fam: Fam, proto: u8, client: SocketAddr) -> anyhow::Result<u16> {
    let all = snat_entries(dp, fam)?;
    let mine: Vec<_> = all.iter().filter(|e| e.3 == client).collect();
    ensure!(
        mine.len() == 1,
        "SNAT entries of {client}: {mine:?} (all: {all:?})"
    );
    let (backend, node, p, _) = *mine[0];
    ensure!(backend == fam.backend(), "SNAT entry backend {backend}");
    ensure!(node.ip() == fam.node(), "SNAT entry node address {node}");
    ensure!(p == proto, "SNAT entry protocol {p}");
    let port = node.port();
    ensure!(
        (u32::from(SNAT_PORT_MIN)..u32::from(SNAT_PORT_MIN) + u32::from(SNAT_PORT_SPAN))
            .contains(&u32::from(port)),
        "SNAT port {port} outside the range"
    );
    Ok(port)
}

fn lifetime(proto: u8, established: bool) -> u32 {
    match (proto == IPPROTO_TCP, established) {
        (true, false) => CONFIG.ct_tcp_syn_s,
        (true, true) => CONFIG.ct_tcp_established_s,
        (false, _) => CONFIG.ct_other_s,
    }
}

// ---------------------------------------------------------------------------------------
// eTP=Local NodePort (no SNAT): DNAT only, the client address kept; the pod's reply
// passes `from_pod` untouched and is reversed at `to_net`.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp)]
fn node_port_without_snat_keeps_the_client(
    #[case] fam: Fam,
    #[case] request: L4,
    #[case] response: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("node_port_without_snat_keeps_the_client")? else {
        return Ok(());
    };
    let proto = proto_of(request);
    dp.install_frontend(&fam.node_port_frontend(proto, 0, 1))?;
    let client = fam.client(0);
    let input = PacketSpec::new(client, fam.node_port(), request);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &input.clone().with_dst(fam.backend()).build()?)?;
    let e = ct_entry(CT_FLAG_NORTH_SOUTH, CT_STATE_NEW, 0);
    expect_conntrack(
        &dp,
        &[
            ct_record(client, fam.node_port(), proto, CT_DIR_SERVICE, e)?,
            ct_record(fam.backend(), client, proto, CT_DIR_REPLY, e)?,
        ],
        lifetime(proto, false),
        t0,
        t1,
    )?;
    ensure!(
        snat_entries(&dp, fam)?.is_empty(),
        "no SNAT entry for eTP=Local"
    );

    // The local pod answers the client itself: from_pod leaves it alone, to_net reverses.
    let reply = PacketSpec::new(fam.backend(), client, response);
    let out = dp.run_counted(
        Hook::FromPod,
        &reply.build()?,
        VERDICT_PASS,
        Reason::PassNotService,
    )?;
    same_bytes(&out.data, &reply.build()?)?;
    let out = dp.run_counted(
        Hook::ToNet,
        &reply.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    same_bytes(&out.data, &reply.clone().with_src(fam.node_port()).build()?)
}

// ---------------------------------------------------------------------------------------
// eTP=Cluster NodePort (SNAT): DNAT + SNAT to the node address and an allocated port;
// the backend's reply reversed where it enters the node (from_net for a remote backend,
// from_pod for a local one); the client's next packet translated from conntrack.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK, L4::ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp, L4::Udp)]
#[case::v4_udp_zero_checksum(Fam::V4, L4::UdpNoChecksum, L4::UdpNoChecksum, L4::UdpNoChecksum)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK, L4::ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp, L4::Udp)]
fn node_port_with_snat(
    #[case] fam: Fam,
    #[case] request: L4,
    #[case] response: L4,
    #[case] next: L4,
    #[values(Hook::FromNet, Hook::FromPod)] reply_hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("node_port_with_snat")? else {
        return Ok(());
    };
    let proto = proto_of(request);
    dp.install_frontend(&fam.node_port_frontend(proto, SVC_FLAG_SNAT, 1))?;
    let client = fam.client(0);
    let input = PacketSpec::new(client, fam.node_port(), request);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_PASS,
        routed(Reason::SnatNewFlow),
    )?;
    let t1 = boot_ns()?;
    let port = snat_port_of(&dp, fam, proto, client)?;
    let wire_src = SocketAddr::new(fam.node(), port);
    let on_wire = input.clone().with_src(wire_src).with_dst(fam.backend());
    same_bytes(&out.data, &on_wire.build()?)?;
    let flags = CT_FLAG_NORTH_SOUTH | CT_FLAG_SNAT | CT_FLAG_PORT_NAT;
    expect_conntrack(
        &dp,
        &[
            ct_record(
                client,
                fam.node_port(),
                proto,
                CT_DIR_SERVICE,
                ct_entry(flags, CT_STATE_NEW, port),
            )?,
            ct_record(
                fam.backend(),
                wire_src,
                proto,
                CT_DIR_REPLY,
                ct_entry(flags, CT_STATE_NEW, client.port()),
            )?,
        ],
        lifetime(proto, false),
        t0,
        t1,
    )?;

    // The backend's reply to node:port: back to the client, from the frontend.
    let reply = PacketSpec::new(fam.backend(), wire_src, response);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        reply_hook,
        &reply.build()?,
        VERDICT_PASS,
        routed(Reason::RevSnatReply),
    )?;
    let t1 = boot_ns()?;
    let expected = PacketSpec::new(fam.node_port(), client, response);
    same_bytes(&out.data, &expected.build()?)?;
    let seen = flags | CT_FLAG_SEEN_REPLY;
    expect_conntrack(
        &dp,
        &[
            ct_record(
                client,
                fam.node_port(),
                proto,
                CT_DIR_SERVICE,
                ct_entry(seen, CT_STATE_ESTABLISHED, port),
            )?,
            ct_record(
                fam.backend(),
                wire_src,
                proto,
                CT_DIR_REPLY,
                ct_entry(seen, CT_STATE_ESTABLISHED, client.port()),
            )?,
        ],
        lifetime(proto, true),
        t0,
        t1,
    )?;

    // The client's next packet: the same translation, from conntrack.
    let next = input.clone().with_l4(next);
    let out = dp.run_counted(
        Hook::FromNet,
        &next.build()?,
        VERDICT_PASS,
        routed(Reason::SnatEstablished),
    )?;
    same_bytes(
        &out.data,
        &next.with_src(wire_src).with_dst(fam.backend()).build()?,
    )?;
    ensure!(
        snat_entries(&dp, fam)?.len() == 1,
        "one SNAT entry per flow"
    );
    Ok(())
}

/// A pod reaching the NodePort gets the internal scope and the same SNAT (no
/// `CT_FLAG_NORTH_SOUTH`: it did not come from the network).
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn pod_to_node_port_with_snat(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("pod_to_node_port_with_snat")? else {
        return Ok(());
    };
    dp.install_frontend(&fam.node_port_frontend(IPPROTO_TCP, SVC_FLAG_SNAT, 1))?;
    let pod: SocketAddr = match fam {
        Fam::V4 => "198.18.1.5:41000",
        Fam::V6 => "[fd00:18:0:1::5]:41000",
    }
    .parse()?;
    let input = PacketSpec::new(pod, fam.node_port(), L4::SYN);
    dp.run_counted(
        Hook::FromPod,
        &input.build()?,
        VERDICT_PASS,
        routed(Reason::SnatNewFlow),
    )
    .map(drop)?;
    let port = snat_port_of(&dp, fam, IPPROTO_TCP, pod)?;
    let ct = dp.conntrack()?;
    let forward = ct
        .iter()
        .find(|r| {
            matches!(r, CtRecord::V4 { key, .. } if key.dir == CT_DIR_SERVICE)
                || matches!(r, CtRecord::V6 { key, .. } if key.dir == CT_DIR_SERVICE)
        })
        .context("forward entry")?;
    ensure!(
        forward.entry().flags == CT_FLAG_SNAT | CT_FLAG_PORT_NAT,
        "flags {:#x}",
        forward.entry().flags
    );
    ensure!(
        u16::from_be(forward.entry().nat_port_be) == port,
        "forward entry port"
    );
    let reply = PacketSpec::new(
        fam.backend(),
        SocketAddr::new(fam.node(), port),
        L4::SYN_ACK,
    );
    let out = dp.run_counted(
        Hook::FromNet,
        &reply.build()?,
        VERDICT_PASS,
        routed(Reason::RevSnatReply),
    )?;
    same_bytes(
        &out.data,
        &PacketSpec::new(fam.node_port(), pod, L4::SYN_ACK).build()?,
    )
}

/// The reason a packet that `northsouth` translated at ingress (`step`: `snat_new_flow`,
/// `snat_established` or `revsnat_reply`) is counted under in these fixtures. The kernel
/// routes such a packet with `bpf_fib_lookup` and redirects it out (`fib`); under
/// BPF_PROG_TEST_RUN the skb's device is the loopback of the netns the tests run in,
/// which does not forward, so the lookup fails and the fallback passes the packet as
/// translated (no MAC or TTL change), counted `snat_route_pass` instead of `step`. The
/// redirect itself is covered end to end by `e2e_northsouth` (BPF_PROG_TEST_RUN cannot
/// follow a redirect).
fn routed(step: Reason) -> Reason {
    match step {
        Reason::SnatNewFlow | Reason::SnatEstablished | Reason::RevSnatReply => {
            Reason::SnatRoutePass
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// Two clients with the same source port to the same backend: distinct SNAT ports, each
// reply back to its own client.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp)]
fn snat_port_clash_gets_distinct_ports(
    #[case] fam: Fam,
    #[case] request: L4,
    #[case] response: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("snat_port_clash_gets_distinct_ports")? else {
        return Ok(());
    };
    let proto = proto_of(request);
    dp.install_frontend(&fam.node_port_frontend(proto, SVC_FLAG_SNAT, 1))?;
    let (a, b) = (fam.client(0), fam.client(1));
    ensure!(a.port() == b.port(), "the clash needs the same source port");
    for client in [a, b] {
        let input = PacketSpec::new(client, fam.node_port(), request);
        dp.run_counted(
            Hook::FromNet,
            &input.build()?,
            VERDICT_PASS,
            routed(Reason::SnatNewFlow),
        )?;
    }
    let (pa, pb) = (
        snat_port_of(&dp, fam, proto, a)?,
        snat_port_of(&dp, fam, proto, b)?,
    );
    ensure!(pa != pb, "both flows got port {pa}");
    ensure!(dp.conntrack()?.len() == 4, "two entries per flow");
    for (client, port) in [(a, pa), (b, pb)] {
        let reply = PacketSpec::new(fam.backend(), SocketAddr::new(fam.node(), port), response);
        let out = dp.run_counted(
            Hook::FromNet,
            &reply.build()?,
            VERDICT_PASS,
            routed(Reason::RevSnatReply),
        )?;
        same_bytes(
            &out.data,
            &PacketSpec::new(fam.node_port(), client, response).build()?,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// loadBalancerSourceRanges: an allowed client is translated (with or without SNAT), any
// other is dropped (never reset), counted, nothing tracked.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v4_udp(Fam::V4, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn source_ranges(
    #[case] fam: Fam,
    #[case] l4: L4,
    #[values(0, SVC_FLAG_SNAT)] snat: u16,
    #[values(Hook::FromNet, Hook::FromPod)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("source_ranges")? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    let frontend = fam.lb_frontend(proto, snat);
    dp.install_frontend(&frontend)?;
    let (range, len) = fam.allowed_range();
    dp.install_src_range(SERVICE_ID, range, len)?;
    // Another frontend's range covering the denied client must not let it in.
    dp.install_src_range(SERVICE_ID + 1, fam.denied_client().ip(), 128)?;
    let lb = SocketAddr::new(frontend.vip, 80);

    let denied = PacketSpec::new(fam.denied_client(), lb, l4);
    let out = dp.run_counted(
        hook,
        &denied.build()?,
        VERDICT_DROP,
        Reason::DropSourceRange,
    )?;
    same_bytes(&out.data, &denied.build()?)?;
    ensure!(dp.conntrack()?.is_empty(), "a denied client is not tracked");

    let allowed = PacketSpec::new(fam.client(0), lb, l4);
    let reason = if snat != 0 {
        routed(Reason::SnatNewFlow)
    } else {
        Reason::DnatNewFlow
    };
    let out = dp.run_counted(hook, &allowed.build()?, VERDICT_PASS, reason)?;
    let src = if snat != 0 {
        SocketAddr::new(fam.node(), snat_port_of(&dp, fam, proto, fam.client(0))?)
    } else {
        fam.client(0)
    };
    same_bytes(
        &out.data,
        &allowed.with_src(src).with_dst(fam.backend()).build()?,
    )
}

// ---------------------------------------------------------------------------------------
// Traffic policy Local without a local endpoint: dropped silently, counted, never
// refused (the frontend without the flag is refused: packet_verdicts covers that).

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v4_udp(Fam::V4, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn external_policy_local_without_endpoint_is_dropped(
    #[case] fam: Fam,
    #[case] l4: L4,
    #[values(0, SVC_FLAG_SNAT)] snat: u16,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("external_policy_local_without_endpoint_is_dropped")? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    dp.install_frontend(&fam.node_port_frontend(proto, SVC_FLAG_DROP_NO_ENDPOINT | snat, 0))?;
    let input = PacketSpec::new(fam.client(0), fam.node_port(), l4);
    let out = dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_DROP,
        Reason::DropNoLocalEndpoint,
    )?;
    same_bytes(&out.data, &input.build()?)?;
    ensure!(dp.conntrack()?.is_empty(), "nothing tracked");
    ensure!(snat_entries(&dp, fam)?.is_empty(), "no SNAT entry");
    Ok(())
}

/// internalTrafficPolicy Local: a ClusterIP whose internal scope has no local endpoint
/// drops pods' packets; the external scope (from the network) still has its backend.
#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v4_udp(Fam::V4, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn internal_policy_local_cluster_ip_is_dropped(
    #[case] fam: Fam,
    #[case] l4: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("internal_policy_local_cluster_ip_is_dropped")? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    let mut external = Frontend::new(fam.cluster_ip(), 80, proto, SERVICE_ID).backend(
        BACKEND_ID,
        &fam.backend().ip().to_string(),
        BACKEND_PORT,
    );
    external.flags = SVC_FLAG_CLUSTER_IP | SVC_FLAG_TWO_SCOPES;
    let mut internal = Frontend::new(fam.cluster_ip(), 80, proto, SERVICE_ID);
    internal.scope = SCOPE_INTERNAL;
    internal.flags = SVC_FLAG_CLUSTER_IP | SVC_FLAG_TWO_SCOPES | SVC_FLAG_DROP_NO_ENDPOINT;
    dp.install_frontend(&internal)?;
    dp.install_frontend(&external)?;
    let vip = SocketAddr::new(external.vip, 80);
    let pod: SocketAddr = match fam {
        Fam::V4 => "198.18.1.5:41000",
        Fam::V6 => "[fd00:18:0:1::5]:41000",
    }
    .parse()?;
    let from_pod = PacketSpec::new(pod, vip, l4);
    let out = dp.run_counted(
        Hook::FromPod,
        &from_pod.build()?,
        VERDICT_DROP,
        Reason::DropNoLocalEndpoint,
    )?;
    same_bytes(&out.data, &from_pod.build()?)?;
    ensure!(dp.conntrack()?.is_empty(), "nothing tracked");

    let from_net = PacketSpec::new(fam.client(0), vip, l4);
    let out = dp.run_counted(
        Hook::FromNet,
        &from_net.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(&out.data, &from_net.with_dst(fam.backend()).build()?)
}

// ---------------------------------------------------------------------------------------
// Not ours on the external device: the node's own traffic passes byte-identical.

#[rstest]
#[case::v4_ssh(Fam::V4, 22, L4::SYN)]
#[case::v4_ssh_mid_flow(Fam::V4, 22, L4::ACK)]
#[case::v4_dns(Fam::V4, 53, L4::Udp)]
#[case::v4_node_port_other_proto(Fam::V4, NODE_PORT, L4::Udp)]
#[case::v6_ssh(Fam::V6, 22, L4::SYN)]
#[case::v6_dns(Fam::V6, 53, L4::Udp)]
fn not_ours_passes_untouched(
    #[case] fam: Fam,
    #[case] port: u16,
    #[case] l4: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("not_ours_passes_untouched")? else {
        return Ok(());
    };
    // A TCP SNAT NodePort is there; the packets are to other ports/protocols of the node.
    dp.install_frontend(&fam.node_port_frontend(IPPROTO_TCP, SVC_FLAG_SNAT, 1))?;
    let input = PacketSpec::new(fam.client(0), SocketAddr::new(fam.node(), port), l4);
    let out = dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_PASS,
        Reason::PassNotService,
    )?;
    same_bytes(&out.data, &input.build()?)?;
    ensure!(dp.conntrack()?.is_empty(), "nothing tracked");
    Ok(())
}

/// A reply-looking packet to an SNAT port with no flow behind it is not ours either.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn unknown_snat_port_passes_untouched(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("unknown_snat_port_passes_untouched")? else {
        return Ok(());
    };
    dp.install_frontend(&fam.node_port_frontend(IPPROTO_TCP, SVC_FLAG_SNAT, 1))?;
    let input = PacketSpec::new(
        fam.backend(),
        SocketAddr::new(fam.node(), SNAT_PORT_MIN + 5),
        L4::SYN_ACK,
    );
    let out = dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_PASS,
        Reason::PassNotService,
    )?;
    same_bytes(&out.data, &input.build()?)
}

/// A node without an address of the family cannot SNAT: dropped, counted.
#[rstest]
#[case::v4(Fam::V4, NODEADDR_HAS_V6)]
#[case::v6(Fam::V6, NODEADDR_HAS_V4)]
fn snat_without_node_address_is_dropped(#[case] fam: Fam, #[case] only: u32) -> anyhow::Result<()> {
    let Some(mut dp) = load("snat_without_node_address_is_dropped")? else {
        return Ok(());
    };
    dp.set_node_addrs(NodeAddrs {
        flags: only,
        ..both_node_addrs()
    })?;
    let mut f = fam.lb_frontend(IPPROTO_TCP, SVC_FLAG_SNAT);
    f.flags &= !SVC_FLAG_SOURCE_RANGES;
    dp.install_frontend(&f)?;
    let input = PacketSpec::new(fam.client(0), SocketAddr::new(f.vip, 80), L4::SYN);
    dp.run_counted(
        Hook::FromNet,
        &input.build()?,
        VERDICT_DROP,
        Reason::DropSnatNoAddress,
    )?;
    ensure!(dp.conntrack()?.is_empty(), "nothing tracked");
    Ok(())
}
