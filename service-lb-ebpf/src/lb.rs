//! Frontend lookup and backend choice (random slot of the frontend's backend list).

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::HashMap};
use service_lb_common::{
    service::{SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_TWO_SCOPES},
    Hook, Reason,
};

use crate::{
    family::{Endpoint, Family},
    packet::Headers,
    verdict::{Step, Verdict},
};

/// The backend chosen for a new flow.
pub struct Choice<A> {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Endpoint<A>,
}

/// Looks up the frontend the packet is sent to and picks one of its backends.
///
/// Not a frontend: pass (`PassNotService`). A frontend without backends, a torn slot
/// list or a missing backend: drop with the matching reason.
#[inline(always)]
pub fn choose<F: Family>(hook: Hook, h: &Headers<F::Addr>) -> Step<Choice<F::Addr>> {
    let services = F::services();
    let key = |scope: u8, slot: u16| F::svc_key(h.daddr, h.dport_be, h.proto, scope, slot);

    let mut scope = SCOPE_EXTERNAL;
    let mut master = get(services, &key(scope, 0)).ok_or(Verdict::Pass(Reason::PassNotService))?;
    if master.flags & SVC_FLAG_TWO_SCOPES != 0 && hook == Hook::FromPod {
        scope = SCOPE_INTERNAL;
        master = get(services, &key(scope, 0)).ok_or(Verdict::Drop(Reason::DropSlotMissing))?;
    }
    if master.count == 0 {
        return Err(Verdict::Drop(Reason::DropNoBackend));
    }
    // Slots are u16: a count beyond that cannot have been written.
    let count = master.count.min(u32::from(u16::MAX));
    // SAFETY: helper without arguments.
    let slot = (unsafe { bpf_get_prandom_u32() } % count + 1) as u16;
    let slot_value =
        get(services, &key(scope, slot)).ok_or(Verdict::Drop(Reason::DropSlotMissing))?;
    let backend =
        get(F::backends(), &slot_value.backend_id).ok_or(Verdict::Drop(Reason::DropBackendGone))?;
    Ok(Choice {
        service_id: master.service_id,
        backend_id: slot_value.backend_id,
        backend: F::backend_endpoint(&backend),
    })
}

/// A copy of the value under `key`.
#[inline(always)]
pub fn get<K, V: Copy>(map: &HashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: the pointer comes from a successful lookup of a value of type V; the copy
    // is taken at once.
    map.get_ptr(key).map(|value| unsafe { value.read() })
}
