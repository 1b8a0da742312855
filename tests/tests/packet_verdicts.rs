//! BPF_PROG_TEST_RUN fixtures for refusals (kube-proxy's reject rules): a new flow to a
//! frontend with no endpoint, or to a ClusterIP on a port its Service does not define, is
//! rewritten into its answer (TCP reset, ICMP / ICMPv6 port unreachable) and redirected
//! back (`TC_ACT_REDIRECT`); an unowned address of a service CIDR is dropped; a node
//! address never is. Every byte and checksum of the answer is built here, independently
//! (etherparse headers, this crate's checksum code). Needs root.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure};
use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader};
use rstest::rstest;
use service_lb_common::{
    proto::{
        ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VERDICT_DROP,
        VERDICT_PASS,
    },
    Hook, Reason,
};
use service_lb_tests::{
    packet::{
        checksum::{checksum, l4_checksum},
        Dataplane, Frontend, PacketSpec, L4,
    },
    privileges::require_root,
};

/// `TC_ACT_REDIRECT`: what `bpf_redirect` makes the program return.
const REDIRECT: i32 = 7;
const SERVICE_ID: u32 = 9;
/// Sequence number and (with ACK) acknowledgment number of the builder's TCP segments.
const BUILDER_SEQ: u32 = 0x0102_0304;
const BUILDER_ACK: u32 = 0x0a0b_0c0d;

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn client(self) -> SocketAddr {
        match self {
            Fam::V4 => "198.18.1.2:40000",
            Fam::V6 => "[fd00:18:0:1::2]:40000",
        }
        .parse()
        .expect("client")
    }

    fn vip(self) -> IpAddr {
        match self {
            Fam::V4 => "198.19.0.10",
            Fam::V6 => "fd00:19::a",
        }
        .parse()
        .expect("vip")
    }

    /// An address of the service CIDR that no Service owns.
    fn unowned(self) -> IpAddr {
        match self {
            Fam::V4 => "198.19.0.99",
            Fam::V6 => "fd00:19::99",
        }
        .parse()
        .expect("unowned")
    }

    /// A node address (outside the service CIDR).
    fn node(self) -> IpAddr {
        match self {
            Fam::V4 => "198.19.255.1",
            Fam::V6 => "fd00:ff::1",
        }
        .parse()
        .expect("node")
    }

    fn cidr(self) -> (IpAddr, u32) {
        match self {
            Fam::V4 => ("198.19.0.0".parse().expect("cidr"), 17),
            Fam::V6 => ("fd00:19::".parse().expect("cidr"), 108),
        }
    }
}

fn load(test: &str) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    Ok(Some(Dataplane::load()?))
}

/// A frontend `vip:80` of `proto` with no backend, its address in the VIP map.
fn no_endpoint(dp: &mut Dataplane, fam: Fam, proto: u8) -> anyhow::Result<()> {
    let vip = fam.vip().to_string();
    dp.install_frontend(&Frontend::new(&vip, 80, proto, SERVICE_ID))?;
    dp.install_vip(fam.vip(), 1)
}

/// A frontend `vip:80` of `proto` with one backend, its address in the VIP map.
fn with_endpoint(dp: &mut Dataplane, fam: Fam, proto: u8) -> anyhow::Result<()> {
    let vip = fam.vip().to_string();
    let backend = match fam {
        Fam::V4 => "198.18.2.10",
        Fam::V6 => "fd00:18:0:2::a",
    };
    dp.install_frontend(&Frontend::new(&vip, 80, proto, SERVICE_ID).backend(100, backend, 8080))?;
    dp.install_vip(fam.vip(), 1)
}

/// Runs `packet` and checks the verdict, the output and that exactly one counter moved,
/// by the output's length (what the program counts: the answer).
fn run_expect(
    dp: &Dataplane,
    hook: Hook,
    packet: &[u8],
    verdict: i32,
    reason: Reason,
    expected: Option<&[u8]>,
) -> anyhow::Result<()> {
    let before = dp.counters()?;
    let out = dp.run(hook, packet)?;
    ensure!(
        out.verdict == verdict,
        "{}: verdict {}, expected {verdict} ({})",
        hook.name(),
        out.verdict,
        reason.name()
    );
    let expected = expected.unwrap_or(packet);
    same_bytes(&out.data, expected)?;
    let counted = if verdict == VERDICT_DROP {
        packet.len()
    } else {
        out.data.len()
    };
    dp.expect_counted(&before, hook, reason, counted)
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
    bail!(
        "output differs at byte {first} (len {} vs {})\n  actual:   {actual:02x?}\n  expected: {expected:02x?}",
        actual.len(),
        expected.len()
    )
}

/// The answer's Ethernet header: the request's addresses swapped.
fn answer_eth(request: &[u8]) -> Vec<u8> {
    let mut eth = request[6..12].to_vec();
    eth.extend_from_slice(&request[..6]);
    eth.extend_from_slice(&request[12..14]);
    eth
}

/// The answer's IP header from `src` to `dst` carrying `payload_len` bytes of `proto`:
/// IPv4 id 0, TTL 64, DF and TOS as given; IPv6 class 0, flow 0, hop limit 64.
fn answer_ip(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload_len: usize,
    tos: u8,
    df: bool,
) -> anyhow::Result<Vec<u8>> {
    Ok(match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4Header::new(
                u16::try_from(payload_len)?,
                64,
                IpNumber(proto),
                s.octets(),
                d.octets(),
            )?;
            ip.identification = 0;
            ip.dont_fragment = df;
            ip.dscp = etherparse::Ipv4Dscp::try_new(tos >> 2)?;
            ip.header_checksum = 0;
            let mut bytes = ip.to_bytes().to_vec();
            let csum = checksum(&bytes);
            bytes[10..12].copy_from_slice(&csum.to_be_bytes());
            bytes
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: u16::try_from(payload_len)?,
            next_header: IpNumber(proto),
            hop_limit: 64,
            source: s.octets(),
            destination: d.octets(),
        }
        .to_bytes()
        .to_vec(),
        _ => bail!("mixed families"),
    })
}

/// The reset answering `request` (a TCP segment from `client` to `server`), per RFC 793
/// and the kernel's `nf_send_reset`: `seq`, `ack` and flags as given, window 0.
fn expected_reset(
    request: &[u8],
    client: SocketAddr,
    server: SocketAddr,
    seq: u32,
    ack: Option<u32>,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpHeader::new(server.port(), client.port(), seq, 0);
    tcp.rst = true;
    if let Some(ack) = ack {
        tcp.ack = true;
        tcp.acknowledgment_number = ack;
    }
    tcp.checksum = 0;
    let mut segment = tcp.to_bytes().to_vec();
    ensure!(segment.len() == 20, "no TCP options");
    let csum = l4_checksum(server.ip(), client.ip(), IPPROTO_TCP, &segment);
    segment[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut frame = answer_eth(request);
    frame.extend(answer_ip(
        server.ip(),
        client.ip(),
        IPPROTO_TCP,
        segment.len(),
        0,
        true,
    )?);
    frame.extend(segment);
    Ok(frame)
}

/// The ICMP (type 3 code 3) or ICMPv6 (type 1 code 4) port unreachable answering
/// `request` (a UDP datagram to `server`): the request's IP header and the 8 bytes after
/// it quoted (RFC 792 / RFC 4443), from `server` to the client.
fn expected_unreachable(request: &[u8], server: IpAddr) -> anyhow::Result<Vec<u8>> {
    let (client, ip_hlen): (IpAddr, usize) = match server {
        IpAddr::V4(_) => {
            let a: [u8; 4] = request[ETH_HLEN + 12..ETH_HLEN + 16].try_into()?;
            (a.into(), 20)
        }
        IpAddr::V6(_) => {
            let a: [u8; 16] = request[ETH_HLEN + 8..ETH_HLEN + 24].try_into()?;
            (a.into(), 40)
        }
    };
    let quote = &request[ETH_HLEN..ETH_HLEN + ip_hlen + 8];
    let (kind, code, proto) = match server {
        IpAddr::V4(_) => (3, 3, IPPROTO_ICMP),
        IpAddr::V6(_) => (1, 4, IPPROTO_ICMPV6),
    };
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let csum = match server {
        IpAddr::V4(_) => checksum(&icmp),
        IpAddr::V6(_) => l4_checksum(server, client, proto, &icmp),
    };
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut frame = answer_eth(request);
    frame.extend(answer_ip(server, client, proto, icmp.len(), 0xc0, false)?);
    frame.extend(icmp);
    Ok(frame)
}

fn payload_len(spec: &PacketSpec) -> u32 {
    u32::try_from(spec.payload.len()).expect("small payload")
}

// ---------------------------------------------------------------------------------------
// No endpoint.

#[rstest]
fn syn_to_a_frontend_without_endpoints_gets_a_reset(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(Hook::FromPod, Hook::FromNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("syn_to_a_frontend_without_endpoints_gets_a_reset")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let server = SocketAddr::new(fam.vip(), 80);
    let spec = PacketSpec::new(fam.client(), server, L4::SYN);
    let request = spec.build()?;
    // SYN counts one, plus the payload (the builder's segments carry one).
    let ack = BUILDER_SEQ + 1 + payload_len(&spec);
    let expected = expected_reset(&request, fam.client(), server, 0, Some(ack))?;
    run_expect(
        &dp,
        hook,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )?;
    ensure!(dp.conntrack()?.is_empty(), "a refused flow is not tracked");
    Ok(())
}

#[rstest]
fn segments_with_ack_or_fin_get_the_rfc_793_reset(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("segments_with_ack_or_fin_get_the_rfc_793_reset")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let server = SocketAddr::new(fam.vip(), 80);
    // With ACK: seq = its ack, RST alone.
    let spec = PacketSpec::new(fam.client(), server, L4::ACK);
    let request = spec.build()?;
    let expected = expected_reset(&request, fam.client(), server, BUILDER_ACK, None)?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )?;
    // FIN without ACK: ack = seq + payload + 1 (the FIN).
    let spec = PacketSpec::new(fam.client(), server, L4::Tcp(0x01));
    let request = spec.build()?;
    let ack = BUILDER_SEQ + payload_len(&spec) + 1;
    let expected = expected_reset(&request, fam.client(), server, 0, Some(ack))?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )
}

#[rstest]
fn a_reset_is_never_answered(#[values(Fam::V4, Fam::V6)] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("a_reset_is_never_answered")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.vip(), 80), L4::RST).build()?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        VERDICT_DROP,
        Reason::DropRefusedNoAnswer,
        None,
    )
}

#[rstest]
fn udp_to_a_frontend_without_endpoints_gets_port_unreachable(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(Hook::FromPod, Hook::FromNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("udp_to_a_frontend_without_endpoints_gets_port_unreachable")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_UDP)?;
    let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.vip(), 80), L4::Udp).build()?;
    let expected = expected_unreachable(&request, fam.vip())?;
    run_expect(
        &dp,
        hook,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )
}

#[test]
fn a_long_datagram_is_quoted_only_up_to_its_udp_header() -> anyhow::Result<()> {
    let Some(mut dp) = load("a_long_datagram_is_quoted_only_up_to_its_udp_header")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, Fam::V4, IPPROTO_UDP)?;
    let mut spec = PacketSpec::new(
        Fam::V4.client(),
        SocketAddr::new(Fam::V4.vip(), 80),
        L4::Udp,
    );
    spec.payload = vec![0x5a; 1200];
    let request = spec.build()?;
    let expected = expected_unreachable(&request, Fam::V4.vip())?;
    ensure!(expected.len() == 14 + 20 + 8 + 28);
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )
}

/// Answers are longer or shorter than their requests by even and odd counts, or exactly as
/// long: the program grows or shrinks the skb each way (and on a CHECKSUM_COMPLETE skb must
/// keep `skb->csum` right through every one of them; `SLB_TEST_CHECKSUM_COMPLETE=1`).
#[rstest]
fn answers_of_every_length_difference(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(0, 1, 2, 3, 28, 29, 300, 301)] payload: usize,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("answers_of_every_length_difference")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    no_endpoint(&mut dp, fam, IPPROTO_UDP)?;
    let server = SocketAddr::new(fam.vip(), 80);
    let mut spec = PacketSpec::new(fam.client(), server, L4::SYN);
    spec.payload = vec![0xa5; payload];
    let request = spec.build()?;
    let ack = BUILDER_SEQ + 1 + payload_len(&spec);
    let expected = expected_reset(&request, fam.client(), server, 0, Some(ack))?;
    run_expect(
        &dp,
        Hook::FromNet,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )?;
    let mut spec = PacketSpec::new(fam.client(), server, L4::Udp);
    spec.payload = vec![0x3c; payload];
    let request = spec.build()?;
    let expected = expected_unreachable(&request, fam.vip())?;
    run_expect(
        &dp,
        Hook::FromNet,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )
}

/// A minimum-size Ethernet frame carries padding after the IP packet (a NIC hands it up
/// as is): the answer is built from the IP packet and the padding goes.
#[rstest]
fn a_padded_frame_gets_an_unpadded_answer(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(1, 6, 7)] padding: usize,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("a_padded_frame_gets_an_unpadded_answer")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let server = SocketAddr::new(fam.vip(), 80);
    let mut spec = PacketSpec::new(fam.client(), server, L4::SYN);
    spec.payload = Vec::new();
    let mut request = spec.build()?;
    let expected = expected_reset(&request, fam.client(), server, 0, Some(BUILDER_SEQ + 1))?;
    request.extend(std::iter::repeat_n(0xee, padding));
    run_expect(
        &dp,
        Hook::FromNet,
        &request,
        REDIRECT,
        Reason::RejectNoEndpoint,
        Some(&expected),
    )
}

#[test]
fn udp_with_ipv4_options_is_dropped_without_answer() -> anyhow::Result<()> {
    let Some(mut dp) = load("udp_with_ipv4_options_is_dropped_without_answer")? else {
        return Ok(());
    };
    no_endpoint(&mut dp, Fam::V4, IPPROTO_UDP)?;
    let request = PacketSpec::new(
        Fam::V4.client(),
        SocketAddr::new(Fam::V4.vip(), 80),
        L4::Udp,
    )
    .with_ipv4_options(&[1, 1, 1, 0])
    .build()?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        VERDICT_DROP,
        Reason::DropRefusedNoAnswer,
        None,
    )
}

// ---------------------------------------------------------------------------------------
// A ClusterIP on a port its Service does not define.

#[rstest]
fn tcp_to_an_undefined_port_of_a_cluster_ip_gets_a_reset(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("tcp_to_an_undefined_port_of_a_cluster_ip_gets_a_reset")? else {
        return Ok(());
    };
    with_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let server = SocketAddr::new(fam.vip(), 81);
    let spec = PacketSpec::new(fam.client(), server, L4::SYN);
    let request = spec.build()?;
    let ack = BUILDER_SEQ + 1 + payload_len(&spec);
    let expected = expected_reset(&request, fam.client(), server, 0, Some(ack))?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        REDIRECT,
        Reason::RejectNoPort,
        Some(&expected),
    )?;
    // UDP to the TCP-only port 80: also undefined.
    let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.vip(), 80), L4::Udp).build()?;
    let expected = expected_unreachable(&request, fam.vip())?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        REDIRECT,
        Reason::RejectNoPort,
        Some(&expected),
    )?;
    ensure!(dp.conntrack()?.is_empty(), "a refused flow is not tracked");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Service CIDRs and node addresses.

#[rstest]
fn unowned_service_cidr_addresses_are_dropped_node_addresses_pass(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(L4::SYN, L4::Udp)] l4: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("unowned_service_cidr_addresses_are_dropped_node_addresses_pass")?
    else {
        return Ok(());
    };
    with_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let (cidr, len) = fam.cidr();
    dp.install_service_cidr(cidr, len)?;
    let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.unowned(), 80), l4).build()?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        VERDICT_DROP,
        Reason::DropServiceCidr,
        None,
    )?;
    run_expect(
        &dp,
        Hook::FromNet,
        &request,
        VERDICT_DROP,
        Reason::DropServiceCidr,
        None,
    )?;
    // A node address, any port: never refused, never dropped.
    let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.node(), 22), l4).build()?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        VERDICT_PASS,
        Reason::PassNotService,
        None,
    )?;
    // The ClusterIP's own port still load-balances (the VIP map is only asked on a miss).
    if l4 == L4::SYN {
        let request = PacketSpec::new(fam.client(), SocketAddr::new(fam.vip(), 80), l4).build()?;
        let out = dp.run(Hook::FromPod, &request)?;
        ensure!(out.verdict == VERDICT_PASS, "DNAT verdict {}", out.verdict);
    }
    Ok(())
}

#[rstest]
fn without_service_cidrs_an_unknown_address_passes(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("without_service_cidrs_an_unknown_address_passes")? else {
        return Ok(());
    };
    with_endpoint(&mut dp, fam, IPPROTO_TCP)?;
    let request =
        PacketSpec::new(fam.client(), SocketAddr::new(fam.unowned(), 80), L4::SYN).build()?;
    run_expect(
        &dp,
        Hook::FromPod,
        &request,
        VERDICT_PASS,
        Reason::PassNotService,
        None,
    )
}
