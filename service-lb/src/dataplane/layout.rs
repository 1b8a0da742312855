//! The layout (type, key size, value size, capacity) every map must have, derived from the
//! common crate's types and the configured sizes. Used to check pins before they are
//! reused and the loaded object after load.

use std::{fmt, mem::size_of};

use aya::maps::MapType;
use service_lb_common::{
    affinity::{
        Affinity4Key, Affinity6Key, AffinityValue, MemberKey, MemberValue, DEFAULT_AFFINITY_MAX,
    },
    counters::COUNTERS_LEN,
    frag::{FragKey4, FragKey6, FragNat4, FragNat6, FragPending, FRAG_MAX},
    maps,
    names::SvcName,
    northsouth::{
        NodeAddrs, SnatRev4, SnatRev6, SrcRange4Data, SrcRange6Data, SNAT_MAX, SRC_RANGES_MAX,
    },
    policy::{PolFlow, PolPeer4, PolPeer6, PolPod, PolPort},
    sock::{SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value, SOCK_REV_MAX},
    vip::{Scratch, SERVICE_CIDRS_MAX},
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, Meta, RevNat4, RevNat6, Svc4Key, Svc6Key,
    SvcValue, VipValue,
};

use super::options::MapSizes;

/// Kind of a map as the kernel reports it (a copy of the few `MapType`s we use, so the
/// layout is comparable and printable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    Array,
    PerCpuArray,
    LpmTrie,
    /// Any other type, by the kernel's number (only ever seen on a foreign pin).
    Other(u32),
}

impl MapKind {
    pub fn from_aya(map_type: MapType) -> Self {
        match map_type {
            MapType::Hash => Self::Hash,
            MapType::LruHash => Self::LruHash,
            MapType::Array => Self::Array,
            MapType::PerCpuArray => Self::PerCpuArray,
            MapType::LpmTrie => Self::LpmTrie,
            other => Self::Other(other as u32),
        }
    }
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hash => f.write_str("hash"),
            Self::LruHash => f.write_str("lru_hash"),
            Self::Array => f.write_str("array"),
            Self::PerCpuArray => f.write_str("percpu_array"),
            Self::LpmTrie => f.write_str("lpm_trie"),
            Self::Other(n) => write!(f, "map_type({n})"),
        }
    }
}

/// Everything about a map that must match for a pin to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key={}B value={}B max_entries={}",
            self.kind, self.key_size, self.value_size, self.max_entries
        )
    }
}

impl MapLayout {
    /// Reads the layout of an existing map from the kernel.
    pub fn of(info: &aya::maps::MapInfo) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            kind: MapKind::from_aya(info.map_type()?),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }
}

const fn layout<K, V>(kind: MapKind, max_entries: u32) -> MapLayout {
    MapLayout {
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
    }
}

/// Key of the IPv6 service-CIDR trie: prefix length, then the address (20 bytes; the
/// IPv4 key, `(u32, [u8; 4])`, is 8 bytes without padding either).
#[repr(C, packed)]
struct LpmKey6 {
    _prefix_len: u32,
    _addr: [u8; 16],
}

/// Key of an LPM trie with `data` after the prefix length (no padding: every data type
/// here is 4-byte aligned).
#[repr(C, packed)]
struct LpmKey<T> {
    _prefix_len: u32,
    _data: T,
}

/// The layout the map called `name` must have, or `None` for a name that is not ours.
pub fn wanted(name: &str, sizes: &MapSizes) -> Option<MapLayout> {
    use MapKind::*;
    let l = match name {
        maps::SERVICES4 => layout::<Svc4Key, SvcValue>(Hash, sizes.services),
        maps::SERVICES6 => layout::<Svc6Key, SvcValue>(Hash, sizes.services),
        maps::BACKENDS4 => layout::<u32, Backend4>(Hash, sizes.backends),
        maps::BACKENDS6 => layout::<u32, Backend6>(Hash, sizes.backends),
        maps::REVNAT4 => layout::<u32, RevNat4>(Hash, sizes.revnat),
        maps::REVNAT6 => layout::<u32, RevNat6>(Hash, sizes.revnat),
        maps::CT4_TCP => layout::<CtKey4, CtEntry>(LruHash, sizes.ct_tcp),
        maps::CT4_ANY => layout::<CtKey4, CtEntry>(LruHash, sizes.ct_any),
        maps::CT6_TCP => layout::<CtKey6, CtEntry>(LruHash, sizes.ct_tcp),
        maps::CT6_ANY => layout::<CtKey6, CtEntry>(LruHash, sizes.ct_any),
        maps::COUNTERS => layout::<u32, Counter>(PerCpuArray, COUNTERS_LEN),
        maps::META => layout::<u32, Meta>(Array, 1),
        // One entry per ClusterIP address: at most one per frontend, like revnat.
        maps::VIPS4 => layout::<[u8; 4], VipValue>(Hash, sizes.revnat),
        maps::VIPS6 => layout::<[u8; 16], VipValue>(Hash, sizes.revnat),
        maps::SERVICE_CIDRS4 => layout::<(u32, [u8; 4]), u32>(LpmTrie, SERVICE_CIDRS_MAX),
        maps::SERVICE_CIDRS6 => layout::<LpmKey6, u32>(LpmTrie, SERVICE_CIDRS_MAX),
        maps::SCRATCH => layout::<u32, Scratch>(PerCpuArray, 1),
        maps::AFFINITY4 => layout::<Affinity4Key, AffinityValue>(LruHash, DEFAULT_AFFINITY_MAX),
        maps::AFFINITY6 => layout::<Affinity6Key, AffinityValue>(LruHash, DEFAULT_AFFINITY_MAX),
        // One entry per (frontend, backend) pair: at most one per slot entry.
        maps::MEMBERS => layout::<MemberKey, MemberValue>(Hash, sizes.services),
        maps::FRAG4 => layout::<FragKey4, FragNat4>(LruHash, FRAG_MAX),
        maps::FRAG6 => layout::<FragKey6, FragNat6>(LruHash, FRAG_MAX),
        maps::FRAG_PENDING => layout::<u32, FragPending>(PerCpuArray, 1),
        maps::SOCK_REV4 => layout::<SockRev4Key, SockRev4Value>(LruHash, SOCK_REV_MAX),
        maps::SOCK_REV6 => layout::<SockRev6Key, SockRev6Value>(LruHash, SOCK_REV_MAX),
        maps::POL_PODS4 => layout::<[u8; 4], PolPod>(Hash, sizes.policy_pods),
        maps::POL_PODS6 => layout::<[u8; 16], PolPod>(Hash, sizes.policy_pods),
        maps::POL_PEERS4 => layout::<LpmKey<PolPeer4>, u32>(LpmTrie, sizes.policy_peers),
        maps::POL_PEERS6 => layout::<LpmKey<PolPeer6>, u32>(LpmTrie, sizes.policy_peers),
        maps::POL_PORTS => layout::<LpmKey<PolPort>, u32>(LpmTrie, sizes.policy_ports),
        maps::POL_FLOWS4 => layout::<CtKey4, PolFlow>(LruHash, sizes.policy_flows),
        maps::POL_FLOWS6 => layout::<CtKey6, PolFlow>(LruHash, sizes.policy_flows),
        maps::POL_CONFIG => layout::<u32, u32>(Array, 1),
        // One entry per frontend of either family.
        maps::SERVICE_NAMES => layout::<u32, SvcName>(Hash, sizes.revnat.saturating_mul(2)),
        // One table per Maglev frontend (not preallocated: 64 KiB per table written).
        maps::MAGLEV => layout::<
            service_lb_common::maglev::MaglevKey,
            service_lb_common::maglev::MaglevTable,
        >(Hash, service_lb_common::maglev::DEFAULT_MAGLEV_MAX),
        maps::SRC_RANGES4 => layout::<LpmKey<SrcRange4Data>, u32>(LpmTrie, SRC_RANGES_MAX),
        maps::SRC_RANGES6 => layout::<LpmKey<SrcRange6Data>, u32>(LpmTrie, SRC_RANGES_MAX),
        maps::NODE_ADDRS => layout::<u32, NodeAddrs>(Array, 1),
        maps::SNAT4 => layout::<CtKey4, SnatRev4>(LruHash, SNAT_MAX),
        maps::SNAT6 => layout::<CtKey6, SnatRev6>(LruHash, SNAT_MAX),
        _ => return None,
    };
    Some(l)
}

/// Whether `max_entries` of this map comes from `MapSizes` (and is set at load time).
pub fn sized_by_options(name: &str, sizes: &MapSizes) -> Option<u32> {
    match name {
        maps::COUNTERS
        | maps::META
        | maps::SERVICE_CIDRS4
        | maps::SERVICE_CIDRS6
        | maps::SCRATCH
        | maps::AFFINITY4
        | maps::AFFINITY6
        | maps::FRAG4
        | maps::FRAG6
        | maps::FRAG_PENDING
        | maps::SOCK_REV4
        | maps::SOCK_REV6
        | maps::POL_CONFIG
        | maps::MAGLEV
        | maps::SRC_RANGES4
        | maps::SRC_RANGES6
        | maps::NODE_ADDRS
        | maps::SNAT4
        | maps::SNAT6 => None,
        _ => wanted(name, sizes).map(|l| l.max_entries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_layout_and_sizes_apply() {
        let sizes = MapSizes {
            services: 7,
            backends: 8,
            revnat: 9,
            ct_tcp: 10,
            ct_any: 11,
            ..MapSizes::default()
        };
        for name in maps::ALL {
            assert!(wanted(name, &sizes).is_some(), "{name} has no layout");
        }
        assert_eq!(
            wanted(maps::SERVICES6, &sizes).map(|l| l.max_entries),
            Some(7)
        );
        assert_eq!(
            wanted(maps::CT6_ANY, &sizes).map(|l| l.kind),
            Some(MapKind::LruHash)
        );
        assert_eq!(sized_by_options(maps::META, &sizes), None);
        assert_eq!(sized_by_options(maps::REVNAT4, &sizes), Some(9));
        assert_eq!(wanted("SLB_OTHER", &sizes), None);
    }
}
