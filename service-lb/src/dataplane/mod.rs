//! Everything that touches the kernel: load, pin, attach, typed map access, write order.
pub mod object;
