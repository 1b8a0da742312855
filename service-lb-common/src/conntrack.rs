//! Connection tracking: two LRU maps per family (TCP, everything else).
//!
//! Each translated flow has two entries:
//! - `CT_DIR_SERVICE`, keyed by the original tuple (client -> frontend), naming the
//!   chosen backend: established packets are DNATed to the same backend;
//! - `CT_DIR_REPLY`, keyed by the reply tuple (backend -> client), naming the frontend:
//!   replies get their source rewritten back to the frontend (reverse NAT).
//!
//! Two flows of one client can share a reply tuple: the client reuses a source port to
//! reach the same backend through two frontends, or directly while a translated flow of
//! that port is still tracked. Like netfilter's NAT, the newer flow then gets another
//! source port (`CT_FLAG_PORT_NAT`), so each reply finds its own flow. A direct flow that
//! needed this is tracked too (`CT_FLAG_DIRECT`): no DNAT, only the port.

use core::mem::{offset_of, size_of};

pub const CT_DIR_SERVICE: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// A packet of the reply direction has been seen.
pub const CT_FLAG_SEEN_REPLY: u16 = 1 << 0;
/// A FIN or RST has been seen: short lifetime.
pub const CT_FLAG_CLOSING: u16 = 1 << 1;
/// The backend disappeared: packets of this flow are dropped until the entry expires.
pub const CT_FLAG_BACKEND_GONE: u16 = 1 << 2;
/// Created by `from-net` (north-south flow).
pub const CT_FLAG_NORTH_SOUTH: u16 = 1 << 3;
/// The client's source port is rewritten on the wire: `CtEntry::nat_port_be` holds the
/// port on the wire in the `CT_DIR_SERVICE` entry, the client's own port in the
/// `CT_DIR_REPLY` entry.
pub const CT_FLAG_PORT_NAT: u16 = 1 << 4;
/// Not a service flow: a flow straight to a pod whose reply tuple a translated flow held
/// (always with `CT_FLAG_PORT_NAT`). `backend_id` and `service_id` are 0.
pub const CT_FLAG_DIRECT: u16 = 1 << 5;

/// TCP state kept in `CtEntry::state` (non-TCP flows stay `CT_STATE_NEW` until a reply
/// makes them `CT_STATE_ESTABLISHED`).
pub const CT_STATE_NEW: u8 = 0;
pub const CT_STATE_ESTABLISHED: u8 = 1;
pub const CT_STATE_CLOSING: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

impl CtKey4 {
    pub const fn new(
        saddr: [u8; 4],
        daddr: [u8; 4],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport_be,
            dport_be,
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

impl CtKey6 {
    pub const fn new(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport_be,
            dport_be,
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

/// Value of every conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME) after which the entry is dead. An
    /// expired entry is never used: the next packet is a new flow.
    pub expires_ns: u64,
    pub backend_id: u32,
    pub service_id: u32,
    pub flags: u16,
    pub state: u8,
    pub _pad0: u8,
    /// With `CT_FLAG_PORT_NAT`: the port on the other side of the rewrite (network
    /// order); 0 otherwise.
    pub nat_port_be: u16,
    pub _pad: [u8; 2],
}

const _: () = {
    assert!(size_of::<CtKey4>() == 16);
    assert!(offset_of!(CtKey4, sport_be) == 8);
    assert!(offset_of!(CtKey4, proto) == 12);
    assert!(offset_of!(CtKey4, dir) == 13);
    assert!(size_of::<CtKey6>() == 40);
    assert!(offset_of!(CtKey6, sport_be) == 32);
    assert!(offset_of!(CtKey6, dir) == 37);
    assert!(size_of::<CtEntry>() == 24);
    assert!(offset_of!(CtEntry, backend_id) == 8);
    assert!(offset_of!(CtEntry, service_id) == 12);
    assert!(offset_of!(CtEntry, flags) == 16);
    assert!(offset_of!(CtEntry, state) == 18);
    assert!(offset_of!(CtEntry, nat_port_be) == 20);
};
