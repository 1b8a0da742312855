//! The conntrack clock of the programs (`bpf_ktime_get_boot_ns`, CLOCK_BOOTTIME).

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds of CLOCK_BOOTTIME, the clock conntrack expiries are written in.
pub fn boot_ns() -> anyhow::Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
    Ok(u64::try_from(now.tv_sec())? * 1_000_000_000 + u64::try_from(now.tv_nsec())?)
}
