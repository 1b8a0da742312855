//! `service-lb cleanup`: detach every program, unpin every map, remove the folder (and the
//! daemon's policy snapshot). With `--handover-conntrack` (the roll-back procedure), the
//! live flows of our conntrack maps first become NATed netfilter conntrack entries, so the
//! connections service-lb translated keep working under kube-proxy's rules
//! (`dataplane::ct_handover`). `--dry-run` lists what it would hand over and changes nothing.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tracing::warn;

use super::Failure;
use crate::dataplane::{self, ct_handover, DEFAULT_BPFFS};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs folder of the data plane.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,

    /// Before detaching, hand the live translated flows (TCP established, UDP) over to
    /// netfilter's conntrack as NATed entries (ctnetlink), so they survive a roll-back to
    /// kube-proxy. Needs nf_conntrack and nf_nat in the node's network namespace.
    #[arg(long)]
    pub handover_conntrack: bool,

    /// List what would be handed over (with --handover-conntrack) and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn print_flows(sel: &ct_handover::Selection, verb: &str) {
    for f in &sel.flows {
        println!(
            "{verb} {} {} -> {} via {} wire {} timeout {}s",
            f.proto_name(),
            f.client,
            f.backend,
            f.frontend,
            std::net::SocketAddr::new(f.client.ip(), f.reply_port),
            f.timeout_s
        );
    }
    for (why, n) in &sel.skipped {
        println!(
            "not handed over: {n} live entr{} ({why})",
            if *n == 1 { "y" } else { "ies" }
        );
    }
}

pub fn run(args: &CleanupArgs) -> Result<(), Failure> {
    if args.handover_conntrack {
        let mut sel = ct_handover::live_flows(&args.bpffs)
            .context("reading the live flows of the conntrack maps")?;
        // The port on the wire as netfilter's own entry of the flow has it (netfilter may
        // have moved it), so the listing and the hand-over agree with what the backend sees.
        if let Ok(nl) = ct_handover::Ctnetlink::open() {
            for flow in &mut sel.flows {
                if let Some(port) = nl.netfilter_wire_port(flow) {
                    flow.reply_port = port;
                }
            }
        }
        if args.dry_run {
            print_flows(&sel, "would hand over");
        } else {
            print_flows(&sel, "hand over");
            // UDP first (not held back), then TCP held back for as short as possible:
            // its hand-over, then the detach below.
            let (tcp, udp): (Vec<_>, Vec<_>) = sel
                .flows
                .iter()
                .copied()
                .partition(|f| f.proto_name() == "tcp");
            let mut report = ct_handover::hand_over(&udp)
                .context("handing the live UDP flows over to netfilter's conntrack")?;
            let frozen = ct_handover::freeze(&args.bpffs, &tcp)
                .context("marking the TCP flows being handed over")?;
            tracing::debug!(frozen, "TCP forward entries held back for the hand-over");
            let tcp_report = ct_handover::hand_over(&tcp)
                .context("handing the live TCP flows over to netfilter's conntrack")?;
            report.handed_over += tcp_report.handed_over;
            report.replaced += tcp_report.replaced;
            report.failed.extend(tcp_report.failed);
            for (flow, e) in &report.failed {
                warn!(client = %flow.client, frontend = %flow.frontend, error = %e, "flow not handed over");
                println!(
                    "FAILED {} {} -> {}: {e}",
                    flow.proto_name(),
                    flow.client,
                    flow.frontend
                );
            }
            println!(
                "handed over {} flow(s) to netfilter's conntrack ({} of its own entries replaced, {} failed)",
                report.handed_over,
                report.replaced,
                report.failed.len()
            );
        }
    }
    if args.dry_run {
        println!(
            "would remove every link and map pin under {}",
            args.bpffs.display()
        );
        return Ok(());
    }
    let cleaned = dataplane::cleanup(&args.bpffs)?;
    if let Err(e) = crate::daemon::policy::remove_snapshot(&args.bpffs) {
        warn!(error = %e, "cannot remove the policy snapshot");
    }
    println!(
        "removed {} link(s) and {} map pin(s) under {}",
        cleaned.links,
        cleaned.maps,
        args.bpffs.display()
    );
    Ok(())
}
