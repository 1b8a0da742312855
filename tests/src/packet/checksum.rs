//! Internet checksums computed independently of the programs (RFC 1071): a plain
//! ones'-complement sum of big-endian 16-bit words, folded, then inverted.

use std::net::IpAddr;

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded
/// with zero), added to `initial`, without folding.
pub fn sum_words(initial: u64, data: &[u8]) -> u64 {
    data.chunks(2).fold(initial, |acc, pair| {
        let word = match pair {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => 0,
        };
        acc + u64::from(word)
    })
}

/// Folds the carries of a ones'-complement sum into 16 bits.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of `data`: the inverted folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

/// Sum of the TCP/UDP pseudo-header for `src`/`dst` (same family), `proto` and the
/// upper-layer length.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u64 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        _ => panic!("pseudo-header of mixed families {src} -> {dst}"),
    };
    let sum = sum_words(0, &addrs);
    // Both layouts add the protocol and the length as plain 16/32-bit quantities.
    sum + u64::from(proto) + (l4_len as u64 & 0xffff) + ((l4_len as u64) >> 16)
}

/// Checksum of a TCP/UDP segment (its checksum field zeroed) with its pseudo-header.
/// A UDP result of 0 is sent as 0xffff (0 means "no checksum").
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let csum = !fold(sum_words(
        pseudo_header_sum(src, dst, proto, segment.len()),
        segment,
    ));
    if proto == service_lb_common::proto::IPPROTO_UDP && csum == 0 {
        0xffff
    } else {
        csum
    }
}

/// Whether a segment whose checksum field is filled in sums to all ones with its
/// pseudo-header (what a receiver checks).
pub fn l4_checksum_valid(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> bool {
    fold(sum_words(
        pseudo_header_sum(src, dst, proto, segment.len()),
        segment,
    )) == 0xffff
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::{TcpHeader, UdpHeader};

    use super::*;

    /// RFC 1071's worked example: words 0001 f203 f4f5 f6f7 sum to 0xddf2 after folding.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    /// Cross-check against a second implementation (etherparse's) on TCP and UDP, v4 and v6.
    #[test]
    fn agrees_with_etherparse() {
        let payload = b"odd-length payload!";
        let (s4, d4) = (Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 19, 0, 10));
        let udp = UdpHeader::without_ipv4_checksum(40000, 53, payload.len()).expect("udp header");
        let mut segment = udp.to_bytes().to_vec();
        segment.extend_from_slice(payload);
        assert_eq!(
            l4_checksum(s4.into(), d4.into(), 17, &segment),
            udp.calc_checksum_ipv4_raw(s4.octets(), d4.octets(), payload)
                .expect("etherparse udp")
        );

        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "fd00:18:0:1::2".parse().unwrap(),
            "fd00:19::a".parse().unwrap(),
        );
        let tcp = TcpHeader::new(40000, 80, 7, 1000);
        let mut segment = tcp.to_bytes().to_vec();
        segment.extend_from_slice(payload);
        let ours = l4_checksum(s6.into(), d6.into(), 6, &segment);
        let theirs = tcp
            .calc_checksum_ipv6_raw(s6.octets(), d6.octets(), payload)
            .expect("etherparse tcp");
        assert_eq!(ours, theirs);

        segment[16..18].copy_from_slice(&ours.to_be_bytes());
        assert!(l4_checksum_valid(s6.into(), d6.into(), 6, &segment));
        segment[30] ^= 1;
        assert!(!l4_checksum_valid(s6.into(), d6.into(), 6, &segment));
    }
}
