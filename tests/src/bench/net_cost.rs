//! Per-packet cost net of the harness (issue 14): every measured BPF_PROG_TEST_RUN call of
//! a real tc program is paired with a call of `tc_empty` (the object's do-nothing
//! classifier) on the same packet with the same repeat count, and both are timed twice:
//!
//! - by BPF_PROG_TEST_RUN itself (`duration`: the kernel's timer around the run loop,
//!   which also covers its own clock reads and the per-run set-up);
//! - by the kernel's BPF run-time statistics (`BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: a
//!   `sched_clock()` pair around each run of the program, summed in the program's
//!   `run_time_ns` / `run_cnt`), enabled through a file descriptor, so they switch off by
//!   themselves when it closes, even if the benchmark dies.
//!
//! Net = real - empty, for each clock. Every call is a single run (`repeat` 1): a tc
//! program that rewrites the packet changes the skb that the next run of a `repeat` loop
//! gets (BPF_PROG_TEST_RUN does not restore it), so `repeat` > 1 would time the rewritten
//! packet instead of the one asked for.
//!
//! The harness is generic: any loaded `SchedClassifier`, any packets, any output check,
//! so other rows (policy, north-south) use it as is.

use std::{os::fd::OwnedFd, time::Duration};

use anyhow::{ensure, Context as _};
use aya::{
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf,
};

/// The do-nothing program of the eBPF object (`service-lb-ebpf/src/main.rs`).
pub const EMPTY_PROGRAM: &str = "tc_empty";

/// Loads (verifies) `tc_empty` in `ebpf`, the object the measured programs belong to.
pub fn load_empty(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(EMPTY_PROGRAM)
        .with_context(|| format!("program {EMPTY_PROGRAM} missing from the eBPF object"))?
        .try_into()?;
    program.load().context("verifying tc_empty")
}

/// The kernel's BPF run-time statistics, on while this lives.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)")?;
        Ok(Self { _fd: fd })
    }
}

/// Sums over calls of one path: gross (the real program) and empty (`tc_empty`), each
/// by both clocks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub calls: u64,
    /// BPF_PROG_TEST_RUN durations, ns, one per call.
    pub gross: Vec<u64>,
    pub empty: Vec<u64>,
    /// run_time_ns deltas (0 when the statistics are off) and the runs they cover.
    pub stats_gross: Duration,
    pub stats_empty: Duration,
    pub stats_runs: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.gross.extend_from_slice(&other.gross);
        self.empty.extend_from_slice(&other.empty);
        self.stats_gross += other.stats_gross;
        self.stats_empty += other.stats_empty;
        self.stats_runs += other.stats_runs;
    }

    /// Test run: the median call (a call the scheduler or the hypervisor interrupted
    /// does not move it); BPF stats: the mean (the kernel keeps only sums). In ns.
    pub fn cost(&self) -> Cost {
        let mid = |v: &[u64]| median(v.iter().map(|&n| n as f64).collect());
        let per = |d: Duration, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                d.as_nanos() as f64 / n as f64
            }
        };
        Cost {
            gross_ns: mid(&self.gross),
            empty_ns: mid(&self.empty),
            stats_gross_ns: per(self.stats_gross, self.stats_runs),
            stats_empty_ns: per(self.stats_empty, self.stats_runs),
        }
    }
}

/// ns per packet of one path: gross, the empty program's, by both clocks (test run: the
/// median call; BPF stats: the mean run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub gross_ns: f64,
    pub empty_ns: f64,
    pub stats_gross_ns: f64,
    pub stats_empty_ns: f64,
}

impl Cost {
    /// BPF_PROG_TEST_RUN duration, real minus empty.
    pub fn net_ns(&self) -> f64 {
        self.gross_ns - self.empty_ns
    }

    /// run_time_ns per run, real minus empty.
    pub fn stats_net_ns(&self) -> f64 {
        self.stats_gross_ns - self.stats_empty_ns
    }

    /// The median of each figure over `costs` (rounds).
    pub fn median(costs: &[Cost]) -> Cost {
        let m = |pick: fn(&Cost) -> f64| median(costs.iter().map(pick).collect());
        Cost {
            gross_ns: m(|c| c.gross_ns),
            empty_ns: m(|c| c.empty_ns),
            stats_gross_ns: m(|c| c.stats_gross_ns),
            stats_empty_ns: m(|c| c.stats_empty_ns),
        }
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One BPF_PROG_TEST_RUN call (`repeat` 1): the kernel's duration and the packet as the
/// program left it.
pub fn run_once(program: &SchedClassifier, packet: &[u8]) -> anyhow::Result<(Duration, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(usize::try_from(result.data_size_out)?);
    Ok((result.duration, out))
}

fn stats_of(program: &SchedClassifier) -> anyhow::Result<(Duration, u64)> {
    let info = program.info().context("program info")?;
    Ok((info.run_time(), info.run_count()))
}

/// Runs `real` once on each packet of `packets`, each followed by `empty` on the same
/// packet; `check(index, input, output)` judges every output of `real`, and the empty
/// program must leave every packet as it was.
pub fn measure<I, C>(
    real: &SchedClassifier,
    empty: &SchedClassifier,
    packets: I,
    mut check: C,
) -> anyhow::Result<Tally>
where
    I: IntoIterator<Item = Vec<u8>>,
    C: FnMut(usize, &[u8], &[u8]) -> anyhow::Result<()>,
{
    let (real_time0, real_runs0) = stats_of(real)?;
    let (empty_time0, empty_runs0) = stats_of(empty)?;
    let mut tally = Tally::default();
    for (index, packet) in packets.into_iter().enumerate() {
        let (time, out) = run_once(real, &packet)?;
        check(index, &packet, &out)?;
        tally.gross.push(u64::try_from(time.as_nanos())?);
        let (time, out) = run_once(empty, &packet)?;
        ensure!(out == packet, "tc_empty changed a packet");
        tally.empty.push(u64::try_from(time.as_nanos())?);
        tally.calls += 1;
    }
    let (real_time1, real_runs1) = stats_of(real)?;
    let (empty_time1, empty_runs1) = stats_of(empty)?;
    let real_runs = real_runs1.saturating_sub(real_runs0);
    let empty_runs = empty_runs1.saturating_sub(empty_runs0);
    // Both programs ran once per call; the statistics count only while they are on.
    if real_runs == tally.calls && empty_runs == tally.calls {
        tally.stats_gross = real_time1.saturating_sub(real_time0);
        tally.stats_empty = empty_time1.saturating_sub(empty_time0);
        tally.stats_runs = tally.calls;
    }
    Ok(tally)
}

/// One BPF_PROG_TEST_RUN call of each program with `repeat` runs of `packet`: only for a
/// packet the program leaves as it was (checked), since later runs get the skb the
/// earlier ones left. The kernel's mean per run, warm (the loop stays in the kernel).
pub fn measure_repeat(
    real: &SchedClassifier,
    empty: &SchedClassifier,
    packet: &[u8],
    repeat: u32,
) -> anyhow::Result<Cost> {
    let mut cost = Cost {
        gross_ns: 0.0,
        empty_ns: 0.0,
        stats_gross_ns: f64::NAN,
        stats_empty_ns: f64::NAN,
    };
    for (program, into, stats_into) in [
        (real, &mut cost.gross_ns, &mut cost.stats_gross_ns),
        (empty, &mut cost.empty_ns, &mut cost.stats_empty_ns),
    ] {
        let (time0, runs0) = stats_of(program)?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(usize::try_from(result.data_size_out)?);
        ensure!(out == packet, "a repeated packet was modified");
        *into = result.duration.as_nanos() as f64;
        let (time1, runs1) = stats_of(program)?;
        let runs = runs1.saturating_sub(runs0);
        if runs == u64::from(repeat) {
            *stats_into = time1.saturating_sub(time0).as_nanos() as f64 / runs as f64;
        }
    }
    Ok(cost)
}
