//! Test packets as data: a `PacketSpec` says what the packet is (addresses, ports, L4,
//! IPv4 options, IPv6 extension headers, fragment), `build()` turns it into bytes with
//! etherparse's header serialisers and this crate's own checksums. The expected output
//! of a translation is the same spec with the rewritten address/port, built again.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context as _};
use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6Header, TcpHeader, UdpHeader,
};
use service_lb_common::proto::{
    ETH_HLEN, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST,
    TCP_FLAG_SYN,
};

use super::checksum::{checksum, l4_checksum};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The transport part of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags (`TCP_FLAG_*`).
    Tcp(u8),
    Udp,
    /// IPv4 UDP with the checksum disabled (0).
    UdpNoChecksum,
    /// ICMP echo request (ICMPv6 for IPv6); the ports are ignored.
    IcmpEcho,
}

impl L4 {
    pub const SYN: L4 = L4::Tcp(TCP_FLAG_SYN);
    pub const SYN_ACK: L4 = L4::Tcp(TCP_FLAG_SYN | TCP_FLAG_ACK);
    pub const ACK: L4 = L4::Tcp(TCP_FLAG_ACK);
    pub const FIN_ACK: L4 = L4::Tcp(TCP_FLAG_FIN | TCP_FLAG_ACK);
    pub const RST: L4 = L4::Tcp(TCP_FLAG_RST);
}

/// IPv6 extension headers the builder can put before L4 (8 bytes each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// A first fragment (M flag set, offset 0).
    Fragment,
}

impl Ipv6Ext {
    fn number(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop => IPPROTO_HOPOPTS,
            Ipv6Ext::Routing => IPPROTO_ROUTING,
            Ipv6Ext::DestOpts => IPPROTO_DSTOPTS,
            Ipv6Ext::Fragment => IPPROTO_FRAGMENT,
        }
    }

    fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            // PadN option filling the 6 bytes after next-header and length.
            Ipv6Ext::HopByHop | Ipv6Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            // Routing type 253 (experimental), no segments left: the destination stays.
            Ipv6Ext::Routing => [next, 0, 253, 0, 0, 0, 0, 0],
            // Offset 0, M = 1, identification 0x1234.
            Ipv6Ext::Fragment => [next, 0, 0, 1, 0, 0, 0x12, 0x34],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv4: set the more-fragments flag.
    pub ipv4_more_fragments: bool,
    pub ipv6_ext: Vec<Ipv6Ext>,
}

impl PacketSpec {
    pub fn new(src: SocketAddr, dst: SocketAddr, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            payload: b"service-lb test payload".to_vec(),
            ipv4_options: Vec::new(),
            ipv4_more_fragments: false,
            ipv6_ext: Vec::new(),
        }
    }

    pub fn tcp(src: &str, dst: &str, l4: L4) -> Self {
        Self::new(parse(src), parse(dst), l4)
    }

    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(parse(src), parse(dst), L4::Udp)
    }

    pub fn with_src(mut self, src: SocketAddr) -> Self {
        self.src = src;
        self
    }

    pub fn with_dst(mut self, dst: SocketAddr) -> Self {
        self.dst = dst;
        self
    }

    pub fn with_sport(mut self, port: u16) -> Self {
        self.src.set_port(port);
        self
    }

    pub fn with_l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }

    pub fn with_ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn with_ipv4_more_fragments(mut self) -> Self {
        self.ipv4_more_fragments = true;
        self
    }

    pub fn with_ipv6_ext(mut self, ext: &[Ipv6Ext]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }

    /// The reply of this packet (addresses and ports swapped), as a backend sends it.
    pub fn reply(&self, l4: L4) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            l4,
            ..self.clone()
        }
    }

    /// Wire protocol number of the L4 part.
    pub fn proto(&self) -> u8 {
        match (self.l4, self.src.ip()) {
            (L4::Tcp(_), _) => IPPROTO_TCP,
            (L4::Udp | L4::UdpNoChecksum, _) => IPPROTO_UDP,
            (L4::IcmpEcho, IpAddr::V4(_)) => IPPROTO_ICMP,
            (L4::IcmpEcho, IpAddr::V6(_)) => IPPROTO_ICMPV6,
        }
    }

    /// The L4 segment with its checksum computed here.
    fn segment(&self) -> anyhow::Result<Vec<u8>> {
        let (src, dst, proto) = (self.src.ip(), self.dst.ip(), self.proto());
        let mut segment = match self.l4 {
            L4::Tcp(flags) => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), 0x0102_0304, 64_240);
                tcp.fin = flags & TCP_FLAG_FIN != 0;
                tcp.syn = flags & TCP_FLAG_SYN != 0;
                tcp.rst = flags & TCP_FLAG_RST != 0;
                tcp.ack = flags & TCP_FLAG_ACK != 0;
                if tcp.ack {
                    tcp.acknowledgment_number = 0x0a0b_0c0d;
                }
                tcp.checksum = 0;
                tcp.to_bytes().to_vec()
            }
            L4::Udp | L4::UdpNoChecksum => {
                let mut udp = UdpHeader::without_ipv4_checksum(
                    self.src.port(),
                    self.dst.port(),
                    self.payload.len(),
                )
                .context("udp header")?;
                udp.checksum = 0;
                udp.to_bytes().to_vec()
            }
            // type 8 / 128 (echo request), code 0, checksum, id 0x77, seq 1.
            L4::IcmpEcho => {
                let kind = if proto == IPPROTO_ICMP { 8 } else { 128 };
                vec![kind, 0, 0, 0, 0, 0x77, 0, 1]
            }
        };
        segment.extend_from_slice(&self.payload);
        let (csum_off, csum) = match self.l4 {
            L4::Tcp(_) => (16, l4_checksum(src, dst, proto, &segment)),
            L4::Udp => (6, l4_checksum(src, dst, proto, &segment)),
            L4::UdpNoChecksum => (6, 0),
            L4::IcmpEcho if proto == IPPROTO_ICMP => (2, checksum(&segment)),
            L4::IcmpEcho => (2, l4_checksum(src, dst, proto, &segment)),
        };
        segment[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
        Ok(segment)
    }

    /// The whole frame: Ethernet, IP (+ options / extension headers), L4, payload.
    pub fn build(&self) -> anyhow::Result<Vec<u8>> {
        let segment = self.segment()?;
        let (ether_type, ip) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                EtherType::IPV4,
                self.ipv4(s.octets(), d.octets(), &segment)?,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => (
                EtherType::IPV6,
                self.ipv6(s.octets(), d.octets(), &segment)?,
            ),
            _ => bail!("mixed address families {} -> {}", self.src, self.dst),
        };
        let eth = Ethernet2Header {
            source: SRC_MAC,
            destination: DST_MAC,
            ether_type,
        };
        let mut frame = eth.to_bytes().to_vec();
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        Ok(frame)
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> anyhow::Result<Vec<u8>> {
        let payload_len = u16::try_from(segment.len())?;
        let mut ip = Ipv4Header::new(payload_len, 64, IpNumber(self.proto()), src, dst)?;
        ip.options = Ipv4Options::try_from(self.ipv4_options.as_slice())
            .map_err(|e| anyhow::anyhow!("ipv4 options: {e:?}"))?;
        ip.total_len = u16::try_from(ip.header_len() + segment.len())?;
        ip.identification = 0x4242;
        ip.dont_fragment = !self.ipv4_more_fragments;
        ip.more_fragments = self.ipv4_more_fragments;
        ip.fragment_offset = IpFragOffset::ZERO;
        ip.header_checksum = 0;
        let mut bytes = ip.to_bytes().to_vec();
        let csum = checksum(&bytes);
        bytes[10..12].copy_from_slice(&csum.to_be_bytes());
        Ok(bytes)
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], segment: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut ext = Vec::new();
        for (i, header) in self.ipv6_ext.iter().enumerate() {
            let next = self
                .ipv6_ext
                .get(i + 1)
                .map_or(self.proto(), |h| h.number());
            ext.extend_from_slice(&header.bytes(next));
        }
        let first = self.ipv6_ext.first().map_or(self.proto(), |h| h.number());
        let ip = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: u16::try_from(ext.len() + segment.len())?,
            next_header: IpNumber(first),
            hop_limit: 64,
            source: src,
            destination: dst,
        };
        let mut bytes = ip.to_bytes().to_vec();
        bytes.extend_from_slice(&ext);
        Ok(bytes)
    }
}

/// The datagram of `spec` (its L4 checksum over the whole datagram, computed here) cut
/// into IP fragments as a sender's kernel does: each carries at most `chunk` bytes of the
/// L4 segment (`chunk` a multiple of 8), the first one with the L4 header. Identification
/// `id` (IPv4: its low 16 bits; IPv6: the fragment header's, which directly follows the
/// fixed header). IPv4 options and IPv6 extension headers of `spec` are not used.
pub fn fragments(spec: &PacketSpec, chunk: usize, id: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    if chunk == 0 || !chunk.is_multiple_of(8) {
        bail!("fragment size {chunk} is not a positive multiple of 8");
    }
    let segment = spec.segment()?;
    let pieces: Vec<&[u8]> = segment.chunks(chunk).collect();
    let mut frames = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let offset_8 = u16::try_from(i * chunk / 8)?;
        let more = i + 1 < pieces.len();
        let (ether_type, ip) = match (spec.src.ip(), spec.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let len = u16::try_from(piece.len())?;
                let mut ip =
                    Ipv4Header::new(len, 64, IpNumber(spec.proto()), s.octets(), d.octets())?;
                ip.identification = id as u16;
                ip.dont_fragment = false;
                ip.more_fragments = more;
                ip.fragment_offset = IpFragOffset::try_new(offset_8)
                    .map_err(|e| anyhow::anyhow!("fragment offset: {e:?}"))?;
                ip.header_checksum = 0;
                let mut bytes = ip.to_bytes().to_vec();
                let csum = checksum(&bytes);
                bytes[10..12].copy_from_slice(&csum.to_be_bytes());
                (EtherType::IPV4, bytes)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: u16::try_from(8 + piece.len())?,
                    next_header: IpNumber(IPPROTO_FRAGMENT),
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                };
                let mut bytes = ip.to_bytes().to_vec();
                let offset_flags = (offset_8 << 3) | u16::from(more);
                bytes.extend_from_slice(&[spec.proto(), 0]);
                bytes.extend_from_slice(&offset_flags.to_be_bytes());
                bytes.extend_from_slice(&id.to_be_bytes());
                (EtherType::IPV6, bytes)
            }
            _ => bail!("mixed address families {} -> {}", spec.src, spec.dst),
        };
        let eth = Ethernet2Header {
            source: SRC_MAC,
            destination: DST_MAC,
            ether_type,
        };
        let mut frame = eth.to_bytes().to_vec();
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(piece);
        frames.push(frame);
    }
    Ok(frames)
}

/// "198.18.1.2:40000" or "[fd00:18:0:1::2]:40000".
pub fn parse(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("bad test address {addr:?}: {e}"))
}

/// An ARP request (who-has 198.18.1.1 tell 198.18.1.2), padded to 60 bytes.
pub fn arp() -> Vec<u8> {
    let eth = Ethernet2Header {
        source: SRC_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    };
    let mut frame = eth.to_bytes().to_vec();
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&[198, 18, 1, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[198, 18, 1, 1]);
    frame.resize(60, 0);
    frame
}

/// Broken variants of a well-formed frame (the offsets assume no VLAN tag).
pub mod broken {
    use super::ETH_HLEN;

    /// The first `len` bytes of `frame`.
    pub fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
        frame[..len.min(frame.len())].to_vec()
    }

    /// IPv4 header length field set to `ihl` (in 4-byte words).
    pub fn ipv4_ihl(frame: &[u8], ihl: u8) -> Vec<u8> {
        let mut out = frame.to_vec();
        out[ETH_HLEN] = 0x40 | (ihl & 0x0f);
        out
    }

    /// IPv4 total length field set to `tot_len`.
    pub fn ipv4_total_len(frame: &[u8], tot_len: u16) -> Vec<u8> {
        let mut out = frame.to_vec();
        out[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&tot_len.to_be_bytes());
        out
    }

    /// IP version nibble set to `version`.
    pub fn ip_version(frame: &[u8], version: u8) -> Vec<u8> {
        let mut out = frame.to_vec();
        out[ETH_HLEN] = (version << 4) | (out[ETH_HLEN] & 0x0f);
        out
    }

    /// IPv4 total length / IPv6 payload length shrunk so the L4 header no longer fits
    /// in the IP packet, and the frame cut to match.
    pub fn ip_payload_cut(frame: &[u8], ip_payload_keep: usize) -> Vec<u8> {
        let mut out = frame.to_vec();
        match out[ETH_HLEN] >> 4 {
            4 => {
                let ihl = usize::from(out[ETH_HLEN] & 0x0f) * 4;
                let tot = u16::try_from(ihl + ip_payload_keep).expect("small");
                out[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&tot.to_be_bytes());
                out.truncate(ETH_HLEN + ihl + ip_payload_keep);
            }
            _ => {
                let len = u16::try_from(ip_payload_keep).expect("small");
                out[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&len.to_be_bytes());
                out.truncate(ETH_HLEN + 40 + ip_payload_keep);
            }
        }
        out
    }
}

/// An ICMP error (ICMPv4 for IPv4 addresses, ICMPv6 for IPv6) from `src` to `dst` of
/// type `kind`, `code`, with the 4 header bytes after the checksum `rest` (e.g. the MTU of
/// fragmentation-needed / packet-too-big), quoting `quoted` (an IP packet, without its
/// Ethernet header, possibly cut short). Checksums computed here.
pub fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut msg = vec![kind, code, 0, 0];
    msg.extend_from_slice(&rest);
    msg.extend_from_slice(quoted);
    let (ether_type, ip) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let csum = checksum(&msg);
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
            let mut ip = Ipv4Header::new(
                u16::try_from(msg.len())?,
                64,
                IpNumber(IPPROTO_ICMP),
                s.octets(),
                d.octets(),
            )?;
            ip.identification = 0x4343;
            ip.header_checksum = 0;
            let mut bytes = ip.to_bytes().to_vec();
            let csum = checksum(&bytes);
            bytes[10..12].copy_from_slice(&csum.to_be_bytes());
            (EtherType::IPV4, bytes)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let csum = l4_checksum(src, dst, IPPROTO_ICMPV6, &msg);
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: u16::try_from(msg.len())?,
                next_header: IpNumber(IPPROTO_ICMPV6),
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            (EtherType::IPV6, ip.to_bytes().to_vec())
        }
        _ => bail!("mixed address families {src} -> {dst}"),
    };
    let eth = Ethernet2Header {
        source: SRC_MAC,
        destination: DST_MAC,
        ether_type,
    };
    let mut frame = eth.to_bytes().to_vec();
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&msg);
    Ok(frame)
}
