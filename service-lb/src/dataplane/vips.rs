//! ClusterIP addresses in the data plane (see `service_lb_common::vip`): the service
//! CIDRs (`--service-cidrs`), written once at start-up, and the `Cidr` type both the
//! flag and the `MapStore` use. The VIP maps are kept by the writer (`writer::vips`).

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use tracing::info;

use super::maps::{Family, MapStore, StoreError};

/// An address prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("'{0}' is not a CIDR (address/prefix length, e.g. 10.96.0.0/12)")]
    Syntax(String),
    #[error("'{text}': prefix length {prefix_len} is longer than {max}")]
    PrefixTooLong {
        text: String,
        prefix_len: u8,
        max: u8,
    },
}

impl Cidr {
    /// `addr/prefix_len` with the host bits of `addr` cleared.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = max_len(&addr);
        if prefix_len > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(u32::from(32 - prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(u32::from(128 - prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Some(Self { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        Cidr::new(*addr, self.prefix_len).is_some_and(|c| c.addr == self.addr)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (addr, len) = text.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix_len: u8 = len.parse().map_err(|_| syntax())?;
        Cidr::new(addr, prefix_len).ok_or(CidrError::PrefixTooLong {
            text: text.to_owned(),
            prefix_len,
            max: max_len(&addr),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Makes the service-CIDR tries hold exactly `cidrs` (both families): stale ranges are
/// deleted, missing ones written. Returns (written, deleted).
pub fn program_service_cidrs<M: MapStore>(
    store: &mut M,
    cidrs: &[Cidr],
) -> Result<(usize, usize), StoreError> {
    let wanted: BTreeSet<Cidr> = cidrs.iter().copied().collect();
    let mut present = BTreeSet::new();
    for family in Family::ALL {
        present.extend(store.list_service_cidrs(family)?);
    }
    let mut deleted = 0;
    for stale in present.difference(&wanted) {
        store.delete_service_cidr(stale)?;
        deleted += 1;
    }
    let mut written = 0;
    for missing in wanted.difference(&present) {
        store.put_service_cidr(missing)?;
        written += 1;
    }
    let list: Vec<String> = wanted.iter().map(Cidr::to_string).collect();
    info!(
        service_cidrs = %list.join(","),
        written, deleted, "service CIDRs programmed (unowned ClusterIPs in them are dropped)"
    );
    Ok((written, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FakeMaps;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("valid cidr")
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        assert_eq!(cidr("198.19.7.9/17").to_string(), "198.19.0.0/17");
        assert_eq!(cidr("fd00:19::1:2/108").to_string(), "fd00:19::/108");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(matches!(
            "198.19.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "198.19.0.0".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(cidr("198.19.0.0/17").contains(&"198.19.127.255".parse().expect("addr")));
        assert!(!cidr("198.19.0.0/17").contains(&"198.19.128.0".parse().expect("addr")));
        assert!(!cidr("198.19.0.0/17").contains(&"fd00:19::1".parse().expect("addr")));
    }

    #[test]
    fn programming_cidrs_replaces_what_the_maps_hold() {
        let mut maps = FakeMaps::new();
        let first = [cidr("198.19.0.0/17"), cidr("fd00:19::/108")];
        let counts = program_service_cidrs(&mut maps, &first).expect("programs");
        assert_eq!(counts, (2, 0));
        assert_eq!(maps.service_cidrs, first.iter().copied().collect());
        let second = [cidr("198.19.0.0/17"), cidr("198.19.128.0/24")];
        let (written, deleted) = program_service_cidrs(&mut maps, &second).expect("programs");
        assert_eq!((written, deleted), (1, 1));
        assert_eq!(maps.service_cidrs, second.iter().copied().collect());
    }
}
