//! BPF_PROG_TEST_RUN fixtures for hairpin: a pod that is the backend of a Service it
//! connects to. The first packet is DNATed to the pod itself and SNATed to the hairpin
//! address, the pod's reply (to the hairpin address) is translated back (source -> VIP,
//! destination -> the pod), later packets of the flow get the first one's translation;
//! all of them go back into the pod (`TC_ACT_REDIRECT`, Ethernet addresses swapped).
//! Every output packet is built independently (own checksums). Needs root (BPF);
//! skipped without it unless CI=true.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure, Context as _};
use rstest::rstest;
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_HAIRPIN, CT_FLAG_PORT_NAT, CT_FLAG_SEEN_REPLY,
        CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    hairpin::HairpinConfig,
    proto::{IPPROTO_TCP, IPPROTO_UDP, VERDICT_PASS},
    CtEntry, DataplaneConfig, Hook, Reason,
};
use service_lb_tests::{
    packet::{ct_record, CtRecord, Dataplane, Frontend, PacketSpec, L4},
    privileges::require_root,
    topology::{TEST_HAIRPIN_IPV4, TEST_HAIRPIN_IPV6},
};

/// `TC_ACT_REDIRECT`: what `bpf_redirect` makes the program return.
const REDIRECT: i32 = 7;

const CONFIG: DataplaneConfig = DataplaneConfig {
    ct_tcp_syn_s: 31,
    ct_tcp_established_s: 3_601,
    ct_tcp_closing_s: 7,
    ct_other_s: 45,
    ct_tcp_half_closed_s: 1_801,
};

const HAIRPIN: HairpinConfig = HairpinConfig {
    v4: TEST_HAIRPIN_IPV4.octets(),
    v6: TEST_HAIRPIN_IPV6.octets(),
};

const SERVICE_ID: u32 = 9;
const BACKEND_ID: u32 = 300;

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    /// The pod: client of the Service and its only backend.
    fn pod(self) -> IpAddr {
        match self {
            Fam::V4 => "198.18.1.2",
            Fam::V6 => "fd00:18:0:1::2",
        }
        .parse()
        .expect("pod address")
    }

    fn vip(self) -> &'static str {
        match self {
            Fam::V4 => "198.19.0.10",
            Fam::V6 => "fd00:19::a",
        }
    }

    fn hairpin(self) -> IpAddr {
        match self {
            Fam::V4 => IpAddr::V4(TEST_HAIRPIN_IPV4),
            Fam::V6 => IpAddr::V6(TEST_HAIRPIN_IPV6),
        }
    }

    /// The client socket (pod, ephemeral port), the frontend, the pod as backend, the
    /// client as the backend sees it (hairpin address, same port).
    fn sockets(self) -> [SocketAddr; 4] {
        [
            SocketAddr::new(self.pod(), 40000),
            SocketAddr::new(self.vip().parse().expect("vip"), 80),
            SocketAddr::new(self.pod(), 8080),
            SocketAddr::new(self.hairpin(), 40000),
        ]
    }

    /// The Service: port 80 -> the pod itself on 8080.
    fn frontend(self, proto: u8) -> Frontend {
        Frontend::new(self.vip(), 80, proto, SERVICE_ID).backend(
            BACKEND_ID,
            &self.pod().to_string(),
            8080,
        )
    }
}

/// (first packet, reply, later packet of the flow) of each protocol.
fn packets(l4: L4) -> (L4, L4, L4) {
    match l4 {
        L4::Tcp(_) => (L4::SYN, L4::SYN_ACK, L4::ACK),
        other => (other, other, other),
    }
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp(_) => IPPROTO_TCP,
        _ => IPPROTO_UDP,
    }
}

fn load(test: &str, hairpin: HairpinConfig) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    Ok(Some(Dataplane::load_with_hairpin(CONFIG, hairpin)?))
}

/// The frame of `spec` as it goes back into the pod: the Ethernet source and
/// destination swapped (the builder's frame goes from the pod to its gateway).
fn turned_around(spec: &PacketSpec) -> anyhow::Result<Vec<u8>> {
    let mut frame = spec.build()?;
    let (dst, src) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut src[..6]);
    Ok(frame)
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
    bail!("output differs at byte {first} (len {} vs {})\n  actual:   {actual:02x?}\n  expected: {expected:02x?}", actual.len(), expected.len())
}

fn entry(flags: u16, state: u8) -> CtEntry {
    CtEntry {
        expires_ns: 0,
        backend_id: BACKEND_ID,
        service_id: SERVICE_ID,
        flags,
        state,
        ..CtEntry::default()
    }
}

/// Fails unless the conntrack maps hold exactly the two entries of the hairpin flow,
/// keyed as any flow's: forward client -> VIP, reply backend -> client (here the pod to
/// itself: the hairpin address is not part of the key), both `e` (expiry ignored).
fn expect_flow(dp: &Dataplane, fam: Fam, proto: u8, e: CtEntry) -> anyhow::Result<()> {
    let [client, vip, backend, _] = fam.sockets();
    let expected = [
        ct_record(client, vip, proto, CT_DIR_SERVICE, e)?,
        ct_record(backend, client, proto, CT_DIR_REPLY, e)?,
    ];
    let strip = |r: &CtRecord| match *r {
        CtRecord::V4 { map, key, entry } => CtRecord::V4 {
            map,
            key,
            entry: CtEntry {
                expires_ns: 0,
                ..entry
            },
        },
        CtRecord::V6 { map, key, entry } => CtRecord::V6 {
            map,
            key,
            entry: CtEntry {
                expires_ns: 0,
                ..entry
            },
        },
    };
    let actual = dp.conntrack()?;
    ensure!(
        actual.len() == expected.len(),
        "conntrack has {} entries, expected {}: {actual:#?}",
        actual.len(),
        expected.len()
    );
    for want in &expected {
        actual
            .iter()
            .find(|a| strip(a) == strip(want))
            .with_context(|| format!("missing conntrack entry {want:?}\nhave: {actual:#?}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The whole flow: first packet, reply, later packet.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v4_udp(Fam::V4, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn pod_reaches_itself_through_its_service(#[case] fam: Fam, #[case] l4: L4) -> anyhow::Result<()> {
    let Some(mut dp) = load("pod_reaches_itself_through_its_service", HAIRPIN)? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    dp.install_frontend(&fam.frontend(proto))?;
    let [client, vip, backend, seen_as] = fam.sockets();
    let (first, answer, later) = packets(l4);

    // First packet: destination -> the pod on the target port, source -> the hairpin
    // address (same port); back into the pod.
    let request = PacketSpec::new(client, vip, first);
    let out = dp.run_counted(
        Hook::FromPod,
        &request.build()?,
        REDIRECT,
        Reason::HairpinNewFlow,
    )?;
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(seen_as, backend, first))?,
    )?;
    expect_flow(&dp, fam, proto, entry(CT_FLAG_HAIRPIN, CT_STATE_NEW))?;

    // On its way into the pod (the redirect goes through the veth's egress), `to_pod`
    // leaves it alone: it is of no reply tuple.
    let into_pod = turned_around(&PacketSpec::new(seen_as, backend, first))?;
    let out = dp.run_counted(Hook::ToPod, &into_pod, VERDICT_PASS, Reason::PassNotService)?;
    same_bytes(&out.data, &into_pod)?;

    // The pod answers the hairpin address (via its gateway): source -> the VIP,
    // destination -> the pod on the client's port; back into the pod.
    let reply = PacketSpec::new(backend, seen_as, answer);
    let out = dp.run_counted(
        Hook::FromPod,
        &reply.build()?,
        REDIRECT,
        Reason::HairpinReply,
    )?;
    let translated = turned_around(&PacketSpec::new(vip, client, answer))?;
    same_bytes(&out.data, &translated)?;
    let seen = entry(CT_FLAG_HAIRPIN | CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED);
    expect_flow(&dp, fam, proto, seen)?;

    // The translated reply entering the pod: not a reply tuple either.
    let out = dp.run_counted(
        Hook::ToPod,
        &translated,
        VERDICT_PASS,
        Reason::PassNotService,
    )?;
    same_bytes(&out.data, &translated)?;

    // A later packet of the flow: the first one's translation.
    let next = PacketSpec::new(client, vip, later);
    let out = dp.run_counted(
        Hook::FromPod,
        &next.build()?,
        REDIRECT,
        Reason::HairpinEstablished,
    )?;
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(seen_as, backend, later))?,
    )?;
    expect_flow(&dp, fam, proto, seen)
}

// ---------------------------------------------------------------------------------------
// What stays as it was.

/// Hairpin off (the object's own configuration, all-zero addresses): the pod's flow to
/// itself is only DNATed and passed, as before.
#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn hairpin_off_only_dnats(#[case] fam: Fam, #[case] l4: L4) -> anyhow::Result<()> {
    let Some(mut dp) = load("hairpin_off_only_dnats", HairpinConfig::OFF)? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    dp.install_frontend(&fam.frontend(proto))?;
    let [client, vip, backend, _] = fam.sockets();
    let request = PacketSpec::new(client, vip, l4);
    let out = dp.run_counted(
        Hook::FromPod,
        &request.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(&out.data, &PacketSpec::new(client, backend, l4).build()?)
}

/// Another pod of the same Service, and the same pod seen from the network: no hairpin.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn only_a_pod_that_is_its_own_backend_is_hairpinned(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("only_a_pod_that_is_its_own_backend_is_hairpinned", HAIRPIN)? else {
        return Ok(());
    };
    dp.install_frontend(&fam.frontend(IPPROTO_TCP))?;
    let [client, vip, backend, _] = fam.sockets();
    let other = SocketAddr::new(
        match fam {
            Fam::V4 => "198.18.1.3",
            Fam::V6 => "fd00:18:0:1::3",
        }
        .parse()?,
        40000,
    );
    let out = dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(other, vip, L4::SYN).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(
        &out.data,
        &PacketSpec::new(other, backend, L4::SYN).build()?,
    )?;
    let out = dp.run_counted(
        Hook::FromNet,
        &PacketSpec::new(client, vip, L4::SYN).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(
        &out.data,
        &PacketSpec::new(client, backend, L4::SYN).build()?,
    )
}

/// A packet to the hairpin address of no hairpin flow: passed untouched.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn stray_packet_to_the_hairpin_address_passes(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(dp) = load("stray_packet_to_the_hairpin_address_passes", HAIRPIN)? else {
        return Ok(());
    };
    let [_, _, backend, seen_as] = fam.sockets();
    let packet = PacketSpec::new(backend, seen_as, L4::Udp).build()?;
    let out = dp.run_counted(Hook::FromPod, &packet, VERDICT_PASS, Reason::PassNotService)?;
    same_bytes(&out.data, &packet)
}

/// The wire port of the forward entry client -> `vip` with a rewritten port.
fn wire_port(dp: &Dataplane, vip: SocketAddr) -> anyhow::Result<u16> {
    let port_be = vip.port().to_be();
    for record in dp.conntrack()? {
        let (dir, dport_be, entry) = match record {
            CtRecord::V4 { key, entry, .. } => (key.dir, key.dport_be, entry),
            CtRecord::V6 { key, entry, .. } => (key.dir, key.dport_be, entry),
        };
        if dir == CT_DIR_SERVICE && dport_be == port_be && entry.flags & CT_FLAG_PORT_NAT != 0 {
            return Ok(u16::from_be(entry.nat_port_be));
        }
    }
    bail!("no forward entry with a rewritten port to {vip}")
}

/// The pod reaches itself through two frontends from one port: the second hairpin flow's
/// reply tuple (pod:8080 -> pod:40000) is taken, so it goes out from another port (and
/// the hairpin address); its reply comes back from the second frontend to the pod's own
/// port.
#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN)]
#[case::v6_udp(Fam::V6, L4::Udp)]
fn second_frontend_hairpin_gets_another_port(
    #[case] fam: Fam,
    #[case] l4: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("second_frontend_hairpin_gets_another_port", HAIRPIN)? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    let (first, answer, _) = packets(l4);
    dp.install_frontend(&fam.frontend(proto))?;
    dp.install_frontend(
        &Frontend::new(fam.vip(), 81, proto, SERVICE_ID + 1).backend(
            BACKEND_ID,
            &fam.pod().to_string(),
            8080,
        ),
    )?;
    let [client, vip, backend, seen_as] = fam.sockets();
    let vip2 = SocketAddr::new(vip.ip(), 81);

    let out = dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(client, vip, first).build()?,
        REDIRECT,
        Reason::HairpinNewFlow,
    )?;
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(seen_as, backend, first))?,
    )?;
    let out = dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(client, vip2, first).build()?,
        REDIRECT,
        Reason::HairpinNewFlow,
    )?;
    let wire = wire_port(&dp, vip2)?;
    ensure!(wire != client.port(), "the second flow kept port {wire}");
    let seen_as_2 = SocketAddr::new(seen_as.ip(), wire);
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(seen_as_2, backend, first))?,
    )?;

    let out = dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(backend, seen_as_2, answer).build()?,
        REDIRECT,
        Reason::HairpinReply,
    )?;
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(vip2, client, answer))?,
    )?;
    let out = dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(backend, seen_as, answer).build()?,
        REDIRECT,
        Reason::HairpinReply,
    )?;
    same_bytes(
        &out.data,
        &turned_around(&PacketSpec::new(vip, client, answer))?,
    )
}
