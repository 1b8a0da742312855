//! IPv4 and IPv6 behind one trait, so both families share one pipeline: the key types,
//! the maps and the address rewrite are the only things that differ.

use aya_ebpf::cty::c_long;
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use service_lb_common::{
    proto::{ETH_HLEN, IPPROTO_TCP},
    Backend4, Backend6, CtEntry, CtKey4, CtKey6, RevNat4, RevNat6, Svc4Key, Svc6Key, SvcValue,
};

use crate::{
    maps::{
        SLB_BE4_V1, SLB_BE6_V1, SLB_CT4_ANY_V1, SLB_CT4_TCP_V1, SLB_CT6_ANY_V1, SLB_CT6_TCP_V1,
        SLB_RNAT4_V1, SLB_RNAT6_V1, SLB_SVC4_V1, SLB_SVC6_V1,
    },
    packet::{self, Headers, Inner},
    verdict::Step,
};

/// An address and a raw network-order port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<A> {
    pub addr: A,
    pub port_be: u16,
}

/// Which address/port pair of a packet a rewrite touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

pub trait Family {
    type Addr: Copy + PartialEq;
    type SvcKey: 'static;
    type Backend: Copy + 'static;
    type RevNat: Copy + 'static;
    type CtKey: 'static;

    /// Offsets of the source and destination address inside the IP header.
    const SADDR_OFF: usize;
    const DADDR_OFF: usize;

    /// The headers of the packet (IP right after the Ethernet header).
    fn parse(ctx: &TcContext) -> Step<Headers<Self::Addr>>;

    /// The IP header has a checksum (IPv4).
    const IP_CSUM: bool;
    /// The ICMP checksum covers the IP pseudo-header (ICMPv6).
    const ICMP_PSEUDO: bool;

    /// The IP header quoted by an ICMP error at `off`.
    fn parse_inner(ctx: &TcContext, off: usize) -> Step<Inner<Self::Addr>>;

    /// The ones'-complement difference between two addresses (`bpf_csum_diff`), for
    /// `*_csum_replace(off, 0, diff, ..)`.
    fn addr_csum_diff(old: Self::Addr, new: Self::Addr) -> Result<u32, c_long>;

    fn services() -> &'static HashMap<Self::SvcKey, SvcValue>;
    fn backends() -> &'static HashMap<u32, Self::Backend>;
    fn revnat() -> &'static HashMap<u32, Self::RevNat>;
    /// The TCP conntrack map for TCP, the "any" map for everything else.
    fn conntrack(proto: u8) -> &'static LruHashMap<Self::CtKey, CtEntry>;

    fn svc_key(addr: Self::Addr, port_be: u16, proto: u8, scope: u8, slot: u16) -> Self::SvcKey;
    fn ct_key(
        saddr: Self::Addr,
        daddr: Self::Addr,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> Self::CtKey;
    fn backend_endpoint(backend: &Self::Backend) -> Endpoint<Self::Addr>;
    fn frontend_endpoint(revnat: &Self::RevNat) -> Endpoint<Self::Addr>;

    /// Writes `new` over the address at `h.l3_off + addr_off` (which holds `old`) and
    /// fixes the IP (IPv4) and L4 checksums.
    fn rewrite_addr(
        ctx: &TcContext,
        h: &Headers<Self::Addr>,
        addr_off: usize,
        old: Self::Addr,
        new: Self::Addr,
    ) -> Result<(), c_long>;
}

/// L4 checksum flags: UDP keeps a zero (disabled) IPv4 checksum at zero and writes a
/// computed zero as 0xffff.
#[inline(always)]
pub fn l4_csum_flags<A>(h: &Headers<A>) -> u64 {
    if h.is_udp() {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// `bpf_l4_csum_replace` flag for an IPv6 pseudo-header change: with a CHECKSUM_COMPLETE
/// packet the kernel then leaves `skb->csum` alone (IPv6 has no header checksum that would
/// cancel the change out). Linux uapi `BPF_F_IPV6` (6.16, backported to stable kernels);
/// aya-ebpf 0.2's bindings predate it.
pub const BPF_F_IPV6: u64 = 1 << 7;

/// `l4_csum_replace(off, 0, diff, flags | BPF_F_IPV6)` for an IPv6 pseudo-header change;
/// a kernel that does not know the flag refuses it (EINVAL), then the flag is left out
/// (such a kernel gets `skb->csum` of CHECKSUM_COMPLETE packets wrong either way).
#[inline(always)]
pub fn l4_csum_replace_v6_pseudo(
    ctx: &TcContext,
    off: usize,
    diff: u64,
    flags: u64,
) -> Result<(), c_long> {
    let flags = flags | u64::from(BPF_F_PSEUDO_HDR);
    ctx.l4_csum_replace(off, 0, diff, flags | BPF_F_IPV6)
        .or_else(|_| ctx.l4_csum_replace(off, 0, diff, flags))
}

pub struct V4;
pub struct V6;

/// Offset of the header checksum in the IPv4 header.
const IPV4_CSUM_OFF: usize = 10;

impl Family for V4 {
    type Addr = [u8; 4];
    type SvcKey = Svc4Key;
    type Backend = Backend4;
    type RevNat = RevNat4;
    type CtKey = CtKey4;

    const SADDR_OFF: usize = 12;
    const DADDR_OFF: usize = 16;

    #[inline(always)]
    fn parse(ctx: &TcContext) -> Step<Headers<[u8; 4]>> {
        packet::parse_ipv4(ctx, ETH_HLEN)
    }

    const IP_CSUM: bool = true;
    const ICMP_PSEUDO: bool = false;

    #[inline(always)]
    fn parse_inner(ctx: &TcContext, off: usize) -> Step<Inner<[u8; 4]>> {
        packet::inner_ipv4(ctx, off)
    }

    #[inline(always)]
    fn addr_csum_diff(old: [u8; 4], new: [u8; 4]) -> Result<u32, c_long> {
        let mut from = [u32::from_ne_bytes(old)];
        let mut to = [u32::from_ne_bytes(new)];
        // SAFETY: both buffers are 4 bytes of stack, 4-byte aligned as the helper wants.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 4, to.as_mut_ptr(), 4, 0) };
        if diff < 0 {
            return Err(diff);
        }
        Ok(diff as u32)
    }

    #[inline(always)]
    fn services() -> &'static HashMap<Svc4Key, SvcValue> {
        &SLB_SVC4_V1
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend4> {
        &SLB_BE4_V1
    }
    #[inline(always)]
    fn revnat() -> &'static HashMap<u32, RevNat4> {
        &SLB_RNAT4_V1
    }
    #[inline(always)]
    fn conntrack(proto: u8) -> &'static LruHashMap<CtKey4, CtEntry> {
        if proto == IPPROTO_TCP {
            &SLB_CT4_TCP_V1
        } else {
            &SLB_CT4_ANY_V1
        }
    }
    #[inline(always)]
    fn svc_key(addr: [u8; 4], port_be: u16, proto: u8, scope: u8, slot: u16) -> Svc4Key {
        Svc4Key::new(addr, port_be, proto, scope, slot)
    }
    #[inline(always)]
    fn ct_key(
        saddr: [u8; 4],
        daddr: [u8; 4],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> CtKey4 {
        CtKey4::new(saddr, daddr, sport_be, dport_be, proto, dir)
    }
    #[inline(always)]
    fn backend_endpoint(backend: &Backend4) -> Endpoint<[u8; 4]> {
        Endpoint {
            addr: backend.addr,
            port_be: backend.port_be,
        }
    }
    #[inline(always)]
    fn frontend_endpoint(revnat: &RevNat4) -> Endpoint<[u8; 4]> {
        Endpoint {
            addr: revnat.addr,
            port_be: revnat.port_be,
        }
    }

    #[inline(always)]
    fn rewrite_addr(
        ctx: &TcContext,
        h: &Headers<[u8; 4]>,
        addr_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), c_long> {
        let from = u64::from(u32::from_ne_bytes(old));
        let to = u64::from(u32::from_ne_bytes(new));
        ctx.l3_csum_replace(h.l3_off + IPV4_CSUM_OFF, from, to, 4)?;
        let flags = u64::from(BPF_F_PSEUDO_HDR) | l4_csum_flags(h) | 4;
        ctx.l4_csum_replace(h.l4_csum_off(), from, to, flags)?;
        ctx.store(h.l3_off + addr_off, &new, 0)
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type SvcKey = Svc6Key;
    type Backend = Backend6;
    type RevNat = RevNat6;
    type CtKey = CtKey6;

    const SADDR_OFF: usize = 8;
    const DADDR_OFF: usize = 24;

    #[inline(always)]
    fn parse(ctx: &TcContext) -> Step<Headers<[u8; 16]>> {
        packet::parse_ipv6(ctx, ETH_HLEN)
    }

    const IP_CSUM: bool = false;
    const ICMP_PSEUDO: bool = true;

    #[inline(always)]
    fn parse_inner(ctx: &TcContext, off: usize) -> Step<Inner<[u8; 16]>> {
        packet::inner_ipv6(ctx, off)
    }

    #[inline(always)]
    fn addr_csum_diff(old: [u8; 16], new: [u8; 16]) -> Result<u32, c_long> {
        let mut from = words(old);
        let mut to = words(new);
        // SAFETY: both buffers are 16 bytes of stack, 4-byte aligned as the helper wants.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        Ok(diff as u32)
    }

    #[inline(always)]
    fn services() -> &'static HashMap<Svc6Key, SvcValue> {
        &SLB_SVC6_V1
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend6> {
        &SLB_BE6_V1
    }
    #[inline(always)]
    fn revnat() -> &'static HashMap<u32, RevNat6> {
        &SLB_RNAT6_V1
    }
    #[inline(always)]
    fn conntrack(proto: u8) -> &'static LruHashMap<CtKey6, CtEntry> {
        if proto == IPPROTO_TCP {
            &SLB_CT6_TCP_V1
        } else {
            &SLB_CT6_ANY_V1
        }
    }
    #[inline(always)]
    fn svc_key(addr: [u8; 16], port_be: u16, proto: u8, scope: u8, slot: u16) -> Svc6Key {
        Svc6Key::new(addr, port_be, proto, scope, slot)
    }
    #[inline(always)]
    fn ct_key(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> CtKey6 {
        CtKey6::new(saddr, daddr, sport_be, dport_be, proto, dir)
    }
    #[inline(always)]
    fn backend_endpoint(backend: &Backend6) -> Endpoint<[u8; 16]> {
        Endpoint {
            addr: backend.addr,
            port_be: backend.port_be,
        }
    }
    #[inline(always)]
    fn frontend_endpoint(revnat: &RevNat6) -> Endpoint<[u8; 16]> {
        Endpoint {
            addr: revnat.addr,
            port_be: revnat.port_be,
        }
    }

    /// IPv6 has no header checksum; the L4 checksum covers the addresses through the
    /// pseudo-header, fixed with the 16-byte difference (`l4_csum_replace` size 0) and
    /// `BPF_F_IPV6`, so `skb->csum` stays right for CHECKSUM_COMPLETE packets.
    #[inline(always)]
    fn rewrite_addr(
        ctx: &TcContext,
        h: &Headers<[u8; 16]>,
        addr_off: usize,
        old: [u8; 16],
        new: [u8; 16],
    ) -> Result<(), c_long> {
        let mut from = words(old);
        let mut to = words(new);
        // SAFETY: both buffers are 16 bytes of stack, 4-byte aligned as the helper wants.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        l4_csum_replace_v6_pseudo(
            ctx,
            h.l4_csum_off(),
            u64::from(diff as u32),
            l4_csum_flags(h),
        )?;
        ctx.store(h.l3_off + addr_off, &new, 0)
    }
}

/// The address as four 32-bit words in memory order (what `bpf_csum_diff` sums).
#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
