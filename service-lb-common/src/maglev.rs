//! Maglev consistent hashing for north-south frontends.
//!
//! A frontend whose master entry carries `service::SVC_FLAG_MAGLEV` picks its backend from
//! a lookup table instead of a random slot: `table.slots[flow_hash % table.size]` is the
//! backend id. The daemon builds the table (Maglev's population, from the backends'
//! stable identities, so every node builds the same table for the same endpoint set) and
//! writes it into `SLB_MAGLEV_V1` before it sets the flag on the master entry.
//!
//! The flow hash covers the client address, the client port, the frontend port and the
//! protocol, never the frontend address: a NodePort's address differs from node to node,
//! and the same client flow must reach the same backend through any node.

use core::mem::{offset_of, size_of};

/// Largest table size (a prime; Cilium's default). The map value always has room for
/// this many slots; a smaller configured size leaves the tail unused.
pub const MAGLEV_TABLE_MAX: u32 = 16_381;
/// Smallest table size the daemon accepts (a prime).
pub const MAGLEV_TABLE_MIN: u32 = 251;
/// Default table size.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = MAGLEV_TABLE_MAX;
/// Default capacity of the Maglev map (frontends with Maglev on; the map is created with
/// `BPF_F_NO_PREALLOC`, so only the tables written cost memory: 64 KiB each).
pub const DEFAULT_MAGLEV_MAX: u32 = 4_096;

/// Key of the Maglev map: one table per frontend and scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub service_id: u32,
    /// `service::SCOPE_EXTERNAL` or `SCOPE_INTERNAL`.
    pub scope: u8,
    pub _pad: [u8; 3],
}

impl MaglevKey {
    pub const fn new(service_id: u32, scope: u8) -> Self {
        Self {
            service_id,
            scope,
            _pad: [0; 3],
        }
    }
}

/// Value of the Maglev map: `size` (a prime, at most `MAGLEV_TABLE_MAX`) slots, each a
/// backend id; the slots past `size` are zero and never read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub size: u32,
    pub slots: [u32; MAGLEV_TABLE_MAX as usize],
}

impl MaglevTable {
    /// An all-zero table (size 0: the kernel ignores it).
    pub const ZERO: Self = Self {
        size: 0,
        slots: [0; MAGLEV_TABLE_MAX as usize],
    };
}

/// One mixing round (murmur3's per-block step).
#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// murmur3's finaliser.
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Fixed seed: every node must compute the same hash.
const FLOW_SEED: u32 = 0x5eb1_a9e1;

#[inline(always)]
const fn ports_word(sport_be: u16, dport_be: u16) -> u32 {
    // Network order bytes, read big-endian: independent of the host's byte order.
    (u16::from_be(sport_be) as u32) << 16 | u16::from_be(dport_be) as u32
}

/// Flow hash of an IPv4 client (straight-line: two fixed rounds per address word).
#[inline(always)]
pub const fn flow_hash4(client: [u8; 4], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let mut h = mix(FLOW_SEED, u32::from_be_bytes(client));
    h = mix(h, ports_word(sport_be, dport_be));
    h = mix(h, proto as u32);
    fmix(h ^ 12)
}

/// Flow hash of an IPv6 client.
#[inline(always)]
pub const fn flow_hash6(client: [u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let c = client;
    let mut h = mix(FLOW_SEED, u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    h = mix(h, u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
    h = mix(h, u32::from_be_bytes([c[8], c[9], c[10], c[11]]));
    h = mix(h, u32::from_be_bytes([c[12], c[13], c[14], c[15]]));
    h = mix(h, ports_word(sport_be, dport_be));
    h = mix(h, proto as u32);
    fmix(h ^ 24)
}

const _: () = {
    assert!(size_of::<MaglevKey>() == 8);
    assert!(offset_of!(MaglevKey, scope) == 4);
    assert!(offset_of!(MaglevTable, slots) == 4);
    assert!(size_of::<MaglevTable>() == 4 + 4 * MAGLEV_TABLE_MAX as usize);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_input_but_nothing_else() {
        let base = flow_hash4([198, 19, 200, 7], 40000u16.to_be(), 30080u16.to_be(), 6);
        assert_eq!(
            base,
            flow_hash4([198, 19, 200, 7], 40000u16.to_be(), 30080u16.to_be(), 6)
        );
        assert_ne!(
            base,
            flow_hash4([198, 19, 200, 8], 40000u16.to_be(), 30080u16.to_be(), 6)
        );
        assert_ne!(
            base,
            flow_hash4([198, 19, 200, 7], 40001u16.to_be(), 30080u16.to_be(), 6)
        );
        assert_ne!(
            base,
            flow_hash4([198, 19, 200, 7], 40000u16.to_be(), 30081u16.to_be(), 6)
        );
        assert_ne!(
            base,
            flow_hash4([198, 19, 200, 7], 40000u16.to_be(), 30080u16.to_be(), 17)
        );
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0xfd, 0, 0, 0xc8]);
        v6[15] = 7;
        let h6 = flow_hash6(v6, 40000u16.to_be(), 30080u16.to_be(), 6);
        v6[9] = 1;
        assert_ne!(h6, flow_hash6(v6, 40000u16.to_be(), 30080u16.to_be(), 6));
    }
}
