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
/// TCP: a FIN was seen from the client (the `CT_DIR_SERVICE` direction).
pub const CT_FLAG_FIN_CLIENT: u16 = 1 << 6;
/// TCP: a FIN was seen from the backend (the `CT_DIR_REPLY` direction).
pub const CT_FLAG_FIN_BACKEND: u16 = 1 << 7;
/// TCP: a RST was seen (either direction).
pub const CT_FLAG_RST: u16 = 1 << 8;
/// A hairpin flow (a pod reaching itself through a frontend, see `hairpin`): set at
/// creation on both entries. The client's source is rewritten to the hairpin address, so
/// the reply entry is keyed backend -> hairpin address, and every packet of the flow goes
/// back into the pod it came from.
pub const CT_FLAG_HAIRPIN: u16 = 1 << 14;
/// A north-south flow SNATed to this node's address (`service::SVC_FLAG_SNAT`), set at
/// creation on both entries. The `CT_DIR_SERVICE` entry holds the allocated source port
/// in `nat_port_be`; the `CT_DIR_REPLY` entry is keyed backend -> node address:allocated
/// port, and the client's address and port are in the SNAT map under the same key
/// (`northsouth::SnatRev4`).
pub const CT_FLAG_SNAT: u16 = 1 << 15;

/// Flags that only ever get set on a live entry (never cleared in place): the programs
/// OR them into the flags word atomically, so concurrent updates of one entry never lose
/// one. The per-entry `CT_FLAG_PORT_NAT` / `CT_FLAG_DIRECT` / `CT_FLAG_NORTH_SOUTH` are set
/// at creation only.
pub const CT_FLAGS_STICKY: u16 = CT_FLAG_SEEN_REPLY
    | CT_FLAG_CLOSING
    | CT_FLAG_BACKEND_GONE
    | CT_FLAG_FIN_CLIENT
    | CT_FLAG_FIN_BACKEND
    | CT_FLAG_RST;

/// TCP state kept in `CtEntry::state` (non-TCP flows stay `CT_STATE_NEW` until a reply
/// makes them `CT_STATE_ESTABLISHED`). It follows from the flags (`tcp_state`); the
/// programs write it for `inspect` and decide on the flags.
pub const CT_STATE_NEW: u8 = 0;
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// FIN from both sides, or a RST: the short closing lifetime.
pub const CT_STATE_CLOSING: u8 = 2;
/// FIN from one side only: the other side may still send (kube-proxy's close-wait
/// lifetime, `DataplaneConfig::ct_tcp_half_closed_s`).
pub const CT_STATE_HALF_CLOSED: u8 = 3;

/// The TCP state the `flags` of an entry stand for. An entry written by an older
/// version (CLOSING flag after any FIN) stays closing.
#[inline(always)]
pub const fn tcp_state(flags: u16) -> u8 {
    let both_fins = CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND;
    if flags & (CT_FLAG_RST | CT_FLAG_CLOSING) != 0 || flags & both_fins == both_fins {
        CT_STATE_CLOSING
    } else if flags & both_fins != 0 {
        CT_STATE_HALF_CLOSED
    } else if flags & CT_FLAG_SEEN_REPLY != 0 {
        CT_STATE_ESTABLISHED
    } else {
        CT_STATE_NEW
    }
}

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
    // The programs OR flags into the 64-bit word at offset 16 (flags .. _pad), with the
    // flags in its first two bytes.
    assert!(offset_of!(CtEntry, flags) % 8 == 0);
    assert!(offset_of!(CtEntry, flags) + 8 == size_of::<CtEntry>());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_state_follows_the_flags_per_direction() {
        assert_eq!(tcp_state(0), CT_STATE_NEW);
        assert_eq!(tcp_state(CT_FLAG_SEEN_REPLY), CT_STATE_ESTABLISHED);
        for one_fin in [CT_FLAG_FIN_CLIENT, CT_FLAG_FIN_BACKEND] {
            assert_eq!(
                tcp_state(CT_FLAG_SEEN_REPLY | one_fin),
                CT_STATE_HALF_CLOSED
            );
        }
        let both = CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND;
        assert_eq!(tcp_state(both), CT_STATE_CLOSING);
        assert_eq!(tcp_state(CT_FLAG_RST), CT_STATE_CLOSING);
        assert_eq!(
            tcp_state(CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT | CT_FLAG_RST),
            CT_STATE_CLOSING
        );
        // An entry of the previous version: CLOSING after any FIN.
        assert_eq!(
            tcp_state(CT_FLAG_SEEN_REPLY | CT_FLAG_CLOSING),
            CT_STATE_CLOSING
        );
    }

    #[test]
    fn flag_bits_are_distinct_and_in_this_engineers_range() {
        let ours = [CT_FLAG_FIN_CLIENT, CT_FLAG_FIN_BACKEND, CT_FLAG_RST];
        for (i, a) in ours.iter().enumerate() {
            assert!(*a >= 1 << 6 && *a <= 1 << 13);
            assert_eq!(a.count_ones(), 1);
            assert!(!ours[i + 1..].contains(a));
        }
    }
}
