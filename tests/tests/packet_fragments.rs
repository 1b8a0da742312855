//! BPF_PROG_TEST_RUN fixtures for fragmented UDP datagrams to and from a ClusterIP: the
//! first fragment (it carries the ports) is translated like a whole datagram, the later
//! ones get the same addresses (IPv4 header checksum; no L4 rewrite). Every output
//! fragment is compared byte for byte with the translated datagram cut into fragments by
//! the test builder (own checksums). Needs root (BPF); skipped without it unless CI=true.

use std::net::SocketAddr;

use anyhow::{bail, ensure};
use rstest::rstest;
use service_lb_common::{
    proto::{IPPROTO_UDP, VERDICT_PASS},
    DataplaneConfig, Hook, Reason,
};
use service_lb_tests::{
    packet::{builder::fragments, Dataplane, Frontend, PacketSpec, RunOutput, L4},
    privileges::require_root,
};

const CONFIG: DataplaneConfig = DataplaneConfig {
    ct_tcp_syn_s: 31,
    ct_tcp_established_s: 3_601,
    ct_tcp_closing_s: 7,
    ct_other_s: 45,
    ct_tcp_half_closed_s: 1_801,
};

const SERVICE_ID: u32 = 9;
/// The UDP payload of every datagram: 3 fragments in both families.
const PAYLOAD_LEN: usize = 3000;

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

    fn vip_socket(self) -> SocketAddr {
        SocketAddr::new(self.vip().parse().expect("vip"), 53)
    }

    fn backend(self) -> SocketAddr {
        match self {
            Fam::V4 => "198.18.2.10:5353",
            Fam::V6 => "[fd00:18:0:2::a]:5353",
        }
        .parse()
        .expect("backend address")
    }

    fn frontend(self) -> Frontend {
        let backend = self.backend();
        Frontend::new(self.vip(), 53, IPPROTO_UDP, SERVICE_ID).backend(
            100,
            &backend.ip().to_string(),
            backend.port(),
        )
    }

    /// L4 bytes per fragment: what a 1500-byte (IPv4) / 1280-byte (IPv6) MTU leaves.
    fn chunk(self) -> usize {
        match self {
            Fam::V4 => 1480,
            Fam::V6 => 1232,
        }
    }

    /// Identification of the test datagrams.
    fn id(self) -> u32 {
        match self {
            Fam::V4 => 0x5a17,
            Fam::V6 => 0x0102_5a17,
        }
    }
}

fn big(src: SocketAddr, dst: SocketAddr) -> PacketSpec {
    let mut spec = PacketSpec::new(src, dst, L4::Udp);
    spec.payload = (0..PAYLOAD_LEN).map(|i| (i % 251) as u8).collect();
    spec
}

fn load(test: &str) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    let mut dp = Dataplane::load_with(CONFIG)?;
    for fam in [Fam::V4, Fam::V6] {
        dp.install_frontend(&fam.frontend())?;
    }
    Ok(Some(dp))
}

/// Runs `packet` through `hook`: verdict pass and exactly the counter (hook, reason) moved.
fn run_counted(
    dp: &Dataplane,
    hook: Hook,
    packet: &[u8],
    reason: Reason,
) -> anyhow::Result<RunOutput> {
    dp.run_counted(hook, packet, VERDICT_PASS, reason)
}

fn same_bytes(what: &str, actual: &[u8], expected: &[u8]) -> anyhow::Result<()> {
    if actual == expected {
        return Ok(());
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    bail!(
        "{what}: output differs at byte {first} (len {} vs {})\n  actual:   {:02x?}\n  expected: {:02x?}",
        actual.len(),
        expected.len(),
        &actual[..actual.len().min(96)],
        &expected[..expected.len().min(96)]
    )
}

/// Sends every fragment of `input` through `hook`: the first counted `first_reason`, the
/// later ones `later_reason`; each output must equal the same fragment of `expected`.
fn send_fragments(
    dp: &Dataplane,
    hook: Hook,
    fam: Fam,
    input: &PacketSpec,
    expected: &PacketSpec,
    first_reason: Reason,
    later_reason: Reason,
) -> anyhow::Result<()> {
    let sent = fragments(input, fam.chunk(), fam.id())?;
    let wanted = fragments(expected, fam.chunk(), fam.id())?;
    ensure!(sent.len() == 3, "{} fragments, expected 3", sent.len());
    for (i, (packet, want)) in sent.iter().zip(&wanted).enumerate() {
        let reason = if i == 0 { first_reason } else { later_reason };
        let out = run_counted(dp, hook, packet, reason)?;
        same_bytes(&format!("fragment {i}"), &out.data, want)?;
    }
    Ok(())
}

#[rstest]
fn request_fragments_are_dnated(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(Hook::FromPod, Hook::FromNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(dp) = load("request_fragments_are_dnated")? else {
        return Ok(());
    };
    let request = big(fam.client(), fam.vip_socket());
    let translated = request.clone().with_dst(fam.backend());
    send_fragments(
        &dp,
        hook,
        fam,
        &request,
        &translated,
        Reason::DnatNewFlow,
        Reason::DnatFragment,
    )?;
    // The next datagram of the flow: its first fragment is DNATed through conntrack.
    let next = fragments(&request, fam.chunk(), fam.id() + 1)?;
    let want = fragments(&translated, fam.chunk(), fam.id() + 1)?;
    for (i, reason) in [
        Reason::DnatEstablished,
        Reason::DnatFragment,
        Reason::DnatFragment,
    ]
    .into_iter()
    .enumerate()
    {
        let out = run_counted(&dp, hook, &next[i], reason)?;
        same_bytes(
            &format!("second datagram, fragment {i}"),
            &out.data,
            &want[i],
        )?;
    }
    Ok(())
}

#[rstest]
fn reply_fragments_are_reverse_nated(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(Hook::ToPod, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(dp) = load("reply_fragments_are_reverse_nated")? else {
        return Ok(());
    };
    let request = PacketSpec::new(fam.client(), fam.vip_socket(), L4::Udp);
    run_counted(&dp, Hook::FromPod, &request.build()?, Reason::DnatNewFlow)?;

    let reply = big(fam.backend(), fam.client());
    let translated = reply.clone().with_src(fam.vip_socket());
    send_fragments(
        &dp,
        hook,
        fam,
        &reply,
        &translated,
        Reason::RevNatReply,
        Reason::RevNatFragment,
    )
}

/// Later fragments whose first fragment was not translated pass untouched: one that
/// arrives before its first fragment, one of another identification, and those of a
/// datagram to no frontend (its first fragment is passed, nothing is recorded).
#[rstest]
fn untranslated_fragments_pass_untouched(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
    #[values(Hook::FromPod, Hook::ToPod, Hook::FromNet, Hook::ToNet)] hook: Hook,
) -> anyhow::Result<()> {
    let Some(dp) = load("untranslated_fragments_pass_untouched")? else {
        return Ok(());
    };
    let to_vip = fragments(&big(fam.client(), fam.vip_socket()), fam.chunk(), fam.id())?;
    let out = run_counted(&dp, hook, &to_vip[1], Reason::PassFragment)?;
    same_bytes("later fragment before its first", &out.data, &to_vip[1])?;

    let not_service = big(fam.client(), fam.backend());
    let frags = fragments(&not_service, fam.chunk(), fam.id() + 7)?;
    let first_reason = Reason::PassNotService;
    let out = run_counted(&dp, hook, &frags[0], first_reason)?;
    same_bytes("first fragment to no frontend", &out.data, &frags[0])?;
    for (i, frag) in frags.iter().enumerate().skip(1) {
        let out = run_counted(&dp, hook, frag, Reason::PassFragment)?;
        same_bytes(&format!("fragment {i} to no frontend"), &out.data, frag)?;
    }
    Ok(())
}

/// After a translated datagram, a later fragment of another identification (same
/// addresses) is not rewritten.
#[rstest]
fn other_identification_is_not_rewritten(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(dp) = load("other_identification_is_not_rewritten")? else {
        return Ok(());
    };
    let request = big(fam.client(), fam.vip_socket());
    let frags = fragments(&request, fam.chunk(), fam.id())?;
    run_counted(&dp, Hook::FromPod, &frags[0], Reason::DnatNewFlow)?;
    let other = fragments(&request, fam.chunk(), fam.id() ^ 0x00ff)?;
    let out = run_counted(&dp, Hook::FromPod, &other[2], Reason::PassFragment)?;
    same_bytes("later fragment of another datagram", &out.data, &other[2])
}

/// A reply's later fragments cross `from_net` before `to_pod` (routed node): a record
/// made at `to_pod` / `to_net` is only used there, so `from_net` passes them untouched.
#[rstest]
fn reply_record_is_not_used_by_request_hooks(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(dp) = load("reply_record_is_not_used_by_request_hooks")? else {
        return Ok(());
    };
    let request = PacketSpec::new(fam.client(), fam.vip_socket(), L4::Udp);
    run_counted(&dp, Hook::FromPod, &request.build()?, Reason::DnatNewFlow)?;
    let reply = big(fam.backend(), fam.client());
    let sent = fragments(&reply, fam.chunk(), fam.id())?;
    let wanted = fragments(
        &reply.clone().with_src(fam.vip_socket()),
        fam.chunk(),
        fam.id(),
    )?;
    let out = run_counted(&dp, Hook::ToPod, &sent[0], Reason::RevNatReply)?;
    same_bytes("first reply fragment", &out.data, &wanted[0])?;
    let out = run_counted(&dp, Hook::FromNet, &sent[1], Reason::PassFragment)?;
    same_bytes("later reply fragment at from_net", &out.data, &sent[1])?;
    let out = run_counted(&dp, Hook::ToPod, &sent[1], Reason::RevNatFragment)?;
    same_bytes("later reply fragment at to_pod", &out.data, &wanted[1])
}

/// IPv4 UDP without a checksum (0): the first fragment's checksum stays 0.
#[test]
fn v4_zero_checksum_fragments_are_dnated() -> anyhow::Result<()> {
    let Some(dp) = load("v4_zero_checksum_fragments_are_dnated")? else {
        return Ok(());
    };
    let fam = Fam::V4;
    let request = big(fam.client(), fam.vip_socket()).with_l4(L4::UdpNoChecksum);
    let translated = request.clone().with_dst(fam.backend());
    send_fragments(
        &dp,
        Hook::FromPod,
        fam,
        &request,
        &translated,
        Reason::DnatNewFlow,
        Reason::DnatFragment,
    )
}
