//! The ABI between service-lb's kernel programs and its daemon.
//!
//! Every BPF map key and value, every map name and every constant both sides must agree
//! on is defined here, once. Rules (see `shared/style.md`):
//! - `#[repr(C)]`, fixed-width integers, explicit padding fields named `_pad*` that are
//!   always zero (hash keys are compared byte by byte);
//! - addresses are raw network-order bytes (`[u8; 4]` / `[u8; 16]`), ports are the raw
//!   network-order `u16` as it sits in the packet and are named `*_be`;
//! - no `bool`, `Option` or Rust enums inside map values;
//! - sizes and offsets are asserted at compile time.
//!
//! The `user` feature adds `aya::Pod` impls and std-only helpers for the daemon.
#![no_std]

pub mod affinity;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod frag;
pub mod hairpin;
pub mod maglev;
pub mod maps;
pub mod meta;
pub mod names;
pub mod northsouth;
pub mod policy;
pub mod proto;
pub mod service;
pub mod sock;
pub mod vip;

#[cfg(feature = "user")]
mod pod;

pub use config::DataplaneConfig;
pub use conntrack::{CtEntry, CtKey4, CtKey6};
pub use counters::{Counter, Hook, Reason};
pub use meta::Meta;
pub use names::SvcName;
pub use service::{Backend4, Backend6, RevNat4, RevNat6, Svc4Key, Svc6Key, SvcValue};
pub use vip::VipValue;
