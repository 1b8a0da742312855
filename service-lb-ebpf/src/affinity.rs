//! sessionAffinity ClientIP (see `service_lb_common::affinity`): one LRU lookup and one
//! membership lookup on a new flow to a frontend with a timeout; nothing otherwise.

use aya_ebpf::{bindings::BPF_ANY, maps::LruHashMap};
use service_lb_common::{
    affinity::{Affinity4Key, Affinity6Key, AffinityValue, MemberKey},
    SvcValue,
};

use crate::{
    conntrack::now_ns,
    family::{Family, V4, V6},
    maps::{SLB_AFF4_V1, SLB_AFF6_V1, SLB_MEMBER_V1},
};

const NS_PER_S: u64 = 1_000_000_000;

pub trait Sticky: Family {
    type AffKey: 'static;
    fn affinity() -> &'static LruHashMap<Self::AffKey, AffinityValue>;
    fn affinity_key(client: Self::Addr, service_id: u32) -> Self::AffKey;
}

impl Sticky for V4 {
    type AffKey = Affinity4Key;
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<Affinity4Key, AffinityValue> {
        &SLB_AFF4_V1
    }
    #[inline(always)]
    fn affinity_key(client: [u8; 4], service_id: u32) -> Affinity4Key {
        Affinity4Key::new(client, service_id)
    }
}

impl Sticky for V6 {
    type AffKey = Affinity6Key;
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<Affinity6Key, AffinityValue> {
        &SLB_AFF6_V1
    }
    #[inline(always)]
    fn affinity_key(client: [u8; 16], service_id: u32) -> Affinity6Key {
        Affinity6Key::new(client, service_id)
    }
}

/// The backend id `client`'s last new flow to the frontend of `master` went to, when
/// affinity is on, the entry is younger than the timeout and the backend is still in the
/// frontend's slots; the entry's time is refreshed then. `None`: choose anew.
#[inline(always)]
pub fn remembered<F: Sticky>(client: F::Addr, master: &SvcValue, now: u64) -> Option<u32> {
    let key = F::affinity_key(client, master.service_id);
    let slot = F::affinity().get_ptr_mut(&key)?;
    // SAFETY: pointer from a successful lookup of an `AffinityValue`.
    let mut entry = unsafe { slot.read() };
    let timeout_ns = u64::from(master.affinity_timeout_s) * NS_PER_S;
    if now.saturating_sub(entry.last_used_ns) > timeout_ns {
        return None;
    }
    let member = MemberKey::new(master.service_id, entry.backend_id);
    SLB_MEMBER_V1.get_ptr(member)?;
    entry.last_used_ns = now;
    // SAFETY: as above; a plain store of the refreshed copy.
    unsafe { slot.write(entry) };
    Some(entry.backend_id)
}

/// Records that `client`'s new flow to the frontend of `master` went to `backend_id`.
#[inline(always)]
pub fn remember<F: Sticky>(client: F::Addr, master: &SvcValue, backend_id: u32, now: u64) {
    let key = F::affinity_key(client, master.service_id);
    let value = AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    // A failed insert only loses stickiness for the next flow (the LRU makes room).
    let _ = F::affinity().insert(&key, value, u64::from(BPF_ANY));
}

/// The clock of the affinity entries (the conntrack clock).
#[inline(always)]
pub fn now() -> u64 {
    now_ns()
}
