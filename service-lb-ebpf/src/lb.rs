//! Frontend lookup and backend choice (random slot of the frontend's backend list, or the
//! client's remembered backend with sessionAffinity ClientIP, see `affinity`).

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::HashMap};
use service_lb_common::{
    proto::{IPPROTO_TCP, TCP_FLAG_SYN},
    service::{SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_DROP_NO_ENDPOINT, SVC_FLAG_TWO_SCOPES},
    Hook, Reason, SvcValue,
};

use crate::{
    affinity::{self, Sticky},
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

/// What a backend is chosen for: the frontend a client sends to. Built from a packet's
/// headers (tc) or from a socket's destination (socket LB, `sock`).
pub struct Target<A> {
    /// The client's key in the affinity map (its address, for the tc path).
    pub client: A,
    pub daddr: A,
    pub dport_be: u16,
    pub proto: u8,
    /// The client is inside the cluster (a pod, or a process on the node): the frontend's
    /// internal scope applies when it has two (internal traffic policy).
    pub internal: bool,
    /// A TCP segment without SYN that no conntrack entry knows (tc path only; a socket's
    /// `connect()` always starts a connection).
    pub mid_flow: bool,
}

/// Looks up the frontend the packet is sent to and picks one of its backends.
///
/// Not a frontend: pass (`PassNotService`, the pipeline then checks the ClusterIP maps).
/// A TCP segment without SYN (the caller found no conntrack entry for it): pass
/// (`PassMidFlow`), it starts no flow here.
/// A frontend without backends: `DropNoBackend`, which the pipeline turns into a refusal
/// (`reject`), or `DropNoLocalEndpoint` (a drop) with `SVC_FLAG_DROP_NO_ENDPOINT`. A torn slot list or a missing backend: drop with the matching reason.
#[inline(always)]
pub fn choose<F: Sticky>(hook: Hook, h: &Headers<F::Addr>) -> Step<Choice<F::Addr>> {
    choose_for::<F>(&Target {
        client: h.saddr,
        daddr: h.daddr,
        dport_be: h.dport_be,
        proto: h.proto,
        internal: hook == Hook::FromPod,
        mid_flow: h.proto == IPPROTO_TCP && h.tcp_flags & TCP_FLAG_SYN == 0,
    })
}

/// `choose` for any client: the one frontend lookup and backend choice both the tc
/// programs and the socket programs use (same maps, same scopes, same affinity).
#[inline(always)]
pub fn choose_for<F: Sticky>(t: &Target<F::Addr>) -> Step<Choice<F::Addr>> {
    let services = F::services();
    let key = |scope: u8, slot: u16| F::svc_key(t.daddr, t.dport_be, t.proto, scope, slot);

    let mut scope = SCOPE_EXTERNAL;
    let mut master = get(services, &key(scope, 0)).ok_or(Verdict::Pass(Reason::PassNotService))?;
    if master.flags & SVC_FLAG_TWO_SCOPES != 0 && t.internal {
        scope = SCOPE_INTERNAL;
        master = get(services, &key(scope, 0)).ok_or(Verdict::Drop(Reason::DropSlotMissing))?;
    }
    if master.count == 0 {
        // external/internalTrafficPolicy Local without a local endpoint: dropped, never
        // refused (kube-proxy). The socket path fails the call (EPERM).
        if master.flags & SVC_FLAG_DROP_NO_ENDPOINT != 0 {
            return Err(Verdict::Drop(Reason::DropNoLocalEndpoint));
        }
        return Err(Verdict::Drop(Reason::DropNoBackend));
    }
    // A frontend with endpoints: only a SYN starts a TCP flow here (conntrack found none
    // for this packet). A segment of a connection someone else translated (kube-proxy's
    // rules, before service-lb started) goes on to the kernel's own conntrack, which
    // keeps its backend.
    if t.mid_flow {
        return Err(Verdict::Pass(Reason::PassMidFlow));
    }
    if master.affinity_timeout_s == 0 {
        return random_choice::<F>(t, scope, &master);
    }
    // sessionAffinity ClientIP: the remembered backend while it is fresh and still a
    // member, else a random one, remembered.
    let now = affinity::now();
    if let Some(backend_id) = affinity::remembered::<F>(t.client, &master, now) {
        if let Some(backend) = get(F::backends(), &backend_id) {
            return Ok(Choice {
                service_id: master.service_id,
                backend_id,
                backend: F::backend_endpoint(&backend),
            });
        }
    }
    let choice = random_choice::<F>(t, scope, &master)?;
    affinity::remember::<F>(t.client, &master, choice.backend_id, now);
    Ok(choice)
}

/// A backend of the frontend (`scope`, `master`) picked uniformly at random.
#[inline(always)]
fn random_choice<F: Family>(
    t: &Target<F::Addr>,
    scope: u8,
    master: &SvcValue,
) -> Step<Choice<F::Addr>> {
    let services = F::services();
    // Slots are u16: a count beyond that cannot have been written.
    let count = master.count.min(u32::from(u16::MAX));
    // SAFETY: helper without arguments.
    let slot = (unsafe { bpf_get_prandom_u32() } % count + 1) as u16;
    let slot_key = F::svc_key(t.daddr, t.dport_be, t.proto, scope, slot);
    let slot_value = get(services, &slot_key).ok_or(Verdict::Drop(Reason::DropSlotMissing))?;
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
