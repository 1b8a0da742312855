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
