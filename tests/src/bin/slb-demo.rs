//! `slb-demo` (`cargo xtask demo`): the real `service-lb run --manifests` daemon on a
//! two-node sandbox, explained for a newcomer. Needs root (network namespaces, BPF).
//! Creates nothing outside its own namespaces, bpffs folders and manifests folder, and
//! removes them before it exits.

use std::process::ExitCode;

use service_lb_tests::scenario::daemon_demo::{
    daemon_demo, DemoOutcome, HttpSpread, DEMO_BACKENDS, DEMO_CLIENT, DEMO_KEPT_ALIVE_REQUESTS,
    DEMO_PORT, DEMO_REMOVED, DEMO_REQUESTS, DEMO_TARGET_PORT, DEMO_VIP,
};

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("slb-demo needs root (network namespaces and BPF): run it with sudo or `cargo xtask demo` as root");
        return ExitCode::from(77);
    }
    intro();
    match daemon_demo(&mut |step| println!("  {step}")) {
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
    println!("  node n1: pods {DEMO_CLIENT} and b1      node n2: pods b2 and b3");
    println!("Instead of a Kubernetes API server, the cluster state is a folder of manifests: a");
    println!("Service (ClusterIP {DEMO_VIP}:{DEMO_PORT}) and its EndpointSlice (pods {DEMO_BACKENDS:?}, port {DEMO_TARGET_PORT}).");
    println!(
        "The service-lb daemon runs on each node, watches that folder, and writes what it reads"
    );
    println!("into its eBPF maps. Nothing listens on the ClusterIP: the programs on the pod veths");
    println!(
        "rewrite each new connection to a backend pod and the replies back to the ClusterIP.\n"
    );
    println!("Later a NetworkPolicy in the same folder closes the backends to pods without the");
    println!("label role=frontend, and `service-lb diff` checks the maps against the folder.\n");
    println!("What happens:");
}

fn row(phase: &str, spread: &HttpSpread) {
    let mut line = format!("  {phase:<28}");
    for b in DEMO_BACKENDS {
        let n = spread.answers(b);
        let pct = f64::from(n) * 100.0 / f64::from(DEMO_REQUESTS);
        line.push_str(&format!(" {:>12}", format!("{n} ({pct:.0}%)")));
    }
    line.push_str(&format!(" {:>7}", spread.failures));
    println!("{line}");
}

/// Prints what the run showed; `false` when something was not as expected.
fn explain(outcome: &DemoOutcome) -> bool {
    println!(
        "\nWho answered the {DEMO_REQUESTS} HTTP requests to http://{DEMO_VIP}:{DEMO_PORT}/ :\n"
    );
    let mut header = format!("  {:<28}", "");
    for b in DEMO_BACKENDS {
        header.push_str(&format!(" {b:>12}"));
    }
    header.push_str(&format!(" {:>7}", "failed"));
    println!("{header}");
    row("before the edit", &outcome.before);
    row(&format!("after removing {DEMO_REMOVED}"), &outcome.after);
    println!();
    println!("What this shows (each line checked against the measurements above):");
    let failures = outcome.before.failures + outcome.after.failures;
    let spread_evenly = DEMO_BACKENDS.iter().all(|b| {
        let share = f64::from(outcome.before.answers(b)) * 100.0 / f64::from(DEMO_REQUESTS);
        (20.0..=47.0).contains(&share)
    });
    let removed_unused = outcome.after.answers(DEMO_REMOVED) == 0;
    let others_used = DEMO_BACKENDS
        .iter()
        .filter(|b| **b != DEMO_REMOVED)
        .all(|b| outcome.after.answers(b) > 0);
    let fast = outcome.change_took.as_secs_f64() < 1.0;
    let kept_serving = outcome.served_after_stop == 10;
    let graceful = outcome.kept_alive_after.len() == DEMO_KEPT_ALIVE_REQUESTS
        && outcome
            .kept_alive_after
            .iter()
            .all(|a| a.as_deref() == Ok(DEMO_REMOVED));
    verdict(failures == 0, &format!("{failures} requests failed"));
    verdict(
        spread_evenly,
        "the daemon programmed the Service from the manifests: each backend got 20-47% of the requests",
    );
    verdict(
        removed_unused && others_used,
        &format!(
            "after the edit, no request reached {DEMO_REMOVED} and the other backends shared them"
        ),
    );
    verdict(
        graceful,
        &format!(
            "the connection already open to {DEMO_REMOVED} kept working after {DEMO_REMOVED} left the Service \
             (rolling updates never cut established connections; `inspect backends` showed it draining)"
        ),
    );
    verdict(
        fast,
        &format!(
            "the edit reached the maps of both nodes in {} ms (target: under 1 s)",
            outcome.change_took.as_millis()
        ),
    );
    let policy = &outcome.policy;
    let denied = policy.answered_while_denied == 0;
    let allowed = policy.answered_when_allowed > 0;
    verdict(
        denied && allowed,
        &format!(
            "NetworkPolicy: a client without the label role=frontend got no answer through the ClusterIP \
             (seen by a probe that ended {} ms after the policy was written; an unanswered request waits 2 s), and was answered {} ms after it got the label",
            policy.deny_took.as_millis(),
            policy.allow_took.as_millis()
        ),
    );
    let diff_equal = policy.diff_exit == Some(0);
    verdict(
        diff_equal,
        "`service-lb diff` found node n1's maps equal to what the manifests say (exit code 0)",
    );
    verdict(
        kept_serving,
        "with the daemons stopped, the data plane kept serving (restarts never break traffic)",
    );
    println!("\nEverything the demo created (namespaces, pinned maps and links, the manifests folder) has been removed.");
    println!("Try `service-lb run --manifests DIR` yourself, and `service-lb inspect` to see a node's maps.");
    failures == 0
        && spread_evenly
        && removed_unused
        && others_used
        && kept_serving
        && graceful
        && denied
        && allowed
        && diff_equal
}

fn verdict(ok: bool, what: &str) {
    println!("  {} {what}", if ok { "[ok]" } else { "[NOT AS EXPECTED]" });
}
