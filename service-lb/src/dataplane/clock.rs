//! The conntrack clock: CLOCK_BOOTTIME, what the programs' `bpf_ktime_get_boot_ns` reads,
//! so user space can tell live entries from expired ones.

use super::maps::{StoreError, StoreOp};

/// Nanoseconds since boot (CLOCK_BOOTTIME).
pub fn boottime_ns() -> Result<u64, nix::Error> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// `boottime_ns` as a store error naming the map whose entries it was read for.
pub(crate) fn now_for(map: &'static str) -> Result<u64, StoreError> {
    boottime_ns().map_err(|e| StoreError::Failed {
        map,
        op: StoreOp::List,
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn boottime_moves_forward() {
        let a = super::boottime_ns().expect("clock");
        let b = super::boottime_ns().expect("clock");
        assert!(a > 0 && b >= a);
    }
}
