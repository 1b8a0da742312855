//! UDP datagrams fragmented by IP. Only the first fragment carries the ports, so only it
//! goes through the pipeline; the programs record its translation under the datagram's
//! (source, destination, IP identification, protocol) as it arrived (before translation),
//! and the later fragments, found through that key, get the same addresses (no L4
//! rewrite: they carry no L4 header). One LRU map per family, and a per-CPU slot where
//! the first fragment's key waits while the pipeline translates it.

use core::mem::{offset_of, size_of};

/// Fragment map key, IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// IPv4 identification (16 bits, as on the wire, zero-extended: the first two bytes).
    pub id: [u8; 4],
    pub proto: u8,
    /// `FRAG_DIR_REQUEST` (seen at `from_pod` / `from_net`) or `FRAG_DIR_REPLY` (`to_pod` /
    /// `to_net`): a datagram's fragments cross several hooks, each direction's record is
    /// only found by the hooks of that direction.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Fragment map key, IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Identification of the fragment header, as on the wire.
    pub id: [u8; 4],
    pub proto: u8,
    /// `FRAG_DIR_REQUEST` (seen at `from_pod` / `from_net`) or `FRAG_DIR_REPLY` (`to_pod` /
    /// `to_net`): a datagram's fragments cross several hooks, each direction's record is
    /// only found by the hooks of that direction.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// The addresses the first fragment left with (after translation), IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragNat4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The addresses the first fragment left with (after translation), IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragNat6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Per-CPU: the key of the first fragment being translated (the pipeline rewrites the
/// packet in between, so its original addresses are kept here, not on the BPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPending {
    pub v4: FragKey4,
    pub v6: FragKey6,
}

/// `FragKey*::dir` values.
pub const FRAG_DIR_REQUEST: u8 = 0;
pub const FRAG_DIR_REPLY: u8 = 1;

/// Capacity of each fragment map: datagrams whose fragments are in flight at once (the
/// LRU evicts the oldest; a datagram that lost its entry has its later fragments passed
/// untouched). Fixed (no flag).
pub const FRAG_MAX: u32 = 8_192;

impl FragKey4 {
    pub const fn new(saddr: [u8; 4], daddr: [u8; 4], id: [u8; 4], proto: u8, dir: u8) -> Self {
        Self {
            saddr,
            daddr,
            id,
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

impl FragKey6 {
    pub const fn new(saddr: [u8; 16], daddr: [u8; 16], id: [u8; 4], proto: u8, dir: u8) -> Self {
        Self {
            saddr,
            daddr,
            id,
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

const _: () = {
    assert!(size_of::<FragKey4>() == 16);
    assert!(offset_of!(FragKey4, id) == 8);
    assert!(offset_of!(FragKey4, proto) == 12);
    assert!(offset_of!(FragKey4, dir) == 13);
    assert!(size_of::<FragKey6>() == 40);
    assert!(offset_of!(FragKey6, id) == 32);
    assert!(offset_of!(FragKey6, proto) == 36);
    assert!(offset_of!(FragKey6, dir) == 37);
    assert!(size_of::<FragNat4>() == 8);
    assert!(size_of::<FragNat6>() == 32);
    assert!(offset_of!(FragPending, v6) == 16);
    assert!(size_of::<FragPending>() == 56);
};
