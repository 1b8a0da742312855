//! ICMP errors about translated flows (ICMPv4 destination unreachable incl. fragmentation
//! needed, time exceeded; ICMPv6 destination unreachable, packet too big, time exceeded).
//!
//! An error quotes the packet that caused it, as that packet was on the wire where the
//! error was made:
//! - towards the client (`to_pod` / `to_net`): the quoted packet is the client's, after
//!   DNAT (client:wire port -> backend). Conntrack is looked up with the quoted tuple
//!   reversed (the flow's reply entry); the quoted destination becomes the frontend again
//!   (address and port), the quoted source port the client's own one when it was
//!   rewritten, and the outer source the frontend when the error comes from the backend
//!   itself (a router's address stays). The outer destination is the client already.
//! - towards the backend (`from_pod` / `from_net`): the client's error about a reply it
//!   got (frontend -> client): the quoted source becomes the backend, the quoted
//!   destination port the wire port, and the outer destination the backend when it was
//!   the frontend.
//!
//! Checksums: the quoted IPv4 header's checksum and the quoted TCP/UDP checksum (when the
//! quote holds it; a UDP checksum of 0 stays 0) are updated incrementally for each
//! rewritten field, so they are right exactly when they were right before (the kernel
//! does not check the quoted L4 checksum; a quote is often cut short). The ICMP checksum
//! is updated for every rewritten byte of the message (the quoted fields and the quoted
//! checksums), and ICMPv6's also for the outer address (pseudo-header); the outer IPv4
//! header checksum for the outer address.

use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, programs::TcContext};
use service_lb_common::{
    conntrack::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_DIRECT, CT_FLAG_PORT_NAT},
    proto::{ETH_HLEN, IPPROTO_UDP},
    Hook, Reason,
};

use crate::{
    conntrack::{live, now_ns},
    family::{l4_csum_replace_v6_pseudo, Family},
    lb,
    packet::{l4_csum_field, Inner, ICMP_HLEN},
    verdict::{raw, Step, Verdict},
};

/// Offset of the checksum in the ICMP / ICMPv6 header.
const ICMP_CSUM_OFF: usize = 2;
/// Offset of the header checksum in the IPv4 header.
const IPV4_CSUM_OFF: usize = 10;

const FAILED: Verdict = Verdict::Drop(Reason::DropNatFailed);
const NOT_OURS: Verdict = Verdict::Pass(Reason::PassOtherProto);

/// Where the checksums of the message are.
struct Sums {
    icmp: usize,
    /// The outer IPv4 header's checksum (IPv4 only).
    outer_ip: Option<usize>,
    /// The quoted IPv4 header's checksum (IPv4 only).
    inner_ip: Option<usize>,
    /// The quoted TCP/UDP checksum, when the quote holds it and it is in use.
    inner_l4: Option<usize>,
    inner_l4_flags: u64,
}

/// Translates the ICMP error whose ICMP header is at `icmp_off` (IP right after the
/// Ethernet header), seen at `hook`, when it quotes a packet of a tracked flow; passes it
/// untouched (`pass_other_proto`) otherwise. Returns a raw verdict.
#[inline(always)]
pub fn translate<F: Family>(ctx: &TcContext, hook: Hook, icmp_off: usize) -> u64 {
    if matches!(hook, Hook::ToPod | Hook::ToNet) {
        to_client::<F>(ctx, icmp_off)
    } else {
        to_backend::<F>(ctx, icmp_off)
    }
}

/// What the quoted packet's conntrack entry says, packed in a register by `tracked`:
/// bit 63 found, bits 48.. the entry's flags, bits 32..48 `nat_port_be`, low 32 bits the
/// service id (reply entry) or backend id (forward entry).
const FOUND: u64 = 1 << 63;

/// The conntrack entry of the quoted packet (`dir`: which entry the quoted tuple,
/// reversed, names); a subprogram (own stack frame).
#[inline(never)]
fn tracked<F: Family>(ctx: &TcContext, inner: &Inner<F::Addr>, dir: u32) -> u64 {
    let Ok(ports) = ctx.load::<[u16; 2]>(inner.l4_off) else {
        return 0;
    };
    let key = F::ct_key(
        inner.daddr,
        inner.saddr,
        ports[1],
        ports[0],
        inner.proto,
        dir as u8,
    );
    let Some((_, entry)) = live(F::conntrack(inner.proto), &key, now_ns()) else {
        return 0;
    };
    let id = if dir as u8 == CT_DIR_REPLY {
        entry.service_id
    } else {
        entry.backend_id
    };
    FOUND | u64::from(entry.flags) << 48 | u64::from(entry.nat_port_be) << 32 | u64::from(id)
}

/// Towards the client; a subprogram returning a raw verdict.
#[inline(never)]
fn to_client<F: Family>(ctx: &TcContext, icmp_off: usize) -> u64 {
    raw(to_client_step::<F>(ctx, icmp_off))
}

#[inline(always)]
fn to_client_step<F: Family>(ctx: &TcContext, icmp_off: usize) -> Step<Verdict> {
    let inner = F::parse_inner(ctx, icmp_off + ICMP_HLEN)?;
    // Quoted: client:wire -> backend. Reply entry: backend -> client:wire.
    let found = tracked::<F>(ctx, &inner, u32::from(CT_DIR_REPLY));
    if found & FOUND == 0 {
        return Err(NOT_OURS);
    }
    let flags = (found >> 48) as u16;
    let sums = sums::<F>(ctx, icmp_off, &inner);
    if flags & CT_FLAG_DIRECT == 0 {
        let revnat = lb::get(F::revnat(), &(found as u32))
            .ok_or(Verdict::Drop(Reason::DropRevNatMissing))?;
        let frontend = F::frontend_endpoint(&revnat);
        let daddr_off = inner.l3_off + F::DADDR_OFF;
        inner_addr::<F>(ctx, &sums, daddr_off, inner.daddr, frontend.addr)?;
        let dport_off = inner.l4_off + 2;
        let dport: u16 = ctx.load(dport_off).map_err(|_| FAILED)?;
        inner_port(ctx, &sums, dport_off, dport, frontend.port_be)?;
        let saddr_off = ETH_HLEN + F::SADDR_OFF;
        // From the backend itself (not a router on the way): from the frontend.
        if ctx.load::<F::Addr>(saddr_off).map_err(|_| FAILED)? == inner.daddr {
            checked(outer_addr::<F>(
                ctx,
                &sums,
                saddr_off,
                &inner.daddr,
                &frontend.addr,
            ))?;
        }
    }
    if flags & CT_FLAG_PORT_NAT != 0 {
        // The reply entry names the client's own port.
        let sport: u16 = ctx.load(inner.l4_off).map_err(|_| FAILED)?;
        inner_port(ctx, &sums, inner.l4_off, sport, (found >> 32) as u16)?;
    }
    Ok(Verdict::Pass(Reason::RevNatIcmpError))
}

/// Towards the backend; a subprogram returning a raw verdict.
#[inline(never)]
fn to_backend<F: Family>(ctx: &TcContext, icmp_off: usize) -> u64 {
    raw(to_backend_step::<F>(ctx, icmp_off))
}

#[inline(always)]
fn to_backend_step<F: Family>(ctx: &TcContext, icmp_off: usize) -> Step<Verdict> {
    let inner = F::parse_inner(ctx, icmp_off + ICMP_HLEN)?;
    // Quoted: frontend -> client:own. Forward entry: client:own -> frontend.
    let found = tracked::<F>(ctx, &inner, u32::from(CT_DIR_SERVICE));
    if found & FOUND == 0 {
        return Err(NOT_OURS);
    }
    let flags = (found >> 48) as u16;
    let sums = sums::<F>(ctx, icmp_off, &inner);
    if flags & CT_FLAG_DIRECT == 0 {
        let backend = lb::get(F::backends(), &(found as u32))
            .ok_or(Verdict::Drop(Reason::DropBackendGone))?;
        let backend = F::backend_endpoint(&backend);
        let saddr_off = inner.l3_off + F::SADDR_OFF;
        inner_addr::<F>(ctx, &sums, saddr_off, inner.saddr, backend.addr)?;
        let sport: u16 = ctx.load(inner.l4_off).map_err(|_| FAILED)?;
        inner_port(ctx, &sums, inner.l4_off, sport, backend.port_be)?;
        let daddr_off = ETH_HLEN + F::DADDR_OFF;
        if ctx.load::<F::Addr>(daddr_off).map_err(|_| FAILED)? == inner.saddr {
            checked(outer_addr::<F>(
                ctx,
                &sums,
                daddr_off,
                &inner.saddr,
                &backend.addr,
            ))?;
        }
    }
    if flags & CT_FLAG_PORT_NAT != 0 {
        // The forward entry names the port on the wire.
        let dport_off = inner.l4_off + 2;
        let dport: u16 = ctx.load(dport_off).map_err(|_| FAILED)?;
        inner_port(ctx, &sums, dport_off, dport, (found >> 32) as u16)?;
    }
    Ok(Verdict::Pass(Reason::DnatIcmpError))
}

#[inline(always)]
fn sums<F: Family>(ctx: &TcContext, icmp_off: usize, inner: &Inner<F::Addr>) -> Sums {
    let l4 = inner.l4_off + l4_csum_field(inner.proto);
    let udp = inner.proto == IPPROTO_UDP;
    let in_quote = l4 + 2 <= ctx.len() as usize;
    // A zero UDP checksum is "none": it stays zero.
    let in_use = in_quote && !(udp && ctx.load::<u16>(l4).map_or(true, |c| c == 0));
    Sums {
        icmp: icmp_off + ICMP_CSUM_OFF,
        outer_ip: F::IP_CSUM.then_some(ETH_HLEN + IPV4_CSUM_OFF),
        inner_ip: F::IP_CSUM.then_some(inner.l3_off + IPV4_CSUM_OFF),
        inner_l4: in_use.then_some(l4),
        inner_l4_flags: if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        },
    }
}

/// Carries the change of the 16-bit checksum at `off` (made by `change`) into the ICMP
/// checksum.
#[inline(always)]
fn nested(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    change: impl FnOnce() -> Result<(), i64>,
) -> Step<()> {
    let before: u16 = ctx.load(off).map_err(|_| FAILED)?;
    change().map_err(|_| FAILED)?;
    let after: u16 = ctx.load(off).map_err(|_| FAILED)?;
    ctx.l4_csum_replace(sums.icmp, u64::from(before), u64::from(after), 2)
        .map_err(|_| FAILED)
}

/// A BPF subprogram's `Step<()>` as a register: 0 done, 1 failed.
#[inline(always)]
fn done(step: Step<()>) -> u64 {
    match step {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[inline(always)]
fn checked(raw: u64) -> Step<()> {
    if raw == 0 {
        Ok(())
    } else {
        Err(FAILED)
    }
}

/// A quoted port at `off` rewritten from `old` to `new` (raw network order).
#[inline(always)]
fn inner_port(ctx: &TcContext, sums: &Sums, off: usize, old: u16, new: u16) -> Step<()> {
    if old == new {
        return Ok(());
    }
    checked(inner_port_sub(ctx, sums, off, old, new))
}

/// A subprogram (own stack frame).
#[inline(never)]
fn inner_port_sub(ctx: &TcContext, sums: &Sums, off: usize, old: u16, new: u16) -> u64 {
    done(inner_port_inline(ctx, sums, off, old, new))
}

#[inline(always)]
fn inner_port_inline(ctx: &TcContext, sums: &Sums, off: usize, old: u16, new: u16) -> Step<()> {
    let (from, to) = (u64::from(old), u64::from(new));
    if let Some(l4) = sums.inner_l4 {
        nested(ctx, sums, l4, || {
            ctx.l4_csum_replace(l4, from, to, sums.inner_l4_flags | 2)
        })?;
    }
    ctx.store(off, &new, 0).map_err(|_| FAILED)?;
    ctx.l4_csum_replace(sums.icmp, from, to, 2)
        .map_err(|_| FAILED)
}

/// A quoted address at `off` rewritten from `old` to `new`.
#[inline(always)]
fn inner_addr<F: Family>(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    old: F::Addr,
    new: F::Addr,
) -> Step<()> {
    if old == new {
        return Ok(());
    }
    checked(inner_addr_sub::<F>(ctx, sums, off, &old, &new))
}

/// A subprogram (own stack frame).
#[inline(never)]
fn inner_addr_sub<F: Family>(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    old: &F::Addr,
    new: &F::Addr,
) -> u64 {
    done(inner_addr_inline::<F>(ctx, sums, off, *old, *new))
}

#[inline(always)]
fn inner_addr_inline<F: Family>(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    old: F::Addr,
    new: F::Addr,
) -> Step<()> {
    let diff = u64::from(F::addr_csum_diff(old, new).map_err(|_| FAILED)?);
    if let Some(ip) = sums.inner_ip {
        nested(ctx, sums, ip, || ctx.l3_csum_replace(ip, 0, diff, 0))?;
    }
    if let Some(l4) = sums.inner_l4 {
        nested(ctx, sums, l4, || {
            ctx.l4_csum_replace(l4, 0, diff, sums.inner_l4_flags)
        })?;
    }
    ctx.store(off, &new, 0).map_err(|_| FAILED)?;
    ctx.l4_csum_replace(sums.icmp, 0, diff, 0)
        .map_err(|_| FAILED)
}

/// The outer address at `off` (absolute) rewritten from `old` to `new`; a subprogram.
#[inline(never)]
fn outer_addr<F: Family>(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    old: &F::Addr,
    new: &F::Addr,
) -> u64 {
    done(outer_addr_inline::<F>(ctx, sums, off, *old, *new))
}

#[inline(always)]
fn outer_addr_inline<F: Family>(
    ctx: &TcContext,
    sums: &Sums,
    off: usize,
    old: F::Addr,
    new: F::Addr,
) -> Step<()> {
    let diff = u64::from(F::addr_csum_diff(old, new).map_err(|_| FAILED)?);
    if let Some(ip) = sums.outer_ip {
        ctx.l3_csum_replace(ip, 0, diff, 0).map_err(|_| FAILED)?;
    }
    if F::ICMP_PSEUDO {
        l4_csum_replace_v6_pseudo(ctx, sums.icmp, diff, 0).map_err(|_| FAILED)?;
    }
    ctx.store(off, &new, 0).map_err(|_| FAILED)
}
