//! Nanoseconds per packet of the four paths through the tc programs, measured with
//! BPF_PROG_TEST_RUN (the kernel times the runs; nothing is attached or sent).
//!
//! - new-flow DNAT: `repeat = 1` over many distinct source ports (each run creates
//!   conntrack), averaged;
//! - established hit: one flow's second packet, `repeat = 1_000_000`;
//! - reply reverse NAT: the backend's reply, `repeat = 1_000_000`;
//! - pass-through: a TCP packet to a non-frontend, `repeat = 1_000_000`.
//!
//! Run as root: `cargo run -p service-lb-tests --example prog_test_run_ns --release`.
//! Prints a table; it asserts nothing about time.

use std::net::SocketAddr;

use anyhow::{ensure, Context as _};
use service_lb_common::{proto::IPPROTO_TCP, Hook, Reason};
use service_lb_tests::{
    packet::{Dataplane, Frontend, PacketSpec, L4},
    privileges::require_root,
};

const REPEAT: u32 = 1_000_000;
const NEW_FLOWS: u16 = 5_000;

fn main() -> anyhow::Result<()> {
    if !require_root("prog_test_run_ns") {
        return Ok(());
    }
    let mut dp = Dataplane::load().context("loading the programs")?;
    let frontend = Frontend::new("198.19.0.10", 80, IPPROTO_TCP, 1)
        .backend(100, "198.18.2.10", 8080)
        .backend(101, "198.18.2.11", 8080)
        .backend(102, "198.18.2.12", 8080);
    dp.install_frontend(&frontend)?;
    let client: SocketAddr = "198.18.1.2:40000".parse()?;
    let vip: SocketAddr = "198.19.0.10:80".parse()?;

    let mut rows = Vec::new();

    // New flows: one run each, distinct source ports so every run misses conntrack.
    let mut total_ns = 0u128;
    for i in 0..NEW_FLOWS {
        let syn = PacketSpec::new(client, vip, L4::SYN)
            .with_sport(1_000 + i)
            .build()?;
        total_ns += dp.run_repeated(Hook::FromPod, &syn, 1)?.as_nanos();
    }
    let new_flows = dp
        .counters()?
        .iter()
        .find(|(hook, reason, _)| (*hook, *reason) == (Hook::FromPod, Reason::DnatNewFlow))
        .map_or(0, |(_, _, c)| c.packets);
    ensure!(
        new_flows == u64::from(NEW_FLOWS),
        "{new_flows} of {NEW_FLOWS} runs took the new-flow path"
    );
    rows.push((
        "new-flow DNAT (from_pod)",
        total_ns / u128::from(NEW_FLOWS),
        u32::from(NEW_FLOWS),
    ));

    // Established: the flow exists (created above with sport 1000), same packet again.
    let ack = PacketSpec::new(client, vip, L4::ACK)
        .with_sport(1_000)
        .build()?;
    rows.push((
        "established hit (from_pod)",
        dp.run_repeated(Hook::FromPod, &ack, REPEAT)?.as_nanos(),
        REPEAT,
    ));

    // Reply: find the backend of that flow from its translated packet.
    let translated = dp.run(Hook::FromPod, &ack)?.data;
    let backend = frontend
        .backends
        .iter()
        .map(|b| SocketAddr::new(b.addr, b.port))
        .find(|b| {
            PacketSpec::new(client, vip, L4::ACK)
                .with_sport(1_000)
                .with_dst(*b)
                .build()
                .ok()
                == Some(translated.clone())
        })
        .context("established flow not translated to a known backend")?;
    let reply = PacketSpec::new(backend, SocketAddr::new(client.ip(), 1_000), L4::ACK).build()?;
    rows.push((
        "reply reverse NAT (to_pod)",
        dp.run_repeated(Hook::ToPod, &reply, REPEAT)?.as_nanos(),
        REPEAT,
    ));

    let other = PacketSpec::new(client, "198.19.0.11:80".parse()?, L4::ACK).build()?;
    rows.push((
        "pass-through, not a frontend (from_pod)",
        dp.run_repeated(Hook::FromPod, &other, REPEAT)?.as_nanos(),
        REPEAT,
    ));

    println!("{:<42} {:>10} {:>10}", "path", "ns/packet", "runs");
    for (path, ns, runs) in rows {
        println!("{path:<42} {ns:>10} {runs:>10}");
    }
    Ok(())
}
