//! BPF_PROG_TEST_RUN fixtures for sessionAffinity ClientIP: new flows of one client stick
//! to the backend its last new flow got while the entry is younger than the timeout and
//! the backend is still a member of the frontend; otherwise a backend is chosen and the
//! entry replaced. Every output packet is compared whole with one built here. Needs root.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure, Context as _};
use rstest::rstest;
use service_lb_common::{
    affinity::AffinityValue,
    proto::{IPPROTO_TCP, VERDICT_PASS},
    Hook,
};
use service_lb_tests::{
    packet::{clock::boot_ns, BackendRef, Dataplane, Frontend, PacketSpec, L4},
    privileges::require_root,
};

const SERVICE_ID: u32 = 11;
const TIMEOUT_S: u32 = 30;
const NS: u64 = 1_000_000_000;

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

    fn vip(self) -> &'static str {
        match self {
            Fam::V4 => "198.19.0.30",
            Fam::V6 => "fd00:19::30",
        }
    }

    fn backend(self, i: u32) -> String {
        match self {
            Fam::V4 => format!("198.18.2.{}", 10 + i),
            Fam::V6 => format!("fd00:18:0:2::{:x}", 10 + i),
        }
    }

    /// A TCP frontend vip:80 with `n` backends (ids 100.., port 8080).
    fn frontend(self, n: u32, timeout_s: u32) -> Frontend {
        let mut f = (0..n).fold(
            Frontend::new(self.vip(), 80, IPPROTO_TCP, SERVICE_ID),
            |f, i| f.backend(100 + i, &self.backend(i), 8080),
        );
        f.affinity_timeout_s = timeout_s;
        f
    }
}

fn load(test: &str) -> anyhow::Result<Option<Dataplane>> {
    if !require_root(test) {
        return Ok(None);
    }
    Ok(Some(Dataplane::load()?))
}

/// Sends a SYN of a new flow (source port `sport`) to the frontend and returns the backend
/// it was DNATed to, after checking the whole output packet.
fn new_flow(dp: &Dataplane, fam: Fam, f: &Frontend, sport: u16) -> anyhow::Result<BackendRef> {
    let vip: IpAddr = fam.vip().parse()?;
    let spec = PacketSpec::new(fam.client(), SocketAddr::new(vip, 80), L4::SYN).with_sport(sport);
    let out = dp.run(Hook::FromPod, &spec.build()?)?;
    ensure!(out.verdict == VERDICT_PASS, "verdict {}", out.verdict);
    for b in &f.backends {
        let expected = spec
            .clone()
            .with_dst(SocketAddr::new(b.addr, b.port))
            .build()?;
        if out.data == expected {
            return Ok(*b);
        }
    }
    bail!("the output is no backend's DNAT: {:02x?}", out.data)
}

/// The one affinity entry, which must be of `fam`'s client and the frontend.
fn the_entry(dp: &Dataplane, fam: Fam) -> anyhow::Result<AffinityValue> {
    let all = dp.affinity()?;
    ensure!(all.len() == 1, "affinity entries: {all:?}");
    let (client, service_id, value) = all[0];
    ensure!(
        client == fam.client().ip() && service_id == SERVICE_ID,
        "{all:?}"
    );
    Ok(value)
}

#[rstest]
fn new_flows_of_a_client_stick_to_one_backend(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("new_flows_of_a_client_stick_to_one_backend")? else {
        return Ok(());
    };
    let f = fam.frontend(4, TIMEOUT_S);
    dp.install_frontend(&f)?;
    let t0 = boot_ns()?;
    let first = new_flow(&dp, fam, &f, 30_000)?;
    for sport in 30_001..30_032 {
        let got = new_flow(&dp, fam, &f, sport)?;
        ensure!(
            got == first,
            "flow from port {sport} went to {got:?}, not {first:?}"
        );
    }
    let t1 = boot_ns()?;
    let entry = the_entry(&dp, fam)?;
    ensure!(entry.backend_id == first.id, "{entry:?}");
    ensure!(
        (t0..=t1).contains(&entry.last_used_ns),
        "last used {} not in [{t0}, {t1}]",
        entry.last_used_ns
    );
    Ok(())
}

#[rstest]
fn without_affinity_flows_spread_and_nothing_is_remembered(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("without_affinity_flows_spread_and_nothing_is_remembered")? else {
        return Ok(());
    };
    let f = fam.frontend(4, 0);
    dp.install_frontend(&f)?;
    let mut seen = std::collections::BTreeSet::new();
    for sport in 31_000..31_064 {
        seen.insert(new_flow(&dp, fam, &f, sport)?.id);
    }
    // 64 uniform picks among 4 all landing on one backend: probability 4^-63.
    ensure!(seen.len() > 1, "every flow went to {seen:?}");
    ensure!(dp.affinity()?.is_empty(), "an entry without affinity");
    Ok(())
}

#[rstest]
fn a_fresh_entry_wins_an_expired_one_is_replaced(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("a_fresh_entry_wins_an_expired_one_is_replaced")? else {
        return Ok(());
    };
    let f = fam.frontend(4, TIMEOUT_S);
    dp.install_frontend(&f)?;
    let remembered = f.backends[3];
    let client = fam.client().ip();
    let now = boot_ns()?;
    // 5 s old: every new flow goes to it, and refreshes it.
    dp.insert_affinity(
        client,
        SERVICE_ID,
        AffinityValue {
            last_used_ns: now - 5 * NS,
            backend_id: remembered.id,
            _pad: 0,
        },
    )?;
    for sport in 32_000..32_016 {
        ensure!(new_flow(&dp, fam, &f, sport)? == remembered);
    }
    ensure!(
        the_entry(&dp, fam)?.last_used_ns >= now,
        "refreshed by the new flows"
    );

    // Older than the timeout: ignored, and replaced by the backend the flow got.
    dp.insert_affinity(
        client,
        SERVICE_ID,
        AffinityValue {
            last_used_ns: boot_ns()? - u64::from(TIMEOUT_S + 1) * NS,
            backend_id: remembered.id,
            _pad: 0,
        },
    )?;
    let t0 = boot_ns()?;
    let mut moved = false;
    // Each try has a 3 in 4 chance to leave the remembered backend.
    for sport in 32_100..32_116 {
        let got = new_flow(&dp, fam, &f, sport)?;
        let entry = the_entry(&dp, fam)?;
        ensure!(
            entry.backend_id == got.id && entry.last_used_ns >= t0,
            "{entry:?}"
        );
        if got != remembered {
            moved = true;
            break;
        }
        // Age it again for the next try.
        dp.insert_affinity(
            client,
            SERVICE_ID,
            AffinityValue {
                last_used_ns: boot_ns()? - u64::from(TIMEOUT_S + 1) * NS,
                ..entry
            },
        )?;
    }
    ensure!(moved, "an expired entry kept its backend 16 times");
    Ok(())
}

#[rstest]
fn a_backend_that_left_the_frontend_is_not_remembered(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut dp) = load("a_backend_that_left_the_frontend_is_not_remembered")? else {
        return Ok(());
    };
    // The frontend now has one backend (100); 101 left it but still exists (another
    // frontend may use it): it is in the backends map, not a member.
    let f = fam.frontend(1, TIMEOUT_S);
    dp.install_frontend(&f)?;
    let left = BackendRef {
        id: 101,
        addr: fam.backend(1).parse().context("addr")?,
        port: 8080,
    };
    dp.install_backend(&left, IPPROTO_TCP)?;
    dp.insert_affinity(
        fam.client().ip(),
        SERVICE_ID,
        AffinityValue {
            last_used_ns: boot_ns()? - NS,
            backend_id: left.id,
            _pad: 0,
        },
    )?;
    let got = new_flow(&dp, fam, &f, 33_000)?;
    ensure!(got == f.backends[0], "went to {got:?}");
    ensure!(
        the_entry(&dp, fam)?.backend_id == f.backends[0].id,
        "replaced"
    );

    // And a member removed by the daemon is left at once.
    let two = fam.frontend(2, TIMEOUT_S);
    dp.install_frontend(&two)?;
    dp.insert_affinity(
        fam.client().ip(),
        SERVICE_ID,
        AffinityValue {
            last_used_ns: boot_ns()? - NS,
            backend_id: two.backends[1].id,
            _pad: 0,
        },
    )?;
    ensure!(new_flow(&dp, fam, &two, 33_001)? == two.backends[1]);
    dp.set_master(&two, 1)?;
    dp.remove_member(SERVICE_ID, two.backends[1].id)?;
    let one = fam.frontend(1, TIMEOUT_S);
    ensure!(new_flow(&dp, fam, &one, 33_002)? == one.backends[0]);
    Ok(())
}
