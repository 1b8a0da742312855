//! `slb-bench [--quick] [--out docs/benchmarks.md]`: the service-lb benchmark (issue 4).
//! Run as root, normally through `cargo xtask bench [--quick]`. Prints a table per section
//! and writes the markdown report and an SVG chart beside it.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use service_lb_tests::{
    bench::{self, BenchConfig},
    privileges::require_root,
};

const USAGE: &str = "usage: slb-bench [--quick] [--out FILE.md]";

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    let mut out = PathBuf::from("docs/benchmarks.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
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
