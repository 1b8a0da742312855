//! Forwarding of the packets `northsouth` translated at tc ingress (`from_net`,
//! `from_pod`): SNATed packets of a flow (`snat_new_flow`, `snat_established`) and their
//! reversed replies (`revsnat_reply`).
//!
//! `northsouth` rewrites the source of a forward packet to this node's address, and that
//! of a reply to the frontend: this node's own address (NodePort) or an address the node
//! answers for. Handed to the stack, an IPv4 packet arriving with a local source is a
//! martian (`fib_validate_source`, `accept_local=0`) and dropped (IPv6 has no such
//! check). So these packets never go to the stack: the route to the destination is
//! looked up (`bpf_fib_lookup`, both families alike), the TTL / hop limit
//! decremented as a router does, and the packet redirected out of the route's device:
//! with the MACs from the lookup (`bpf_redirect`), or through the kernel's neighbour
//! resolution when the next hop has no neighbour entry yet (`bpf_redirect_neigh`).
//! Counted under the step's own reason. When there is no usable route (lookup error,
//! forwarding disabled, TTL spent, MTU exceeded), the packet is passed to the stack as
//! before, counted `snat_route_pass`.
//!
//! A subprogram of its own, called from the entry point on the verdict: its 64-byte
//! `struct bpf_fib_lookup` never adds to a pipeline step's frame.

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use service_lb_common::{
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, VERDICT_PASS},
    Hook, Reason,
};

use crate::{counters::count, packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Offsets in the IPv4 header.
const V4_TTL_OFF: usize = 8;
const V4_CSUM_OFF: usize = 10;
/// Offset of the hop limit in the IPv6 header.
const V6_HOPS_OFF: usize = 7;

/// The first 20 bytes of an IPv4 header / 40 of an IPv6 one, as loaded.
type Ip4 = [u8; 20];
type Ip6 = [u8; 40];

/// The packet in `ctx`, translated at ingress and counted under `reason` when it is
/// redirected, forwarded (see the module doc): the tc action.
#[inline(never)]
pub fn forward(ctx: &TcContext, hook: Hook, reason: Reason) -> i32 {
    match route(ctx) {
        Some(action) => {
            count(ctx, hook, reason);
            action
        }
        None => {
            count(ctx, hook, Reason::SnatRoutePass);
            VERDICT_PASS
        }
    }
}

/// The redirect's tc action, or `None` to pass the packet to the stack untouched.
#[inline(always)]
fn route(ctx: &TcContext) -> Option<i32> {
    // SAFETY: plain data, all zeroes is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: reads the program's own context.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let v4 = match packet::ethertype(ctx).ok()? {
        ETH_P_IP => {
            let ip: Ip4 = ctx.load(ETH_HLEN).ok()?;
            if ip[V4_TTL_OFF] <= 1 {
                return None;
            }
            params.family = AF_INET;
            params.l4_protocol = ip[9];
            params.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[2], ip[3]]);
            params.__bindgen_anon_2.tos = ip[1];
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
            true
        }
        ETH_P_IPV6 => {
            let ip: Ip6 = ctx.load(ETH_HLEN).ok()?;
            if ip[V6_HOPS_OFF] <= 1 {
                return None;
            }
            params.family = AF_INET6;
            params.l4_protocol = ip[6];
            params.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[4], ip[5]]).saturating_add(40);
            // Traffic class and flow label (the version nibble masked off).
            params.__bindgen_anon_2.flowinfo =
                u32::from_ne_bytes([ip[0] & 0x0f, ip[1], ip[2], ip[3]]);
            params.__bindgen_anon_3.ipv6_src = words(&ip, 8);
            params.__bindgen_anon_4.ipv6_dst = words(&ip, 24);
            false
        }
        _ => return None,
    };
    // SAFETY: `params` is a live `struct bpf_fib_lookup` of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut c_void,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let ret = u32::try_from(ret).ok()?;
    if ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH {
        return None;
    }
    decrement_ttl(ctx, v4)?;
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH {
        // SAFETY: helper with plain arguments (no next-hop parameters: the kernel looks
        // the route up itself and resolves the neighbour).
        return Some(unsafe { bpf_redirect_neigh(params.ifindex, ptr::null_mut(), 0, 0) } as i32);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    ctx.store(0, &macs, 0).ok()?;
    // SAFETY: helper with plain arguments; TC_ACT_REDIRECT (or TC_ACT_SHOT for bad flags).
    Some(unsafe { bpf_redirect(params.ifindex, 0) } as i32)
}

/// Four address words at `off` of the IPv6 header, in network order as they lie.
#[inline(always)]
fn words(ip: &Ip6, off: usize) -> [u32; 4] {
    let w = |i: usize| {
        let o = off + 4 * i;
        u32::from_ne_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]])
    };
    [w(0), w(1), w(2), w(3)]
}

/// TTL / hop limit less one (checked above to be at least 2); the IPv4 checksum fixed
/// for the 16-bit word (TTL, protocol).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, v4: bool) -> Option<()> {
    if v4 {
        let old: [u8; 2] = ctx.load(ETH_HLEN + V4_TTL_OFF).ok()?;
        let new = [old[0].wrapping_sub(1), old[1]];
        let from = u64::from(u16::from_ne_bytes(old));
        let to = u64::from(u16::from_ne_bytes(new));
        ctx.l3_csum_replace(ETH_HLEN + V4_CSUM_OFF, from, to, 2)
            .ok()?;
        ctx.store(ETH_HLEN + V4_TTL_OFF, &new, 0).ok()
    } else {
        let old: u8 = ctx.load(ETH_HLEN + V6_HOPS_OFF).ok()?;
        ctx.store(ETH_HLEN + V6_HOPS_OFF, &old.wrapping_sub(1), 0)
            .ok()
    }
}
