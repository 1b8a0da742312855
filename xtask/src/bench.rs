//! `cargo xtask bench [--quick]`: set-up, then the benchmark binary in release mode. It
//! prints its tables and writes `docs/benchmarks.md` and `docs/benchmarks.svg`.

use anyhow::Result;

use crate::{setup, shell};

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    setup::run()?;
    let mut cmd = shell::cargo();
    // A stub eBPF object must never be benchmarked.
    cmd.env("SERVICE_LB_REQUIRE_EBPF", "1");
    cmd.args([
        "run",
        "--release",
        "--package",
        "service-lb-tests",
        "--bin",
        "slb-bench",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    shell::run(&mut cmd)
}
