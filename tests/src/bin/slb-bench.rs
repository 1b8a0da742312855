//! `slb-bench [--quick] [--out docs/benchmarks.md]`: the service-lb benchmark (issue 4).
//! Run as root, normally through `cargo xtask bench [--quick]`. Prints a table per section
//! and writes the markdown report and an SVG chart beside it.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use service_lb_tests::{
    bench::{self, BenchConfig},
    privileges::require_root,
};

const USAGE: &str =
    "usage: slb-bench [--quick] [--out FILE.md] [--only socket-lb [--diagnose] [--services N,N..] | per-packet | e2e-100k | ct-cleanup | control-plane | memory]";

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut diagnose = false;
    let mut sizes: Option<Vec<u32>> = None;
    let mut out = PathBuf::from("docs/benchmarks.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--diagnose" => diagnose = true,
            "--services" => {
                let list = args.next().context(USAGE)?;
                sizes = Some(
                    list.split(',')
                        .map(|n| n.trim().parse::<u32>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--services {list:?}\n{USAGE}"))?,
                );
            }
            "--only" => only = Some(args.next().context(USAGE)?),
            "--out" => out = PathBuf::from(args.next().context(USAGE)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !require_root("slb-bench") {
        bail!("slb-bench needs root (BPF_PROG_TEST_RUN, network namespaces)");
    }
    match only.as_deref() {
        None => {}
        Some("socket-lb") => {
            // The socket LB's rows (issue 10): floor, tc path, socket path at each N.
            let (default_services, bounds) = if quick {
                (vec![1_000], BenchConfig::quick().e2e_bounds)
            } else {
                (vec![1_000, 10_000, 100_000], BenchConfig::full().e2e_bounds)
            };
            let services = sizes.unwrap_or(default_services);
            anyhow::ensure!(
                services.iter().all(|&n| n >= 2),
                "--services: at least 2 services per size"
            );
            let bounds = bench::e2e::LoopBounds {
                bulk_bytes: 0,
                ..bounds
            };
            let targets: &[bench::e2e::Target] = if diagnose {
                &bench::e2e::Target::SOCKET_LB_DIAGNOSE
            } else {
                &bench::e2e::Target::SOCKET_LB
            };
            return bench::run_socket_lb(&services, bounds, targets);
        }
        Some("per-packet") => {
            // Per-packet cost net of the harness (issue 14) at 1k/10k/100k (--quick: 1k).
            let (config, services) = if quick {
                (BenchConfig::quick(), vec![1_000])
            } else {
                (BenchConfig::full(), vec![1_000, 10_000, 100_000])
            };
            return bench::run::run_per_packet(&config, &services);
        }
        Some("e2e-100k") => {
            // End to end at 100k Services (issue 14): the floor and the tc path.
            let bounds = if quick {
                BenchConfig::quick().e2e_bounds
            } else {
                BenchConfig::full().e2e_bounds
            };
            let bounds = bench::e2e::LoopBounds {
                bulk_bytes: 0,
                ..bounds
            };
            return bench::run::run_e2e_tc(&[100_000], bounds);
        }
        Some("ct-cleanup") => {
            // One UDP endpoint change with 1M UDP conntrack entries (--quick: 100k).
            return bench::run::run_ct_cleanup(if quick { 100_000 } else { 1_000_000 });
        }
        Some(only @ ("control-plane" | "memory")) => {
            // Issue 14's rows: full sync, RSS and map memory (per map) at each N; with
            // `control-plane` also the EndpointSlice change -> map latency at each N.
            let services = if quick {
                vec![1_000]
            } else {
                vec![10_000, 100_000]
            };
            let changes = if only == "memory" { 0 } else { 100 };
            return bench::run_control_plane(&services, changes, BenchConfig::full().sync_bound);
        }
        Some(other) => bail!("unknown --only {other:?}\n{USAGE}"),
    }
    let (config, command) = if quick {
        (BenchConfig::quick(), "cargo xtask bench --quick")
    } else {
        (BenchConfig::full(), "cargo xtask bench")
    };
    let outcome = bench::run(&config, &out, command)?;
    println!(
        "report: {}\nchart: {}",
        outcome.markdown_path.display(),
        outcome.chart_path.display()
    );
    Ok(())
}
