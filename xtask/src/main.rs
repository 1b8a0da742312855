//! `cargo xtask`: the project's own build, set-up, test and demo commands.
//!
//! Every command first runs the parts of `setup` it needs, so a newcomer on a fresh machine
//! only ever types `cargo xtask demo` or `cargo xtask test`.

mod bench;
mod image;
mod setup;
mod shell;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "service-lb's build, set-up, test and demo commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a new machine lacks (idempotent): nightly rust-src, bpf-linker built
    /// against the nightly's libLLVM, the bpffs mount, Debian packages the tests use, the
    /// manifest-validation virtualenv.
    Setup {
        /// Only what building needs (no test packages, no bpffs mount, no virtualenv):
        /// for the image's build stage.
        #[arg(long)]
        build_only: bool,
    },
    /// Run every test there is: unit, golden, kernel packet tests, namespace end-to-end.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The main job on its embedded default: a two-node sandbox with a ClusterIP service.
    Demo,
    /// rustfmt --check and clippy (warnings are errors).
    Lint,
    /// Build the container image (deploy/Dockerfile) with docker, podman or buildah.
    Image(image::ImageArgs),
    /// Benchmarks against kube-proxy's layouts; writes docs/benchmarks.md and its chart.
    Bench {
        /// Smaller sizes (about 3 minutes instead of 20).
        #[arg(long)]
        quick: bool,
        /// Only one group of rows, printed and not written (`socket-lb`: the socket LB's
        /// end-to-end rows against the floor and the tc path at 1k/10k/100k services).
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup { build_only: false } => setup::run(),
        Command::Setup { build_only: true } => setup::run_build_only(),
        Command::Test { args } => test(&args),
        Command::Demo => demo(),
        Command::Lint => lint(),
        Command::Image(args) => image::run(&args),
        Command::Bench { quick, only } => bench::run(quick, only.as_deref()),
    }
}

fn test(args: &[String]) -> Result<()> {
    setup::run()?;
    let mut cmd = shell::cargo();
    // A stub eBPF object must never pass for the real one in the test run.
    cmd.env("SERVICE_LB_REQUIRE_EBPF", "1");
    // The workspace's default members: everything but the eBPF crate, which only builds
    // for the bpf target (through service-lb/build.rs).
    cmd.args(["test", "--no-fail-fast"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
        return shell::run(&mut cmd);
    }
    let all = shell::run(&mut cmd);
    // The packet fixtures once more on CHECKSUM_COMPLETE skbs (what a NIC with receive
    // checksum offload hands over): the kernel then checks that every rewrite kept
    // `skb->csum` right.
    let mut complete = shell::cargo();
    complete
        .env("SERVICE_LB_REQUIRE_EBPF", "1")
        .env(CHECKSUM_COMPLETE_ENV, "1")
        .args(["test", "--no-fail-fast", "-p", "service-lb-tests"])
        .args(CHECKSUM_COMPLETE_SUITES.iter().flat_map(|t| ["--test", t]));
    let complete = shell::run(&mut complete);
    all.and(complete)
}

/// `service_lb_tests::packet::CHECKSUM_COMPLETE_ENV` (xtask does not depend on the tests crate).
const CHECKSUM_COMPLETE_ENV: &str = "SLB_TEST_CHECKSUM_COMPLETE";
/// Packet suites run a second time on CHECKSUM_COMPLETE skbs.
const CHECKSUM_COMPLETE_SUITES: &[&str] = &[
    "packet_tests",
    "packet_affinity",
    "packet_fragments",
    "packet_hairpin",
    "packet_verdicts",
    "packet_policy",
    "packet_northsouth",
];

fn demo() -> Result<()> {
    setup::run()?;
    let mut cmd = shell::cargo();
    cmd.env("SERVICE_LB_REQUIRE_EBPF", "1");
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "service-lb-tests",
        "--bin",
        "slb-demo",
    ]);
    shell::run(&mut cmd)
}

fn lint() -> Result<()> {
    setup::run()?;
    shell::run(shell::cargo().args(["fmt", "--all", "--check"]))?;
    shell::run(shell::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate, for its own target, with the nightly that builds it.
    shell::run(
        std::process::Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "service-lb-ebpf",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )
}
