//! The one pipeline all four programs share; the hook decides which steps run.
//!
//! - `from_pod`, `from_net`: established flow (conntrack, DNAT to the flow's backend),
//!   else new flow (frontend lookup, backend choice, DNAT, conntrack create).
//! - `to_pod`, `to_net`: reply of a translated flow (conntrack, source back to the
//!   frontend).

use aya_ebpf::programs::TcContext;
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_NORTH_SOUTH,
        CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING,
    },
    proto::IPPROTO_TCP,
    CtEntry, DataplaneConfig, Hook, Reason,
};

use crate::{
    config,
    conntrack::{self, advanced, live, now_ns, put, worth_writing},
    family::{Endpoint, Family, Side, V4, V6},
    lb, nat,
    packet::{self, Headers, Parsed},
    verdict::{Step, Verdict},
};

/// The verdict for the packet in `ctx`, seen at `hook`.
#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> Verdict {
    match translate(ctx, hook) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, hook: Hook) -> Step<Verdict> {
    match packet::parse(ctx)? {
        Parsed::V4(h) => translate_family::<V4>(ctx, hook, &h),
        Parsed::V6(h) => translate_family::<V6>(ctx, hook, &h),
    }
}

/// What every step needs besides the packet.
struct Env {
    cfg: DataplaneConfig,
    now: u64,
}

#[inline(always)]
fn translate_family<F: Family>(ctx: &TcContext, hook: Hook, h: &Headers<F::Addr>) -> Step<Verdict> {
    let env = Env {
        cfg: config::get(),
        now: now_ns(),
    };
    match hook {
        Hook::ToPod | Hook::ToNet => reply::<F>(ctx, h, &env),
        Hook::FromPod | Hook::FromNet => match established::<F>(ctx, h, &env)? {
            Some(verdict) => Ok(verdict),
            None => new_flow::<F>(ctx, hook, h, &env),
        },
    }
}

/// A packet of a known flow: DNAT to the backend its conntrack entry names. `None` when
/// there is no live entry (a new flow).
#[inline(always)]
fn established<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    env: &Env,
) -> Step<Option<Verdict>> {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    let Some((slot, entry)) = live(ct, &key, env.now) else {
        return Ok(None);
    };
    if entry.flags & CT_FLAG_BACKEND_GONE != 0 {
        return Err(Verdict::Drop(Reason::DropBackendGone));
    }
    let Some(backend) = lb::get(F::backends(), &entry.backend_id) else {
        backend_gone(ct, &key, slot, &entry, h.proto, env);
        return Err(Verdict::Drop(Reason::DropBackendGone));
    };
    let backend = F::backend_endpoint(&backend);
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, entry, env.now);
    if worth_writing(&entry, &next) {
        // SAFETY: `slot` points at the live value found above.
        unsafe { slot.write(next) };
        sync_reply_entry::<F>(h, backend, &next)?;
    }
    nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    Ok(Some(Verdict::Pass(Reason::DnatEstablished)))
}

/// The flow's backend was deleted. TCP: keep the entry, marked, for the closing lifetime
/// (its packets keep being dropped). Other protocols: forget the flow, so the next
/// datagram picks a live backend (like kube-proxy's UDP conntrack flush).
#[inline(always)]
fn backend_gone<K>(
    ct: &aya_ebpf::maps::LruHashMap<K, CtEntry>,
    key: &K,
    slot: *mut CtEntry,
    entry: &CtEntry,
    proto: u8,
    env: &Env,
) {
    if proto == IPPROTO_TCP {
        let mut gone = *entry;
        gone.flags |= CT_FLAG_BACKEND_GONE;
        gone.expires_ns = env.now + u64::from(env.cfg.ct_tcp_closing_s) * 1_000_000_000;
        // SAFETY: `slot` points at the live value `entry` was read from.
        unsafe { slot.write(gone) };
    } else {
        // An error means the entry is already gone (another CPU or LRU eviction): the
        // outcome we want either way.
        let _already_gone = ct.remove(key);
    }
}

/// Keeps the reply entry of an established flow in step with its forward entry: creates
/// it again if the LRU evicted it, and carries a transition to CLOSING over.
#[inline(always)]
fn sync_reply_entry<F: Family>(
    h: &Headers<F::Addr>,
    backend: Endpoint<F::Addr>,
    forward: &CtEntry,
) -> Step<()> {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        backend.addr,
        h.saddr,
        backend.port_be,
        h.sport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    match ct.get_ptr_mut(&key) {
        None => put(ct, &key, forward),
        Some(slot) => {
            // SAFETY: pointer from a successful lookup of a `CtEntry`.
            let reply = unsafe { slot.read() };
            if forward.state == CT_STATE_CLOSING && reply.state != CT_STATE_CLOSING {
                let mut closing = reply;
                closing.state = forward.state;
                closing.flags |= forward.flags;
                closing.expires_ns = forward.expires_ns;
                // SAFETY: as above.
                unsafe { slot.write(closing) };
            }
            Ok(())
        }
    }
}

/// First packet of a flow to a frontend: choose a backend, create both conntrack
/// entries, DNAT.
#[inline(always)]
fn new_flow<F: Family>(
    ctx: &TcContext,
    hook: Hook,
    h: &Headers<F::Addr>,
    env: &Env,
) -> Step<Verdict> {
    let choice = lb::choose::<F>(hook, h)?;
    let flags = if hook == Hook::FromNet {
        CT_FLAG_NORTH_SOUTH
    } else {
        0
    };
    let fresh = conntrack::new_entry(choice.backend_id, choice.service_id, flags);
    let entry = advanced(&env.cfg, h.proto, h.tcp_flags, fresh, env.now);

    let ct = F::conntrack(h.proto);
    let backend = choice.backend;
    let reply_key = F::ct_key(
        backend.addr,
        h.saddr,
        backend.port_be,
        h.sport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let forward_key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    put(ct, &reply_key, &entry)?;
    if let Err(verdict) = put(ct, &forward_key, &entry) {
        // Do not leave half a flow behind; a failed remove means it is already gone.
        let _already_gone = ct.remove(&reply_key);
        return Err(verdict);
    }
    nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    Ok(Verdict::Pass(Reason::DnatNewFlow))
}

/// A reply of a translated flow: source back to the frontend.
#[inline(always)]
fn reply<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Verdict> {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let Some((slot, entry)) = live(ct, &key, env.now) else {
        return Ok(Verdict::Pass(Reason::PassNotService));
    };
    let revnat =
        lb::get(F::revnat(), &entry.service_id).ok_or(Verdict::Drop(Reason::DropRevNatMissing))?;
    let frontend = F::frontend_endpoint(&revnat);

    let mut seen = entry;
    seen.flags |= CT_FLAG_SEEN_REPLY;
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, seen, env.now);
    if worth_writing(&entry, &next) {
        // SAFETY: `slot` points at the live value found above.
        unsafe { slot.write(next) };
    }
    let first_reply = entry.flags & CT_FLAG_SEEN_REPLY == 0;
    let now_closing = next.state == CT_STATE_CLOSING && entry.state != CT_STATE_CLOSING;
    if first_reply || now_closing {
        update_forward_entry::<F>(h, frontend, env);
    }
    nat::rewrite::<F>(ctx, h, Side::Source, frontend)?;
    Ok(Verdict::Pass(Reason::RevNatReply))
}

/// Tells the forward entry of the flow (client = the reply's destination) that a reply
/// was seen, and carries a FIN/RST of the reply over. A missing or dead forward entry is
/// left alone: the next packet of the client decides.
#[inline(always)]
fn update_forward_entry<F: Family>(h: &Headers<F::Addr>, frontend: Endpoint<F::Addr>, env: &Env) {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        h.daddr,
        frontend.addr,
        h.dport_be,
        frontend.port_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    let Some((slot, entry)) = live(ct, &key, env.now) else {
        return;
    };
    if entry.flags & CT_FLAG_BACKEND_GONE != 0 {
        return;
    }
    let mut seen = entry;
    seen.flags |= CT_FLAG_SEEN_REPLY;
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, seen, env.now);
    // SAFETY: `slot` points at the live value found above.
    unsafe { slot.write(next) };
}
