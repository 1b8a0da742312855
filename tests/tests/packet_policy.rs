//! BPF_PROG_TEST_RUN fixtures for NetworkPolicy enforcement: the real object, its policy
//! maps programmed by the real `PolicyWriter` from Kubernetes objects fed to the policy
//! model (node `n1`). For each packet: the tc verdict, the whole output packet (built
//! independently) and the one counter that moved. Expected verdicts are written from the
//! NetworkPolicy spec, not from the model. Needs root (BPF); skipped without it unless
//! CI=true.
//!
//! Pods (dual-stack, each serving 80 and 81 on TCP and UDP, container ports named
//! `serve-<port>-<proto>`): x/a and x/b on node n1 (local), y/c on node n2.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context as _};
use rstest::rstest;
use serde_json::json;
use service_lb::dataplane::policy_maps::BpfPolicyMaps;
use service_lb_common::{
    proto::{IPPROTO_TCP, VERDICT_DROP, VERDICT_PASS},
    Hook, Reason,
};
use service_lb_tests::{
    packet::{Dataplane, Frontend, PacketSpec, L4},
    policy::{namespace, pod, policy, PolicyDriver},
    privileges::require_root,
};

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug)]
enum P {
    XA,
    XB,
    YC,
    /// An address outside the cluster (198.19.200.5 / fd00:c8::5).
    External,
}

impl Fam {
    fn addr(self, p: P) -> IpAddr {
        let s = match (self, p) {
            (Fam::V4, P::XA) => "198.18.1.10",
            (Fam::V4, P::XB) => "198.18.1.11",
            (Fam::V4, P::YC) => "198.18.2.12",
            (Fam::V4, P::External) => "198.19.200.5",
            (Fam::V6, P::XA) => "fd00:18:0:1::10",
            (Fam::V6, P::XB) => "fd00:18:0:1::11",
            (Fam::V6, P::YC) => "fd00:18:0:2::12",
            (Fam::V6, P::External) => "fd00:c8::5",
        };
        s.parse().expect("address")
    }

    fn sock(self, p: P, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(p), port)
    }

    fn vip(self, i: u8) -> String {
        match self {
            Fam::V4 => format!("198.19.0.{}", 10 + i),
            Fam::V6 => format!("fd00:19::{:x}", 10 + i),
        }
    }

    fn vip_sock(self, i: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.vip(i).parse().expect("vip"), port)
    }

    /// The pod CIDR of both nodes, and node 2's inside it.
    fn cluster_cidr(self) -> (&'static str, &'static str) {
        match self {
            Fam::V4 => ("198.18.0.0/16", "198.18.2.0/24"),
            Fam::V6 => ("fd00:18::/32", "fd00:18:0:2::/64"),
        }
    }
}

const PORTS: [(&str, u16, &str); 4] = [
    ("serve-80-tcp", 80, "TCP"),
    ("serve-81-tcp", 81, "TCP"),
    ("serve-80-udp", 80, "UDP"),
    ("serve-81-udp", 81, "UDP"),
];

struct Fixture {
    fam: Fam,
    dp: Dataplane,
    driver: PolicyDriver<BpfPolicyMaps>,
}

fn ips(p: P) -> [IpAddr; 2] {
    [Fam::V4.addr(p), Fam::V6.addr(p)]
}

fn setup(test: &str, fam: Fam) -> anyhow::Result<Option<Fixture>> {
    if !require_root(test) {
        return Ok(None);
    }
    let mut dp = Dataplane::load()?;
    let maps = dp.take_policy_maps()?;
    let mut driver = PolicyDriver::new("n1", maps);
    let m = &mut driver.model;
    m.apply_namespace(&namespace("x", &[("ns", "x")])?);
    m.apply_namespace(&namespace("y", &[("ns", "y")])?);
    m.apply_pod(&pod("x", "a", &[("pod", "a")], "n1", &ips(P::XA), &PORTS)?);
    m.apply_pod(&pod("x", "b", &[("pod", "b")], "n1", &ips(P::XB), &PORTS)?);
    m.apply_pod(&pod("y", "c", &[("pod", "c")], "n2", &ips(P::YC), &PORTS)?);
    driver.sync()?;
    Ok(Some(Fixture { fam, dp, driver }))
}

impl Fixture {
    fn apply(&mut self, ns: &str, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.driver.model.apply_policy(&policy(ns, name, spec)?);
        self.driver.sync()
    }

    fn delete(&mut self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.driver.model.delete_policy(ns, name);
        self.driver.sync()
    }

    fn tcp(&self, src: P, sport: u16, dst: P, dport: u16, l4: L4) -> PacketSpec {
        PacketSpec::new(self.fam.sock(src, sport), self.fam.sock(dst, dport), l4)
    }

    fn udp(&self, src: P, sport: u16, dst: P, dport: u16) -> PacketSpec {
        PacketSpec::new(
            self.fam.sock(src, sport),
            self.fam.sock(dst, dport),
            L4::Udp,
        )
    }

    /// Runs `spec` at `hook`; a passed packet must come out unchanged.
    fn expect(&self, hook: Hook, spec: &PacketSpec, reason: Reason) -> anyhow::Result<()> {
        let input = spec.build()?;
        let verdict = if reason.is_drop() {
            VERDICT_DROP
        } else {
            VERDICT_PASS
        };
        let out = self
            .dp
            .run_counted(hook, &input, verdict, reason)
            .with_context(|| format!("{spec:?} at {}", hook.name()))?;
        if verdict == VERDICT_PASS && out.data != input {
            bail!("{spec:?}: passed packet was rewritten");
        }
        Ok(())
    }

    /// Runs `spec` at `hook`, expecting a pass under `reason` with `expected` as output.
    fn expect_rewritten(
        &self,
        hook: Hook,
        spec: &PacketSpec,
        reason: Reason,
        expected: &PacketSpec,
    ) -> anyhow::Result<Vec<u8>> {
        let out = self
            .dp
            .run_counted(hook, &spec.build()?, VERDICT_PASS, reason)
            .with_context(|| format!("{spec:?} at {}", hook.name()))?;
        if out.data != expected.build()? {
            bail!("{spec:?}: output differs from {expected:?}");
        }
        Ok(out.data)
    }
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn no_policy_passes_untouched(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(f) = setup("no_policy_passes_untouched", fam)? else {
        return Ok(());
    };
    let syn = f.tcp(P::XB, 40000, P::XA, 80, L4::SYN);
    f.expect(Hook::FromPod, &syn, Reason::PassNotService)?;
    f.expect(Hook::ToPod, &syn, Reason::PassNotService)?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::YC, 40001, P::XA, 81),
        Reason::PassNotService,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn ingress_allow_and_deny(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("ingress_allow_and_deny", fam)? else {
        return Ok(());
    };
    f.apply(
        "x",
        "allow-b-80",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": 80}],
            }],
        }),
    )?;
    // From x/b on TCP 80: allowed; every other port, protocol or peer: denied.
    f.expect(
        Hook::ToPod,
        &f.tcp(P::XB, 40000, P::XA, 80, L4::SYN),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::XB, 40001, P::XA, 81, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::XB, 40002, P::XA, 80),
        Reason::DropPolicyIngress,
    )?;
    // A podSelector alone selects pods of the policy's namespace only.
    f.expect(
        Hook::ToPod,
        &f.tcp(P::YC, 40003, P::XA, 80, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    // Egress of x/a is not isolated; x/b is not selected at all.
    f.expect(
        Hook::FromPod,
        &f.tcp(P::XA, 40004, P::YC, 81, L4::SYN),
        Reason::PassNotService,
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::YC, 40005, P::XB, 81, L4::SYN),
        Reason::PassNotService,
    )?;
    // A denied flow stays denied packet after packet (it is not cached).
    f.expect(
        Hook::ToPod,
        &f.tcp(P::XB, 40001, P::XA, 81, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn replies_of_allowed_flows_pass(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("replies_of_allowed_flows_pass", fam)? else {
        return Ok(());
    };
    // x/a: ingress from x/b on 80 only; egress isolated with no rule (deny all).
    f.apply(
        "x",
        "a-in-80-no-out",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}],
            }],
        }),
    )?;
    let syn = f.tcp(P::XB, 41000, P::XA, 80, L4::SYN);
    f.expect(Hook::ToPod, &syn, Reason::PolicyAllowedNew)?;
    // x/a's answer leaves it although its egress allows nothing: a reply.
    f.expect(
        Hook::FromPod,
        &syn.reply(L4::SYN_ACK),
        Reason::PassNotService,
    )?;
    // The client's next segment is a known flow.
    f.expect(
        Hook::ToPod,
        &syn.clone().with_l4(L4::ACK),
        Reason::PassNotService,
    )?;
    f.expect(Hook::FromPod, &syn.reply(L4::ACK), Reason::PassNotService)?;
    // UDP likewise.
    let dgram = f.udp(P::XB, 41001, P::XA, 80);
    f.expect(Hook::ToPod, &dgram, Reason::PolicyAllowedNew)?;
    f.expect(Hook::FromPod, &dgram.reply(L4::Udp), Reason::PassNotService)?;
    // A flow x/a starts itself is egress: denied, to the same peer and port too.
    f.expect(
        Hook::FromPod,
        &f.tcp(P::XA, 41002, P::XB, 80, L4::SYN),
        Reason::DropPolicyEgress,
    )?;
    f.expect(
        Hook::FromPod,
        &f.udp(P::XA, 80, P::XB, 41003),
        Reason::DropPolicyEgress,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn egress_decided_on_the_backend_after_dnat(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("egress_decided_on_the_backend_after_dnat", fam)? else {
        return Ok(());
    };
    let fa = Frontend::new(&fam.vip(0), 80, IPPROTO_TCP, 7).backend(
        100,
        &fam.addr(P::XA).to_string(),
        80,
    );
    let fc = Frontend::new(&fam.vip(1), 80, IPPROTO_TCP, 8).backend(
        101,
        &fam.addr(P::YC).to_string(),
        80,
    );
    f.dp.install_frontend(&fa)?;
    f.dp.install_frontend(&fc)?;
    // x/b may only reach y/c (namespace y AND pod c) on TCP 80.
    f.apply(
        "x",
        "b-to-c",
        json!({
            "podSelector": {"matchLabels": {"pod": "b"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"ns": "y"}},
                    "podSelector": {"matchLabels": {"pod": "c"}},
                }],
                "ports": [{"port": 80}],
            }],
        }),
    )?;
    // Through the ClusterIP of x/a: translated, then denied on x/a's address.
    f.expect(
        Hook::FromPod,
        &PacketSpec::new(fam.sock(P::XB, 42000), fam.vip_sock(0, 80), L4::SYN),
        Reason::DropPolicyEgress,
    )?;
    // Through the ClusterIP of y/c: translated and allowed (counted as the DNAT).
    let to_c = PacketSpec::new(fam.sock(P::XB, 42001), fam.vip_sock(1, 80), L4::SYN);
    let dnat = f.tcp(P::XB, 42001, P::YC, 80, L4::SYN);
    f.expect_rewritten(Hook::FromPod, &to_c, Reason::DnatNewFlow, &dnat)?;
    // Its next packet rides on conntrack and on the policy flow.
    f.expect_rewritten(
        Hook::FromPod,
        &to_c.clone().with_l4(L4::ACK),
        Reason::DnatEstablished,
        &dnat.clone().with_l4(L4::ACK),
    )?;
    // Directly: the same decisions.
    f.expect(
        Hook::FromPod,
        &f.tcp(P::XB, 42002, P::XA, 80, L4::SYN),
        Reason::DropPolicyEgress,
    )?;
    f.expect(
        Hook::FromPod,
        &f.tcp(P::XB, 42003, P::YC, 80, L4::SYN),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::FromPod,
        &f.tcp(P::XB, 42004, P::YC, 81, L4::SYN),
        Reason::DropPolicyEgress,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn ingress_denied_after_dnat(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("ingress_denied_after_dnat", fam)? else {
        return Ok(());
    };
    let fa = Frontend::new(&fam.vip(0), 80, IPPROTO_TCP, 7).backend(
        100,
        &fam.addr(P::XA).to_string(),
        80,
    );
    f.dp.install_frontend(&fa)?;
    // x/a admits y/c only (any namespace labelled ns=y).
    f.apply(
        "x",
        "a-from-y",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
        }),
    )?;
    // x/b dials the ClusterIP: its own node translates it (x/b is not isolated) ...
    let via_vip = PacketSpec::new(fam.sock(P::XB, 43000), fam.vip_sock(0, 80), L4::SYN);
    let dnat = f.tcp(P::XB, 43000, P::XA, 80, L4::SYN);
    let out = f.expect_rewritten(Hook::FromPod, &via_vip, Reason::DnatNewFlow, &dnat)?;
    // ... and the translated packet is denied where it enters x/a.
    f.dp.run_counted(Hook::ToPod, &out, VERDICT_DROP, Reason::DropPolicyIngress)?;
    // y/c's translated packets (from node n2) are admitted, on any port.
    f.expect(
        Hook::ToPod,
        &f.tcp(P::YC, 43001, P::XA, 80, L4::SYN),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::YC, 43002, P::XA, 81),
        Reason::PolicyAllowedNew,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn named_port_and_end_port(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("named_port_and_end_port", fam)? else {
        return Ok(());
    };
    // x/a: from anywhere, UDP to the port named serve-81-udp; x/b: TCP 1000-1010.
    f.apply(
        "x",
        "a-named",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}],
        }),
    )?;
    f.apply(
        "x",
        "b-range",
        json!({
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"ports": [{"port": 1000, "endPort": 1010}]}],
        }),
    )?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::YC, 44000, P::XA, 81),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::External, 44001, P::XA, 81),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::ToPod,
        &f.udp(P::YC, 44002, P::XA, 80),
        Reason::DropPolicyIngress,
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::YC, 44003, P::XA, 81, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    for (port, reason) in [
        (999, Reason::DropPolicyIngress),
        (1000, Reason::PolicyAllowedNew),
        (1007, Reason::PolicyAllowedNew),
        (1010, Reason::PolicyAllowedNew),
        (1011, Reason::DropPolicyIngress),
    ] {
        f.expect(
            Hook::ToPod,
            &f.tcp(P::XA, 44100 + port, P::XB, port, L4::SYN),
            reason,
        )?;
    }
    f.expect(
        Hook::ToPod,
        &f.udp(P::XA, 44200, P::XB, 1005),
        Reason::DropPolicyIngress,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn ip_block_with_except(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("ip_block_with_except", fam)? else {
        return Ok(());
    };
    let (cidr, except) = fam.cluster_cidr();
    f.apply(
        "x",
        "a-block",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": [except]}}]}],
        }),
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::XB, 45000, P::XA, 80, L4::SYN),
        Reason::PolicyAllowedNew,
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::YC, 45001, P::XA, 80, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::External, 45002, P::XA, 80, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn deleting_the_policy_ends_isolation(#[case] fam: Fam) -> anyhow::Result<()> {
    let Some(mut f) = setup("deleting_the_policy_ends_isolation", fam)? else {
        return Ok(());
    };
    f.apply(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )?;
    let syn = f.tcp(P::XB, 46000, P::XA, 80, L4::SYN);
    f.expect(Hook::ToPod, &syn, Reason::DropPolicyIngress)?;
    f.expect(Hook::FromPod, &syn, Reason::DropPolicyEgress)?;
    f.delete("x", "deny-all")?;
    f.expect(Hook::ToPod, &syn, Reason::PassNotService)?;
    f.expect(Hook::FromPod, &syn, Reason::PassNotService)?;
    Ok(())
}

#[rstest]
#[case::v4(Fam::V4)]
#[case::v6(Fam::V6)]
fn established_flows_survive_a_policy_change_new_connections_do_not(
    #[case] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut f) = setup("established_flows_survive_a_policy_change", fam)? else {
        return Ok(());
    };
    let allow = json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    });
    f.apply("x", "p", allow)?;
    let syn = f.tcp(P::XB, 47000, P::XA, 80, L4::SYN);
    f.expect(Hook::ToPod, &syn, Reason::PolicyAllowedNew)?;
    f.expect(
        Hook::FromPod,
        &syn.reply(L4::SYN_ACK),
        Reason::PassNotService,
    )?;
    // The policy now admits nobody.
    f.apply(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}),
    )?;
    // The established connection goes on (stateful, as with conntrack-based enforcers) ...
    f.expect(
        Hook::ToPod,
        &syn.clone().with_l4(L4::ACK),
        Reason::PassNotService,
    )?;
    f.expect(Hook::FromPod, &syn.reply(L4::ACK), Reason::PassNotService)?;
    // ... a new connection on the very same tuple is decided again, and denied.
    f.expect(Hook::ToPod, &syn, Reason::DropPolicyIngress)?;
    f.expect(
        Hook::ToPod,
        &f.tcp(P::XB, 47001, P::XA, 80, L4::SYN),
        Reason::DropPolicyIngress,
    )?;
    Ok(())
}

/// Prints the kernel's time per packet at `to_pod` (BPF_PROG_TEST_RUN, repeated) without
/// policy, with policy on for another pod, for an allowed flow's packet (flow cache) and
/// for a denied packet (decided every time). Timings are printed, never asserted; the
/// verdicts are checked first.
#[test]
fn policy_cost_per_packet_is_printed() -> anyhow::Result<()> {
    const REPEAT: u32 = 200_000;
    let Some(mut f) = setup("policy_cost_per_packet_is_printed", Fam::V4)? else {
        return Ok(());
    };
    let ack = f.tcp(P::XB, 48000, P::XA, 80, L4::ACK);
    f.expect(Hook::ToPod, &ack, Reason::PassNotService)?;
    let off = f.dp.run_repeated(Hook::ToPod, &ack.build()?, REPEAT)?;
    // Policy on, for x/b only: x/a is not in the pod hash.
    f.apply(
        "x",
        "b-only",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}),
    )?;
    f.expect(Hook::ToPod, &ack, Reason::PassNotService)?;
    let other_pod = f.dp.run_repeated(Hook::ToPod, &ack.build()?, REPEAT)?;
    // x/a isolated, admitting x/b: the flow's first packet is recorded, the rest hit it.
    f.apply(
        "x",
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )?;
    f.expect(Hook::ToPod, &ack, Reason::PolicyAllowedNew)?;
    f.expect(Hook::ToPod, &ack, Reason::PassNotService)?;
    let cached = f.dp.run_repeated(Hook::ToPod, &ack.build()?, REPEAT)?;
    let denied = f.tcp(P::YC, 48001, P::XA, 80, L4::ACK);
    f.expect(Hook::ToPod, &denied, Reason::DropPolicyIngress)?;
    let decided = f.dp.run_repeated(Hook::ToPod, &denied.build()?, REPEAT)?;
    eprintln!(
        "to_pod per packet (x{REPEAT}): no policy {off:?}; policy on, pod not isolated \
         {other_pod:?}; allowed flow (cache hit) {cached:?}; denied (pod hash + 2 LPM + 2 \
         flow lookups) {decided:?}"
    );
    Ok(())
}
