//! Hairpin (see `service_lb_common::hairpin`): a pod reaching itself through a frontend.
//!
//! Everything happens at `from_pod`, and every packet of such a flow is sent back into the
//! pod it came from (`Verdict::Answer`: egress of the same host-side veth, MACs swapped),
//! so the node's routing never sees the hairpin address:
//! - new flow whose chosen backend is the client's own address (hairpin `on`): DNAT to the
//!   backend, SNAT to the hairpin address (same port, or the rewritten one: `snat`), both
//!   conntrack entries flagged `CT_FLAG_HAIRPIN`. The entries are keyed as any flow's:
//!   the reply entry backend -> client, here pod -> the pod itself (a tuple no other flow
//!   through the programs has: a pod reaches its own address over its loopback), so the
//!   port-clash check, the entry sync and `forget` need nothing of their own;
//! - later packets of the flow: the same translation, from its forward entry;
//! - the pod's replies, to the hairpin address (`is_reply`, then the subprogram `reply`):
//!   looked up with the hairpin address replaced by the pod's, source back to the
//!   frontend, destination back to the pod's own address and port.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use service_lb_common::{
    conntrack::{CT_DIR_REPLY, CT_FLAG_HAIRPIN},
    hairpin::HairpinConfig,
    proto::ETH_HLEN,
    Hook, Reason,
};

use crate::{
    conntrack::{advanced, live, store, wire_port, worth_writing},
    family::{Endpoint, Family, Side},
    lb, nat,
    packet::Headers,
    pipeline::{env, sync_forward_entry, Env},
    verdict::{raw, Step, Verdict},
};

/// Read-only to the programs; patched by userspace (`HAIRPIN_GLOBAL`).
#[no_mangle]
static SLB_HAIRPIN: HairpinConfig = HairpinConfig::OFF;

/// The family's hairpin address, `None` when hairpin is off for it.
#[inline(always)]
fn addr<F: Family>() -> Option<F::Addr> {
    let cfg = &SLB_HAIRPIN;
    // SAFETY: `F::Addr` is the family's raw address, `[u8; 4]` or `[u8; 16]` (alignment
    // 1, every bit pattern valid): the field of the same size is read as one. Volatile so
    // the default is not folded in before userspace patches the global.
    let (addr, zero) = unsafe {
        let src = match size_of::<F::Addr>() {
            4 => cfg.v4.as_ptr(),
            16 => cfg.v6.as_ptr(),
            _ => return None,
        };
        (
            core::ptr::read_volatile(src.cast::<F::Addr>()),
            core::mem::zeroed::<F::Addr>(),
        )
    };
    (addr != zero).then_some(addr)
}

/// Whether hairpin is on for the family (a new flow whose backend is the client itself
/// is then a hairpin flow, `CT_FLAG_HAIRPIN`).
#[inline(never)]
pub fn on<F: Family>() -> bool {
    addr::<F>().is_some()
}

/// Whether the packet, seen at `hook`, is a pod's reply to the hairpin address.
#[inline(never)]
pub fn is_reply<F: Family>(hook: Hook, h: &Headers<F::Addr>) -> bool {
    hook == Hook::FromPod && addr::<F>() == Some(h.daddr)
}

/// The pipeline's raw verdict `raw`, with a hairpin flow's packet finished: the steps
/// translate it as any flow's (DNAT, the client's port) and return `Pass` with a hairpin
/// reason; here its source goes to the hairpin address and it is sent back into the pod.
/// (The steps' own frames have no room for it: the IPv6 `new_flow` + `track_sub` chain is
/// within a few bytes of the verifier's 512-byte limit.)
#[inline(always)]
pub fn finish<F: Family>(ctx: &TcContext, raw: u64) -> u64 {
    let new_flow = Verdict::Pass(Reason::HairpinNewFlow).to_raw();
    let established = Verdict::Pass(Reason::HairpinEstablished).to_raw();
    if raw == new_flow || raw == established {
        snat::<F>(ctx, raw as u32)
    } else {
        raw
    }
}

/// A subprogram: the packet's source address to the hairpin address (its port stays: the
/// steps wrote the wire port), sent back into the pod as `Verdict::Answer(reason)`.
#[inline(never)]
fn snat<F: Family>(ctx: &TcContext, reason: u32) -> u64 {
    let h = match F::parse(ctx) {
        Ok(h) => h,
        Err(verdict) => return verdict.to_raw(),
    };
    let Some(addr) = addr::<F>() else {
        // Only reached with hairpin on (`on`); a flow tracked before a restart with
        // hairpin off is finished as any flow.
        return Verdict::Pass(Reason::DnatEstablished).to_raw();
    };
    let to = Endpoint {
        addr,
        port_be: h.sport_be,
    };
    if let Err(verdict) = nat::rewrite::<F>(ctx, &h, Side::Source, to) {
        return verdict.to_raw();
    }
    if let Err(verdict) = turn_around(ctx) {
        return verdict.to_raw();
    }
    // SAFETY: `reason` is the low half of a raw `Pass(reason)` (see `finish`).
    Verdict::Answer(unsafe { core::mem::transmute::<u32, Reason>(reason) }).to_raw()
}

/// A pod's reply to the hairpin address (`is_reply`), as a subprogram (own stack frame):
/// translated back (source -> frontend, destination -> the pod on the client's port) and
/// sent back into the pod. Not of a tracked hairpin flow: passed untouched.
#[inline(never)]
pub fn reply<F: Family>(ctx: &TcContext, hook: Hook) -> u64 {
    let h = match F::parse(ctx) {
        Ok(h) => h,
        Err(verdict) => return verdict.to_raw(),
    };
    raw(reply_step::<F>(ctx, &h, &env(hook)))
}

#[inline(always)]
fn reply_step<F: Family>(ctx: &TcContext, h: &Headers<F::Addr>, env: &Env) -> Step<Verdict> {
    let ct = F::conntrack(h.proto);
    // The reply entry of a hairpin flow is keyed pod -> pod (see the module's doc).
    let key = F::ct_key(
        h.saddr,
        h.saddr,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_REPLY,
    );
    let Some((slot, entry)) = live(ct, &key, env.now) else {
        return Ok(Verdict::Pass(Reason::PassNotService));
    };
    if entry.flags & CT_FLAG_HAIRPIN == 0 {
        return Ok(Verdict::Pass(Reason::PassNotService));
    }
    let revnat =
        lb::get(F::revnat(), &entry.service_id).ok_or(Verdict::Drop(Reason::DropRevNatMissing))?;
    let frontend = F::frontend_endpoint(&revnat);
    // The client is the pod itself, on its own port (the reply entry of a rewritten port
    // names it).
    let client = Endpoint {
        addr: h.saddr,
        port_be: wire_port(&entry, h.dport_be),
    };
    let next = advanced(&env.cfg, h.proto, h.tcp_flags, CT_DIR_REPLY, entry, env.now);
    if worth_writing(&entry, &next) {
        store(slot, &entry, &next);
        let _recreated = sync_forward_entry::<F>(h, &frontend, &client, &next, env);
    }
    nat::rewrite::<F>(ctx, h, Side::Source, frontend)?;
    nat::rewrite::<F>(ctx, h, Side::Destination, client)?;
    turn_around(ctx)?;
    Ok(Verdict::Answer(Reason::HairpinReply))
}

/// Swaps the Ethernet addresses, so the packet redirected to the egress of the device it
/// came in on reaches the host it came from.
#[inline(always)]
pub fn turn_around(ctx: &TcContext) -> Step<()> {
    if swap_macs(ctx) == 0 {
        Ok(())
    } else {
        Err(Verdict::Drop(Reason::DropNatFailed))
    }
}

/// A subprogram (its buffers in a frame of its own): 0 on success.
#[inline(never)]
fn swap_macs(ctx: &TcContext) -> u64 {
    const _: () = assert!(ETH_HLEN >= 12);
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return 1;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    match ctx.store(0, &swapped, 0) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
