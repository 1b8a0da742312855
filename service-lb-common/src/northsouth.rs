//! North-south traffic (NodePort, externalIPs, LoadBalancer IPs): the maps the frontends'
//! master flags (`service::SVC_FLAG_SNAT`, `SVC_FLAG_SOURCE_RANGES`, ...) refer to.
//!
//! - Source ranges (`SLB_SRCRNG4_V1` / `SLB_SRCRNG6_V1`, LPM tries): (service id, client
//!   prefix) -> [`SRC_RANGE_ALLOWED`]. The service id is always matched in full, so a
//!   range of length `n` has `prefix_len = 32 + n` (`SrcRange4Key::new` computes it); the
//!   programs look up with the full length (64 / 160).
//! - Node addresses (`SLB_NODEADDR_V1`, array, one entry): what SNATed flows leave with.
//! - SNAT reverse entries (`SLB_SNAT4_V1` / `SLB_SNAT6_V1`, LRU): keyed by the SNATed
//!   flow's reply tuple as it arrives from the backend (backend -> node address:allocated
//!   port, `CT_DIR_REPLY`, the conntrack key types), they hold the client's address and
//!   port. The conntrack value (`CtEntry`, 24 bytes, in every flow's two entries) has no
//!   room for a client address; only SNATed flows need one, so it lives here instead of
//!   growing every conntrack entry. The conntrack reply entry of the flow (same key) holds
//!   the frontend (service id, via revnat); the conntrack forward entry holds the
//!   allocated port (`nat_port_be`, with `CT_FLAG_SNAT`).

use core::mem::{offset_of, size_of};

/// Value of every source-range trie entry.
pub const SRC_RANGE_ALLOWED: u32 = 1;
/// Bits of a source-range key before the client address: the service id.
pub const SRC_RANGE_PREFIX_BITS: u32 = 32;

/// Full IPv4 source-range trie key (the kernel's `prefixlen` first, then the data).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange4Key {
    /// `SRC_RANGE_PREFIX_BITS` + the range's own prefix length.
    pub prefix_len: u32,
    pub service_id: u32,
    pub addr: [u8; 4],
}

/// Full IPv6 source-range trie key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange6Key {
    pub prefix_len: u32,
    pub service_id: u32,
    pub addr: [u8; 16],
}

/// The data after `prefix_len` of an IPv4 source-range key: the `K` of aya's
/// `LpmTrie<_, K, u32>` (`lpm_trie::Key::new(key.prefix_len, key.data())`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange4Data {
    pub service_id: u32,
    pub addr: [u8; 4],
}

/// The data after `prefix_len` of an IPv6 source-range key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange6Data {
    pub service_id: u32,
    pub addr: [u8; 16],
}

/// Host bits beyond `range_len` cleared (the trie ignores them; a cleared key prints and
/// compares the same way the daemon wrote it).
const fn masked<const N: usize>(mut addr: [u8; N], range_len: u32) -> [u8; N] {
    let mut i = 0;
    while i < N {
        let bit = (i as u32) * 8;
        if bit >= range_len {
            addr[i] = 0;
        } else if range_len - bit < 8 {
            addr[i] &= 0xffu8 << (8 - (range_len - bit));
        }
        i += 1;
    }
    addr
}

impl SrcRange4Key {
    /// The entry for `addr/range_len` (range_len capped at 32) of frontend `service_id`.
    pub const fn new(service_id: u32, addr: [u8; 4], range_len: u32) -> Self {
        let len = if range_len > 32 { 32 } else { range_len };
        Self {
            prefix_len: SRC_RANGE_PREFIX_BITS + len,
            service_id,
            addr: masked(addr, len),
        }
    }
    /// The key a program looks a client up with (full length).
    pub const fn lookup(service_id: u32, addr: [u8; 4]) -> Self {
        Self::new(service_id, addr, 32)
    }
    pub const fn data(&self) -> SrcRange4Data {
        SrcRange4Data {
            service_id: self.service_id,
            addr: self.addr,
        }
    }
}

impl SrcRange6Key {
    /// The entry for `addr/range_len` (range_len capped at 128) of frontend `service_id`.
    pub const fn new(service_id: u32, addr: [u8; 16], range_len: u32) -> Self {
        let len = if range_len > 128 { 128 } else { range_len };
        Self {
            prefix_len: SRC_RANGE_PREFIX_BITS + len,
            service_id,
            addr: masked(addr, len),
        }
    }
    pub const fn lookup(service_id: u32, addr: [u8; 16]) -> Self {
        Self::new(service_id, addr, 128)
    }
    pub const fn data(&self) -> SrcRange6Data {
        SrcRange6Data {
            service_id: self.service_id,
            addr: self.addr,
        }
    }
}

/// `NodeAddrs::flags`: `addr4` is set.
pub const NODEADDR_HAS_V4: u32 = 1;
/// `NodeAddrs::flags`: `addr6` is set.
pub const NODEADDR_HAS_V6: u32 = 2;

/// Value of `SLB_NODEADDR_V1` (index 0): this node's addresses SNATed flows leave with
/// (the Node's InternalIP per family). A family without its flag: SNAT flows of that
/// family are dropped, counted `DropSnatNoAddress`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct NodeAddrs {
    pub addr4: [u8; 4],
    pub addr6: [u8; 16],
    pub flags: u32,
}

/// Value of `SLB_SNAT4_V1` (key: the reply tuple, `CtKey4` with `CT_DIR_REPLY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct SnatRev4 {
    /// The client's own address and port (what replies are sent back to).
    pub client_addr: [u8; 4],
    pub client_port_be: u16,
    pub _pad: [u8; 2],
}

/// Value of `SLB_SNAT6_V1` (key: `CtKey6` with `CT_DIR_REPLY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct SnatRev6 {
    pub client_addr: [u8; 16],
    pub client_port_be: u16,
    pub _pad: [u8; 2],
}

impl SnatRev4 {
    pub const fn new(client_addr: [u8; 4], client_port_be: u16) -> Self {
        Self {
            client_addr,
            client_port_be,
            _pad: [0; 2],
        }
    }
}

impl SnatRev6 {
    pub const fn new(client_addr: [u8; 16], client_port_be: u16) -> Self {
        Self {
            client_addr,
            client_port_be,
            _pad: [0; 2],
        }
    }
}

/// Capacity of each source-range trie (all ranges of all frontends). Fixed (no flag).
pub const SRC_RANGES_MAX: u32 = 65_536;
/// Capacity of each SNAT LRU (one entry per SNATed flow). Fixed (no flag).
pub const SNAT_MAX: u32 = 262_144;

/// SNAT source ports are allocated in `[SNAT_PORT_MIN, SNAT_PORT_MIN + SNAT_PORT_SPAN)`
/// (host order): 61000-65535, above Linux's default ephemeral range (32768-60999) and
/// away from the NodePort range (30000-32767), so an SNATed flow's reply tuple does not
/// meet the node's own sockets or a NodePort.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_SPAN: u16 = 4_536;

const _: () = {
    assert!(size_of::<SrcRange4Key>() == 12);
    assert!(offset_of!(SrcRange4Key, service_id) == 4);
    assert!(offset_of!(SrcRange4Key, addr) == 8);
    assert!(size_of::<SrcRange6Key>() == 24);
    assert!(offset_of!(SrcRange6Key, addr) == 8);
    assert!(size_of::<SrcRange4Data>() + 4 == size_of::<SrcRange4Key>());
    assert!(size_of::<SrcRange6Data>() + 4 == size_of::<SrcRange6Key>());
    assert!(offset_of!(SrcRange4Data, addr) * 8 == SRC_RANGE_PREFIX_BITS as usize);
    assert!(offset_of!(SrcRange6Data, addr) * 8 == SRC_RANGE_PREFIX_BITS as usize);
    assert!(size_of::<NodeAddrs>() == 24);
    assert!(offset_of!(NodeAddrs, addr6) == 4);
    assert!(offset_of!(NodeAddrs, flags) == 20);
    assert!(size_of::<SnatRev4>() == 8);
    assert!(offset_of!(SnatRev4, client_port_be) == 4);
    assert!(size_of::<SnatRev6>() == 20);
    assert!(SNAT_PORT_MIN as u32 + SNAT_PORT_SPAN as u32 == 65_536);
    assert!(offset_of!(SnatRev6, client_port_be) == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keys_count_the_service_id_bits_and_clear_host_bits() {
        let k = SrcRange4Key::new(7, [198, 19, 200, 77], 24);
        assert_eq!(k.prefix_len, 56);
        assert_eq!(k.addr, [198, 19, 200, 0]);
        assert_eq!(
            SrcRange4Key::new(7, [198, 19, 200, 77], 20).addr,
            [198, 19, 192, 0]
        );
        assert_eq!(SrcRange4Key::new(7, [1, 2, 3, 4], 0).addr, [0; 4]);
        assert_eq!(SrcRange4Key::lookup(7, [1, 2, 3, 4]).prefix_len, 64);
        assert_eq!(SrcRange4Key::new(7, [1, 2, 3, 4], 99).prefix_len, 64);
        let k6 = SrcRange6Key::new(
            9,
            [0xfd, 0, 0, 0xc8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            64,
        );
        assert_eq!(k6.prefix_len, 96);
        assert_eq!(k6.addr[8..], [0; 8]);
        assert_eq!(k6.addr[..4], [0xfd, 0, 0, 0xc8]);
        assert_eq!(SrcRange6Key::lookup(9, [0; 16]).prefix_len, 160);
    }
}
