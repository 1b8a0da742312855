//! `slb-demo`: runs the ClusterIP scenario and explains what happened, for a newcomer.
//! Needs root (network namespaces, BPF). Creates nothing outside its own namespaces and
//! bpffs folders, and removes them before it exits.

use std::process::ExitCode;

use service_lb_tests::scenario::{
    clusterip_scenario, FamilyOutcome, Outcome, Spread, BACKENDS, CLIENT, REMOVED, TCP_PORT,
    TCP_TARGET_PORT, UDP_PORT, UDP_TARGET_PORT, VIP4, VIP6,
};

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("slb-demo needs root (network namespaces and BPF): run it with sudo or `cargo xtask demo` as root");
        return ExitCode::from(77);
    }
    intro();
    match clusterip_scenario(&mut |step| println!("  {step}")) {
        Ok(outcome) if explain(&outcome) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\nthe demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn intro() {
    println!("service-lb demo: Kubernetes ClusterIP load balancing in eBPF, no kube-proxy, no iptables.\n");
    println!("A tiny two-node \"cluster\" is built out of network namespaces on this machine:");
    println!("  node n1: pods {CLIENT} and b1      node n2: pods b2 and b3");
    println!("  the nodes are linked by an underlay network (198.19.255.0/24, fd00:ff::/64).");
    println!("service-lb's tc programs are attached to every pod veth and the underlay device of");
    println!("both nodes, and both nodes get the same Services:");
    println!("  {VIP4}:{TCP_PORT}/TCP and [{VIP6}]:{TCP_PORT}/TCP -> pods {BACKENDS:?} port {TCP_TARGET_PORT}");
    println!("  {VIP4}:{UDP_PORT}/UDP and [{VIP6}]:{UDP_PORT}/UDP -> pods {BACKENDS:?} port {UDP_TARGET_PORT}");
    println!("Nothing listens on the ClusterIPs: the programs rewrite the destination of each new");
    println!("connection to a backend pod, and the source of its replies back to the ClusterIP.\n");
    println!("What happens:");
}

/// Prints what the run showed; `false` when something was not as expected.
fn explain(outcome: &Outcome) -> bool {
    println!("\nHow the connections were spread over the backends (answers per backend):\n");
    let mut header = format!("  {:<6} {:<5} {:<16}", "family", "proto", "phase");
    for b in &outcome.backends {
        header.push_str(&format!(" {b:>12}"));
    }
    header.push_str(&format!(" {:>7}", "failed"));
    println!("{header}");
    for family in &outcome.families {
        print_rows(outcome, family);
    }
    println!();
    println!("What this shows (each line checked against the measurements above):");
    let families = &outcome.families;
    let all_failed: u32 = families
        .iter()
        .map(|f| {
            f.tcp.failures
                + f.udp.failures
                + f.tcp_after_removal.failures
                + f.udp_after_removal.failures
        })
        .sum();
    let spread_evenly = families.iter().all(|f| {
        [&f.tcp, &f.udp].iter().all(|s| {
            outcome
                .backends
                .iter()
                .all(|b| (20.0..=47.0).contains(&s.percent(b)))
        })
    });
    let removed_unused = families.iter().all(|f| {
        f.tcp_after_removal.answers(REMOVED) == 0 && f.udp_after_removal.answers(REMOVED) == 0
    });
    let held_ok = families
        .iter()
        .all(|f| f.held_kept.iter().all(|h| h.answered == h.pings));
    let via_vip = families.iter().all(|f| {
        [&f.tcp, &f.udp, &f.tcp_after_removal, &f.udp_after_removal]
            .iter()
            .all(|s| s.wrong_reply_source == 0 && s.client_address_rewritten == 0)
    });
    let direct_ok = families.iter().all(|f| {
        f.direct.iter().all(|d| {
            d.answer
                .as_ref()
                .is_ok_and(|a| a.server_seen_by_client == d.target)
        })
    });
    verdict(all_failed == 0, &format!("{all_failed} calls failed"));
    verdict(
        spread_evenly,
        "each backend got between 20% and 47% of the new connections and queries",
    );
    verdict(
        removed_unused,
        &format!("after {REMOVED} was removed, no new connection or query reached it"),
    );
    verdict(
        held_ok,
        "connections opened before the removal to the remaining backends kept working \
         (conntrack keeps each flow on its backend)",
    );
    verdict(
        via_vip,
        "every reply came back from the ClusterIP (a UDP socket connected to the ClusterIP \
         received it) and every backend saw the client's real pod address (no SNAT)",
    );
    verdict(
        direct_ok,
        "traffic straight to a pod address was left alone (answered from the pod's own address)",
    );
    for counters in &outcome.counters {
        let new_flows = counters.packets_any_hook(service_lb_common::Reason::DnatNewFlow);
        let replies = counters.packets_any_hook(service_lb_common::Reason::RevNatReply);
        println!(
            "  node {}: {new_flows} new flows translated, {replies} replies reverse-translated (from its counters map)",
            counters.node
        );
    }
    println!("\nEverything the demo created (namespaces, pinned maps and links) has been removed.");
    println!("See `service-lb inspect` for the same view of a real node.");
    [
        all_failed == 0,
        spread_evenly,
        removed_unused,
        held_ok,
        via_vip,
        direct_ok,
    ]
    .iter()
    .all(|ok| *ok)
}

fn verdict(ok: bool, what: &str) {
    println!("  {} {what}", if ok { "[ok]" } else { "[NOT AS EXPECTED]" });
}

fn print_rows(outcome: &Outcome, f: &FamilyOutcome) {
    let rows: [(&str, &str, &Spread); 4] = [
        ("TCP", "all 3 backends", &f.tcp),
        ("UDP", "all 3 backends", &f.udp),
        ("TCP", "after removal", &f.tcp_after_removal),
        ("UDP", "after removal", &f.udp_after_removal),
    ];
    for (proto, phase, spread) in rows {
        let mut line = format!("  {:<6} {proto:<5} {phase:<16}", f.family.to_string());
        for b in &outcome.backends {
            let cell = format!("{} ({:.0}%)", spread.answers(b), spread.percent(b));
            line.push_str(&format!(" {cell:>12}"));
        }
        line.push_str(&format!(" {:>7}", spread.failures));
        println!("{line}");
    }
}
