//! NetworkPolicy in the kernel: the compiled shape of `service-lb/src/model/policy`
//! (read its module doc), in four lookups per new flow and one per packet of a known flow.
//!
//! - Pod hash (`SLB_POLPOD4_V1` / `SLB_POLPOD6_V1`): a LOCAL pod's address -> its
//!   [`PolPod`] (an id and which directions are isolated). Only pods isolated in at least
//!   one direction are written: a pod that is not there is allowed everything, so a node
//!   without NetworkPolicy holds none (and `SLB_POLCFG_V1` says so, see below).
//! - Peer tries (`SLB_POLPEER4_V1` / `SLB_POLPEER6_V1`, LPM): [`PolPeer4`] / [`PolPeer6`]
//!   with `prefix_len = 64 + peer prefix length` (the id, direction and zero padding
//!   always matched in full) -> the id of an interned port set. No matching entry: deny.
//! - Port trie (`SLB_POLPORT_V1`, LPM): [`PolPort`] with `prefix_len = 48 + block length`
//!   (an aligned block of ports, 16 = one port) -> [`POL_PORT_ALLOWED`]. No matching
//!   entry: the port is not in the set.
//! - Flows (`SLB_POLFLW4_V1` / `SLB_POLFLW6_V1`, LRU): the verdict cache. Keyed by the
//!   conntrack key types ([`crate::CtKey4`] / [`crate::CtKey6`]) holding the flow's tuple
//!   on the wire (after Service translation) and the direction it was checked in
//!   ([`POL_DIR_INGRESS`] at `to_pod`, [`POL_DIR_EGRESS`] at `from_pod`). Only allowed
//!   flows are written: their later packets and their replies (the reversed tuple in the
//!   other direction) pass without a lookup. A denied flow is decided again on each
//!   packet, so a policy that starts allowing it does so at once.
//! - `SLB_POLCFG_V1` (array, one `u32`): non-zero when the pod hash holds any pod; zero
//!   makes the programs skip policy altogether (one array lookup per packet).

use core::mem::{offset_of, size_of};

/// Checked where a packet enters a local pod (`to_pod`): the peer is the source.
pub const POL_DIR_INGRESS: u8 = 0;
/// Checked where a packet leaves a local pod (`from_pod`): the peer is the destination.
pub const POL_DIR_EGRESS: u8 = 1;

/// `PolPod::flags`: the pod is isolated for ingress.
pub const POL_ISOLATED_INGRESS: u8 = 1 << 0;
/// `PolPod::flags`: the pod is isolated for egress.
pub const POL_ISOLATED_EGRESS: u8 = 1 << 1;

/// The `PolPod::flags` bit of a direction.
#[inline(always)]
pub const fn isolated_bit(dir: u8) -> u8 {
    if dir == POL_DIR_INGRESS {
        POL_ISOLATED_INGRESS
    } else {
        POL_ISOLATED_EGRESS
    }
}

/// Bits of a peer key before the peer address: pod id, direction, padding.
pub const POL_PEER_PREFIX_BITS: u32 = 64;
/// Bits of a port key before the port: port set id, protocol, padding.
pub const POL_PORT_PREFIX_BITS: u32 = 48;
/// Value of every port trie entry.
pub const POL_PORT_ALLOWED: u32 = 1;

/// Value of the pod hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PolPod {
    /// The id the pod's peer entries are keyed by.
    pub pod_id: u32,
    /// `POL_ISOLATED_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}

impl PolPod {
    pub const fn new(pod_id: u32, flags: u8) -> Self {
        Self {
            pod_id,
            flags,
            _pad: [0; 3],
        }
    }
}

/// Data of an IPv4 peer trie key (after the kernel's `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolPeer4 {
    pub pod_id: u32,
    /// `POL_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 3],
    pub peer: [u8; 4],
}

/// Data of an IPv6 peer trie key (after the kernel's `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolPeer6 {
    pub pod_id: u32,
    pub dir: u8,
    pub _pad: [u8; 3],
    pub peer: [u8; 16],
}

impl PolPeer4 {
    pub const fn new(pod_id: u32, dir: u8, peer: [u8; 4]) -> Self {
        Self {
            pod_id,
            dir,
            _pad: [0; 3],
            peer,
        }
    }
}

impl PolPeer6 {
    pub const fn new(pod_id: u32, dir: u8, peer: [u8; 16]) -> Self {
        Self {
            pod_id,
            dir,
            _pad: [0; 3],
            peer,
        }
    }
}

/// Data of a port trie key (after the kernel's `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolPort {
    pub set_id: u32,
    /// IANA protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub _pad: u8,
    /// First port of the block, network order (as in the packet).
    pub port_be: u16,
}

impl PolPort {
    pub const fn new(set_id: u32, proto: u8, port_be: u16) -> Self {
        Self {
            set_id,
            proto,
            _pad: 0,
            port_be,
        }
    }
}

/// Value of the flow (verdict cache) maps: an allowed flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolFlow {
    /// `bpf_ktime_get_boot_ns()` after which the entry is dead (refreshed by packets of
    /// either direction, with the conntrack lifetimes of `DataplaneConfig`).
    pub expires_ns: u64,
    /// `PolPod::flags` of the checked pod when the flow was allowed (for `inspect`).
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// Default capacity of each pod hash (local pods' addresses that are isolated).
pub const DEFAULT_POL_PODS_MAX: u32 = 16_384;
/// Default capacity of each peer trie (sum over local isolated pods of their entries).
pub const DEFAULT_POL_PEERS_MAX: u32 = 262_144;
/// Default capacity of the port trie (port blocks of all interned port sets).
pub const DEFAULT_POL_PORTS_MAX: u32 = 65_536;
/// Default capacity of each flow LRU.
pub const DEFAULT_POL_FLOWS_MAX: u32 = 131_072;

const _: () = {
    assert!(size_of::<PolPod>() == 8);
    assert!(size_of::<PolPeer4>() == 12);
    assert!(offset_of!(PolPeer4, dir) == 4);
    assert!(offset_of!(PolPeer4, peer) == 8);
    assert!(size_of::<PolPeer6>() == 24);
    assert!(offset_of!(PolPeer6, peer) == 8);
    // The id, direction and padding are exactly the fixed prefix.
    assert!(offset_of!(PolPeer4, peer) * 8 == POL_PEER_PREFIX_BITS as usize);
    assert!(size_of::<PolPort>() == 8);
    assert!(offset_of!(PolPort, port_be) * 8 == POL_PORT_PREFIX_BITS as usize);
    assert!(size_of::<PolFlow>() == 16);
};
