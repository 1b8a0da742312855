//! Maglev backend choice (`service_lb_common::maglev`): one lookup of the frontend's table
//! and one read of the slot the flow hash names. Straight-line: the hash reads the fixed
//! 4 or 16 address bytes, no loop.

use core::mem::size_of;

use service_lb_common::maglev::{flow_hash4, flow_hash6, MaglevKey, MAGLEV_TABLE_MAX};

use crate::maps::SLB_MAGLEV_V1;

/// The flow hash of a client (`A` is an address type of this crate: `[u8; 4]` or
/// `[u8; 16]`).
#[inline(always)]
fn flow_hash<A: Copy>(client: &A, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    const { assert!(size_of::<A>() == 4 || size_of::<A>() == 16) };
    let p = (client as *const A).cast::<u8>();
    if size_of::<A>() == 16 {
        // SAFETY: `A` is 16 bytes (checked above), read as the byte array it is.
        let a = unsafe { p.cast::<[u8; 16]>().read_unaligned() };
        flow_hash6(a, sport_be, dport_be, proto)
    } else {
        // SAFETY: `A` is 4 bytes.
        let a = unsafe { p.cast::<[u8; 4]>().read_unaligned() };
        flow_hash4(a, sport_be, dport_be, proto)
    }
}

/// The backend id the frontend's Maglev table gives this flow, or `None` when the
/// frontend (service id, scope) has no usable table (the caller then picks at random;
/// the daemon writes the table before it sets `SVC_FLAG_MAGLEV`, so this is a gap only a
/// broken writer leaves).
#[inline(always)]
pub fn backend_id<A: Copy>(
    client: &A,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    service_id: u32,
    scope: u8,
) -> Option<u32> {
    let table = SLB_MAGLEV_V1.get_ptr(MaglevKey::new(service_id, scope))?;
    // SAFETY: a pointer to a live map value from a successful lookup; only the size and
    // one slot are read, never the whole 64 KiB value.
    let size = unsafe { (*table).size };
    if size == 0 {
        return None;
    }
    let index = (flow_hash(client, sport_be, dport_be, proto) % size) as usize;
    // The verifier does not bound a remainder by its divisor: this check is what it sees.
    // (Checking `size <= MAGLEV_TABLE_MAX` instead would let LLVM drop this one.) A size
    // beyond the table makes an index past it, which finds no slot here.
    if index >= MAGLEV_TABLE_MAX as usize {
        return None;
    }
    // SAFETY: as above, `index` is within the slots.
    unsafe { (*table).slots.get(index).copied() }
}
