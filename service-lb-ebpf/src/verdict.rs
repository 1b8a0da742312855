//! The outcome of a packet: pass or drop, always with the reason it is counted under.

use service_lb_common::Reason;

#[derive(Clone, Copy)]
pub enum Verdict {
    Pass(Reason),
    Drop(Reason),
}

/// A pipeline step: `Ok` to go on, `Err` when the packet's fate is decided.
pub type Step<T> = Result<T, Verdict>;
