//! Source ports of flows whose reply tuple another flow already holds.
//!
//! Two flows of one client share a reply tuple (backend -> client:port) when the client
//! reuses a source port to reach the same backend through two frontends, or directly while
//! a translated flow of that port is still tracked. Replies could not tell them apart, so
//! the newer flow gets another source port, as netfilter's NAT does: chosen at random in
//! the port's own range (1-511, 600-1023 or 1024-65535), among ports no live flow to that
//! backend uses.

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::LruHashMap};
use service_lb_common::{conntrack::CT_DIR_REPLY, CtEntry, Reason};

use crate::{
    conntrack::live,
    family::{Endpoint, Family},
    verdict::{Step, Verdict},
};

/// Random candidates tried before giving up (each costs one lookup; the space is mostly
/// free, so the first one almost always is).
const TRIES: u32 = 8;

/// The source port `client`'s new flow from `port_be` to `peer` must go out with: `None`
/// when no live flow's reply entry holds `peer -> client:port_be` (the client's own port
/// serves), else a free port in the range of `port_be`.
#[inline(always)]
pub fn for_new_flow<F: Family>(
    ct: &LruHashMap<F::CtKey, CtEntry>,
    peer: Endpoint<F::Addr>,
    client: F::Addr,
    port_be: u16,
    proto: u8,
    now: u64,
) -> Step<Option<u16>> {
    let _ = ct;
    match for_new_flow_sub::<F>(&peer, &client, u32::from(port_be), u32::from(proto), now) {
        0 => Ok(None),
        NO_FREE_PORT => Err(Verdict::Drop(Reason::DropNoFreePort)),
        port => Ok(Some(port as u16)),
    }
}

/// Raw "no free port" of `for_new_flow_sub` (0 = the client's own port, else the port).
const NO_FREE_PORT: u64 = u64::MAX;

/// `for_new_flow` as a subprogram (own stack frame).
#[inline(never)]
fn for_new_flow_sub<F: Family>(
    peer: &Endpoint<F::Addr>,
    client: &F::Addr,
    port_be: u32,
    proto: u32,
    now: u64,
) -> u64 {
    let ct = F::conntrack(proto as u8);
    match choose_port::<F>(ct, *peer, *client, port_be as u16, proto as u8, now) {
        Ok(None) => 0,
        Ok(Some(port)) => u64::from(port),
        Err(_) => NO_FREE_PORT,
    }
}

#[inline(always)]
fn choose_port<F: Family>(
    ct: &LruHashMap<F::CtKey, CtEntry>,
    peer: Endpoint<F::Addr>,
    client: F::Addr,
    port_be: u16,
    proto: u8,
    now: u64,
) -> Step<Option<u16>> {
    let taken = |port_be: u16| {
        let key = F::ct_key(
            peer.addr,
            client,
            peer.port_be,
            port_be,
            proto,
            CT_DIR_REPLY,
        );
        live(ct, &key, now).is_some()
    };
    if !taken(port_be) {
        return Ok(None);
    }
    let (first, span) = port_range(u16::from_be(port_be));
    for _ in 0..TRIES {
        // SAFETY: helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        let candidate = ((first + random % span) as u16).to_be();
        if !taken(candidate) {
            return Ok(Some(candidate));
        }
    }
    Err(Verdict::Drop(Reason::DropNoFreePort))
}

/// First port and size of the range a rewritten `port` stays in (netfilter's choice:
/// privileged ports stay privileged).
#[inline(always)]
fn port_range(port: u16) -> (u32, u32) {
    if port < 512 {
        (1, 511)
    } else if port < 1024 {
        (600, 424)
    } else {
        (1024, 64_512)
    }
}
