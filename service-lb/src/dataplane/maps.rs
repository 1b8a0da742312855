//! Typed access to the service, backend and reverse-NAT maps of both families, behind the
//! `MapStore` trait so the writer runs unchanged on the kernel maps (`BpfMaps`) and on an
//! in-memory fake (`FakeMaps`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use service_lb_common::{
    affinity::{MemberKey, MemberValue},
    maglev::MaglevKey,
    maps, Backend4, Backend6, RevNat4, RevNat6, Svc4Key, Svc6Key, SvcName, SvcValue, VipValue,
};

use super::vips::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub fn services_map(self) -> &'static str {
        match self {
            Self::V4 => maps::SERVICES4,
            Self::V6 => maps::SERVICES6,
        }
    }

    pub fn backends_map(self) -> &'static str {
        match self {
            Self::V4 => maps::BACKENDS4,
            Self::V6 => maps::BACKENDS6,
        }
    }

    pub fn revnat_map(self) -> &'static str {
        match self {
            Self::V4 => maps::REVNAT4,
            Self::V6 => maps::REVNAT6,
        }
    }
}

/// A key of either services map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SvcKey {
    V4(Svc4Key),
    V6(Svc6Key),
}

impl SvcKey {
    /// Key of `slot` of the frontend (addr, port, proto, scope); `port` in host order.
    pub fn new(addr: IpAddr, port: u16, proto: u8, scope: u8, slot: u16) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(Svc4Key::new(a.octets(), port.to_be(), proto, scope, slot)),
            IpAddr::V6(a) => Self::V6(Svc6Key::new(a.octets(), port.to_be(), proto, scope, slot)),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Self::V4(_) => Family::V4,
            Self::V6(_) => Family::V6,
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(k) => Ipv4Addr::from(k.addr).into(),
            Self::V6(k) => Ipv6Addr::from(k.addr).into(),
        }
    }

    /// Port in host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => u16::from_be(k.port_be),
            Self::V6(k) => u16::from_be(k.port_be),
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }

    pub fn scope(&self) -> u8 {
        match self {
            Self::V4(k) => k.scope,
            Self::V6(k) => k.scope,
        }
    }

    pub fn slot(&self) -> u16 {
        match self {
            Self::V4(k) => k.slot,
            Self::V6(k) => k.slot,
        }
    }

    /// The same frontend's key for another slot.
    pub fn with_slot(&self, slot: u16) -> Self {
        match *self {
            Self::V4(k) => Self::V4(Svc4Key { slot, ..k }),
            Self::V6(k) => Self::V6(Svc6Key { slot, ..k }),
        }
    }
}

/// A value of either backends map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendValue {
    V4(Backend4),
    V6(Backend6),
}

impl BackendValue {
    /// `port` in host order.
    pub fn new(addr: IpAddr, port: u16, proto: u8, state: u8, flags: u8) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(Backend4::new(a.octets(), port.to_be(), proto, state, flags)),
            IpAddr::V6(a) => Self::V6(Backend6::new(a.octets(), port.to_be(), proto, state, flags)),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Self::V4(_) => Family::V4,
            Self::V6(_) => Family::V6,
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(b) => Ipv4Addr::from(b.addr).into(),
            Self::V6(b) => Ipv6Addr::from(b.addr).into(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::V4(b) => u16::from_be(b.port_be),
            Self::V6(b) => u16::from_be(b.port_be),
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(b) => b.proto,
            Self::V6(b) => b.proto,
        }
    }

    pub fn state(&self) -> u8 {
        match self {
            Self::V4(b) => b.state,
            Self::V6(b) => b.state,
        }
    }

    pub fn flags(&self) -> u8 {
        match self {
            Self::V4(b) => b.flags,
            Self::V6(b) => b.flags,
        }
    }
}

/// A value of either reverse-NAT map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevNatValue {
    V4(RevNat4),
    V6(RevNat6),
}

impl RevNatValue {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(RevNat4::new(a.octets(), port.to_be())),
            IpAddr::V6(a) => Self::V6(RevNat6::new(a.octets(), port.to_be())),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Self::V4(_) => Family::V4,
            Self::V6(_) => Family::V6,
        }
    }

    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(r) => Ipv4Addr::from(r.addr).into(),
            Self::V6(r) => Ipv6Addr::from(r.addr).into(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::V4(r) => u16::from_be(r.port_be),
            Self::V6(r) => u16::from_be(r.port_be),
        }
    }
}

/// Which operation of a store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Put,
    Delete,
    Get,
    List,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An insert found the map full (E2BIG, ENOSPC or ENOMEM from the kernel).
    #[error("map {map} is full")]
    Full { map: &'static str },
    #[error("map {map}: {op:?} failed: {source}")]
    Failed {
        map: &'static str,
        op: StoreOp,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Low-level access to the service, backend and reverse-NAT maps, and the conntrack
/// purge. Deleting a missing entry succeeds; getting one returns `None`.
pub trait MapStore {
    fn put_service(&mut self, key: &SvcKey, value: &SvcValue) -> Result<(), StoreError>;
    fn delete_service(&mut self, key: &SvcKey) -> Result<(), StoreError>;
    fn get_service(&self, key: &SvcKey) -> Result<Option<SvcValue>, StoreError>;
    fn list_services(&self, family: Family) -> Result<Vec<(SvcKey, SvcValue)>, StoreError>;

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError>;
    fn delete_backend(&mut self, family: Family, id: u32) -> Result<(), StoreError>;
    fn get_backend(&self, family: Family, id: u32) -> Result<Option<BackendValue>, StoreError>;
    fn list_backends(&self, family: Family) -> Result<Vec<(u32, BackendValue)>, StoreError>;

    fn put_revnat(&mut self, service_id: u32, value: &RevNatValue) -> Result<(), StoreError>;
    fn delete_revnat(&mut self, family: Family, service_id: u32) -> Result<(), StoreError>;
    fn get_revnat(
        &self,
        family: Family,
        service_id: u32,
    ) -> Result<Option<RevNatValue>, StoreError>;
    fn list_revnat(&self, family: Family) -> Result<Vec<(u32, RevNatValue)>, StoreError>;

    /// The backend and service ids that live conntrack entries (both families, both
    /// tables, both directions) name: what garbage collection must keep. One pass over
    /// each conntrack map.
    fn conntrack_references(&self) -> Result<CtReferences, StoreError>;

    /// kube-proxy's UDP conntrack clean-up, for the non-TCP conntrack map of `family`:
    /// deletes the entries (both directions) whose `service_id` is a key of `serving` and
    /// whose `backend_id` is not in that key's set. One pass; returns how many went.
    fn flush_udp_conntrack(
        &mut self,
        family: Family,
        serving: &BTreeMap<u32, BTreeSet<u32>>,
    ) -> Result<usize, StoreError>;

    /// The id floors persisted in the meta map: (next service id, next backend id),
    /// 0 when never written.
    fn get_next_ids(&self) -> Result<(u32, u32), StoreError>;
    fn put_next_ids(
        &mut self,
        next_service_id: u32,
        next_backend_id: u32,
    ) -> Result<(), StoreError>;

    /// ClusterIP addresses (VIP maps): every address a ClusterIP frontend is programmed on.
    fn put_vip(&mut self, addr: IpAddr, value: &VipValue) -> Result<(), StoreError>;
    fn delete_vip(&mut self, addr: IpAddr) -> Result<(), StoreError>;
    fn list_vips(&self, family: Family) -> Result<Vec<(IpAddr, VipValue)>, StoreError>;

    /// Service CIDRs (LPM tries).
    fn put_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError>;
    fn delete_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError>;
    fn list_service_cidrs(&self, family: Family) -> Result<Vec<Cidr>, StoreError>;

    /// Membership map (sessionAffinity): (service id, backend id) of every backend in a
    /// frontend's slots.
    fn put_member(&mut self, key: &MemberKey, value: &MemberValue) -> Result<(), StoreError>;
    fn delete_member(&mut self, key: &MemberKey) -> Result<(), StoreError>;
    fn list_members(&self) -> Result<Vec<(MemberKey, MemberValue)>, StoreError>;

    /// Bulk mode, for full syncs: until `end_bulk` the store may answer reads from a
    /// snapshot taken here and queue writes, replayed in call order by `end_bulk` (or
    /// earlier) with batch syscalls. A write that cannot fit is still refused at once
    /// (`StoreError::Full`). Only the daemon writes these maps, so the snapshot stays
    /// true. Default: nothing (every call goes to the store at once).
    fn begin_bulk(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ends bulk mode: every queued write is made; the first write error is returned.
    fn end_bulk(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Names map (`SLB_SVCNAME_V1`): which Service each service id was programmed for.
    fn put_name(&mut self, service_id: u32, value: &SvcName) -> Result<(), StoreError>;
    fn delete_name(&mut self, service_id: u32) -> Result<(), StoreError>;
    fn get_name(&self, service_id: u32) -> Result<Option<SvcName>, StoreError>;
    fn list_names(&self) -> Result<Vec<(u32, SvcName)>, StoreError>;

    /// Maglev map (`SLB_MAGLEV_V1`): a frontend's table, `slots.len()` entries (the table
    /// size) of backend ids.
    fn put_maglev(&mut self, key: &MaglevKey, slots: &[u32]) -> Result<(), StoreError>;
    fn delete_maglev(&mut self, key: &MaglevKey) -> Result<(), StoreError>;
    /// The stored table's first `size` slots.
    fn get_maglev(&self, key: &MaglevKey) -> Result<Option<Vec<u32>>, StoreError>;
    /// Source-range tries (`SLB_SRCRNG4_V1` / `SLB_SRCRNG6_V1`): the clients allowed to
    /// open flows through the frontend of `service_id` (loadBalancerSourceRanges).
    fn put_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError>;
    fn delete_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError>;
    fn list_source_ranges(&self, family: Family) -> Result<Vec<(u32, Cidr)>, StoreError>;

    /// `SLB_NODEADDR_V1`: this node's address per family, the source of SNATed flows.
    fn put_node_addresses(&mut self, addrs: &NodeAddresses) -> Result<(), StoreError>;
    fn get_node_addresses(&self) -> Result<NodeAddresses, StoreError>;
}

/// This node's SNAT source address of each family (`None`: SNAT flows of that family are
/// dropped by the programs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl NodeAddresses {
    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.v4.map(IpAddr::V4),
            Family::V6 => self.v6.map(IpAddr::V6),
        }
    }
}

/// What live conntrack entries name (see `MapStore::conntrack_references`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtReferences {
    pub backend_ids: BTreeSet<u32>,
    pub service_ids: BTreeSet<u32>,
}
