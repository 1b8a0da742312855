//! The one pipeline all four programs share; the hook decides which steps run.
//!
//! - `from_pod`, `from_net`: established flow (conntrack, DNAT to the flow's backend),
//!   else new flow (frontend lookup, backend choice, DNAT, conntrack create; a frontend
//!   with no endpoint is refused, see `reject`), else a packet to no frontend: to a
//!   ClusterIP address refused, to a service CIDR dropped, else passed untouched, unless
//!   it starts a flow whose reply tuple a translated flow holds (then its source port is
//!   rewritten, see `ports`).
//! - `to_pod`, `to_net`: reply of a tracked flow (conntrack, source back to the frontend,
//!   the client's own port back when it was rewritten).

use aya_ebpf::programs::TcContext;
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_DIRECT, CT_FLAG_NORTH_SOUTH,
        CT_FLAG_PORT_NAT, CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING,
    },
    proto::{IPPROTO_TCP, TCP_FLAG_ACK, TCP_FLAG_SYN},
    CtEntry, DataplaneConfig, Hook, Reason,
};

use crate::{
    affinity::Sticky,
    config,
    conntrack::{self, advanced, live, now_ns, put, reply_of, wire_port, worth_writing},
    family::{Endpoint, Family, Side, V4, V6},
    lb::{self, Choice},
    nat,
    packet::{self, Headers, Parsed},
    ports,
    reject::{self, Refuse},
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
fn translate_family<F: Refuse + Sticky>(
    ctx: &TcContext,
    hook: Hook,
    h: &Headers<F::Addr>,
) -> Step<Verdict> {
    let env = Env {
        cfg: config::get(),
        now: now_ns(),
    };
    match hook {
        Hook::ToPod | Hook::ToNet => reply::<F>(ctx, h, &env),
        Hook::FromPod | Hook::FromNet => match established::<F>(ctx, h, &env)? {
            Some(verdict) => Ok(verdict),
            None => match lb::choose::<F>(hook, h) {
                Ok(choice) => new_flow::<F>(ctx, hook, h, &env, choice),
                Err(Verdict::Pass(Reason::PassNotService)) => {
                    reject::unowned::<F>(ctx, h)?;
                    not_service::<F>(ctx, h, &env)
                }
                Err(Verdict::Drop(Reason::DropNoBackend)) => {
                    Err(reject::refuse::<F>(ctx, h, Reason::RejectNoEndpoint))
                }
                Err(verdict) => Err(verdict),
            },
        },
    }
}

/// The client's source port rewritten to `port_be` (no-op when it is the same).
#[inline(always)]
fn rewrite_client_port<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, port_be: u16) -> Step<()> {
    let to = Endpoint {
        addr: h.saddr,
        port_be,
    };
    nat::rewrite::<F>(ctx, h, Side::Source, to)
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
    let direct = entry.flags & CT_FLAG_DIRECT != 0;
    let backend = if direct {
        Endpoint {
            addr: h.daddr,
            port_be: h.dport_be,
        }
    } else {
        let Some(backend) = lb::get(F::backends(), &entry.backend_id) else {
            backend_gone(ct, &key, slot, &entry, h.proto, env);
            return Err(Verdict::Drop(Reason::DropBackendGone));
        };
        F::backend_endpoint(&backend)
    };
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, entry, env.now);
    if worth_writing(&entry, &next) {
        // SAFETY: `slot` points at the live value found above.
        unsafe { slot.write(next) };
        sync_reply_entry::<F>(h, backend, &next)?;
    }
    if !direct {
        nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    }
    if entry.flags & CT_FLAG_PORT_NAT != 0 {
        rewrite_client_port::<F>(ctx, h, entry.nat_port_be)?;
    }
    Ok(Some(Verdict::Pass(if direct {
        Reason::NatPortClash
    } else {
        Reason::DnatEstablished
    })))
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
        wire_port(forward, h.sport_be),
        h.proto,
        CT_DIR_REPLY,
    );
    match ct.get_ptr_mut(&key) {
        None => put(ct, &key, &reply_of(forward, h.sport_be)),
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

/// First packet of a flow to a frontend: create both conntrack entries (with another
/// source port when the reply tuple is taken, see `ports`), DNAT to the chosen backend.
#[inline(always)]
fn new_flow<F: Family>(
    ctx: &TcContext,
    hook: Hook,
    h: &Headers<F::Addr>,
    env: &Env,
    choice: Choice<F::Addr>,
) -> Step<Verdict> {
    let flags = if hook == Hook::FromNet {
        CT_FLAG_NORTH_SOUTH
    } else {
        0
    };
    let fresh = conntrack::new_entry(choice.backend_id, choice.service_id, flags);
    let backend = choice.backend;
    let ct = F::conntrack(h.proto);
    let new_port = ports::for_new_flow::<F>(ct, backend, h.saddr, h.sport_be, h.proto, env.now)?;
    track::<F>(h, backend, fresh, new_port, env)?;
    nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    if let Some(port_be) = new_port {
        rewrite_client_port::<F>(ctx, h, port_be)?;
    }
    Ok(Verdict::Pass(Reason::DnatNewFlow))
}

/// A packet to no frontend and of no tracked flow: passed untouched, unless it starts a
/// flow (a TCP SYN, any other datagram) whose reply tuple a translated flow holds: the
/// client reused that flow's source port to reach the backend directly, and its replies
/// would be reverse NATed. That flow gets another source port and is tracked.
#[inline(always)]
fn not_service<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Verdict> {
    let starts_a_flow =
        h.proto != IPPROTO_TCP || h.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let peer = Endpoint {
        addr: h.daddr,
        port_be: h.dport_be,
    };
    if !starts_a_flow {
        return Ok(Verdict::Pass(Reason::PassNotService));
    }
    let ct = F::conntrack(h.proto);
    let new_port = ports::for_new_flow::<F>(ct, peer, h.saddr, h.sport_be, h.proto, env.now)?;
    let Some(port_be) = new_port else {
        return Ok(Verdict::Pass(Reason::PassNotService));
    };
    let fresh = conntrack::new_entry(0, 0, CT_FLAG_DIRECT);
    track::<F>(h, peer, fresh, new_port, env)?;
    rewrite_client_port::<F>(ctx, h, port_be)?;
    Ok(Verdict::Pass(Reason::NatPortClash))
}

/// Creates the reply and forward entries of a new flow from `h`'s source to `peer` (the
/// backend after DNAT), from `fresh`; with `new_port` (from `ports::for_new_flow`) the
/// flow goes out with that source port (`CT_FLAG_PORT_NAT`).
#[inline(always)]
fn track<F: Family>(
    h: &Headers<F::Addr>,
    peer: Endpoint<F::Addr>,
    fresh: CtEntry,
    new_port: Option<u16>,
    env: &Env,
) -> Step<()> {
    let ct = F::conntrack(h.proto);
    let mut forward = advanced(&env.cfg, h.proto, h.tcp_flags, fresh, env.now);
    if let Some(port_be) = new_port {
        forward.flags |= CT_FLAG_PORT_NAT;
        forward.nat_port_be = port_be;
    }
    let reply_key = F::ct_key(
        peer.addr,
        h.saddr,
        peer.port_be,
        wire_port(&forward, h.sport_be),
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
    put(ct, &reply_key, &reply_of(&forward, h.sport_be))?;
    if let Err(verdict) = put(ct, &forward_key, &forward) {
        // Do not leave half a flow behind; a failed remove means it is already gone.
        let _already_gone = ct.remove(&reply_key);
        return Err(verdict);
    }
    Ok(())
}

/// A reply of a tracked flow: source back to the frontend (translated flows), the
/// client's own port back (flows whose port was rewritten).
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
    let direct = entry.flags & CT_FLAG_DIRECT != 0;
    let frontend = if direct {
        Endpoint {
            addr: h.saddr,
            port_be: h.sport_be,
        }
    } else {
        let revnat = lb::get(F::revnat(), &entry.service_id)
            .ok_or(Verdict::Drop(Reason::DropRevNatMissing))?;
        F::frontend_endpoint(&revnat)
    };
    // The reply entry of a rewritten port names the client's own one.
    let client_port_be = wire_port(&entry, h.dport_be);

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
        update_forward_entry::<F>(h, frontend, client_port_be, env);
    }
    if !direct {
        nat::rewrite::<F>(ctx, h, Side::Source, frontend)?;
    }
    if entry.flags & CT_FLAG_PORT_NAT != 0 {
        let client = Endpoint {
            addr: h.daddr,
            port_be: client_port_be,
        };
        nat::rewrite::<F>(ctx, h, Side::Destination, client)?;
    }
    Ok(Verdict::Pass(if direct {
        Reason::NatPortClash
    } else {
        Reason::RevNatReply
    }))
}

/// Tells the forward entry of the flow (client = the reply's destination, on its own
/// port) that a reply was seen, and carries a FIN/RST of the reply over. A missing or dead
/// forward entry is left alone: the next packet of the client decides.
#[inline(always)]
fn update_forward_entry<F: Family>(
    h: &Headers<F::Addr>,
    frontend: Endpoint<F::Addr>,
    client_port_be: u16,
    env: &Env,
) {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        h.daddr,
        frontend.addr,
        client_port_be,
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
