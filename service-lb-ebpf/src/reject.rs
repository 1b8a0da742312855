//! Refusals, as kube-proxy refuses (its `reject` rules): a new flow to a frontend with no
//! usable endpoint, or to a ClusterIP on a port its Service does not define, is answered
//! at once instead of timing out. The packet is rewritten in place into the answer and
//! redirected back out of the interface it came in on (`Verdict::Answer`):
//!
//! - TCP: a reset, built like the kernel's `nf_send_reset` (RFC 793): to a segment with
//!   ACK, `seq = its ack`, flags RST; otherwise `seq = 0`, `ack = its seq + SYN + FIN +
//!   payload length`, flags RST|ACK. Window 0, no options; IPv4 id 0, DF, TTL 64; IPv6
//!   hop limit 64. A reset is never answered.
//! - UDP: ICMP destination unreachable / port unreachable (type 3 code 3, RFC 792) or
//!   ICMPv6 destination unreachable / port unreachable (type 1 code 4, RFC 4443), from
//!   the address the client sent to, quoting the original IP header and the first 8
//!   bytes after it (the UDP header: what the client's kernel matches its socket with).
//!   IPv4 TOS 0xc0 (internetwork control, as Linux's `icmp_send`), id 0, TTL 64; IPv6
//!   hop limit 64. IPv4 with options and IPv6 with extension headers are not answered.
//!
//! Also the check on a frontend miss (`unowned`): a ClusterIP address on another port is
//! refused, an address inside a service CIDR that no Service owns is dropped.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_NO_CSUM_RESET, BPF_F_RECOMPUTE_CSUM,
    },
    cty::c_long,
    helpers::{
        bpf_csum_diff, bpf_csum_update, bpf_skb_adjust_room, bpf_skb_change_tail,
        bpf_skb_store_bytes,
    },
    maps::{lpm_trie::Key, HashMap, LpmTrie},
    programs::TcContext,
};
use service_lb_common::{
    proto::{
        ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPV4_HLEN_MIN, IPV6_HLEN,
        TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN, TCP_HLEN_MIN,
    },
    vip::SCRATCH_LEN,
    Reason, VipValue,
};

use crate::{
    family::{Family, V4, V6},
    maps::{SLB_SCIDR4_V1, SLB_SCIDR6_V1, SLB_SCRATCH_V1, SLB_VIP4_V1, SLB_VIP6_V1},
    packet::Headers,
    verdict::{Step, Verdict},
};

/// TTL / hop limit of every answer (Linux's default).
const ANSWER_TTL: u8 = 64;
/// IPv4 DF flag in the first byte of `frag_off`.
const IPV4_DF: u8 = 0x40;
/// TOS of an ICMP error (IPTOS_PREC_INTERNETCONTROL).
const ICMP_TOS: u8 = 0xc0;
/// ICMP destination unreachable / port unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// ICMPv6 destination unreachable / port unreachable.
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
/// ICMP header (type, code, checksum, 4 unused bytes).
const ICMP_HLEN: usize = 8;
/// Bytes of the original datagram quoted after its IP header.
const QUOTED_L4: usize = 8;

const QUOTE4: usize = IPV4_HLEN_MIN + QUOTED_L4;
const QUOTE6: usize = IPV6_HLEN + QUOTED_L4;

/// The packet could not be turned into an answer.
pub struct NoAnswer;

/// Family-specific parts of a refusal.
pub trait Refuse: Family {
    /// Rewrites the TCP segment in `ctx` into its reset.
    fn tcp_reset(ctx: &TcContext, h: &Headers<Self::Addr>) -> Result<(), NoAnswer>;
    /// Rewrites the UDP datagram in `ctx` into its port-unreachable error.
    fn port_unreachable(ctx: &TcContext, h: &Headers<Self::Addr>) -> Result<(), NoAnswer>;
    /// A ClusterIP address (any port) the daemon programmed.
    fn is_cluster_ip(addr: Self::Addr) -> bool;
    /// An address inside one of the service CIDRs.
    fn in_service_cidr(addr: Self::Addr) -> bool;
}

/// The packet refused under `reason`: rewritten into its answer, or dropped when it gets
/// none.
#[inline(always)]
pub fn refuse<F: Refuse>(ctx: &TcContext, h: &Headers<F::Addr>, reason: Reason) -> Verdict {
    let answered = if h.proto == IPPROTO_TCP {
        if h.tcp_flags & TCP_FLAG_RST != 0 {
            Err(NoAnswer)
        } else {
            F::tcp_reset(ctx, h)
        }
    } else {
        F::port_unreachable(ctx, h)
    };
    match answered {
        Ok(()) => Verdict::Answer(reason),
        Err(NoAnswer) => Verdict::Drop(Reason::DropRefusedNoAnswer),
    }
}

/// On a frontend miss: a ClusterIP address (another port) is refused, an unowned address
/// of a service CIDR dropped; `Ok` for every other address.
#[inline(always)]
pub fn unowned<F: Refuse>(ctx: &TcContext, h: &Headers<F::Addr>) -> Step<()> {
    if F::is_cluster_ip(h.daddr) {
        return Err(refuse::<F>(ctx, h, Reason::RejectNoPort));
    }
    if F::in_service_cidr(h.daddr) {
        return Err(Verdict::Drop(Reason::DropServiceCidr));
    }
    Ok(())
}

/// The answer is built in the per-CPU scratch buffer (the stack is too small): the frame
/// from `FRAME` (so the IP header, at `IP`, is 4-byte aligned for `bpf_csum_diff`), a
/// pseudo-header at `PSEUDO`, and `ZEROS_LEN` zero bytes at `ZEROS` (see `Buf::send`).
const FRAME: usize = 2;
const IP: usize = FRAME + ETH_HLEN;
const PSEUDO: usize = 160;
const PSEUDO6_LEN: usize = 40;
const PSEUDO4_LEN: usize = 12;
const ZEROS: usize = PSEUDO + PSEUDO6_LEN;
const ZEROS_LEN: usize = SCRATCH_LEN - ZEROS;
const USED: usize = SCRATCH_LEN;

/// Bytes `bpf_skb_adjust_room` opens or closes at once (it refuses more: `-EFAULT`).
const ADJ_ROOM_MAX: usize = 0xfff;
/// Where `bpf_skb_adjust_room(BPF_ADJ_ROOM_NET)` opens or closes room: after the Ethernet
/// header and the family's base IP header (`bpf_skb_net_base_len`).
const ROOM4: usize = ETH_HLEN + IPV4_HLEN_MIN;
const ROOM6: usize = ETH_HLEN + IPV6_HLEN;

const _: () = {
    assert!(IP.is_multiple_of(4) && PSEUDO.is_multiple_of(4));
    assert!(IP + IPV6_HLEN + ICMP_HLEN + QUOTE6 <= PSEUDO);
    assert!(USED <= SCRATCH_LEN && USED.is_multiple_of(8));
    // The longest part of an answer after its room offset is zeroed from `ZEROS`.
    assert!(IPV6_HLEN + ICMP_HLEN + QUOTE6 - IPV6_HLEN <= ZEROS_LEN);
    assert!(IPV4_HLEN_MIN + ICMP_HLEN + QUOTE4 - IPV4_HLEN_MIN <= ZEROS_LEN);
    assert!(TCP_HLEN_MIN <= ZEROS_LEN);
};

/// The scratch buffer, with the bytes an answer uses zeroed.
struct Buf {
    bytes: *mut [u8; SCRATCH_LEN],
}

impl Buf {
    #[inline(always)]
    fn take() -> Result<Self, NoAnswer> {
        let value = SLB_SCRATCH_V1.get_ptr_mut(0).ok_or(NoAnswer)?;
        // SAFETY: per-CPU value of the right type, only this program run uses it.
        let bytes = unsafe { core::ptr::addr_of_mut!((*value).bytes) };
        let mut buf = Self { bytes };
        buf.zero();
        Ok(buf)
    }

    #[inline(always)]
    fn zero(&mut self) {
        // SAFETY: `bytes` points at SCRATCH_LEN bytes of the map value; u64 stores keep
        // the verifier happy and the code straight-line.
        let words = self.bytes.cast::<u64>();
        for i in 0..USED / 8 {
            unsafe { words.add(i).write(0) };
        }
    }

    #[inline(always)]
    fn put(&mut self, off: usize, bytes: &[u8]) {
        // SAFETY: see `take`.
        let buf = unsafe { &mut *self.bytes };
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    #[inline(always)]
    fn set(&mut self, off: usize, byte: u8) {
        self.put(off, &[byte]);
    }

    /// Ones'-complement sum of `len` bytes at `off` added to `seed` (unfolded).
    #[inline(always)]
    fn sum(&mut self, off: usize, len: usize, seed: u32) -> Result<u32, NoAnswer> {
        // SAFETY: `off + len` lies inside the map value (asserted above for every call
        // site's constants); nothing is subtracted (null, size 0).
        let sum = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                self.bytes.cast::<u8>().add(off).cast(),
                len as u32,
                seed,
            )
        };
        if sum < 0 {
            Err(NoAnswer)
        } else {
            Ok(sum as u32)
        }
    }

    /// Stores the checksum of `len` bytes at `off` (plus `seed`) at `at`.
    #[inline(always)]
    fn checksum(&mut self, off: usize, len: usize, seed: u32, at: usize) -> Result<(), NoAnswer> {
        let csum = fold(self.sum(off, len, seed)?);
        self.put(at, &csum);
        Ok(())
    }

    /// Replaces the packet with the `len`-byte frame built at `FRAME`; `room` is where
    /// `bpf_skb_adjust_room(BPF_ADJ_ROOM_NET)` works for this family (`ROOM4`/`ROOM6`).
    ///
    /// `bpf_skb_store_bytes` with `BPF_F_RECOMPUTE_CSUM` keeps `skb->csum` of a
    /// CHECKSUM_COMPLETE skb equal to the answer's bytes (the old bytes' sum out, the new
    /// ones' in; the Ethernet header only swaps its addresses, which leaves its sum as it
    /// was), but only while the skb is still CHECKSUM_COMPLETE, and `bpf_skb_change_tail`
    /// ends that: growing or trimming turns it into CHECKSUM_NONE and leaves `skb->csum`
    /// stale (`__skb_grow_rcsum` / `__skb_trim_rcsum` in `include/linux/skbuff.h`). So a
    /// CHECKSUM_COMPLETE skb is resized with `resize_complete` instead, which keeps
    /// `skb->csum` exact; any other skb (and one `resize_complete` cannot handle) with
    /// `bpf_skb_change_tail`.
    #[inline(always)]
    fn send(&self, ctx: &TcContext, len: usize, room: usize) -> Result<(), NoAnswer> {
        // SAFETY: `ctx.skb.skb` is the program's own context. Adding 0 changes nothing;
        // the helper fails (-ENOTSUPP) unless the skb is CHECKSUM_COMPLETE.
        let complete = unsafe { bpf_csum_update(ctx.skb.skb, 0) } >= 0;
        if !complete || self.resize_complete(ctx, len, room).is_err() {
            // SAFETY: as above.
            let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
            if ret < 0 {
                return Err(NoAnswer);
            }
        }
        // SAFETY: `FRAME + len` lies inside the map value; `len` is a constant.
        let ret = unsafe {
            bpf_skb_store_bytes(
                ctx.skb.skb,
                0,
                self.bytes.cast::<u8>().add(FRAME).cast(),
                len as u32,
                u64::from(BPF_F_RECOMPUTE_CSUM),
            )
        };
        if ret < 0 {
            Err(NoAnswer)
        } else {
            Ok(())
        }
    }

    /// Makes a CHECKSUM_COMPLETE skb `len` bytes long with `skb->csum` still the sum of its
    /// bytes (from the network header, as the stack and the test run count it), using only
    /// operations that keep it so (`net/core/filter.c`):
    /// - `bpf_skb_adjust_room` with `BPF_F_ADJ_ROOM_NO_CSUM_RESET` inserts zeros at `room`
    ///   (`bpf_skb_generic_push`: no change to the sum) or removes bytes there, taking their
    ///   sum out (`bpf_skb_generic_pop`: `skb_postpull_rcsum`); `room` lies an even number
    ///   of bytes after the network header;
    /// - the bytes after the opened or closed room move; that keeps their sum only when
    ///   they move by an even count or are all zero. So room is only opened in even counts,
    ///   and before room is closed, the bytes that will follow it (the last `len - room`)
    ///   are overwritten with zeros through `bpf_skb_store_bytes(BPF_F_RECOMPUTE_CSUM)`.
    ///
    /// The content is garbage afterwards; `send` overwrites all of it.
    #[inline(always)]
    fn resize_complete(&self, ctx: &TcContext, len: usize, room: usize) -> Result<(), NoAnswer> {
        let skb = ctx.skb.skb;
        let mut cur = ctx.len() as usize;
        if cur < len {
            let grow = (len - cur + 1) & !1;
            // SAFETY: the program's own context.
            let ret = unsafe {
                bpf_skb_adjust_room(
                    skb,
                    grow as i32,
                    BPF_ADJ_ROOM_NET,
                    u64::from(BPF_F_ADJ_ROOM_NO_CSUM_RESET),
                )
            };
            if ret < 0 {
                return Err(NoAnswer);
            }
            cur += grow;
        }
        let excess = cur - len;
        if excess == 0 {
            return Ok(());
        }
        if excess > ADJ_ROOM_MAX || cur < len || len < room {
            return Err(NoAnswer);
        }
        let tail = len - room;
        // SAFETY: `ZEROS + tail` lies inside the map value (asserted above); the offset is
        // inside the packet (`cur - tail >= room`).
        let ret = unsafe {
            bpf_skb_store_bytes(
                skb,
                (cur - tail) as u32,
                self.bytes.cast::<u8>().add(ZEROS).cast(),
                tail as u32,
                u64::from(BPF_F_RECOMPUTE_CSUM),
            )
        };
        if ret < 0 {
            return Err(NoAnswer);
        }
        // SAFETY: the program's own context.
        let ret = unsafe {
            bpf_skb_adjust_room(
                skb,
                -(excess as i32),
                BPF_ADJ_ROOM_NET,
                u64::from(BPF_F_ADJ_ROOM_NO_CSUM_RESET),
            )
        };
        if ret < 0 {
            Err(NoAnswer)
        } else {
            Ok(())
        }
    }
}

/// The folded, complemented checksum of `sum`, as the bytes to store.
#[inline(always)]
fn fold(sum: u32) -> [u8; 2] {
    let mut s = (sum & 0xffff) + (sum >> 16);
    s = (s & 0xffff) + (s >> 16);
    (!(s as u16)).to_ne_bytes()
}

fn failed(_: c_long) -> NoAnswer {
    NoAnswer
}

/// Writes the Ethernet header of the answer: source and destination swapped.
#[inline(always)]
fn put_eth(ctx: &TcContext, buf: &mut Buf) -> Result<(), NoAnswer> {
    let old: [u8; ETH_HLEN] = ctx.load(0).map_err(failed)?;
    buf.put(FRAME, &old[6..12]);
    buf.put(FRAME + 6, &old[..6]);
    buf.put(FRAME + 12, &old[12..14]);
    Ok(())
}

/// The sequence part of a TCP header (offset 4).
#[repr(C)]
struct TcpSeq {
    seq: [u8; 4],
    ack: [u8; 4],
    doff_reserved: u8,
    flags: u8,
}

/// Writes at `at` the TCP header of the reset answering the segment at `h.l4_off`, whose
/// IP packet ends at `ip_end`; checksum left 0.
#[inline(always)]
fn put_reset<A>(
    ctx: &TcContext,
    h: &Headers<A>,
    ip_end: usize,
    buf: &mut Buf,
    at: usize,
) -> Result<(), NoAnswer> {
    let th: TcpSeq = ctx.load(h.l4_off + 4).map_err(failed)?;
    let doff = usize::from(th.doff_reserved >> 4) * 4;
    let payload = ip_end.saturating_sub(h.l4_off + doff) as u32;
    if th.flags & TCP_FLAG_ACK != 0 {
        buf.put(at + 4, &th.ack);
        buf.set(at + 13, TCP_FLAG_RST);
    } else {
        let mut ack = u32::from_be_bytes(th.seq).wrapping_add(payload);
        if th.flags & TCP_FLAG_SYN != 0 {
            ack = ack.wrapping_add(1);
        }
        if th.flags & TCP_FLAG_FIN != 0 {
            ack = ack.wrapping_add(1);
        }
        buf.put(at + 8, &ack.to_be_bytes());
        buf.set(at + 13, TCP_FLAG_RST | TCP_FLAG_ACK);
    }
    buf.put(at, &h.dport_be.to_ne_bytes());
    buf.put(at + 2, &h.sport_be.to_ne_bytes());
    buf.set(at + 12, (TCP_HLEN_MIN as u8 / 4) << 4);
    // Window, checksum and urgent pointer stay 0.
    Ok(())
}

/// Writes an IPv4 header from `src` to `dst` with its checksum at `IP`.
#[inline(always)]
fn put_ipv4(
    buf: &mut Buf,
    tos: u8,
    total_len: usize,
    df: bool,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<(), NoAnswer> {
    buf.set(IP, 0x45);
    buf.set(IP + 1, tos);
    buf.put(IP + 2, &(total_len as u16).to_be_bytes());
    // Identification 0.
    if df {
        buf.set(IP + 6, IPV4_DF);
    }
    buf.set(IP + 8, ANSWER_TTL);
    buf.set(IP + 9, proto);
    buf.put(IP + 12, &src);
    buf.put(IP + 16, &dst);
    buf.checksum(IP, IPV4_HLEN_MIN, 0, IP + 10)
}

/// Writes an IPv6 header from `src` to `dst` at `IP`.
#[inline(always)]
fn put_ipv6(buf: &mut Buf, payload_len: usize, next: u8, src: [u8; 16], dst: [u8; 16]) {
    buf.set(IP, 0x60);
    buf.put(IP + 4, &(payload_len as u16).to_be_bytes());
    buf.set(IP + 6, next);
    buf.set(IP + 7, ANSWER_TTL);
    buf.put(IP + 8, &src);
    buf.put(IP + 24, &dst);
}

/// Sum of the IPv4 pseudo-header.
#[inline(always)]
fn pseudo4(
    buf: &mut Buf,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    len: usize,
) -> Result<u32, NoAnswer> {
    buf.put(PSEUDO, &src);
    buf.put(PSEUDO + 4, &dst);
    buf.set(PSEUDO + 9, proto);
    buf.put(PSEUDO + 10, &(len as u16).to_be_bytes());
    buf.sum(PSEUDO, PSEUDO4_LEN, 0)
}

/// Sum of the IPv6 pseudo-header.
#[inline(always)]
fn pseudo6(
    buf: &mut Buf,
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    len: usize,
) -> Result<u32, NoAnswer> {
    buf.put(PSEUDO, &src);
    buf.put(PSEUDO + 16, &dst);
    buf.put(PSEUDO + 32, &(len as u32).to_be_bytes());
    buf.set(PSEUDO + 39, next);
    buf.sum(PSEUDO, PSEUDO6_LEN, 0)
}

impl Refuse for V4 {
    #[inline(always)]
    fn tcp_reset(ctx: &TcContext, h: &Headers<[u8; 4]>) -> Result<(), NoAnswer> {
        const TCP: usize = IP + IPV4_HLEN_MIN;
        let tot_len: [u8; 2] = ctx.load(h.l3_off + 2).map_err(failed)?;
        let ip_end = h.l3_off + usize::from(u16::from_be_bytes(tot_len));
        let mut buf = Buf::take()?;
        put_reset(ctx, h, ip_end, &mut buf, TCP)?;
        let seed = pseudo4(&mut buf, h.daddr, h.saddr, IPPROTO_TCP, TCP_HLEN_MIN)?;
        buf.checksum(TCP, TCP_HLEN_MIN, seed, TCP + 16)?;
        let total = IPV4_HLEN_MIN + TCP_HLEN_MIN;
        put_ipv4(&mut buf, 0, total, true, IPPROTO_TCP, h.daddr, h.saddr)?;
        put_eth(ctx, &mut buf)?;
        buf.send(ctx, ETH_HLEN + total, ROOM4)
    }

    #[inline(always)]
    fn port_unreachable(ctx: &TcContext, h: &Headers<[u8; 4]>) -> Result<(), NoAnswer> {
        const ICMP: usize = IP + IPV4_HLEN_MIN;
        if h.l4_off - h.l3_off != IPV4_HLEN_MIN {
            return Err(NoAnswer);
        }
        let quote: [u8; QUOTE4] = ctx.load(h.l3_off).map_err(failed)?;
        let mut buf = Buf::take()?;
        buf.set(ICMP, ICMP_DEST_UNREACH);
        buf.set(ICMP + 1, ICMP_PORT_UNREACH);
        buf.put(ICMP + ICMP_HLEN, &quote);
        buf.checksum(ICMP, ICMP_HLEN + QUOTE4, 0, ICMP + 2)?;
        let total = IPV4_HLEN_MIN + ICMP_HLEN + QUOTE4;
        put_ipv4(
            &mut buf,
            ICMP_TOS,
            total,
            false,
            IPPROTO_ICMP,
            h.daddr,
            h.saddr,
        )?;
        put_eth(ctx, &mut buf)?;
        buf.send(ctx, ETH_HLEN + total, ROOM4)
    }

    #[inline(always)]
    fn is_cluster_ip(addr: [u8; 4]) -> bool {
        is_in(&SLB_VIP4_V1, &addr)
    }

    #[inline(always)]
    fn in_service_cidr(addr: [u8; 4]) -> bool {
        in_trie(&SLB_SCIDR4_V1, Key::new(32, addr))
    }
}

impl Refuse for V6 {
    #[inline(always)]
    fn tcp_reset(ctx: &TcContext, h: &Headers<[u8; 16]>) -> Result<(), NoAnswer> {
        const TCP: usize = IP + IPV6_HLEN;
        let payload_len: [u8; 2] = ctx.load(h.l3_off + 4).map_err(failed)?;
        let ip_end = h.l3_off + IPV6_HLEN + usize::from(u16::from_be_bytes(payload_len));
        let mut buf = Buf::take()?;
        put_reset(ctx, h, ip_end, &mut buf, TCP)?;
        let seed = pseudo6(&mut buf, h.daddr, h.saddr, IPPROTO_TCP, TCP_HLEN_MIN)?;
        buf.checksum(TCP, TCP_HLEN_MIN, seed, TCP + 16)?;
        put_ipv6(&mut buf, TCP_HLEN_MIN, IPPROTO_TCP, h.daddr, h.saddr);
        put_eth(ctx, &mut buf)?;
        buf.send(ctx, ETH_HLEN + IPV6_HLEN + TCP_HLEN_MIN, ROOM6)
    }

    #[inline(always)]
    fn port_unreachable(ctx: &TcContext, h: &Headers<[u8; 16]>) -> Result<(), NoAnswer> {
        const ICMP: usize = IP + IPV6_HLEN;
        const LEN: usize = ICMP_HLEN + QUOTE6;
        if h.l4_off - h.l3_off != IPV6_HLEN {
            return Err(NoAnswer);
        }
        let quote: [u8; QUOTE6] = ctx.load(h.l3_off).map_err(failed)?;
        let mut buf = Buf::take()?;
        buf.set(ICMP, ICMPV6_DEST_UNREACH);
        buf.set(ICMP + 1, ICMPV6_PORT_UNREACH);
        buf.put(ICMP + ICMP_HLEN, &quote);
        let seed = pseudo6(&mut buf, h.daddr, h.saddr, IPPROTO_ICMPV6, LEN)?;
        buf.checksum(ICMP, LEN, seed, ICMP + 2)?;
        put_ipv6(&mut buf, LEN, IPPROTO_ICMPV6, h.daddr, h.saddr);
        put_eth(ctx, &mut buf)?;
        buf.send(ctx, ETH_HLEN + IPV6_HLEN + LEN, ROOM6)
    }

    #[inline(always)]
    fn is_cluster_ip(addr: [u8; 16]) -> bool {
        is_in(&SLB_VIP6_V1, &addr)
    }

    #[inline(always)]
    fn in_service_cidr(addr: [u8; 16]) -> bool {
        in_trie(&SLB_SCIDR6_V1, Key::new(128, addr))
    }
}

#[inline(always)]
fn is_in<K>(map: &HashMap<K, VipValue>, key: &K) -> bool {
    map.get_ptr(key).is_some()
}

#[inline(always)]
fn in_trie<K>(trie: &LpmTrie<K, u32>, key: Key<K>) -> bool {
    trie.get(&key).is_some()
}
