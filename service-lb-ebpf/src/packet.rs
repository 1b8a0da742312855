//! Bounds-checked header parsing. Every read goes through `bpf_skb_load_bytes`
//! (`TcContext::load`), so non-linear skbs work and no read can run past the packet.
//!
//! Outcomes (see `Reason`): not IP -> pass; inconsistent IPv4/IPv6 header or truncated
//! TCP/UDP header -> drop as malformed; the first fragment of a UDP datagram (IPv4, or
//! IPv6 with the fragment header right after the fixed header) is parsed like a whole
//! datagram (see `frag`), other fragments -> pass; other L4 protocols -> pass.

use aya_ebpf::programs::TcContext;
use service_lb_common::{
    proto::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN_MIN, IPV6_HLEN,
        TCP_HLEN_MIN, UDP_HLEN,
    },
    Reason,
};

use crate::verdict::{Step, Verdict};

/// At most this many IPv6 extension headers are skipped before giving up on finding L4.
const IPV6_MAX_EXT_HEADERS: usize = 4;

/// Offset of the checksum field inside the TCP and UDP headers.
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// Byte-wise IPv4 header (all fields `u8` arrays: alignment 1, no padding).
/// The wire layout is complete, so some fields are never read.
#[allow(dead_code)]
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    flags_frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[allow(dead_code)]
#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The IPv6 fragment header.
#[allow(dead_code)]
#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// Length of the IPv6 fragment header.
pub const IPV6_FRAG_HLEN: usize = 8;

/// The first two bytes of every skippable IPv6 extension header.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    len_8: u8,
}

#[allow(dead_code)]
#[repr(C)]
struct TcpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    doff_reserved: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urgent: [u8; 2],
}

#[allow(dead_code)]
#[repr(C)]
struct UdpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

const _: () = {
    assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HLEN_MIN);
    assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);
    assert!(core::mem::size_of::<TcpHdr>() == TCP_HLEN_MIN);
    assert!(core::mem::size_of::<UdpHdr>() == UDP_HLEN);
    assert!(core::mem::size_of::<Ipv6FragHdr>() == IPV6_FRAG_HLEN);
};

/// IPv4 more-fragments flag and fragment offset bits of `flags_frag`.
pub const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
/// IPv4 fragment offset bits of `flags_frag`.
pub const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// The headers of a TCP or UDP packet, addresses of type `A` (`[u8; 4]` or `[u8; 16]`).
#[derive(Clone, Copy)]
pub struct Headers<A> {
    pub saddr: A,
    pub daddr: A,
    /// Raw network-order ports, as they sit in the packet.
    pub sport_be: u16,
    pub dport_be: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`; `IPPROTO_ICMP` / `IPPROTO_ICMPV6` for an ICMP
    /// error (ports 0, see `icmp`).
    pub proto: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
}

impl<A> Headers<A> {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + if self.proto == IPPROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == IPPROTO_UDP
    }
}

/// The L4 part of `Headers`.
struct L4 {
    sport_be: u16,
    dport_be: u16,
    tcp_flags: u8,
}

const fn pass(reason: Reason) -> Verdict {
    Verdict::Pass(reason)
}

const MALFORMED: Verdict = Verdict::Drop(Reason::DropMalformed);

/// The IP family of the frame (`ETH_P_IP` / `ETH_P_IPV6`); anything else passes.
#[inline(always)]
pub fn ethertype(ctx: &TcContext) -> Step<u16> {
    // Shorter than an Ethernet header: it cannot be IP.
    let ethertype: [u8; 2] = ctx.load(12).map_err(|_| pass(Reason::PassNotIp))?;
    match u16::from_be_bytes(ethertype) {
        t @ (ETH_P_IP | ETH_P_IPV6) => Ok(t),
        _ => Err(pass(Reason::PassNotIp)),
    }
}

#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext, l3_off: usize) -> Step<Headers<[u8; 4]>> {
    let ip: Ipv4Hdr = ctx.load(l3_off).map_err(|_| MALFORMED)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN_MIN {
        return Err(MALFORMED);
    }
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    // The load above proved len >= l3_off + 20.
    let available = ctx.len() as usize - l3_off;
    if tot_len < ihl || tot_len > available {
        return Err(MALFORMED);
    }
    let frag_bits = u16::from_be_bytes(ip.flags_frag) & IPV4_MF_AND_OFFSET;
    if frag_bits != 0 && (frag_bits & IPV4_FRAG_OFFSET != 0 || ip.proto != IPPROTO_UDP) {
        return Err(pass(Reason::PassFragment));
    }
    let l4 = parse_l4(ctx, ip.proto, l3_off + ihl, l3_off + tot_len)?;
    Ok(Headers {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: ip.proto,
        tcp_flags: l4.tcp_flags,
        l3_off,
        l4_off: l3_off + ihl,
    })
}

#[inline(always)]
pub fn parse_ipv6(ctx: &TcContext, l3_off: usize) -> Step<Headers<[u8; 16]>> {
    let ip: Ipv6Hdr = ctx.load(l3_off).map_err(|_| MALFORMED)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(MALFORMED);
    }
    let ip_end = l3_off + IPV6_HLEN + usize::from(u16::from_be_bytes(ip.payload_len));
    if ip_end > ctx.len() as usize {
        return Err(MALFORMED);
    }
    let mut next = ip.next_header;
    let mut l4_off = l3_off + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: Ipv6ExtHdr = ctx.load(l4_off).map_err(|_| MALFORMED)?;
                next = ext.next_header;
                l4_off += (usize::from(ext.len_8) + 1) * 8;
            }
            _ => break,
        }
    }
    if next == IPPROTO_FRAGMENT && l4_off == l3_off + IPV6_HLEN {
        let fh: Ipv6FragHdr = ctx.load(l4_off).map_err(|_| MALFORMED)?;
        // Offset (13 bits, 8-byte units), 2 reserved bits, M flag.
        if u16::from_be_bytes(fh.offset_flags) >> 3 == 0 && fh.next_header == IPPROTO_UDP {
            next = fh.next_header;
            l4_off += IPV6_FRAG_HLEN;
        }
    }
    match next {
        IPPROTO_FRAGMENT => return Err(pass(Reason::PassFragment)),
        // More extension headers than we skip: L4 is out of reach.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
            return Err(pass(Reason::PassOtherProto))
        }
        _ => {}
    }
    if l4_off > ip_end {
        return Err(MALFORMED);
    }
    let l4 = parse_l4(ctx, next, l4_off, ip_end)?;
    Ok(Headers {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: next,
        tcp_flags: l4.tcp_flags,
        l3_off,
        l4_off,
    })
}

/// Reads the TCP/UDP header at `l4_off`; it must end before `ip_end`.
#[inline(always)]
fn parse_l4(ctx: &TcContext, proto: u8, l4_off: usize, ip_end: usize) -> Step<L4> {
    match proto {
        IPPROTO_TCP => {
            if l4_off + TCP_HLEN_MIN > ip_end {
                return Err(MALFORMED);
            }
            let tcp: TcpHdr = ctx.load(l4_off).map_err(|_| MALFORMED)?;
            let doff = usize::from(tcp.doff_reserved >> 4) * 4;
            if doff < TCP_HLEN_MIN || l4_off + doff > ip_end {
                return Err(MALFORMED);
            }
            Ok(L4 {
                sport_be: u16::from_ne_bytes(tcp.sport),
                dport_be: u16::from_ne_bytes(tcp.dport),
                tcp_flags: tcp.flags,
            })
        }
        IPPROTO_UDP => {
            if l4_off + UDP_HLEN > ip_end {
                return Err(MALFORMED);
            }
            let udp: UdpHdr = ctx.load(l4_off).map_err(|_| MALFORMED)?;
            Ok(L4 {
                sport_be: u16::from_ne_bytes(udp.sport),
                dport_be: u16::from_ne_bytes(udp.dport),
                tcp_flags: 0,
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4_off + ICMP_HLEN > ip_end {
                return Err(MALFORMED);
            }
            let kind: u8 = ctx.load(l4_off).map_err(|_| MALFORMED)?;
            if !is_icmp_error(proto, kind) {
                return Err(pass(Reason::PassOtherProto));
            }
            // An error quoting a packet: `icmp::translate` reads the quoted headers.
            Ok(L4 {
                sport_be: 0,
                dport_be: 0,
                tcp_flags: 0,
            })
        }
        _ => Err(pass(Reason::PassOtherProto)),
    }
}

/// Length of the ICMP / ICMPv6 header before the quoted packet of an error.
pub const ICMP_HLEN: usize = 8;

/// The ICMP errors whose quoted packet may belong to a translated flow: ICMPv4
/// destination unreachable (incl. fragmentation needed) and time exceeded; ICMPv6
/// destination unreachable, packet too big and time exceeded.
#[inline(always)]
fn is_icmp_error(proto: u8, kind: u8) -> bool {
    match proto {
        IPPROTO_ICMP => kind == 3 || kind == 11,
        _ => kind == 1 || kind == 2 || kind == 3,
    }
}

/// An ICMP / ICMPv6 packet (only errors get past `parse`).
#[inline(always)]
pub fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// The quoted packet's IP header of an ICMP error (addresses of type `A`).
#[derive(Clone, Copy)]
pub struct Inner<A> {
    pub saddr: A,
    pub daddr: A,
    pub proto: u8,
    /// Offset of the quoted IP header and of its L4 header.
    pub l3_off: usize,
    pub l4_off: usize,
}

/// The quoted IPv4 header at `off` (TCP or UDP, first fragment); anything else passes.
#[inline(always)]
pub fn inner_ipv4(ctx: &TcContext, off: usize) -> Step<Inner<[u8; 4]>> {
    let ip: Ipv4Hdr = ctx.load(off).map_err(|_| pass(Reason::PassOtherProto))?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN_MIN {
        return Err(pass(Reason::PassOtherProto));
    }
    if u16::from_be_bytes(ip.flags_frag) & IPV4_FRAG_OFFSET != 0 {
        return Err(pass(Reason::PassOtherProto));
    }
    inner_l4(ip.proto)?;
    Ok(Inner {
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        l3_off: off,
        l4_off: off + ihl,
    })
}

/// The quoted IPv6 header at `off` (TCP or UDP right after it); anything else passes.
#[inline(always)]
pub fn inner_ipv6(ctx: &TcContext, off: usize) -> Step<Inner<[u8; 16]>> {
    let ip: Ipv6Hdr = ctx.load(off).map_err(|_| pass(Reason::PassOtherProto))?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(pass(Reason::PassOtherProto));
    }
    inner_l4(ip.next_header)?;
    Ok(Inner {
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.next_header,
        l3_off: off,
        l4_off: off + IPV6_HLEN,
    })
}

#[inline(always)]
fn inner_l4(proto: u8) -> Step<()> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok(()),
        _ => Err(pass(Reason::PassOtherProto)),
    }
}

/// Offset of the L4 checksum inside a TCP / UDP header.
#[inline(always)]
pub fn l4_csum_field(proto: u8) -> usize {
    if proto == IPPROTO_TCP {
        TCP_CSUM_OFF
    } else {
        UDP_CSUM_OFF
    }
}
