//! Address and port rewrite with checksum fix-ups (the per-family address part lives in
//! `Family::rewrite_addr`).

use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, programs::TcContext};
use service_lb_common::Reason;

use crate::{
    family::{l4_csum_flags, Endpoint, Family, Side},
    packet::Headers,
    verdict::{Step, Verdict},
};

/// Offsets of the source and destination port inside the TCP/UDP header.
const SPORT_OFF: usize = 0;
const DPORT_OFF: usize = 2;

/// Rewrites the `side` address and port of the packet to `to`: destination for DNAT,
/// source for reverse NAT. Unchanged fields are left alone.
#[inline(always)]
pub fn rewrite<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    side: Side,
    to: Endpoint<F::Addr>,
) -> Step<()> {
    if rewrite_sub::<F>(ctx, h, side, &to) == 0 {
        Ok(())
    } else {
        Err(Verdict::Drop(Reason::DropNatFailed))
    }
}

/// The rewrite as a BPF subprogram (its checksum buffers in a frame of its own, not in
/// every caller's): 0 on success, 1 when a helper failed.
#[inline(never)]
fn rewrite_sub<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    side: Side,
    to: &Endpoint<F::Addr>,
) -> u64 {
    match rewrite_inline::<F>(ctx, h, side, to) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[inline(always)]
fn rewrite_inline<F: Family>(
    ctx: &TcContext,
    h: &Headers<F::Addr>,
    side: Side,
    to: &Endpoint<F::Addr>,
) -> Step<()> {
    let (addr, port_be, addr_off, port_off) = match side {
        Side::Source => (h.saddr, h.sport_be, F::SADDR_OFF, SPORT_OFF),
        Side::Destination => (h.daddr, h.dport_be, F::DADDR_OFF, DPORT_OFF),
    };
    const FAILED: Verdict = Verdict::Drop(Reason::DropNatFailed);
    if addr != to.addr {
        F::rewrite_addr(ctx, h, addr_off, addr, to.addr).map_err(|_| FAILED)?;
    }
    if port_be != to.port_be {
        // A UDP datagram without checksum (0, IPv4 only) keeps it at zero: no checksum
        // field absorbs the port change, so the store itself must fold it into
        // `skb->csum` of a CHECKSUM_COMPLETE skb (BPF_F_RECOMPUTE_CSUM; a no-op for the
        // other checksum states). With a checksum, its update absorbs the change and
        // `skb->csum` stays as it is.
        let no_checksum = h.is_udp() && ctx.load::<u16>(h.l4_csum_off()).map_err(|_| FAILED)? == 0;
        if no_checksum {
            ctx.store(
                h.l4_off + port_off,
                &to.port_be,
                BPF_F_RECOMPUTE_CSUM.into(),
            )
            .map_err(|_| FAILED)?;
        } else {
            let flags = l4_csum_flags(h) | 2;
            ctx.l4_csum_replace(
                h.l4_csum_off(),
                u64::from(port_be),
                u64::from(to.port_be),
                flags,
            )
            .map_err(|_| FAILED)?;
            ctx.store(h.l4_off + port_off, &to.port_be, 0)
                .map_err(|_| FAILED)?;
        }
    }
    Ok(())
}
