//! North-south flows (NodePort, externalIPs, LoadBalancer IPs; `service_lb_common::northsouth`):
//! what the master flags `SVC_FLAG_SNAT` and `SVC_FLAG_SOURCE_RANGES` ask for, at `from_net`
//! and `from_pod`, before the shared pipeline.
//!
//! - `reply`: a packet to this node's address that is the reply of an SNATed flow (its
//!   tuple is in the SNAT map and its conntrack reply entry is live): destination back to
//!   the client, source back to the frontend (`RevSnatReply`).
//! - `forward`: a packet to a frontend whose master (of the hook's scope) has one of the
//!   north-south flags. A packet of a known SNATed flow: DNAT + SNAT from conntrack
//!   (`SnatEstablished`). Otherwise the source-range check (a miss is dropped,
//!   `DropSourceRange`, on every packet as kube-proxy's firewall chain does); then a new
//!   SNAT flow: backend choice (`lb::choose`, which also drops `DropNoLocalEndpoint`),
//!   source port allocation (bounded tries), conntrack entries for both directions and
//!   the SNAT entry, DNAT + SNAT (`SnatNewFlow`).
//!
//! Everything else returns `CONTINUE`: the pipeline handles it as before (flows without
//! SNAT keep the client address; their replies are reversed by `to_net` / `to_pod`).
//! Each step is a subprogram called from the entry point's frame, so it never adds to
//! the pipeline's own deepest call chain.
//!
//! An SNATed flow's entries: forward `(client, frontend, SERVICE)` with
//! `CT_FLAG_SNAT | CT_FLAG_PORT_NAT`, `nat_port_be` = the allocated port; reply
//! `(backend, node address:allocated port, REPLY)`, `nat_port_be` = the client's port;
//! SNAT map under the reply key: the client's address and port.

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::LruHashMap, programs::TcContext};
use service_lb_common::{
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_NORTH_SOUTH, CT_FLAG_PORT_NAT, CT_FLAG_SNAT,
    },
    northsouth::{
        NodeAddrs, SnatRev4, SnatRev6, SrcRange4Data, SrcRange6Data, NODEADDR_HAS_V4,
        NODEADDR_HAS_V6, SNAT_PORT_MIN, SNAT_PORT_SPAN,
    },
    proto::{IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_SYN},
    service::{
        SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_SNAT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    },
    CtEntry, Hook, Reason,
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    affinity::Sticky,
    conntrack::{
        self, advanced, create, is_closing, is_syn_only, live, merged, put, reply_of, store,
        worth_writing, Created,
    },
    family::{Endpoint, Family, Side, V4, V6},
    lb,
    maps::{SLB_NODEADDR_V1, SLB_SNAT4_V1, SLB_SNAT6_V1, SLB_SRCRNG4_V1, SLB_SRCRNG6_V1},
    nat,
    packet::Headers,
    pipeline::{env, sync_forward_entry, Env},
    verdict::{raw, Step, Verdict, RAW_OTHER},
};

/// Not north-south work: the pipeline takes the packet.
pub const CONTINUE: u64 = RAW_OTHER + 0x200;

/// Source ports tried for a new SNAT flow before giving up.
const PORT_TRIES: u32 = 8;

/// The per-family part.
pub trait NorthSouth: Family {
    type SnatRev: Copy + 'static;
    /// This node's address of the family, if the daemon wrote one.
    fn node_addr() -> Option<Self::Addr>;
    /// The client address is in a source range of frontend `service_id`.
    fn in_source_range(service_id: u32, client: Self::Addr) -> bool;
    fn snat() -> &'static LruHashMap<Self::CtKey, Self::SnatRev>;
    fn snat_rev(client: &Endpoint<Self::Addr>) -> Self::SnatRev;
    fn snat_client(rev: &Self::SnatRev) -> Endpoint<Self::Addr>;
}

#[inline(always)]
fn node_addrs() -> Option<NodeAddrs> {
    // SAFETY: the pointer comes from a successful lookup of a value of this type.
    SLB_NODEADDR_V1.get_ptr(0).map(|p| unsafe { p.read() })
}

impl NorthSouth for V4 {
    type SnatRev = SnatRev4;
    #[inline(always)]
    fn node_addr() -> Option<[u8; 4]> {
        node_addrs().and_then(|n| (n.flags & NODEADDR_HAS_V4 != 0).then_some(n.addr4))
    }
    #[inline(always)]
    fn in_source_range(service_id: u32, client: [u8; 4]) -> bool {
        let key = Key::new(
            64,
            SrcRange4Data {
                service_id,
                addr: client,
            },
        );
        SLB_SRCRNG4_V1.get(&key).is_some()
    }
    #[inline(always)]
    fn snat() -> &'static LruHashMap<service_lb_common::CtKey4, SnatRev4> {
        &SLB_SNAT4_V1
    }
    #[inline(always)]
    fn snat_rev(client: &Endpoint<[u8; 4]>) -> SnatRev4 {
        SnatRev4::new(client.addr, client.port_be)
    }
    #[inline(always)]
    fn snat_client(rev: &SnatRev4) -> Endpoint<[u8; 4]> {
        Endpoint {
            addr: rev.client_addr,
            port_be: rev.client_port_be,
        }
    }
}

impl NorthSouth for V6 {
    type SnatRev = SnatRev6;
    #[inline(always)]
    fn node_addr() -> Option<[u8; 16]> {
        node_addrs().and_then(|n| (n.flags & NODEADDR_HAS_V6 != 0).then_some(n.addr6))
    }
    #[inline(always)]
    fn in_source_range(service_id: u32, client: [u8; 16]) -> bool {
        let key = Key::new(
            160,
            SrcRange6Data {
                service_id,
                addr: client,
            },
        );
        SLB_SRCRNG6_V1.get(&key).is_some()
    }
    #[inline(always)]
    fn snat() -> &'static LruHashMap<service_lb_common::CtKey6, SnatRev6> {
        &SLB_SNAT6_V1
    }
    #[inline(always)]
    fn snat_rev(client: &Endpoint<[u8; 16]>) -> SnatRev6 {
        SnatRev6::new(client.addr, client.port_be)
    }
    #[inline(always)]
    fn snat_client(rev: &SnatRev6) -> Endpoint<[u8; 16]> {
        Endpoint {
            addr: rev.client_addr,
            port_be: rev.client_port_be,
        }
    }
}

/// The north-south steps for `from_net` / `from_pod`: a verdict, or `CONTINUE`. Each step
/// is a subprogram called from here (the entry's frame), none from another, so the
/// deepest chain is one step and the helpers it calls.
#[inline(always)]
pub fn run<F: NorthSouth + Sticky>(ctx: &TcContext, hook: Hook) -> u64 {
    match reply::<F>(ctx, hook) {
        CONTINUE => {}
        decided => return decided,
    }
    match frontend::<F>(ctx, hook) {
        SNAT_FRONTEND => {}
        decided => return decided,
    }
    match established::<F>(ctx, hook) {
        CONTINUE => {}
        decided => return decided,
    }
    // [backend id, service id, allocated port], filled by `choose` and `alloc_port`: in
    // the entry's frame, kept small.
    let mut choice = [0u32; 3];
    match choose::<F>(ctx, hook, &mut choice) {
        CHOSEN => {}
        decided => return decided,
    }
    match alloc_port::<F>(ctx, hook, &mut choice) {
        CLAIMED => {}
        decided => return decided,
    }
    match new_flow::<F>(ctx, hook, &choice) {
        TRACKED => {}
        decided => return decided,
    }
    match dnat_new::<F>(ctx, &choice) {
        DNATED => snat_new::<F>(ctx, &choice),
        decided => decided,
    }
}

/// `frontend`: the packet is to a frontend with `SVC_FLAG_SNAT` (and passed its source
/// ranges).
const SNAT_FRONTEND: u64 = RAW_OTHER + 0x201;
/// `choose`: a backend was chosen for a new SNAT flow.
const CHOSEN: u64 = RAW_OTHER + 0x202;
/// `alloc_port`: a source port was claimed for the new SNAT flow.
const CLAIMED: u64 = RAW_OTHER + 0x203;
/// `new_flow`: the new SNAT flow's entries are written.
const TRACKED: u64 = RAW_OTHER + 0x204;
/// `dnat_new`: the new SNAT flow's destination is rewritten.
const DNATED: u64 = RAW_OTHER + 0x205;

/// The packet's TCP/UDP headers, or `None` (anything else is the pipeline's).
#[inline(always)]
fn l4_headers<F: Family>(ctx: &TcContext) -> Option<Headers<F::Addr>> {
    let h = F::parse(ctx).ok()?;
    (h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP).then_some(h)
}

/// A reply of an SNATed flow, reverse translated; else `CONTINUE`.
#[inline(never)]
fn reply<F: NorthSouth>(ctx: &TcContext, hook: Hook) -> u64 {
    let Some(h) = l4_headers::<F>(ctx) else {
        return CONTINUE;
    };
    match F::node_addr() {
        Some(node) if node == h.daddr => {}
        _ => return CONTINUE,
    }
    let key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let Some(rev) = F::snat().get_ptr(&key) else {
        return CONTINUE;
    };
    // SAFETY: pointer from a successful lookup of a value of the map's type.
    let client = F::snat_client(&unsafe { rev.read() });
    let env = env(hook);
    let ct = F::conntrack(h.proto);
    let Some((slot, entry)) = live(ct, &key, env.now) else {
        // A stale SNAT entry (its flow expired): not ours any more.
        return CONTINUE;
    };
    if entry.flags & CT_FLAG_SNAT == 0 {
        return CONTINUE;
    }
    raw(reply_step::<F>(ctx, &h, &env, slot, entry, &client))
}

#[inline(always)]
fn reply_step<F: NorthSouth>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    env: &Env,
    slot: *mut CtEntry,
    entry: CtEntry,
    client: &Endpoint<F::Addr>,
) -> Step<Verdict> {
    let revnat =
        lb::get(F::revnat(), &entry.service_id).ok_or(Verdict::Drop(Reason::DropRevNatMissing))?;
    let frontend = F::frontend_endpoint(&revnat);
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, CT_DIR_REPLY, entry, env.now);
    if worth_writing(&entry, &next) {
        store(slot, &entry, &next);
        // The forward entry is keyed (client, frontend) as for any flow; recreated from
        // the reply entry (allocated port = this reply's destination port) when evicted.
        let _recreated = sync_forward_entry::<F>(h, &frontend, client, &next, env);
    }
    nat::rewrite::<F>(ctx, h, Side::Source, frontend)?;
    nat::rewrite::<F>(ctx, h, Side::Destination, *client)?;
    Ok(Verdict::Pass(Reason::RevSnatReply))
}

/// A packet to a frontend with north-south flags: the source-range check (every packet,
/// as kube-proxy's firewall chain), then `SNAT_FRONTEND` for an SNAT frontend; else
/// `CONTINUE`.
#[inline(never)]
fn frontend<F: NorthSouth>(ctx: &TcContext, hook: Hook) -> u64 {
    let Some(h) = l4_headers::<F>(ctx) else {
        return CONTINUE;
    };
    let services = F::services();
    let key = |scope: u8| F::svc_key(h.daddr, h.dport_be, h.proto, scope, 0);
    let Some(mut master) = lb::get(services, &key(SCOPE_EXTERNAL)) else {
        return CONTINUE;
    };
    if master.flags & SVC_FLAG_TWO_SCOPES != 0 && hook == Hook::FromPod {
        let Some(internal) = lb::get(services, &key(SCOPE_INTERNAL)) else {
            // The pipeline counts the torn frontend.
            return CONTINUE;
        };
        master = internal;
    }
    if master.flags & SVC_FLAG_SOURCE_RANGES != 0 && !F::in_source_range(master.service_id, h.saddr)
    {
        return Verdict::Drop(Reason::DropSourceRange).to_raw();
    }
    if master.flags & SVC_FLAG_SNAT == 0 {
        return CONTINUE;
    }
    SNAT_FRONTEND
}

/// A packet of a known SNATed flow: DNAT + SNAT. `CONTINUE` when there is none, or when
/// a SYN reopens a closed one (its entries are removed first: a new flow).
#[inline(never)]
fn established<F: NorthSouth>(ctx: &TcContext, hook: Hook) -> u64 {
    let Some(h) = l4_headers::<F>(ctx) else {
        return CONTINUE;
    };
    let env = &env(hook);
    let h = &h;
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
        return CONTINUE;
    };
    if entry.flags & CT_FLAG_SNAT == 0 {
        return CONTINUE;
    }
    let Some(node) = F::node_addr() else {
        return Verdict::Drop(Reason::DropSnatNoAddress).to_raw();
    };
    let syn = is_syn_only(h.proto, h.tcp_flags);
    let Some(backend) = lb::get(F::backends(), &entry.backend_id) else {
        if syn {
            // The flow is over; the retransmitted SYN starts anew.
            let _already_gone = ct.remove(&key);
        }
        return Verdict::Drop(Reason::DropBackendGone).to_raw();
    };
    let backend = F::backend_endpoint(&backend);
    let reply_key = F::ct_key(
        backend.addr,
        node,
        backend.port_be,
        entry.nat_port_be,
        h.proto,
        CT_DIR_REPLY,
    );
    if syn && is_closing(entry.flags) {
        // Errors mean the entries are already gone: the outcome we want.
        let _already_gone = ct.remove(&reply_key);
        let _already_gone = F::snat().remove(&reply_key);
        let _already_gone = ct.remove(&key);
        return CONTINUE;
    }
    raw(established_step::<F>(
        ctx, h, env, &reply_key, slot, entry, backend, node,
    ))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn established_step<F: NorthSouth>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    env: &Env,
    reply_key: &F::CtKey,
    slot: *mut CtEntry,
    entry: CtEntry,
    backend: Endpoint<F::Addr>,
    node: F::Addr,
) -> Step<Verdict> {
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
        sync_reply::<F>(h, reply_key, &next, env)?;
    }
    nat::rewrite::<F>(ctx, h, Side::Destination, backend)?;
    let wire = Endpoint {
        addr: node,
        port_be: entry.nat_port_be,
    };
    nat::rewrite::<F>(ctx, h, Side::Source, wire)?;
    Ok(Verdict::Pass(Reason::SnatEstablished))
}

/// Keeps the reply entry (and the SNAT entry) of an established SNATed flow in step with
/// its forward entry; recreated when the LRU evicted them.
#[inline(always)]
fn sync_reply<F: NorthSouth>(
    h: &Headers<F::Addr>,
    reply_key: &F::CtKey,
    forward: &CtEntry,
    env: &Env,
) -> Step<()> {
    let ct = F::conntrack(h.proto);
    match live(ct, reply_key, env.now) {
        Some((slot, reply)) => {
            let next = merged(&env.cfg, h.proto, reply, forward, env.now);
            if worth_writing(&reply, &next) {
                store(slot, &reply, &next);
            }
        }
        None => put(ct, reply_key, &reply_of(forward, h.sport_be))?,
    }
    if F::snat().get_ptr(reply_key).is_none() {
        let client = Endpoint {
            addr: h.saddr,
            port_be: h.sport_be,
        };
        F::snat()
            .insert(reply_key, F::snat_rev(&client), 0)
            .map_err(|_| Verdict::Drop(Reason::DropCtCreate))?;
    }
    Ok(())
}

/// The backend of a new SNAT flow into `choice` (`CHOSEN`), or a verdict; `CONTINUE` for
/// what the pipeline decides (a TCP segment without SYN, a frontend without endpoints
/// and without the drop flag: refused there).
#[inline(never)]
fn choose<F: NorthSouth + Sticky>(ctx: &TcContext, hook: Hook, choice: &mut [u32; 3]) -> u64 {
    let Some(h) = l4_headers::<F>(ctx) else {
        return CONTINUE;
    };
    if h.proto == IPPROTO_TCP && h.tcp_flags & TCP_FLAG_SYN == 0 {
        return CONTINUE;
    }
    match lb::choose::<F>(hook, &h) {
        Ok(chosen) => {
            *choice = [chosen.backend_id, chosen.service_id, 0];
            CHOSEN
        }
        Err(Verdict::Drop(Reason::DropNoBackend)) => CONTINUE,
        Err(verdict) => verdict.to_raw(),
    }
}

/// `prepare`'s outcome: (packet, environment, backend, node address, forward entry).
type Prepared<F> = (
    Headers<<F as Family>::Addr>,
    Env,
    Endpoint<<F as Family>::Addr>,
    <F as Family>::Addr,
    CtEntry,
);

/// What a new SNAT flow needs before its entries are written: the backend `choose`
/// picked, this node's address, the packet, and the forward entry (without its port).
#[inline(always)]
fn prepare<F: NorthSouth>(ctx: &TcContext, hook: Hook, choice: &[u32; 3]) -> Step<Prepared<F>> {
    let [backend_id, service_id, _] = *choice;
    // The backend `choose` just read (a concurrent delete makes this a miss).
    let backend =
        lb::get(F::backends(), &backend_id).ok_or(Verdict::Drop(Reason::DropBackendGone))?;
    let backend = F::backend_endpoint(&backend);
    let h = F::parse(ctx)?;
    let node = F::node_addr().ok_or(Verdict::Drop(Reason::DropSnatNoAddress))?;
    let env = env(hook);
    let flags = CT_FLAG_SNAT
        | CT_FLAG_PORT_NAT
        | if hook == Hook::FromNet {
            CT_FLAG_NORTH_SOUTH
        } else {
            0
        };
    let fresh = conntrack::new_entry(backend_id, service_id, flags);
    let forward = advanced(
        &env.cfg,
        h.proto,
        h.tcp_flags,
        CT_DIR_SERVICE,
        fresh,
        env.now,
    );
    Ok((h, env, backend, node, forward))
}

/// Claims a source port for the new flow into `choice[2]` (`CLAIMED`): its reply entry
/// `(backend, node:port)` is created with `BPF_NOEXIST`, so two flows never share a reply
/// tuple. The first try is the client's own port folded into the SNAT range, the others
/// random; every try taken: dropped, counted.
#[inline(never)]
fn alloc_port<F: NorthSouth>(ctx: &TcContext, hook: Hook, choice: &mut [u32; 3]) -> u64 {
    let (h, env, backend, node, mut forward) = match prepare::<F>(ctx, hook, choice) {
        Ok(p) => p,
        Err(verdict) => return verdict.to_raw(),
    };
    let ct = F::conntrack(h.proto);
    let span = u32::from(SNAT_PORT_SPAN);
    let mut offset = u32::from(u16::from_be(h.sport_be)) % span;
    let mut i = 0;
    while i < PORT_TRIES {
        let port_be = (SNAT_PORT_MIN + offset as u16).to_be();
        forward.nat_port_be = port_be;
        let key = F::ct_key(
            backend.addr,
            node,
            backend.port_be,
            port_be,
            h.proto,
            CT_DIR_REPLY,
        );
        if let Ok(Created::Ours) = create(ct, &key, &reply_of(&forward, h.sport_be), env.now) {
            choice[2] = u32::from(port_be);
            return CLAIMED;
        }
        // SAFETY: helper without arguments.
        offset = unsafe { bpf_get_prandom_u32() } % span;
        i += 1;
    }
    Verdict::Drop(Reason::DropSnatPortsExhausted).to_raw()
}

/// First packet of an SNATed flow (see the module doc): the SNAT entry and the forward
/// entry written (the reply entry is `alloc_port`'s): `TRACKED`.
#[inline(never)]
fn new_flow<F: NorthSouth>(ctx: &TcContext, hook: Hook, choice: &[u32; 3]) -> u64 {
    let (h, env, backend, node, mut forward) = match prepare::<F>(ctx, hook, choice) {
        Ok(p) => p,
        Err(verdict) => return verdict.to_raw(),
    };
    let port_be = choice[2] as u16;
    forward.nat_port_be = port_be;
    match finish_new::<F>(&h, &env, &backend, node, port_be, &forward) {
        Ok(tracked) => tracked,
        Err(verdict) => verdict.to_raw(),
    }
}

/// DNAT of a new flow whose entries `new_flow` wrote: `DNATED`. The rewrites are
/// subprograms of their own (`dnat_new`, `snat_new`), called from the entry's frame, so
/// their frames never add to `new_flow`'s.
#[inline(never)]
fn dnat_new<F: NorthSouth>(ctx: &TcContext, choice: &[u32; 3]) -> u64 {
    let Some(backend) = lb::get(F::backends(), &choice[0]) else {
        return Verdict::Drop(Reason::DropBackendGone).to_raw();
    };
    let h = match F::parse(ctx) {
        Ok(h) => h,
        Err(verdict) => return verdict.to_raw(),
    };
    match nat::rewrite::<F>(ctx, &h, Side::Destination, F::backend_endpoint(&backend)) {
        Ok(()) => DNATED,
        Err(verdict) => verdict.to_raw(),
    }
}

/// SNAT of the new flow to this node's address and its allocated port.
#[inline(never)]
fn snat_new<F: NorthSouth>(ctx: &TcContext, choice: &[u32; 3]) -> u64 {
    let Some(node) = F::node_addr() else {
        return Verdict::Drop(Reason::DropSnatNoAddress).to_raw();
    };
    let h = match F::parse(ctx) {
        Ok(h) => h,
        Err(verdict) => return verdict.to_raw(),
    };
    let wire = Endpoint {
        addr: node,
        port_be: choice[2] as u16,
    };
    match nat::rewrite::<F>(ctx, &h, Side::Source, wire) {
        Ok(()) => Verdict::Pass(Reason::SnatNewFlow).to_raw(),
        Err(verdict) => verdict.to_raw(),
    }
}

#[inline(always)]
fn finish_new<F: NorthSouth>(
    h: &Headers<F::Addr>,
    env: &Env,
    backend: &Endpoint<F::Addr>,
    node: F::Addr,
    port_be: u16,
    forward: &CtEntry,
) -> Step<u64> {
    let ct = F::conntrack(h.proto);
    let reply_key = F::ct_key(
        backend.addr,
        node,
        backend.port_be,
        port_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let client = Endpoint {
        addr: h.saddr,
        port_be: h.sport_be,
    };
    let undo = |reason: Reason| {
        // Do not leave half a flow behind; a failed remove means it is already gone.
        let _already_gone = ct.remove(&reply_key);
        Verdict::Drop(reason)
    };
    if F::snat()
        .insert(&reply_key, F::snat_rev(&client), 0)
        .is_err()
    {
        return Err(undo(Reason::DropCtCreate));
    }
    let forward_key = F::ct_key(
        h.saddr,
        h.daddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SERVICE,
    );
    match create(ct, &forward_key, forward, env.now) {
        Ok(Created::Ours) => {}
        // Another CPU created this flow at the same moment: this copy is dropped (counted
        // `drop_ct_create`); the client's retransmission follows the winner's entry.
        Ok(Created::Theirs) => {
            let _already_gone = F::snat().remove(&reply_key);
            return Err(undo(Reason::DropCtCreate));
        }
        Err(_) => {
            let _already_gone = F::snat().remove(&reply_key);
            return Err(undo(Reason::DropCtCreate));
        }
    }
    Ok(TRACKED)
}
