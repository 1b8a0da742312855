//! sessionAffinity ClientIP in the kernel.
//!
//! - Affinity maps (LRU, one per family): (client address, service id) -> the backend the
//!   client's last new flow to that frontend went to and when. A new flow to a frontend
//!   whose master entry has `affinity_timeout_s != 0` goes to that backend when the entry
//!   is younger than the timeout and the backend still belongs to the frontend; otherwise
//!   a backend is chosen at random and the entry replaced. Like kube-proxy's `recent`
//!   match, the time is refreshed by each new flow (not by every packet).
//! - Membership map (hash): (service id, backend id) -> `MemberValue`, one entry for every
//!   backend in a frontend's slots, written by the daemon before the slot and deleted
//!   after it, so "does the backend still belong to the frontend" is one lookup.

use core::mem::{offset_of, size_of};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Key {
    pub client: [u8; 4],
    pub service_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity6Key {
    pub client: [u8; 16],
    pub service_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// `bpf_ktime_get_boot_ns()` of the last new flow that used the entry.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub service_id: u32,
    pub backend_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemberValue {
    /// `MEMBER_FLAG_*`.
    pub flags: u32,
}

/// The backend is in the frontend's slots (the only kind written today).
pub const MEMBER_FLAG_IN_SLOTS: u32 = 1 << 0;

impl Affinity4Key {
    pub const fn new(client: [u8; 4], service_id: u32) -> Self {
        Self { client, service_id }
    }
}

impl Affinity6Key {
    pub const fn new(client: [u8; 16], service_id: u32) -> Self {
        Self { client, service_id }
    }
}

impl MemberKey {
    pub const fn new(service_id: u32, backend_id: u32) -> Self {
        Self {
            service_id,
            backend_id,
        }
    }
}

impl MemberValue {
    pub const IN_SLOTS: Self = Self {
        flags: MEMBER_FLAG_IN_SLOTS,
    };
}

/// Capacity of each affinity map (clients x services with affinity).
pub const DEFAULT_AFFINITY_MAX: u32 = 65_536;

const _: () = {
    assert!(size_of::<Affinity4Key>() == 8);
    assert!(size_of::<Affinity6Key>() == 20);
    assert!(offset_of!(Affinity6Key, service_id) == 16);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(offset_of!(AffinityValue, backend_id) == 8);
    assert!(size_of::<MemberKey>() == 8);
    assert!(size_of::<MemberValue>() == 4);
};
