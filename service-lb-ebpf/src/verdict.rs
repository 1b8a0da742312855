//! The outcome of a packet: pass, drop or answer, always with the reason it is counted
//! under.

use service_lb_common::Reason;

#[derive(Clone, Copy)]
pub enum Verdict {
    Pass(Reason),
    Drop(Reason),
    /// The packet was rewritten into an answer to its sender (see `reject`): sent back
    /// out of the interface it came in on.
    Answer(Reason),
}

/// A pipeline step: `Ok` to go on, `Err` when the packet's fate is decided.
pub type Step<T> = Result<T, Verdict>;

/// Tag bits of a raw verdict (`Verdict::to_raw`), above the reason.
const RAW_DROP: u64 = 1 << 32;
const RAW_ANSWER: u64 = 2 << 32;
/// A raw value that is no verdict (`RAW_OTHER + n`): a subprogram's other outcomes.
pub const RAW_OTHER: u64 = 4 << 32;

impl Verdict {
    /// The verdict as one scalar: BPF subprograms (`#[inline(never)]`) can only return a
    /// register, not a struct (the verifier refuses a pointer into their stack).
    #[inline(always)]
    pub fn to_raw(self) -> u64 {
        match self {
            Verdict::Pass(reason) => u64::from(reason as u32),
            Verdict::Drop(reason) => RAW_DROP | u64::from(reason as u32),
            Verdict::Answer(reason) => RAW_ANSWER | u64::from(reason as u32),
        }
    }

    /// The verdict `to_raw` encoded (`raw < RAW_OTHER`).
    #[inline(always)]
    pub fn from_raw(raw: u64) -> Self {
        // SAFETY: `raw` came from `to_raw`, so its low 32 bits are a `Reason`
        // discriminant (a `#[repr(u32)]` enum).
        let reason = unsafe { core::mem::transmute::<u32, Reason>(raw as u32) };
        if raw & RAW_DROP != 0 {
            Verdict::Drop(reason)
        } else if raw & RAW_ANSWER != 0 {
            Verdict::Answer(reason)
        } else {
            Verdict::Pass(reason)
        }
    }
}

/// A decided step as a raw verdict (both arms are verdicts).
#[inline(always)]
pub fn raw(step: Step<Verdict>) -> u64 {
    match step {
        Ok(verdict) | Err(verdict) => verdict.to_raw(),
    }
}
