//! Wire constants shared by the programs and the packet tests.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const IPV4_HLEN_MIN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN_MIN: usize = 20;
pub const UDP_HLEN: usize = 8;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Verdict a program returns for a packet it lets through (translated or not).
/// `TC_ACT_UNSPEC`, which with TCX means "next program", so we compose with others.
pub const VERDICT_PASS: i32 = -1;
/// Verdict for a packet the program drops (always counted under a drop reason).
pub const VERDICT_DROP: i32 = 2;
