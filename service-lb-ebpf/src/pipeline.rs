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
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_DIRECT, CT_FLAG_HAIRPIN,
        CT_FLAG_NORTH_SOUTH, CT_FLAG_PORT_NAT,
    },
    proto::{ETH_P_IP, IPPROTO_TCP, TCP_FLAG_ACK, TCP_FLAG_SYN},
    CtEntry, DataplaneConfig, Hook, Reason,
};

use crate::{
    affinity::Sticky,
    config,
    conntrack::{
        self, advanced, create, forward_of, is_closing, is_syn_only, live, merged, now_ns, put,
        reply_of, store, wire_port, worth_writing, Created, NS_PER_S,
    },
    family::{Endpoint, Family, Side, V4, V6},
    frag::{self, Fragments},
    hairpin, icmp,
    lb::{self, Choice},
    nat,
    northsouth::{self, NorthSouth},
    packet::{self, Headers},
    ports,
    reject::{self, Refuse},
    verdict::{raw, Step, Verdict, RAW_OTHER},
};

/// The packet's headers, or the raw verdict the subprogram returns at once.
macro_rules! headers_or_return {
    ($ctx:expr) => {
        match F::parse($ctx) {
            Ok(h) => h,
            Err(verdict) => return verdict.to_raw(),
        }
    };
}

/// The verdict for the packet in `ctx`, seen at `hook`.
///
/// Each step below (`established`, `balance`, `not_service`, `reply`) is a BPF
/// subprogram (`#[inline(never)]`) called straight from the entry point, with its own
/// stack frame: the verifier adds the frames of a call chain up, and the whole pipeline
/// inlined does not fit in 512 bytes. Each parses the headers itself (a few loads) and
/// returns a raw verdict (`Verdict::to_raw`): a subprogram can return a register, not a
/// struct.
#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> Verdict {
    let raw = match packet::ethertype(ctx) {
        Ok(ETH_P_IP) => fragments_then::<V4>(ctx, hook),
        Ok(_) => fragments_then::<V6>(ctx, hook),
        Err(verdict) => return verdict,
    };
    Verdict::from_raw(raw)
}

/// A later fragment is translated by `frag` alone; a first fragment goes through the
/// pipeline, then its translation is recorded (see `frag`).
#[inline(always)]
fn fragments_then<F: Refuse + Sticky + Fragments + NorthSouth>(ctx: &TcContext, hook: Hook) -> u64 {
    match frag::classify::<F>(ctx, hook) {
        frag::NOT_FRAGMENT => dispatch::<F>(ctx, hook),
        frag::FIRST_FRAGMENT => frag::record::<F>(ctx, hook, dispatch::<F>(ctx, hook)),
        decided => decided,
    }
}

#[inline(always)]
fn dispatch<F: Refuse + Sticky + NorthSouth>(ctx: &TcContext, hook: Hook) -> u64 {
    // North-south SNAT and source ranges (`northsouth`): its own subprograms, called
    // from this (the entry's) frame.
    if matches!(hook, Hook::FromNet | Hook::FromPod) {
        match northsouth::run::<F>(ctx, hook) {
            northsouth::CONTINUE => {}
            decided => return decided,
        }
    }
    hairpin::finish::<F>(ctx, steps::<F>(ctx, hook))
}

#[inline(always)]
fn steps<F: Refuse + Sticky>(ctx: &TcContext, hook: Hook) -> u64 {
    let reason = match if matches!(hook, Hook::ToPod | Hook::ToNet) {
        reply::<F>(ctx, hook)
    } else {
        established::<F>(ctx, hook)
    } {
        LOOKUP_MISS => Reason::DnatNewFlow,
        LOOKUP_RESELECT => Reason::DnatReselect,
        HAIRPIN_REPLY => return hairpin::reply::<F>(ctx, hook),
        code if (ICMP_ERROR..ICMP_ERROR + 0x1_0000).contains(&code) => {
            return icmp::translate::<F>(ctx, hook, (code - ICMP_ERROR) as usize);
        }
        decided => return decided,
    };
    // Filled by `choose` (backend id, service id, `CT_FLAG_HAIRPIN` or 0), read by
    // `new_flow`: it lives in this (the entry's) frame, so it is kept small.
    let mut choice = [0u32; 3];
    match choose::<F>(ctx, hook, &mut choice) {
        CHOSEN => {}
        NOT_SERVICE => return not_service::<F>(ctx, hook),
        decided => return decided,
    }
    match new_flow::<F>(ctx, hook, &choice) {
        LOST_RACE => follow_winner::<F>(ctx, hook),
        decided => match Verdict::from_raw(decided) {
            // Finished by `hairpin::finish`.
            Verdict::Pass(Reason::DnatNewFlow) if choice[2] != 0 => {
                Verdict::Pass(Reason::HairpinNewFlow).to_raw()
            }
            Verdict::Pass(Reason::DnatNewFlow) => Verdict::Pass(reason).to_raw(),
            _ => decided,
        },
    }
}

/// What every step needs besides the packet.
pub(crate) struct Env {
    pub(crate) hook: Hook,
    pub(crate) cfg: DataplaneConfig,
    pub(crate) now: u64,
}

/// The step's environment.
#[inline(always)]
pub(crate) fn env(hook: Hook) -> Env {
    Env {
        hook,
        cfg: config::get(),
        now: now_ns(),
    }
}

/// What the conntrack lookup of a forward packet found.
enum Lookup {
    /// A live flow: the packet is translated.
    Done(Verdict),
    /// No live flow (or one a SYN may start afresh): a new flow.
    Miss,
    /// A connectionless flow whose backend is gone: its entry is removed, the datagram
    /// picks a live backend of the frontend.
    Reselect,
}

/// Raw outcomes of the steps besides a verdict.
const LOOKUP_MISS: u64 = RAW_OTHER;
const LOOKUP_RESELECT: u64 = RAW_OTHER + 1;
const CHOSEN: u64 = RAW_OTHER + 2;
const NOT_SERVICE: u64 = RAW_OTHER + 3;
const LOST_RACE: u64 = RAW_OTHER + 4;
/// A pod's reply to the hairpin address (see `hairpin`).
const HAIRPIN_REPLY: u64 = RAW_OTHER + 5;
/// The packet is an ICMP error (see `icmp`).
/// `ICMP_ERROR + offset of the ICMP header`: the entry point hands it to `icmp`
/// without parsing the outer headers again.
const ICMP_ERROR: u64 = RAW_OTHER + 0x1_0000;

/// Frontend lookup and backend choice into `choice`: `CHOSEN`, `NOT_SERVICE` when the
/// packet is to no frontend and no ClusterIP address or service CIDR either, else a
/// verdict (a frontend with no endpoint, or an undefined port of a ClusterIP, is refused:
/// see `reject`).
#[inline(never)]
fn choose<F: Refuse + Sticky>(ctx: &TcContext, hook: Hook, choice: &mut [u32; 3]) -> u64 {
    let h = match F::parse(ctx) {
        Ok(h) => h,
        Err(verdict) => return verdict.to_raw(),
    };
    match lb::choose::<F>(hook, &h) {
        Ok(chosen) => {
            // The client is its own backend: a hairpin flow (see `hairpin`).
            let hairpin =
                hook == Hook::FromPod && chosen.backend.addr == h.saddr && hairpin::on::<F>();
            let flag = if hairpin { CT_FLAG_HAIRPIN } else { 0 };
            *choice = [chosen.backend_id, chosen.service_id, u32::from(flag)];
            CHOSEN
        }
        Err(Verdict::Pass(Reason::PassNotService)) => match reject::unowned::<F>(ctx, &h) {
            Ok(()) => NOT_SERVICE,
            Err(verdict) => verdict.to_raw(),
        },
        Err(Verdict::Drop(Reason::DropNoBackend)) => {
            reject::refuse::<F>(ctx, &h, Reason::RejectNoEndpoint).to_raw()
        }
        Err(verdict) => verdict.to_raw(),
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

/// A packet of a known flow: DNAT to the backend its conntrack entry names.
///
/// A SYN on a closed flow (FIN both ways, RST, or backend gone) forgets it and starts a
/// fresh one (`Lookup::Miss`); a connectionless flow whose backend is gone is re-balanced
/// (`Lookup::Reselect`); a TCP flow whose backend is gone is dropped.
#[inline(never)]
fn established<F: Family>(ctx: &TcContext, hook: Hook) -> u64 {
    let h = headers_or_return!(ctx);
    let env = env(hook);
    if packet::is_icmp(h.proto) {
        return ICMP_ERROR + h.l4_off as u64;
    }
    if hairpin::is_reply::<F>(hook, &h) {
        return HAIRPIN_REPLY;
    }
    match lookup::<F>(ctx, &h, &env) {
        Ok(Lookup::Done(verdict)) | Err(verdict) => verdict.to_raw(),
        Ok(Lookup::Miss) => LOOKUP_MISS,
        Ok(Lookup::Reselect) => LOOKUP_RESELECT,
    }
}

#[inline(always)]
fn lookup<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Lookup> {
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
        return Ok(Lookup::Miss);
    };
    let direct = entry.flags & CT_FLAG_DIRECT != 0;
    let gone = entry.flags & CT_FLAG_BACKEND_GONE != 0;
    if is_syn_only(h.proto, h.tcp_flags) && (gone || is_closing(entry.flags)) {
        forget::<F>(h, &key, &entry);
        return Ok(Lookup::Miss);
    }
    if gone {
        return Err(Verdict::Drop(Reason::DropBackendGone));
    }
    let backend = if direct {
        Endpoint {
            addr: h.daddr,
            port_be: h.dport_be,
        }
    } else {
        let Some(backend) = lb::get(F::backends(), &entry.backend_id) else {
            if h.proto != IPPROTO_TCP {
                // An error means the entry is already gone (another CPU or LRU eviction).
                let _already_gone = ct.remove(&key);
                return Ok(Lookup::Reselect);
            }
            let mut marked = entry;
            marked.flags |= CT_FLAG_BACKEND_GONE;
            marked.expires_ns = env.now + u64::from(env.cfg.ct_tcp_closing_s) * NS_PER_S;
            store(slot, &entry, &marked);
            return Err(Verdict::Drop(Reason::DropBackendGone));
        };
        F::backend_endpoint(&backend)
    };
    let mut reason = if direct {
        Reason::NatPortClash
    } else {
        Reason::DnatEstablished
    };
    let next = advanced(
        &env.cfg,
        h.proto,
        h.tcp_flags,
        CT_DIR_SERVICE,
        entry,
        env.now,
    );
    if worth_writing(&entry, &next) {
        store(slot, &entry, &next);
        match sync_reply_entry::<F>(h, &backend, &next, env) {
            0 => {}
            1 if !direct => reason = Reason::DnatCtReplyEvicted,
            1 => {}
            _ => return Err(Verdict::Drop(Reason::DropCtCreate)),
        }
    }
    if !direct {
        nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    }
    if entry.flags & CT_FLAG_HAIRPIN != 0 {
        // Finished by `hairpin::finish`.
        reason = Reason::HairpinEstablished;
    }
    if entry.flags & CT_FLAG_PORT_NAT != 0 {
        rewrite_client_port::<F>(ctx, h, entry.nat_port_be)?;
    }
    Ok(Lookup::Done(Verdict::Pass(reason)))
}

/// Removes both entries of the closed flow `entry` (forward key `key`), so a SYN can
/// start it afresh. The reply entry is found through the flow's backend; when that is
/// gone, it is left to expire (no live backend can answer on it).
/// A subprogram (own stack frame).
#[inline(never)]
fn forget<F: Family>(h: &Headers<F::Addr>, key: &F::CtKey, entry: &CtEntry) {
    let ct = F::conntrack(h.proto);
    let backend = if entry.flags & CT_FLAG_DIRECT != 0 {
        Some(Endpoint {
            addr: h.daddr,
            port_be: h.dport_be,
        })
    } else {
        lb::get(F::backends(), &entry.backend_id).map(|b| F::backend_endpoint(&b))
    };
    if let Some(backend) = backend {
        let reply_key = F::ct_key(
            backend.addr,
            h.saddr,
            backend.port_be,
            wire_port(entry, h.sport_be),
            h.proto,
            CT_DIR_REPLY,
        );
        // Errors mean the entry is already gone: the outcome we want.
        let _already_gone = ct.remove(&reply_key);
    }
    let _already_gone = ct.remove(key);
}

/// Keeps the reply entry of an established flow in step with its forward entry `forward`
/// (flags, state, expiry). `true` when it had to be created again (the LRU evicted it,
/// or it had expired while the forward entry lived).
/// A subprogram (own stack frame): 0 in step, 1 created again, 2 could not be created.
#[inline(never)]
fn sync_reply_entry<F: Family>(
    h: &Headers<F::Addr>,
    backend: &Endpoint<F::Addr>,
    forward: &CtEntry,
    env: &Env,
) -> u64 {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        backend.addr,
        h.saddr,
        backend.port_be,
        wire_port(forward, h.sport_be),
        h.proto,
        CT_DIR_REPLY,
    );
    match live(ct, &key, env.now) {
        None => match put(ct, &key, &reply_of(forward, h.sport_be)) {
            Ok(()) => 1,
            Err(_) => 2,
        },
        Some((slot, reply)) => {
            let next = merged(&env.cfg, h.proto, reply, forward, env.now);
            if worth_writing(&reply, &next) {
                store(slot, &reply, &next);
            }
            0
        }
    }
}

/// First packet of a flow to a frontend: create both conntrack entries (with another
/// source port when the reply tuple is taken, see `ports`), DNAT to the chosen backend.
/// When another CPU created the flow at the same moment, its translation is used.
#[inline(never)]
fn new_flow<F: Family>(ctx: &TcContext, hook: Hook, choice: &[u32; 3]) -> u64 {
    let [backend_id, service_id, hairpin_flag] = *choice;
    // The backend `choose` just read (a concurrent delete makes this a miss).
    let Some(backend) = lb::get(F::backends(), &backend_id) else {
        return Verdict::Drop(Reason::DropBackendGone).to_raw();
    };
    let choice = Choice {
        service_id,
        backend_id,
        backend: F::backend_endpoint(&backend),
    };
    let h = headers_or_return!(ctx);
    match new_flow_step::<F>(ctx, &h, &env(hook), &choice, hairpin_flag as u16) {
        Ok(Created::Theirs) => LOST_RACE,
        Ok(Created::Ours) => Verdict::Pass(Reason::DnatNewFlow).to_raw(),
        Err(verdict) => verdict.to_raw(),
    }
}

#[inline(always)]
fn new_flow_step<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    env: &Env,
    choice: &Choice<F::Addr>,
    hairpin_flag: u16,
) -> Step<Created> {
    let flags = if env.hook == Hook::FromNet {
        CT_FLAG_NORTH_SOUTH
    } else {
        hairpin_flag
    };
    let fresh = conntrack::new_entry(choice.backend_id, choice.service_id, flags);
    let backend = choice.backend;
    let ct = F::conntrack(h.proto);
    let new_port = ports::for_new_flow::<F>(ct, backend, h.saddr, h.sport_be, h.proto, env.now)?;
    if let Created::Theirs = track::<F>(h, backend, fresh, new_port, env)? {
        return Ok(Created::Theirs);
    }
    nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    if let Some(port_be) = new_port {
        rewrite_client_port::<F>(ctx, h, port_be)?;
    }
    Ok(Created::Ours)
}

/// The packet of a flow another CPU created while this one was creating it: translated
/// as the winner's entry says, without touching it (counted `dnat_ct_race`).
#[inline(never)]
fn follow_winner<F: Family>(ctx: &TcContext, hook: Hook) -> u64 {
    let h = headers_or_return!(ctx);
    raw(follow_winner_step::<F>(ctx, &h, &env(hook)))
}

#[inline(always)]
fn follow_winner_step<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    env: &Env,
) -> Step<Verdict> {
    const LOST: Verdict = Verdict::Drop(Reason::DropCtCreate);
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    let (_, winner) = live(ct, &key, env.now).ok_or(LOST)?;
    if winner.flags & CT_FLAG_DIRECT == 0 {
        let backend = lb::get(F::backends(), &winner.backend_id).ok_or(LOST)?;
        nat::rewrite::<F>(ctx, h, Side::Destination, F::backend_endpoint(&backend))?;
    }
    if winner.flags & CT_FLAG_PORT_NAT != 0 {
        rewrite_client_port::<F>(ctx, h, winner.nat_port_be)?;
    }
    Ok(Verdict::Pass(if winner.flags & CT_FLAG_HAIRPIN != 0 {
        // Finished by `hairpin::finish`.
        Reason::HairpinNewFlow
    } else {
        Reason::DnatCtRace
    }))
}

/// A packet to no frontend and of no tracked flow: passed untouched, unless it starts a
/// flow (a TCP SYN, any other datagram) whose reply tuple a translated flow holds: the
/// client reused that flow's source port to reach the backend directly, and its replies
/// would be reverse NATed. That flow gets another source port and is tracked.
#[inline(never)]
fn not_service<F: Family>(ctx: &TcContext, hook: Hook) -> u64 {
    let h = headers_or_return!(ctx);
    raw(not_service_step::<F>(ctx, &h, &env(hook)))
}

#[inline(always)]
fn not_service_step<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Verdict> {
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
    if let Created::Theirs = track::<F>(h, peer, fresh, new_port, env)? {
        return follow_winner_step::<F>(ctx, h, env);
    }
    rewrite_client_port::<F>(ctx, h, port_be)?;
    Ok(Verdict::Pass(Reason::NatPortClash))
}

/// Creates the forward and reply entries of a new flow from `h`'s source to `peer` (the
/// backend after DNAT), from `fresh`; with `new_port` (from `ports::for_new_flow`) the
/// flow goes out with that source port (`CT_FLAG_PORT_NAT`). The forward entry is
/// created with `BPF_NOEXIST`: `Created::Theirs` when another CPU's is there first (then
/// nothing is written).
#[inline(always)]
fn track<F: Family>(
    h: &Headers<F::Addr>,
    peer: Endpoint<F::Addr>,
    fresh: CtEntry,
    new_port: Option<u16>,
    env: &Env,
) -> Step<Created> {
    let port = new_port.map_or(0, u32::from);
    match track_sub::<F>(h, &peer, &fresh, port, env) {
        TRACK_OURS => Ok(Created::Ours),
        TRACK_THEIRS => Ok(Created::Theirs),
        failed => Err(Verdict::from_raw(failed)),
    }
}

const TRACK_OURS: u64 = RAW_OTHER + 10;
const TRACK_THEIRS: u64 = RAW_OTHER + 11;

/// `track` as a subprogram (own stack frame); `port` 0 = the client's own port.
#[inline(never)]
fn track_sub<F: Family>(
    h: &Headers<F::Addr>,
    peer: &Endpoint<F::Addr>,
    fresh: &CtEntry,
    port: u32,
    env: &Env,
) -> u64 {
    let new_port = (port != 0).then_some(port as u16);
    match track_inline::<F>(h, *peer, *fresh, new_port, env) {
        Ok(Created::Ours) => TRACK_OURS,
        Ok(Created::Theirs) => TRACK_THEIRS,
        Err(verdict) => verdict.to_raw(),
    }
}

#[inline(always)]
fn track_inline<F: Family>(
    h: &Headers<F::Addr>,
    peer: Endpoint<F::Addr>,
    fresh: CtEntry,
    new_port: Option<u16>,
    env: &Env,
) -> Step<Created> {
    let ct = F::conntrack(h.proto);
    let mut forward = advanced(
        &env.cfg,
        h.proto,
        h.tcp_flags,
        CT_DIR_SERVICE,
        fresh,
        env.now,
    );
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
    if let Created::Theirs = create(ct, &forward_key, &forward, env.now)? {
        return Ok(Created::Theirs);
    }
    if let Err(verdict) = put(ct, &reply_key, &reply_of(&forward, h.sport_be)) {
        // Do not leave half a flow behind; a failed remove means it is already gone.
        let _already_gone = ct.remove(&forward_key);
        return Err(verdict);
    }
    Ok(Created::Ours)
}

/// A reply of a tracked flow: source back to the frontend (translated flows), the
/// client's own port back (flows whose port was rewritten).
#[inline(never)]
fn reply<F: Family>(ctx: &TcContext, hook: Hook) -> u64 {
    let h = headers_or_return!(ctx);
    if packet::is_icmp(h.proto) {
        return ICMP_ERROR + h.l4_off as u64;
    }
    raw(reply_step::<F>(ctx, &h, &env(hook)))
}

#[inline(always)]
fn reply_step<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Verdict> {
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

    let mut reason = if direct {
        Reason::NatPortClash
    } else {
        Reason::RevNatReply
    };
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, CT_DIR_REPLY, entry, env.now);
    if worth_writing(&entry, &next) {
        store(slot, &entry, &next);
        let client = Endpoint {
            addr: h.daddr,
            port_be: client_port_be,
        };
        if sync_forward_entry::<F>(h, &frontend, &client, &next, env) && !direct {
            reason = Reason::RevNatCtForwardEvicted;
        }
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
    Ok(Verdict::Pass(reason))
}

/// Keeps the forward entry of the flow (`client`: the reply's destination on its own
/// port, or the pod itself for a hairpin flow) in step with its reply entry `reply` (flags, state, expiry). A forward entry
/// marked backend-gone is left alone. `true` when it was missing (LRU eviction) and was
/// created again from `reply`, so the client's next packet keeps its backend; not when
/// the flow's backend is gone (the next datagram re-balances instead).
/// A subprogram (own stack frame).
#[inline(never)]
pub(crate) fn sync_forward_entry<F: Family>(
    h: &Headers<F::Addr>,
    frontend: &Endpoint<F::Addr>,
    client: &Endpoint<F::Addr>,
    reply: &CtEntry,
    env: &Env,
) -> bool {
    let ct = F::conntrack(h.proto);
    let key = F::ct_key(
        client.addr,
        frontend.addr,
        client.port_be,
        frontend.port_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    match live(ct, &key, env.now) {
        Some((slot, entry)) => {
            if entry.flags & CT_FLAG_BACKEND_GONE == 0 {
                let next = merged(&env.cfg, h.proto, entry, reply, env.now);
                if worth_writing(&entry, &next) {
                    store(slot, &entry, &next);
                }
            }
            false
        }
        None => {
            let direct = reply.flags & CT_FLAG_DIRECT != 0;
            if !direct && lb::get(F::backends(), &reply.backend_id).is_none() {
                return false;
            }
            let forward = forward_of(reply, h.dport_be);
            matches!(create(ct, &key, &forward, env.now), Ok(Created::Ours))
        }
    }
}
