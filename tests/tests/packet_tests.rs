//! BPF_PROG_TEST_RUN fixtures for the four tc programs: for each case the verdict, the
//! whole output packet (built independently, own checksums), the one counter that moved
//! and the conntrack entries. Needs root (BPF); skipped without it unless CI=true.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Context as _};
use rstest::rstest;
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_CLOSING, CT_FLAG_DIRECT,
        CT_FLAG_FIN_BACKEND, CT_FLAG_FIN_CLIENT, CT_FLAG_NORTH_SOUTH, CT_FLAG_PORT_NAT,
        CT_FLAG_RST, CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
        CT_STATE_HALF_CLOSED, CT_STATE_NEW,
    },
    maps,
    proto::{IPPROTO_TCP, IPPROTO_UDP, VERDICT_DROP, VERDICT_PASS},
    service::{SCOPE_INTERNAL, SVC_FLAG_TWO_SCOPES},
    CtEntry, DataplaneConfig, Hook, Reason,
};
use service_lb_tests::{
    packet::{
        builder::{self, arp, broken},
        clock::boot_ns,
        ct_record, CtRecord, Dataplane, Frontend, Ipv6Ext, PacketSpec, L4,
    },
    privileges::require_root,
};

/// Distinct lifetimes, so each check tells which one the program applied.
const CONFIG: DataplaneConfig = DataplaneConfig {
    ct_tcp_syn_s: 31,
    ct_tcp_established_s: 3_601,
    ct_tcp_closing_s: 7,
    ct_other_s: 45,
    ct_tcp_half_closed_s: 1_801,
};

const SERVICE_ID: u32 = 7;

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
        .expect("client address")
    }

    fn vip(self) -> &'static str {
        match self {
            Fam::V4 => "198.19.0.10",
            Fam::V6 => "fd00:19::a",
        }
    }

    fn vip_socket(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.vip().parse().expect("vip"), port)
    }

    /// Backend number `i` (pod address on node 2).
    fn backend_addr(self, i: u32) -> String {
        match self {
            Fam::V4 => format!("198.18.2.{}", 10 + i),
            Fam::V6 => format!("fd00:18:0:2::{:x}", 10 + i),
        }
    }

    /// A frontend on port 80 with `n` backends (ids 100.., port 8080).
    fn frontend(self, proto: u8, n: u32) -> Frontend {
        (0..n).fold(Frontend::new(self.vip(), 80, proto, SERVICE_ID), |f, i| {
            f.backend(100 + i, &self.backend_addr(i), 8080)
        })
    }
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp(_) => IPPROTO_TCP,
        _ => IPPROTO_UDP,
    }
}

fn load(test: &str) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    Ok(Some(Dataplane::load_with(CONFIG)?))
}

/// Fails unless `actual` equals `expected` byte for byte (with a readable diff).
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

/// An expected conntrack entry: the record (expiry ignored) and its lifetime in seconds.
struct ExpectCt {
    record: CtRecord,
    lifetime_s: u32,
}

fn entry(backend_id: u32, flags: u16, state: u8) -> CtEntry {
    CtEntry {
        expires_ns: 0,
        backend_id,
        service_id: SERVICE_ID,
        flags,
        state,
        ..CtEntry::default()
    }
}

/// The two entries of a flow client -> vip translated to backend.
fn flow_entries(
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    proto: u8,
    e: CtEntry,
    lifetime_s: u32,
) -> anyhow::Result<Vec<ExpectCt>> {
    Ok(vec![
        ExpectCt {
            record: ct_record(client, vip, proto, CT_DIR_SERVICE, e)?,
            lifetime_s,
        },
        ExpectCt {
            record: ct_record(backend, client, proto, CT_DIR_REPLY, e)?,
            lifetime_s,
        },
    ])
}

/// Fails unless the conntrack maps hold exactly `expected`, each expiry being
/// `lifetime_s` after a moment between `t0` and `t1`.
fn expect_conntrack(dp: &Dataplane, expected: &[ExpectCt], t0: u64, t1: u64) -> anyhow::Result<()> {
    let windows: Vec<_> = expected.iter().map(|e| (e, t0, t1)).collect();
    expect_conntrack_windows(dp, &windows)
}

/// Like `expect_conntrack`, with a time window per entry.
fn expect_conntrack_windows(
    dp: &Dataplane,
    expected: &[(&ExpectCt, u64, u64)],
) -> anyhow::Result<()> {
    let actual = dp.conntrack()?;
    ensure!(
        actual.len() == expected.len(),
        "conntrack has {} entries, expected {}: {actual:#?}",
        actual.len(),
        expected.len()
    );
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
    for (want, t0, t1) in expected {
        let found = actual
            .iter()
            .find(|a| strip(a) == strip(&want.record))
            .with_context(|| {
                format!(
                    "missing conntrack entry {:?}\nhave: {actual:#?}",
                    want.record
                )
            })?;
        let life = u64::from(want.lifetime_s) * 1_000_000_000;
        let expires = found.entry().expires_ns;
        ensure!(
            (t0 + life..=t1 + life).contains(&expires),
            "entry {:?}: expires {expires}, expected {life} ns after [{t0}, {t1}]",
            want.record
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// New flows: DNAT to the only backend, both conntrack entries, dnat_new_flow.

#[rstest]
#[case::v4_tcp_syn(Fam::V4, PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::SYN))]
#[case::v4_udp(Fam::V4, PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::Udp))]
#[case::v4_udp_zero_checksum_stays_zero(Fam::V4, PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::UdpNoChecksum))]
#[case::v4_tcp_with_ip_options(Fam::V4, PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::SYN).with_ipv4_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0]))]
#[case::v6_tcp_syn(Fam::V6, PacketSpec::new(Fam::V6.client(), Fam::V6.vip_socket(80), L4::SYN))]
#[case::v6_udp(Fam::V6, PacketSpec::new(Fam::V6.client(), Fam::V6.vip_socket(80), L4::Udp))]
#[case::v6_tcp_with_ext_headers(Fam::V6, PacketSpec::new(Fam::V6.client(), Fam::V6.vip_socket(80), L4::SYN).with_ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts, Ipv6Ext::Routing]))]
#[case::v6_udp_with_ext_headers(Fam::V6, PacketSpec::new(Fam::V6.client(), Fam::V6.vip_socket(80), L4::Udp).with_ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts, Ipv6Ext::Routing, Ipv6Ext::DestOpts]))]
fn new_flow_is_dnated(
    #[case] fam: Fam,
    #[case] input: PacketSpec,
    #[values(Hook::FromPod, Hook::FromNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("new_flow_is_dnated")? else {
        return Ok(());
    };
    let proto = proto_of(input.l4);
    let frontend = fam.frontend(proto, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);

    let packet = input.build()?;
    let t0 = boot_ns()?;
    let out = dp.run_counted(hook, &packet, VERDICT_PASS, Reason::DnatNewFlow)?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &input.clone().with_dst(backend).build()?)?;

    let flags = if hook == Hook::FromNet {
        CT_FLAG_NORTH_SOUTH
    } else {
        0
    };
    let lifetime = if proto == IPPROTO_TCP {
        CONFIG.ct_tcp_syn_s
    } else {
        CONFIG.ct_other_s
    };
    let expected = flow_entries(
        input.src,
        input.dst,
        backend,
        proto,
        entry(100, flags, CT_STATE_NEW),
        lifetime,
    )?;
    expect_conntrack(&dp, &expected, t0, t1)
}

// ---------------------------------------------------------------------------------------
// Replies: source rewritten back to the frontend, both entries learn SEEN_REPLY.

#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp)]
#[case::v4_udp_zero_checksum(Fam::V4, L4::UdpNoChecksum, L4::UdpNoChecksum)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp)]
fn reply_is_reverse_nated(
    #[case] fam: Fam,
    #[case] request: L4,
    #[case] response: L4,
    #[values(Hook::ToPod, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("reply_is_reverse_nated")? else {
        return Ok(());
    };
    let proto = proto_of(request);
    let frontend = fam.frontend(proto, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let vip = fam.vip_socket(80);

    let first = PacketSpec::new(fam.client(), vip, request);
    dp.run_counted(
        Hook::FromPod,
        &first.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;

    let reply = PacketSpec::new(backend, fam.client(), response);
    let t0 = boot_ns()?;
    let out = dp.run_counted(hook, &reply.build()?, VERDICT_PASS, Reason::RevNatReply)?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &reply.clone().with_src(vip).build()?)?;

    let lifetime = if proto == IPPROTO_TCP {
        CONFIG.ct_tcp_established_s
    } else {
        CONFIG.ct_other_s
    };
    let established = entry(100, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED);
    expect_conntrack(
        &dp,
        &flow_entries(fam.client(), vip, backend, proto, established, lifetime)?,
        t0,
        t1,
    )
}

// ---------------------------------------------------------------------------------------
// Not ours: passed untouched, counted, no conntrack.

fn v4_to_vip(l4: L4) -> PacketSpec {
    PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), l4)
}

fn v6_to_vip(l4: L4) -> PacketSpec {
    PacketSpec::new(Fam::V6.client(), Fam::V6.vip_socket(80), l4)
}

fn bytes(spec: PacketSpec) -> Vec<u8> {
    spec.build().expect("test packet builds")
}

#[rstest]
#[case::v4_not_a_frontend(bytes(v4_to_vip(L4::SYN).with_dst(Fam::V4.vip_socket(81))), Reason::PassNotService)]
#[case::v6_not_a_frontend(bytes(v6_to_vip(L4::Udp).with_dst(Fam::V6.vip_socket(81))), Reason::PassNotService)]
#[case::v4_icmp(bytes(v4_to_vip(L4::IcmpEcho)), Reason::PassOtherProto)]
#[case::v6_icmp(bytes(v6_to_vip(L4::IcmpEcho)), Reason::PassOtherProto)]
#[case::arp(arp(), Reason::PassNotIp)]
#[case::v4_tcp_fragment(bytes(v4_to_vip(L4::SYN).with_ipv4_more_fragments()), Reason::PassFragment)]
#[case::v6_tcp_fragment(bytes(v6_to_vip(L4::SYN).with_ipv6_ext(&[Ipv6Ext::Fragment])), Reason::PassFragment)]
#[case::v6_fragment_after_ext(bytes(v6_to_vip(L4::SYN).with_ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::Fragment])), Reason::PassFragment)]
#[case::v6_too_many_ext_headers(bytes(v6_to_vip(L4::SYN).with_ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts, Ipv6Ext::Routing, Ipv6Ext::DestOpts, Ipv6Ext::DestOpts])), Reason::PassOtherProto)]
fn passes_untouched(
    #[case] packet: Vec<u8>,
    #[case] reason: Reason,
    #[values(Hook::FromPod, Hook::ToPod, Hook::FromNet, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("passes_untouched")? else {
        return Ok(());
    };
    for fam in [Fam::V4, Fam::V6] {
        dp.install_frontend(&fam.frontend(IPPROTO_TCP, 1))?;
        dp.install_frontend(&Frontend {
            service_id: SERVICE_ID + 1,
            ..fam.frontend(IPPROTO_UDP, 1)
        })?;
    }
    let out = dp.run_counted(hook, &packet, VERDICT_PASS, reason)?;
    same_bytes(&out.data, &packet)?;
    expect_conntrack(&dp, &[], 0, 0)
}

/// A TCP segment without SYN to a frontend with endpoints, of no flow conntrack knows (a
/// connection kube-proxy's rules translated before service-lb started): not a new flow.
/// It goes to the kernel untouched (whose conntrack keeps its backend), nothing is
/// tracked, and a SYN from the same port afterwards is a new flow as usual.
#[rstest]
fn mid_flow_segment_to_a_frontend_passes_untouched(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(L4::ACK, L4::FIN_ACK, L4::RST)] l4: L4,
    #[values(Hook::FromPod, Hook::FromNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("mid_flow_segment_to_a_frontend_passes_untouched")? else {
        return Ok(());
    };
    let frontend = fam.frontend(IPPROTO_TCP, 2);
    dp.install_frontend(&frontend)?;
    let packet = PacketSpec::new(fam.client(), fam.vip_socket(80), l4).build()?;
    let out = dp.run_counted(hook, &packet, VERDICT_PASS, Reason::PassMidFlow)?;
    same_bytes(&out.data, &packet)?;
    expect_conntrack(&dp, &[], 0, 0)?;

    let syn = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::SYN);
    let out = dp.run_counted(hook, &syn.build()?, VERDICT_PASS, Reason::DnatNewFlow)?;
    let backends: Vec<Vec<u8>> = frontend
        .backends
        .iter()
        .map(|b| syn.clone().with_dst(SocketAddr::new(b.addr, 8080)).build())
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        backends.contains(&out.data),
        "the SYN after a mid-flow segment went to no backend of the frontend"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Malformed: dropped and counted, never translated.

fn v4_syn() -> Vec<u8> {
    bytes(v4_to_vip(L4::SYN))
}

fn v6_syn() -> Vec<u8> {
    bytes(v6_to_vip(L4::SYN))
}

// A frame whose IPv4/IPv6 header itself is cut short cannot be fed to BPF_PROG_TEST_RUN:
// the kernel refuses it (EINVAL) before the program runs, so the program's check for it
// (a failed header load -> drop_malformed) is only reachable on a live interface.
// `v4_header_longer_than_packet` is the nearest case the kernel accepts: an IHL that
// claims more header than the frame holds.
#[rstest]
#[case::v4_header_longer_than_packet(broken::truncated(&broken::ipv4_ihl(&v4_syn(), 15), 14 + 58))]
#[case::v4_ihl_below_5(broken::ipv4_ihl(&v4_syn(), 4))]
#[case::v4_total_len_beyond_packet(broken::ipv4_total_len(&v4_syn(), 1500))]
#[case::v4_total_len_below_header(broken::ipv4_total_len(&v4_syn(), 16))]
#[case::v4_bad_version(broken::ip_version(&v4_syn(), 6))]
#[case::v4_truncated_tcp(broken::ip_payload_cut(&v4_syn(), 12))]
#[case::v4_truncated_udp(broken::ip_payload_cut(&bytes(v4_to_vip(L4::Udp)), 5))]
#[case::v4_tcp_cut_by_frame(broken::truncated(&v4_syn(), 14 + 20 + 10))]
#[case::v6_bad_version(broken::ip_version(&v6_syn(), 4))]
#[case::v6_truncated_tcp(broken::ip_payload_cut(&v6_syn(), 10))]
#[case::v6_truncated_udp(broken::ip_payload_cut(&bytes(v6_to_vip(L4::Udp)), 7))]
#[case::v6_payload_len_beyond_packet(broken::truncated(&v6_syn(), 14 + 40 + 20))]
fn malformed_is_dropped(
    #[case] packet: Vec<u8>,
    #[values(Hook::FromPod, Hook::ToPod, Hook::FromNet, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("malformed_is_dropped")? else {
        return Ok(());
    };
    dp.install_frontend(&Fam::V4.frontend(IPPROTO_TCP, 1))?;
    dp.install_frontend(&Fam::V6.frontend(IPPROTO_TCP, 1))?;
    dp.run_counted(hook, &packet, VERDICT_DROP, Reason::DropMalformed)?;
    expect_conntrack(&dp, &[], 0, 0)
}

// ---------------------------------------------------------------------------------------
// Frontend edge cases.

// A frontend without backends is refused (TCP reset / ICMP port unreachable), not
// dropped: see `packet_verdicts.rs`.

#[test]
fn master_naming_a_missing_slot_drops() -> anyhow::Result<()> {
    let Some(mut dp) = load("master_naming_a_missing_slot_drops")? else {
        return Ok(());
    };
    let frontend = Fam::V4.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&frontend)?;
    // Count 2 with only slot 1 written: half the choices hit the hole.
    dp.set_master(&frontend, 2)?;
    let (mut translated, mut dropped) = (0, 0);
    for sport in 20_000..20_064u16 {
        let packet = PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::SYN)
            .with_sport(sport)
            .build()?;
        let before = dp.counters()?;
        let out = dp.run(Hook::FromPod, &packet)?;
        if out.verdict == VERDICT_DROP {
            dp.expect_counted(
                &before,
                Hook::FromPod,
                Reason::DropSlotMissing,
                packet.len(),
            )?;
            dropped += 1;
        } else {
            dp.expect_counted(&before, Hook::FromPod, Reason::DnatNewFlow, packet.len())?;
            translated += 1;
        }
    }
    ensure!(
        dropped > 0 && translated > 0,
        "64 flows: {translated} translated, {dropped} dropped"
    );
    Ok(())
}

#[test]
fn two_scopes_send_pods_to_the_internal_backends() -> anyhow::Result<()> {
    let Some(mut dp) = load("two_scopes_send_pods_to_the_internal_backends")? else {
        return Ok(());
    };
    let external = Frontend {
        flags: SVC_FLAG_TWO_SCOPES,
        ..Fam::V4.frontend(IPPROTO_TCP, 1)
    };
    let internal = Frontend {
        scope: SCOPE_INTERNAL,
        backends: vec![],
        ..external.clone()
    }
    .backend(200, "198.18.3.20", 9090);
    dp.install_frontend(&internal)?;
    dp.install_frontend(&external)?;
    let input = PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::SYN);
    let out = dp.run_counted(
        Hook::FromPod,
        &input.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(
        &out.data,
        &input
            .clone()
            .with_dst("198.18.3.20:9090".parse()?)
            .build()?,
    )?;
    let from_outside = input.with_sport(40001);
    let out = dp.run_counted(
        Hook::FromNet,
        &from_outside.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(
        &out.data,
        &from_outside.with_dst("198.18.2.10:8080".parse()?).build()?,
    )
}

// ---------------------------------------------------------------------------------------
// Established flows.

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn established_flow_keeps_its_backend_when_the_set_changes(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("established_flow_keeps_its_backend")? else {
        return Ok(());
    };
    let old = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&old)?;
    let syn = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::SYN);
    dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;

    // The frontend now lists two other backends; backend 100 still exists (terminating).
    let new = Frontend {
        backends: vec![],
        ..old.clone()
    }
    .backend(101, &fam.backend_addr(1), 8080)
    .backend(102, &fam.backend_addr(2), 8080);
    dp.install_frontend(&new)?;

    let ack = syn.clone().with_l4(L4::ACK);
    let out = dp.run_counted(
        Hook::FromPod,
        &ack.build()?,
        VERDICT_PASS,
        Reason::DnatEstablished,
    )?;
    same_bytes(
        &out.data,
        &ack.clone()
            .with_dst(SocketAddr::new(old.backends[0].addr, 8080))
            .build()?,
    )?;

    // A new flow goes to one of the new backends.
    let other = syn.with_sport(40001);
    let out = dp.run_counted(
        Hook::FromPod,
        &other.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let candidates: Vec<Vec<u8>> = new
        .backends
        .iter()
        .map(|b| {
            other
                .clone()
                .with_dst(SocketAddr::new(b.addr, 8080))
                .build()
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        candidates.contains(&out.data),
        "new flow not sent to a new backend: {:02x?}",
        out.data
    );
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn tcp_flow_to_a_removed_backend_keeps_dropping(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("tcp_flow_to_a_removed_backend_keeps_dropping")? else {
        return Ok(());
    };
    let old = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&old)?;
    let syn = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::SYN);
    let s0 = boot_ns()?;
    dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let s1 = boot_ns()?;

    let replacement = Frontend {
        backends: vec![],
        ..old.clone()
    }
    .backend(101, &fam.backend_addr(1), 8080);
    dp.install_frontend(&replacement)?;
    dp.remove_backend(&old.backends[0])?;

    let ack = syn.with_l4(L4::ACK).build()?;
    let t0 = boot_ns()?;
    dp.run_counted(Hook::FromPod, &ack, VERDICT_DROP, Reason::DropBackendGone)?;
    let t1 = boot_ns()?;
    // Still dropped, even though the frontend has a live backend again.
    dp.run_counted(Hook::FromPod, &ack, VERDICT_DROP, Reason::DropBackendGone)?;

    // The forward entry is marked and kept for the closing lifetime; the reply entry is
    // as the SYN left it.
    let backend = SocketAddr::new(old.backends[0].addr, 8080);
    let vip = fam.vip_socket(80);
    let forward = ExpectCt {
        record: ct_record(
            fam.client(),
            vip,
            IPPROTO_TCP,
            CT_DIR_SERVICE,
            entry(100, CT_FLAG_BACKEND_GONE, CT_STATE_NEW),
        )?,
        lifetime_s: CONFIG.ct_tcp_closing_s,
    };
    let reply = ExpectCt {
        record: ct_record(
            backend,
            fam.client(),
            IPPROTO_TCP,
            CT_DIR_REPLY,
            entry(100, 0, CT_STATE_NEW),
        )?,
        lifetime_s: CONFIG.ct_tcp_syn_s,
    };
    expect_conntrack_windows(&dp, &[(&forward, t0, t1), (&reply, s0, s1)])
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn udp_flow_to_a_removed_backend_reselects(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("udp_flow_to_a_removed_backend_reselects")? else {
        return Ok(());
    };
    let old = fam.frontend(IPPROTO_UDP, 1);
    dp.install_frontend(&old)?;
    let datagram = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::Udp);
    let s0 = boot_ns()?;
    dp.run_counted(
        Hook::FromPod,
        &datagram.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let s1 = boot_ns()?;

    let replacement = Frontend {
        backends: vec![],
        ..old.clone()
    }
    .backend(101, &fam.backend_addr(1), 8080);
    dp.install_frontend(&replacement)?;
    dp.remove_backend(&old.backends[0])?;

    // The next datagram is re-balanced in place: DNAT to the live backend, both entries
    // written for it (the dead backend's reply entry is left to expire).
    let new_backend = SocketAddr::new(replacement.backends[0].addr, 8080);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromPod,
        &datagram.build()?,
        VERDICT_PASS,
        Reason::DnatReselect,
    )?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &datagram.clone().with_dst(new_backend).build()?)?;
    let old_backend = SocketAddr::new(old.backends[0].addr, 8080);
    let fresh = flow_entries(
        fam.client(),
        fam.vip_socket(80),
        new_backend,
        IPPROTO_UDP,
        entry(101, 0, CT_STATE_NEW),
        CONFIG.ct_other_s,
    )?;
    let stale = ExpectCt {
        record: ct_record(
            old_backend,
            fam.client(),
            IPPROTO_UDP,
            CT_DIR_REPLY,
            entry(100, 0, CT_STATE_NEW),
        )?,
        lifetime_s: CONFIG.ct_other_s,
    };
    let mut all: Vec<(&ExpectCt, u64, u64)> = fresh.iter().map(|e| (e, t0, t1)).collect();
    all.push((&stale, s0, s1));
    expect_conntrack_windows(&dp, &all)?;

    // And it stays there.
    let out = dp.run_counted(
        Hook::FromPod,
        &datagram.build()?,
        VERDICT_PASS,
        Reason::DnatEstablished,
    )?;
    same_bytes(&out.data, &datagram.clone().with_dst(new_backend).build()?)
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn expired_entry_is_not_reused(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("expired_entry_is_not_reused")? else {
        return Ok(());
    };
    let frontend = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&frontend)?;
    // A stale flow to backend 999 (still in the backends map), expired long ago.
    let stale = fam
        .frontend(IPPROTO_TCP, 0)
        .backend(999, &fam.backend_addr(9), 9999);
    dp.install_backend(&stale.backends[0], IPPROTO_TCP)?;
    let vip = fam.vip_socket(80);
    let old = CtEntry {
        expires_ns: 1,
        ..entry(999, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED)
    };
    dp.insert_ct(ct_record(
        fam.client(),
        vip,
        IPPROTO_TCP,
        CT_DIR_SERVICE,
        old,
    )?)?;

    let syn = PacketSpec::new(fam.client(), vip, L4::SYN);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let t1 = boot_ns()?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    same_bytes(&out.data, &syn.clone().with_dst(backend).build()?)?;
    let expected = flow_entries(
        fam.client(),
        vip,
        backend,
        IPPROTO_TCP,
        entry(100, 0, CT_STATE_NEW),
        CONFIG.ct_tcp_syn_s,
    )?;
    expect_conntrack(&dp, &expected, t0, t1)
}

/// A TCP flow client -> vip translated to backend 100, with SYN and SYN-ACK seen.
fn established_tcp_flow(dp: &mut Dataplane, fam: Fam) -> anyhow::Result<(PacketSpec, PacketSpec)> {
    let frontend = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let syn = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::SYN);
    dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let syn_ack = PacketSpec::new(backend, fam.client(), L4::SYN_ACK);
    dp.run_counted(
        Hook::ToPod,
        &syn_ack.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    Ok((syn, syn_ack))
}

/// A FIN from the client half-closes the flow: both entries keep the half-closed lifetime
/// (the backend may still send), the backend's data keeps flowing; the backend's FIN
/// then closes it (short lifetime).
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn tcp_fin_from_one_side_half_closes_then_both_close(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("tcp_fin_from_one_side_half_closes_then_both_close")? else {
        return Ok(());
    };
    let (syn, syn_ack) = established_tcp_flow(&mut dp, fam)?;
    let (vip, backend) = (syn.dst, syn_ack.src);

    let fin = syn.with_l4(L4::FIN_ACK);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromPod,
        &fin.build()?,
        VERDICT_PASS,
        Reason::DnatEstablished,
    )?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &fin.clone().with_dst(backend).build()?)?;
    let half = entry(
        100,
        CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT,
        CT_STATE_HALF_CLOSED,
    );
    let entries = |e, life| flow_entries(fam.client(), vip, backend, IPPROTO_TCP, e, life);
    expect_conntrack(&dp, &entries(half, CONFIG.ct_tcp_half_closed_s)?, t0, t1)?;

    // The backend still sends: translated, the flow stays half-closed.
    let data = syn_ack.clone().with_l4(L4::ACK);
    let out = dp.run_counted(
        Hook::ToPod,
        &data.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    same_bytes(&out.data, &data.clone().with_src(vip).build()?)?;
    expect_conntrack(
        &dp,
        &entries(half, CONFIG.ct_tcp_half_closed_s)?,
        t0,
        boot_ns()?,
    )?;

    let backend_fin = syn_ack.with_l4(L4::FIN_ACK);
    let t2 = boot_ns()?;
    let out = dp.run_counted(
        Hook::ToPod,
        &backend_fin.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    let t3 = boot_ns()?;
    same_bytes(&out.data, &backend_fin.clone().with_src(vip).build()?)?;
    let closed = entry(
        100,
        CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND | CT_FLAG_CLOSING,
        CT_STATE_CLOSING,
    );
    expect_conntrack(&dp, &entries(closed, CONFIG.ct_tcp_closing_s)?, t2, t3)
}

/// A RST (from either side) closes the flow: short lifetime on both entries.
#[rstest]
#[case::v4_from_backend(Fam::V4, true)]
#[case::v4_from_client(Fam::V4, false)]
#[case::v6_from_backend(Fam::V6, true)]
#[case::v6_from_client(Fam::V6, false)]
fn tcp_rst_closes(#[case] fam: Fam, #[case] from_backend: bool) -> anyhow::Result<()> {
    let Some(mut dp) = load("tcp_rst_closes")? else {
        return Ok(());
    };
    let (syn, syn_ack) = established_tcp_flow(&mut dp, fam)?;
    let (vip, backend) = (syn.dst, syn_ack.src);
    let t0 = boot_ns()?;
    if from_backend {
        let rst = syn_ack.with_l4(L4::RST);
        let out = dp.run_counted(
            Hook::ToPod,
            &rst.build()?,
            VERDICT_PASS,
            Reason::RevNatReply,
        )?;
        same_bytes(&out.data, &rst.clone().with_src(vip).build()?)?;
    } else {
        let rst = syn.with_l4(L4::RST);
        let out = dp.run_counted(
            Hook::FromPod,
            &rst.build()?,
            VERDICT_PASS,
            Reason::DnatEstablished,
        )?;
        same_bytes(&out.data, &rst.clone().with_dst(backend).build()?)?;
    }
    let t1 = boot_ns()?;
    let closed = entry(
        100,
        CT_FLAG_SEEN_REPLY | CT_FLAG_RST | CT_FLAG_CLOSING,
        CT_STATE_CLOSING,
    );
    expect_conntrack(
        &dp,
        &flow_entries(
            fam.client(),
            vip,
            backend,
            IPPROTO_TCP,
            closed,
            CONFIG.ct_tcp_closing_s,
        )?,
        t0,
        t1,
    )
}

/// A SYN on a closed flow (the client reuses its port) starts a fresh flow: a new backend
/// choice, the old entries replaced by the new flow's two.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn syn_on_a_closed_flow_picks_afresh(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("syn_on_a_closed_flow_picks_afresh")? else {
        return Ok(());
    };
    let (syn, syn_ack) = established_tcp_flow(&mut dp, fam)?;
    dp.run_counted(
        Hook::ToPod,
        &syn_ack.with_l4(L4::RST).build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    // Backend 100 stays in the backends map, but the frontend now lists only 101.
    let now = Frontend {
        backends: vec![],
        ..fam.frontend(IPPROTO_TCP, 0)
    }
    .backend(101, &fam.backend_addr(1), 8080);
    dp.install_frontend(&now)?;
    let new_backend = SocketAddr::new(now.backends[0].addr, 8080);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &syn.clone().with_dst(new_backend).build()?)?;
    expect_conntrack(
        &dp,
        &flow_entries(
            fam.client(),
            syn.dst,
            new_backend,
            IPPROTO_TCP,
            entry(101, 0, CT_STATE_NEW),
            CONFIG.ct_tcp_syn_s,
        )?,
        t0,
        t1,
    )
}

/// A half-closed flow is not closed: a SYN on it is no new flow (it goes to the flow's
/// backend, as netfilter keeps a CLOSE_WAIT entry).
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn syn_on_a_half_closed_flow_keeps_its_backend(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("syn_on_a_half_closed_flow_keeps_its_backend")? else {
        return Ok(());
    };
    let (syn, syn_ack) = established_tcp_flow(&mut dp, fam)?;
    dp.run_counted(
        Hook::FromPod,
        &syn.clone().with_l4(L4::FIN_ACK).build()?,
        VERDICT_PASS,
        Reason::DnatEstablished,
    )?;
    let now = Frontend {
        backends: vec![],
        ..fam.frontend(IPPROTO_TCP, 0)
    }
    .backend(101, &fam.backend_addr(1), 8080);
    dp.install_frontend(&now)?;
    let out = dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatEstablished,
    )?;
    same_bytes(&out.data, &syn.clone().with_dst(syn_ack.src).build()?)
}

/// An expired entry is never refreshed back to life: a reply on it passes untouched and
/// leaves it as it was.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn expired_entry_is_not_resurrected_by_a_reply(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("expired_entry_is_not_resurrected_by_a_reply")? else {
        return Ok(());
    };
    let frontend = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let dead = CtEntry {
        expires_ns: 1,
        ..entry(100, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED)
    };
    let vip = fam.vip_socket(80);
    let records = [
        ct_record(fam.client(), vip, IPPROTO_TCP, CT_DIR_SERVICE, dead)?,
        ct_record(backend, fam.client(), IPPROTO_TCP, CT_DIR_REPLY, dead)?,
    ];
    for r in records {
        dp.insert_ct(r)?;
    }
    let reply = PacketSpec::new(backend, fam.client(), L4::ACK).build()?;
    let out = dp.run_counted(Hook::ToPod, &reply, VERDICT_PASS, Reason::PassNotService)?;
    same_bytes(&out.data, &reply)?;
    let mut now = dp.conntrack()?;
    now.sort_by_key(|r| format!("{r:?}"));
    let mut want = records.to_vec();
    want.sort_by_key(|r| format!("{r:?}"));
    ensure!(now == want, "conntrack changed: {now:#?}");
    Ok(())
}

/// LRU pressure: a reply entry gone while its flow lives is created again by the flow's
/// next written packet, counted `dnat_ct_reply_evicted`; a forward entry gone is created
/// again by the next reply, counted `revnat_ct_forward_evicted`, so the client's next
/// packet keeps its backend.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn evicted_entries_are_recreated_and_counted(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("evicted_entries_are_recreated_and_counted")? else {
        return Ok(());
    };
    // Two backends, so a flow that lost its forward entry would be re-balanced at random.
    let frontend = fam.frontend(IPPROTO_TCP, 2);
    dp.install_frontend(&frontend)?;
    let vip = fam.vip_socket(80);
    let syn = PacketSpec::new(fam.client(), vip, L4::SYN);
    let out = dp.run_counted(
        Hook::FromPod,
        &syn.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let chosen = frontend
        .backends
        .iter()
        .find(|b| {
            syn.clone()
                .with_dst(SocketAddr::new(b.addr, 8080))
                .build()
                .ok()
                == Some(out.data.clone())
        })
        .context("SYN sent to no backend")?;
    let backend = SocketAddr::new(chosen.addr, 8080);

    // Forward entry evicted; the SYN-ACK translates and re-creates it.
    dp.remove_ct(ct_record(
        fam.client(),
        vip,
        IPPROTO_TCP,
        CT_DIR_SERVICE,
        CtEntry::default(),
    )?)?;
    let syn_ack = PacketSpec::new(backend, fam.client(), L4::SYN_ACK);
    let t0 = boot_ns()?;
    let out = dp.run_counted(
        Hook::ToPod,
        &syn_ack.build()?,
        VERDICT_PASS,
        Reason::RevNatCtForwardEvicted,
    )?;
    let t1 = boot_ns()?;
    same_bytes(&out.data, &syn_ack.clone().with_src(vip).build()?)?;
    let est = entry(chosen.id, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED);
    expect_conntrack(
        &dp,
        &flow_entries(
            fam.client(),
            vip,
            backend,
            IPPROTO_TCP,
            est,
            CONFIG.ct_tcp_established_s,
        )?,
        t0,
        t1,
    )?;

    // Reply entry evicted; the client's FIN (a change worth writing) re-creates it.
    dp.remove_ct(ct_record(
        backend,
        fam.client(),
        IPPROTO_TCP,
        CT_DIR_REPLY,
        CtEntry::default(),
    )?)?;
    let fin = syn.with_l4(L4::FIN_ACK);
    let t2 = boot_ns()?;
    let out = dp.run_counted(
        Hook::FromPod,
        &fin.build()?,
        VERDICT_PASS,
        Reason::DnatCtReplyEvicted,
    )?;
    let t3 = boot_ns()?;
    same_bytes(&out.data, &fin.clone().with_dst(backend).build()?)?;
    let half = entry(
        chosen.id,
        CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT,
        CT_STATE_HALF_CLOSED,
    );
    expect_conntrack(
        &dp,
        &flow_entries(
            fam.client(),
            vip,
            backend,
            IPPROTO_TCP,
            half,
            CONFIG.ct_tcp_half_closed_s,
        )?,
        t2,
        t3,
    )
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn reply_without_revnat_entry_drops(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("reply_without_revnat_entry_drops")? else {
        return Ok(());
    };
    let frontend = fam.frontend(IPPROTO_UDP, 1);
    dp.install_frontend(&frontend)?;
    let request = PacketSpec::new(fam.client(), fam.vip_socket(80), L4::Udp);
    dp.run_counted(
        Hook::FromPod,
        &request.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    dp.remove_revnat(&frontend)?;
    let reply = PacketSpec::new(
        SocketAddr::new(frontend.backends[0].addr, 8080),
        fam.client(),
        L4::Udp,
    );
    dp.run_counted(
        Hook::ToPod,
        &reply.build()?,
        VERDICT_DROP,
        Reason::DropRevNatMissing,
    )?;
    Ok(())
}

#[test]
fn conntrack_maps_are_lru() -> anyhow::Result<()> {
    let Some(dp) = load("conntrack_maps_are_lru")? else {
        return Ok(());
    };
    for map in [maps::CT4_TCP, maps::CT4_ANY, maps::CT6_TCP, maps::CT6_ANY] {
        ensure!(dp.is_lru_hash(map)?, "{map} is not an LRU hash map");
    }
    for map in [maps::SERVICES4, maps::BACKENDS4, maps::REVNAT6] {
        ensure!(
            !dp.is_lru_hash(map)?,
            "{map} must not be LRU (entries would vanish)"
        );
    }
    Ok(())
}

/// 3000 new flows over 3 backends: every flow goes to one of them and each gets a fair
/// share (a wide band: 1000 expected, 700..=1300 accepted).
#[test]
fn random_choice_spreads_over_all_backends() -> anyhow::Result<()> {
    let Some(mut dp) = load("random_choice_spreads_over_all_backends")? else {
        return Ok(());
    };
    let frontend = Fam::V4.frontend(IPPROTO_UDP, 3);
    dp.install_frontend(&frontend)?;
    let mut hits = [0u32; 3];
    for i in 0..3000u16 {
        let input = PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::Udp)
            .with_sport(10_000 + i);
        let out = dp.run(Hook::FromPod, &input.build()?)?;
        ensure!(
            out.verdict == VERDICT_PASS,
            "flow {i}: verdict {}",
            out.verdict
        );
        let chosen = frontend
            .backends
            .iter()
            .position(|b| {
                input
                    .clone()
                    .with_dst(SocketAddr::new(b.addr, 8080))
                    .build()
                    .ok()
                    == Some(out.data.clone())
            })
            .with_context(|| format!("flow {i} not sent to any backend of the frontend"))?;
        hits[chosen] += 1;
    }
    ensure!(
        hits.iter().all(|h| (700..=1300).contains(h)),
        "uneven spread: {hits:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Port clashes: two flows of one client sharing a reply tuple (backend -> client:port).
// The newer one gets another source port, so each reply finds its own flow.

/// The `CT_DIR_SERVICE` entry keyed by `client -> dst`.
fn forward_entry(
    dp: &Dataplane,
    client: SocketAddr,
    dst: SocketAddr,
    proto: u8,
) -> anyhow::Result<CtEntry> {
    let want = ct_record(client, dst, proto, CT_DIR_SERVICE, CtEntry::default())?;
    let same_key = |r: &CtRecord| match (r, &want) {
        (CtRecord::V4 { map, key, .. }, CtRecord::V4 { map: m, key: k, .. }) => {
            map == m && key == k
        }
        (CtRecord::V6 { map, key, .. }, CtRecord::V6 { map: m, key: k, .. }) => {
            map == m && key == k
        }
        _ => false,
    };
    dp.conntrack()?
        .iter()
        .find(|r| same_key(r))
        .map(|r| *r.entry())
        .with_context(|| format!("no conntrack entry {client} -> {dst}"))
}

/// The ports a rewritten `port` may take (netfilter's ranges).
fn port_range(port: u16) -> std::ops::RangeInclusive<u16> {
    match port {
        0..=511 => 1..=511,
        512..=1023 => 600..=1023,
        _ => 1024..=65535,
    }
}

/// The client's port on the wire of the flow `client -> dst`, checked to be another port
/// of the same range.
fn rewritten_port(
    dp: &Dataplane,
    client: SocketAddr,
    dst: SocketAddr,
    proto: u8,
) -> anyhow::Result<u16> {
    let entry = forward_entry(dp, client, dst, proto)?;
    ensure!(
        entry.flags & CT_FLAG_PORT_NAT != 0,
        "flow {client} -> {dst} has no port_nat flag: {entry:?}"
    );
    let wire = u16::from_be(entry.nat_port_be);
    ensure!(
        wire != client.port() && port_range(client.port()).contains(&wire),
        "port {} rewritten to {wire}, expected another port in {:?}",
        client.port(),
        port_range(client.port())
    );
    Ok(wire)
}

fn direct_entry(flags: u16, state: u8, nat_port: u16) -> CtEntry {
    CtEntry {
        flags: CT_FLAG_DIRECT | CT_FLAG_PORT_NAT | flags,
        state,
        nat_port_be: nat_port.to_be(),
        ..CtEntry::default()
    }
}

/// A client talks to a frontend from one port, then straight to the chosen backend from the
/// same port (the translated flow still tracked): the direct flow gets another port (its
/// replies would otherwise be reverse NATed), its replies get the client's own port back,
/// and the translated flow's replies still come from the frontend.
#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK, L4::ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK, L4::ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp, L4::Udp)]
fn direct_flow_on_a_translated_flows_port_gets_another_port(
    #[case] fam: Fam,
    #[case] start: L4,
    #[case] response: L4,
    #[case] next: L4,
    #[values(40000, 700, 100)] client_port: u16,
    #[values(Hook::ToPod, Hook::ToNet)] reply_hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("direct_flow_on_a_translated_flows_port_gets_another_port")? else {
        return Ok(());
    };
    let proto = proto_of(start);
    let frontend = fam.frontend(proto, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let vip = fam.vip_socket(80);
    let client = SocketAddr::new(fam.client().ip(), client_port);

    let t0 = boot_ns()?;
    let translated = PacketSpec::new(client, vip, start);
    dp.run_counted(
        Hook::FromPod,
        &translated.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let direct = PacketSpec::new(client, backend, start);
    let out = dp.run_counted(
        Hook::FromPod,
        &direct.build()?,
        VERDICT_PASS,
        Reason::NatPortClash,
    )?;
    let t1 = boot_ns()?;
    let wire = rewritten_port(&dp, client, backend, proto)?;
    let wire_client = SocketAddr::new(client.ip(), wire);
    same_bytes(&out.data, &direct.clone().with_src(wire_client).build()?)?;

    let (first_life, life) = if proto == IPPROTO_TCP {
        (CONFIG.ct_tcp_syn_s, CONFIG.ct_tcp_established_s)
    } else {
        (CONFIG.ct_other_s, CONFIG.ct_other_s)
    };
    let flows = |translated: CtEntry, fwd: CtEntry, rep: CtEntry, life| {
        let mut all = flow_entries(client, vip, backend, proto, translated, life)?;
        all.push(ExpectCt {
            record: ct_record(client, backend, proto, CT_DIR_SERVICE, fwd)?,
            lifetime_s: life,
        });
        all.push(ExpectCt {
            record: ct_record(backend, wire_client, proto, CT_DIR_REPLY, rep)?,
            lifetime_s: life,
        });
        anyhow::Ok(all)
    };
    expect_conntrack(
        &dp,
        &flows(
            entry(100, 0, CT_STATE_NEW),
            direct_entry(0, CT_STATE_NEW, wire),
            direct_entry(0, CT_STATE_NEW, client_port),
            first_life,
        )?,
        t0,
        t1,
    )?;

    let t2 = boot_ns()?;
    let direct_reply = PacketSpec::new(backend, wire_client, response);
    let out = dp.run_counted(
        reply_hook,
        &direct_reply.build()?,
        VERDICT_PASS,
        Reason::NatPortClash,
    )?;
    same_bytes(&out.data, &direct_reply.clone().with_dst(client).build()?)?;

    let translated_reply = PacketSpec::new(backend, client, response);
    let out = dp.run_counted(
        reply_hook,
        &translated_reply.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    same_bytes(&out.data, &translated_reply.clone().with_src(vip).build()?)?;

    let direct_next = PacketSpec::new(client, backend, next);
    let out = dp.run_counted(
        Hook::FromPod,
        &direct_next.build()?,
        VERDICT_PASS,
        Reason::NatPortClash,
    )?;
    same_bytes(
        &out.data,
        &direct_next.clone().with_src(wire_client).build()?,
    )?;
    let t3 = boot_ns()?;

    expect_conntrack(
        &dp,
        &flows(
            entry(100, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED),
            direct_entry(CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED, wire),
            direct_entry(CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED, client_port),
            life,
        )?,
        t2,
        t3,
    )
}

/// Only a packet that starts a flow claims a port: a TCP segment without SYN to a pod on a
/// taken reply tuple passes untouched and untracked.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn mid_stream_tcp_to_a_pod_is_not_rewritten(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("mid_stream_tcp_to_a_pod_is_not_rewritten")? else {
        return Ok(());
    };
    let frontend = fam.frontend(IPPROTO_TCP, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let t0 = boot_ns()?;
    dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(fam.client(), fam.vip_socket(80), L4::SYN).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let t1 = boot_ns()?;
    let ack = PacketSpec::new(fam.client(), backend, L4::ACK).build()?;
    let out = dp.run_counted(Hook::FromPod, &ack, VERDICT_PASS, Reason::PassNotService)?;
    same_bytes(&out.data, &ack)?;
    expect_conntrack(
        &dp,
        &flow_entries(
            fam.client(),
            fam.vip_socket(80),
            backend,
            IPPROTO_TCP,
            entry(100, 0, CT_STATE_NEW),
            CONFIG.ct_tcp_syn_s,
        )?,
        t0,
        t1,
    )
}

/// Two frontends share a backend and the client reaches both from one port: the second
/// flow gets another port, and each reply comes back from its own frontend to the
/// client's own port.
#[rstest]
#[case::v4_tcp(Fam::V4, L4::SYN, L4::SYN_ACK)]
#[case::v4_udp(Fam::V4, L4::Udp, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::SYN, L4::SYN_ACK)]
#[case::v6_udp(Fam::V6, L4::Udp, L4::Udp)]
fn second_frontend_to_the_same_backend_gets_another_port(
    #[case] fam: Fam,
    #[case] start: L4,
    #[case] response: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("second_frontend_to_the_same_backend_gets_another_port")? else {
        return Ok(());
    };
    let proto = proto_of(start);
    let first = fam.frontend(proto, 1);
    let second = Frontend::new(fam.vip(), 81, proto, SERVICE_ID + 1).backend(
        100,
        &fam.backend_addr(0),
        8080,
    );
    dp.install_frontend(&first)?;
    dp.install_frontend(&second)?;
    let backend = SocketAddr::new(first.backends[0].addr, 8080);
    let (vip1, vip2) = (fam.vip_socket(80), fam.vip_socket(81));
    let client = fam.client();

    let t0 = boot_ns()?;
    let to_first = PacketSpec::new(client, vip1, start);
    let out = dp.run_counted(
        Hook::FromPod,
        &to_first.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    same_bytes(&out.data, &to_first.clone().with_dst(backend).build()?)?;
    let to_second = PacketSpec::new(client, vip2, start);
    let out = dp.run_counted(
        Hook::FromPod,
        &to_second.build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let t1 = boot_ns()?;
    let wire = rewritten_port(&dp, client, vip2, proto)?;
    let wire_client = SocketAddr::new(client.ip(), wire);
    same_bytes(
        &out.data,
        &to_second
            .clone()
            .with_dst(backend)
            .with_src(wire_client)
            .build()?,
    )?;

    let life = if proto == IPPROTO_TCP {
        CONFIG.ct_tcp_syn_s
    } else {
        CONFIG.ct_other_s
    };
    let second_entry = |nat_port: u16| CtEntry {
        service_id: SERVICE_ID + 1,
        flags: CT_FLAG_PORT_NAT,
        nat_port_be: nat_port.to_be(),
        ..entry(100, 0, CT_STATE_NEW)
    };
    let mut expected = flow_entries(
        client,
        vip1,
        backend,
        proto,
        entry(100, 0, CT_STATE_NEW),
        life,
    )?;
    expected.push(ExpectCt {
        record: ct_record(client, vip2, proto, CT_DIR_SERVICE, second_entry(wire))?,
        lifetime_s: life,
    });
    expected.push(ExpectCt {
        record: ct_record(
            backend,
            wire_client,
            proto,
            CT_DIR_REPLY,
            second_entry(client.port()),
        )?,
        lifetime_s: life,
    });
    expect_conntrack(&dp, &expected, t0, t1)?;

    let reply_second = PacketSpec::new(backend, wire_client, response);
    let out = dp.run_counted(
        Hook::ToPod,
        &reply_second.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    same_bytes(
        &out.data,
        &reply_second
            .clone()
            .with_src(vip2)
            .with_dst(client)
            .build()?,
    )?;
    let reply_first = PacketSpec::new(backend, client, response);
    let out = dp.run_counted(
        Hook::ToPod,
        &reply_first.build()?,
        VERDICT_PASS,
        Reason::RevNatReply,
    )?;
    same_bytes(&out.data, &reply_first.clone().with_src(vip1).build()?)
}

/// When every port of the range is taken toward that backend, the flow is dropped with
/// its own reason and nothing is tracked for it.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn no_free_port_drops(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("no_free_port_drops")? else {
        return Ok(());
    };
    let backend: SocketAddr = SocketAddr::new(fam.backend_addr(0).parse()?, 8080);
    let client = SocketAddr::new(fam.client().ip(), 100);
    let live = CtEntry {
        expires_ns: boot_ns()? + 600_000_000_000,
        ..entry(100, 0, CT_STATE_NEW)
    };
    for port in port_range(client.port()) {
        let taken = SocketAddr::new(client.ip(), port);
        dp.insert_ct(ct_record(backend, taken, IPPROTO_UDP, CT_DIR_REPLY, live)?)?;
    }
    let before = dp.conntrack()?.len();
    let direct = PacketSpec::new(client, backend, L4::Udp).build()?;
    dp.run_counted(Hook::FromPod, &direct, VERDICT_DROP, Reason::DropNoFreePort)?;
    let after = dp.conntrack()?.len();
    ensure!(
        after == before,
        "conntrack went from {before} to {after} entries"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ICMP errors of translated flows: the quoted packet, the outer address and every
// checksum translated, so PMTU discovery and "unreachable" work through a frontend.

/// The IP packet of `spec` (no Ethernet header), cut to `keep` bytes when given.
fn quoted(spec: &PacketSpec, keep: Option<usize>) -> anyhow::Result<Vec<u8>> {
    let mut ip = spec.build()?.split_off(14);
    if let Some(keep) = keep {
        ip.truncate(keep);
    }
    Ok(ip)
}

/// (type, code, rest of header) of fragmentation-needed / packet-too-big (MTU 1400),
/// time-exceeded and port-unreachable, per family.
fn icmp_kind(fam: Fam, which: &str) -> (u8, u8, [u8; 4]) {
    match (fam, which) {
        (Fam::V4, "too_big") => (3, 4, [0, 0, 0x05, 0x78]),
        (Fam::V6, "too_big") => (2, 0, [0, 0, 0x05, 0x78]),
        (Fam::V4, "time_exceeded") => (11, 0, [0; 4]),
        (Fam::V6, "time_exceeded") => (3, 0, [0; 4]),
        (Fam::V4, _) => (3, 3, [0; 4]),
        (Fam::V6, _) => (1, 4, [0; 4]),
    }
}

/// A router on the way (pod network of node 3).
fn router(fam: Fam) -> std::net::IpAddr {
    match fam {
        Fam::V4 => "198.18.3.1",
        Fam::V6 => "fd00:18:0:3::1",
    }
    .parse()
    .expect("router address")
}

/// An ICMP error towards the client about its DNATed packet: the quoted destination
/// back to the frontend (address, port), the outer source to the frontend when the
/// backend sent it (a router's stays), IPv4 header / TCP-UDP / ICMP checksums right; also
/// when the quote is cut after 8 bytes of L4 (no L4 checksum to fix for TCP).
#[rstest]
#[case::v4_tcp_too_big(Fam::V4, L4::ACK, "too_big")]
#[case::v4_udp_unreachable(Fam::V4, L4::Udp, "unreachable")]
#[case::v4_udp_no_checksum(Fam::V4, L4::UdpNoChecksum, "unreachable")]
#[case::v4_tcp_time_exceeded(Fam::V4, L4::ACK, "time_exceeded")]
#[case::v6_tcp_too_big(Fam::V6, L4::ACK, "too_big")]
#[case::v6_udp_unreachable(Fam::V6, L4::Udp, "unreachable")]
#[case::v6_tcp_time_exceeded(Fam::V6, L4::ACK, "time_exceeded")]
fn icmp_error_to_the_client_is_reverse_translated(
    #[case] fam: Fam,
    #[case] l4: L4,
    #[case] which: &str,
    #[values(true, false)] from_backend: bool,
    #[values(None, Some(8))] cut_l4: Option<usize>,
    #[values(Hook::ToPod, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("icmp_error_to_the_client_is_reverse_translated")? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    let frontend = fam.frontend(proto, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let vip = fam.vip_socket(80);
    let first = if proto == IPPROTO_TCP { L4::SYN } else { l4 };
    dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(fam.client(), vip, first).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let ip_hlen = match fam {
        Fam::V4 => 20,
        Fam::V6 => 40,
    };
    let keep = cut_l4.map(|l4_bytes| ip_hlen + l4_bytes);
    let (kind, code, rest) = icmp_kind(fam, which);
    let on_wire = PacketSpec::new(fam.client(), backend, l4);
    let sender = if from_backend {
        backend.ip()
    } else {
        router(fam)
    };
    let error = builder::icmp_error(
        sender,
        fam.client().ip(),
        kind,
        code,
        rest,
        &quoted(&on_wire, keep)?,
    )?;
    let conntrack_before = dp.conntrack()?;
    let out = dp.run_counted(hook, &error, VERDICT_PASS, Reason::RevNatIcmpError)?;
    let as_sent = PacketSpec::new(fam.client(), vip, l4);
    let expected_sender = if from_backend { vip.ip() } else { router(fam) };
    let expected = builder::icmp_error(
        expected_sender,
        fam.client().ip(),
        kind,
        code,
        rest,
        &quoted(&as_sent, keep)?,
    )?;
    same_bytes(&out.data, &expected)?;
    // An error is no packet of the flow: conntrack untouched.
    ensure!(dp.conntrack()? == conntrack_before, "conntrack changed");
    Ok(())
}

/// The client's ICMP error about a reply it got (frontend -> client): towards the
/// backend, the quoted source becomes the backend and the outer destination too.
#[rstest]
#[case::v4_udp(Fam::V4, L4::Udp)]
#[case::v4_tcp(Fam::V4, L4::ACK)]
#[case::v6_udp(Fam::V6, L4::Udp)]
#[case::v6_tcp(Fam::V6, L4::ACK)]
fn icmp_error_from_the_client_is_translated(
    #[case] fam: Fam,
    #[case] l4: L4,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("icmp_error_from_the_client_is_translated")? else {
        return Ok(());
    };
    let proto = proto_of(l4);
    let frontend = fam.frontend(proto, 1);
    dp.install_frontend(&frontend)?;
    let backend = SocketAddr::new(frontend.backends[0].addr, 8080);
    let vip = fam.vip_socket(80);
    let first = if proto == IPPROTO_TCP { L4::SYN } else { l4 };
    dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(fam.client(), vip, first).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let (kind, code, rest) = icmp_kind(fam, "unreachable");
    let received = PacketSpec::new(vip, fam.client(), l4);
    let error = builder::icmp_error(
        fam.client().ip(),
        vip.ip(),
        kind,
        code,
        rest,
        &quoted(&received, None)?,
    )?;
    let out = dp.run_counted(Hook::FromPod, &error, VERDICT_PASS, Reason::DnatIcmpError)?;
    let as_sent = PacketSpec::new(backend, fam.client(), l4);
    let expected = builder::icmp_error(
        fam.client().ip(),
        backend.ip(),
        kind,
        code,
        rest,
        &quoted(&as_sent, None)?,
    )?;
    same_bytes(&out.data, &expected)
}

/// An ICMP error quoting no tracked flow, and ICMP that is no error, pass untouched.
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn icmp_error_of_no_tracked_flow_passes_untouched(
    #[case] fam: Fam,
    #[values(Hook::FromPod, Hook::ToPod)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("icmp_error_of_no_tracked_flow_passes_untouched")? else {
        return Ok(());
    };
    dp.install_frontend(&fam.frontend(IPPROTO_UDP, 1))?;
    let backend = SocketAddr::new(fam.backend_addr(0).parse()?, 8080);
    let (kind, code, rest) = icmp_kind(fam, "unreachable");
    let stranger = PacketSpec::new(fam.client(), backend, L4::Udp);
    let error = builder::icmp_error(
        backend.ip(),
        fam.client().ip(),
        kind,
        code,
        rest,
        &quoted(&stranger, None)?,
    )?;
    let out = dp.run_counted(hook, &error, VERDICT_PASS, Reason::PassOtherProto)?;
    same_bytes(&out.data, &error)
}

/// The client's own port comes back in the quoted packet when its port was rewritten
/// (a second frontend to the same backend from the same port).
#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn icmp_error_restores_a_rewritten_client_port(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut dp) = load("icmp_error_restores_a_rewritten_client_port")? else {
        return Ok(());
    };
    let first = fam.frontend(IPPROTO_UDP, 1);
    let second = Frontend::new(fam.vip(), 81, IPPROTO_UDP, SERVICE_ID + 1).backend(
        100,
        &fam.backend_addr(0),
        8080,
    );
    dp.install_frontend(&first)?;
    dp.install_frontend(&second)?;
    let backend = SocketAddr::new(first.backends[0].addr, 8080);
    let client = fam.client();
    let (vip1, vip2) = (fam.vip_socket(80), fam.vip_socket(81));
    dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(client, vip1, L4::Udp).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    dp.run_counted(
        Hook::FromPod,
        &PacketSpec::new(client, vip2, L4::Udp).build()?,
        VERDICT_PASS,
        Reason::DnatNewFlow,
    )?;
    let wire = rewritten_port(&dp, client, vip2, IPPROTO_UDP)?;
    let (kind, code, rest) = icmp_kind(fam, "too_big");
    let on_wire = PacketSpec::new(SocketAddr::new(client.ip(), wire), backend, L4::Udp);
    let error = builder::icmp_error(
        backend.ip(),
        client.ip(),
        kind,
        code,
        rest,
        &quoted(&on_wire, None)?,
    )?;
    let out = dp.run_counted(Hook::ToPod, &error, VERDICT_PASS, Reason::RevNatIcmpError)?;
    let as_sent = PacketSpec::new(client, vip2, L4::Udp);
    let expected = builder::icmp_error(
        vip2.ip(),
        client.ip(),
        kind,
        code,
        rest,
        &quoted(&as_sent, None)?,
    )?;
    same_bytes(&out.data, &expected)
}

/// Two CPUs translate the first packet of the same new flows at the same moment (one
/// thread pinned on each, released together by a barrier): with `BPF_NOEXIST` creation
/// the loser follows the winner, so both copies of every flow go to one backend and the
/// flow ends with one pair of entries. The race itself is timing: how often the two
/// really overlapped (`dnat_ct_race`) is printed, not asserted.
#[test]
fn two_cpus_creating_one_flow_agree_on_its_backend() -> anyhow::Result<()> {
    let Some(mut dp) = load("two_cpus_creating_one_flow_agree_on_its_backend")? else {
        return Ok(());
    };
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        eprintln!("one CPU: no race to provoke");
        return Ok(());
    }
    let frontend = Fam::V4.frontend(IPPROTO_UDP, 8);
    dp.install_frontend(&frontend)?;
    const FLOWS: u16 = 2_000;
    let packets: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            PacketSpec::new(Fam::V4.client(), Fam::V4.vip_socket(80), L4::Udp)
                .with_sport(20_000 + i)
                .build()
        })
        .collect::<Result<_, _>>()?;
    let barrier = std::sync::Barrier::new(2);
    let dp = &dp;
    let outputs: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|cpu| {
                let (barrier, packets) = (&barrier, &packets);
                scope.spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu)?;
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
                    let mut out = Vec::with_capacity(packets.len());
                    for packet in packets {
                        barrier.wait();
                        let run = dp.run(Hook::FromPod, packet)?;
                        ensure!(run.verdict == VERDICT_PASS, "verdict {}", run.verdict);
                        out.push(run.data);
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let differ = (0..usize::from(FLOWS))
        .filter(|&i| outputs[0][i] != outputs[1][i])
        .count();
    let raced = dp
        .counters()?
        .iter()
        .filter(|(h, r, _)| *h == Hook::FromPod && *r == Reason::DnatCtRace)
        .map(|(_, _, c)| c.packets)
        .sum::<u64>();
    eprintln!("{FLOWS} flows created on two CPUs at once: {raced} lost the race (dnat_ct_race)");
    ensure!(
        differ == 0,
        "{differ} flows were sent to two different backends"
    );
    let entries = dp.conntrack()?.len();
    ensure!(
        entries == 2 * usize::from(FLOWS),
        "{entries} conntrack entries for {FLOWS} flows"
    );
    Ok(())
}
