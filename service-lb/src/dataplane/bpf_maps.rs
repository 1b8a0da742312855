//! `MapStore` on the kernel maps, opened from their pins (works with or without a loaded
//! object: `Dataplane::open` pins every map), plus the read-only dumps `inspect` needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{lpm_trie, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use service_lb_common::{
    affinity::{Affinity4Key, Affinity6Key, AffinityValue, MemberKey, MemberValue},
    counters::counter_index,
    maglev::{MaglevKey, MaglevTable, MAGLEV_TABLE_MAX},
    maps,
    northsouth::{
        NodeAddrs, SrcRange4Data, SrcRange4Key, SrcRange6Data, SrcRange6Key, NODEADDR_HAS_V4,
        NODEADDR_HAS_V6, SRC_RANGE_ALLOWED, SRC_RANGE_PREFIX_BITS,
    },
    vip::SERVICE_CIDR_ALLOCATED,
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, Hook, Meta, Reason, RevNat4, RevNat6,
    Svc4Key, Svc6Key, SvcName, SvcValue, VipValue,
};
use tracing::error;

use super::{
    batch,
    bulk::{BulkMaps, Kind, Shadow, Table},
    clock,
    error::DataplaneError,
    loader::Dataplane,
    maps::{
        BackendValue, CtReferences, Family, MapStore, NodeAddresses, RevNatValue, StoreError,
        StoreOp, SvcKey,
    },
    pin,
    vips::Cidr,
};

type Hash<K, V> = HashMap<MapData, K, V>;
type Trie<K> = LpmTrie<MapData, K, u32>;

/// The pinned maps of a data plane.
pub struct BpfMaps {
    svc4: Hash<Svc4Key, SvcValue>,
    svc6: Hash<Svc6Key, SvcValue>,
    be4: Hash<u32, Backend4>,
    be6: Hash<u32, Backend6>,
    rn4: Hash<u32, RevNat4>,
    rn6: Hash<u32, RevNat6>,
    ct4_tcp: Hash<CtKey4, CtEntry>,
    ct4_any: Hash<CtKey4, CtEntry>,
    ct6_tcp: Hash<CtKey6, CtEntry>,
    ct6_any: Hash<CtKey6, CtEntry>,
    counters: PerCpuArray<MapData, Counter>,
    meta: Array<MapData, Meta>,
    vip4: Hash<[u8; 4], VipValue>,
    vip6: Hash<[u8; 16], VipValue>,
    scidr4: Trie<[u8; 4]>,
    scidr6: Trie<[u8; 16]>,
    aff4: Hash<Affinity4Key, AffinityValue>,
    aff6: Hash<Affinity6Key, AffinityValue>,
    members: Hash<MemberKey, MemberValue>,
    /// `None` when the pins predate the names map (read as "no names").
    names: Option<Hash<u32, SvcName>>,
    /// `None` when the pins predate the Maglev map (read as "no tables").
    maglev: Option<Hash<MaglevKey, MaglevTable>>,
    /// Bulk mode (full syncs): shadows of the control-plane maps, queued writes.
    bulk: Option<Box<BulkMaps>>,
    /// `None` when the pins predate the north-south maps (read as empty; writes fail).
    north_south: Option<NorthSouthMaps>,
}

/// The source-range tries and the node-address map.
struct NorthSouthMaps {
    src4: LpmTrie<MapData, SrcRange4Data, u32>,
    src6: LpmTrie<MapData, SrcRange6Data, u32>,
    node: Array<MapData, NodeAddrs>,
}

impl NorthSouthMaps {
    fn open(bpffs: &Path) -> Result<Option<Self>, DataplaneError> {
        if !pin::map_pin_path(bpffs, maps::NODE_ADDRS).exists() {
            return Ok(None);
        }
        let trie = |name: &'static str| open_map(bpffs, name);
        Ok(Some(Self {
            src4: LpmTrie::try_from(trie(maps::SRC_RANGES4)?)
                .map_err(|e| DataplaneError::map(maps::SRC_RANGES4, e))?,
            src6: LpmTrie::try_from(trie(maps::SRC_RANGES6)?)
                .map_err(|e| DataplaneError::map(maps::SRC_RANGES6, e))?,
            node: Array::try_from(open_map(bpffs, maps::NODE_ADDRS)?)
                .map_err(|e| DataplaneError::map(maps::NODE_ADDRS, e))?,
        }))
    }
}

/// One sessionAffinity entry (`inspect affinity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityRecord {
    pub client: IpAddr,
    pub service_id: u32,
    pub backend_id: u32,
    pub last_used_ns: u64,
}

fn open_map(bpffs: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let path = pin::map_pin_path(bpffs, name);
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::map(name, e))?;
    Map::from_map_data(data).map_err(|e| DataplaneError::map(name, e))
}

pub(crate) fn open_hash<K: aya::Pod, V: aya::Pod>(
    bpffs: &Path,
    name: &'static str,
) -> Result<Hash<K, V>, DataplaneError> {
    HashMap::try_from(open_map(bpffs, name)?).map_err(|e| DataplaneError::map(name, e))
}

impl BpfMaps {
    /// Opens every map from its pin under `<bpffs>/maps` (no program load needed).
    pub fn open_pinned(bpffs: &Path) -> Result<Self, DataplaneError> {
        Ok(Self {
            svc4: open_hash(bpffs, maps::SERVICES4)?,
            svc6: open_hash(bpffs, maps::SERVICES6)?,
            be4: open_hash(bpffs, maps::BACKENDS4)?,
            be6: open_hash(bpffs, maps::BACKENDS6)?,
            rn4: open_hash(bpffs, maps::REVNAT4)?,
            rn6: open_hash(bpffs, maps::REVNAT6)?,
            ct4_tcp: open_hash(bpffs, maps::CT4_TCP)?,
            ct4_any: open_hash(bpffs, maps::CT4_ANY)?,
            ct6_tcp: open_hash(bpffs, maps::CT6_TCP)?,
            ct6_any: open_hash(bpffs, maps::CT6_ANY)?,
            counters: PerCpuArray::try_from(open_map(bpffs, maps::COUNTERS)?)
                .map_err(|e| DataplaneError::map(maps::COUNTERS, e))?,
            meta: Array::try_from(open_map(bpffs, maps::META)?)
                .map_err(|e| DataplaneError::map(maps::META, e))?,
            vip4: open_hash(bpffs, maps::VIPS4)?,
            vip6: open_hash(bpffs, maps::VIPS6)?,
            scidr4: LpmTrie::try_from(open_map(bpffs, maps::SERVICE_CIDRS4)?)
                .map_err(|e| DataplaneError::map(maps::SERVICE_CIDRS4, e))?,
            scidr6: LpmTrie::try_from(open_map(bpffs, maps::SERVICE_CIDRS6)?)
                .map_err(|e| DataplaneError::map(maps::SERVICE_CIDRS6, e))?,
            aff4: open_hash(bpffs, maps::AFFINITY4)?,
            aff6: open_hash(bpffs, maps::AFFINITY6)?,
            members: open_hash(bpffs, maps::MEMBERS)?,
            names: if pin::map_pin_path(bpffs, maps::SERVICE_NAMES).exists() {
                Some(open_hash(bpffs, maps::SERVICE_NAMES)?)
            } else {
                None
            },
            maglev: if pin::map_pin_path(bpffs, maps::MAGLEV).exists() {
                Some(open_hash(bpffs, maps::MAGLEV)?)
            } else {
                None
            },
            bulk: None,
            north_south: NorthSouthMaps::open(bpffs)?,
        })
    }

    fn north_south_mut(&mut self, map: &'static str) -> Result<&mut NorthSouthMaps, StoreError> {
        self.north_south.as_mut().ok_or_else(|| StoreError::Failed {
            map,
            op: StoreOp::Put,
            source: "the map is not pinned (a data plane older than the north-south maps: \
                     restart the daemon of this version to create it)"
                .into(),
        })
    }

    /// Writes out every queued write of bulk mode (in order); keeps the first error.
    fn write_queued(&mut self) {
        let Some(b) = self.bulk.as_deref_mut() else {
            return;
        };
        for (table, kind, n) in b.journal.take() {
            let result = match table {
                Table::Svc4 => b.svc4.write(&mut self.svc4, maps::SERVICES4, kind, n),
                Table::Svc6 => b.svc6.write(&mut self.svc6, maps::SERVICES6, kind, n),
                Table::Be4 => b.be4.write(&mut self.be4, maps::BACKENDS4, kind, n),
                Table::Be6 => b.be6.write(&mut self.be6, maps::BACKENDS6, kind, n),
                Table::Rn4 => b.rn4.write(&mut self.rn4, maps::REVNAT4, kind, n),
                Table::Rn6 => b.rn6.write(&mut self.rn6, maps::REVNAT6, kind, n),
                Table::Vip4 => b.vip4.write(&mut self.vip4, maps::VIPS4, kind, n),
                Table::Vip6 => b.vip6.write(&mut self.vip6, maps::VIPS6, kind, n),
                Table::Members => b.members.write(&mut self.members, maps::MEMBERS, kind, n),
                Table::Names => match (b.names.as_mut(), self.names.as_mut()) {
                    (Some(shadow), Some(map)) => shadow.write(map, maps::SERVICE_NAMES, kind, n),
                    _ => Ok(()),
                },
            };
            if let Err(e) = result {
                error!(error = %e, "writing queued map updates");
                b.error.get_or_insert(e);
            }
        }
    }

    /// After a queued write: writes the queue out when it is long.
    fn queued(&mut self, table: Table, kind: Kind) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            b.journal.note(table, kind);
            if b.journal.is_large() {
                self.write_queued();
            }
        }
        Ok(())
    }

    fn names_mut(&mut self) -> Result<&mut Hash<u32, SvcName>, StoreError> {
        self.names.as_mut().ok_or_else(|| StoreError::Failed {
            map: maps::SERVICE_NAMES,
            op: StoreOp::Put,
            source: "the map is not pinned (a data plane older than the names map: restart \
                     the daemon of this version to create it)"
                .into(),
        })
    }

    /// The maps of a loaded data plane (the same kernel maps, through their pins).
    pub fn of(dataplane: &Dataplane) -> Result<Self, DataplaneError> {
        Self::open_pinned(dataplane.bpffs())
    }

    /// `Meta.layout_version` as stored.
    pub fn layout_version(&self) -> Result<u32, DataplaneError> {
        self.meta
            .get(&0, 0)
            .map(|m| m.layout_version)
            .map_err(|e| DataplaneError::map(maps::META, e))
    }

    /// Every conntrack entry of the four maps.
    pub fn conntrack(&self) -> Result<Vec<CtRecord>, DataplaneError> {
        let mut out = Vec::new();
        for (map, name, table) in [
            (&self.ct4_tcp, maps::CT4_TCP, CtTable::Tcp),
            (&self.ct4_any, maps::CT4_ANY, CtTable::Any),
        ] {
            for (k, entry) in list(map, name)? {
                out.push(CtRecord {
                    table,
                    saddr: Ipv4Addr::from(k.saddr).into(),
                    daddr: Ipv4Addr::from(k.daddr).into(),
                    sport: u16::from_be(k.sport_be),
                    dport: u16::from_be(k.dport_be),
                    proto: k.proto,
                    dir: k.dir,
                    entry,
                });
            }
        }
        for (map, name, table) in [
            (&self.ct6_tcp, maps::CT6_TCP, CtTable::Tcp),
            (&self.ct6_any, maps::CT6_ANY, CtTable::Any),
        ] {
            for (k, entry) in list(map, name)? {
                out.push(CtRecord {
                    table,
                    saddr: Ipv6Addr::from(k.saddr).into(),
                    daddr: Ipv6Addr::from(k.daddr).into(),
                    sport: u16::from_be(k.sport_be),
                    dport: u16::from_be(k.dport_be),
                    proto: k.proto,
                    dir: k.dir,
                    entry,
                });
            }
        }
        Ok(out)
    }

    /// Entries of the four conntrack maps (TCP v4, other v4, TCP v6, other v6), counted by
    /// walking their keys only (no value is read): the metrics sampler's timer, never a
    /// scrape.
    pub fn conntrack_lens(&self) -> Result<[usize; 4], DataplaneError> {
        fn keys<K: aya::Pod>(
            map: &Hash<K, CtEntry>,
            name: &'static str,
        ) -> Result<usize, DataplaneError> {
            let mut n = 0;
            for key in map.keys() {
                match key {
                    Ok(_) => n += 1,
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(DataplaneError::map(name, e)),
                }
            }
            Ok(n)
        }
        Ok([
            keys(&self.ct4_tcp, maps::CT4_TCP)?,
            keys(&self.ct4_any, maps::CT4_ANY)?,
            keys(&self.ct6_tcp, maps::CT6_TCP)?,
            keys(&self.ct6_any, maps::CT6_ANY)?,
        ])
    }

    /// Every entry of both affinity maps.
    pub fn affinity(&self) -> Result<Vec<AffinityRecord>, DataplaneError> {
        let mut out = Vec::new();
        for (k, v) in list(&self.aff4, maps::AFFINITY4)? {
            out.push(AffinityRecord {
                client: Ipv4Addr::from(k.client).into(),
                service_id: k.service_id,
                backend_id: v.backend_id,
                last_used_ns: v.last_used_ns,
            });
        }
        for (k, v) in list(&self.aff6, maps::AFFINITY6)? {
            out.push(AffinityRecord {
                client: Ipv6Addr::from(k.client).into(),
                service_id: k.service_id,
                backend_id: v.backend_id,
                last_used_ns: v.last_used_ns,
            });
        }
        Ok(out)
    }

    /// Every (hook, reason) counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<CounterTotal>, DataplaneError> {
        let mut out = Vec::new();
        for hook in Hook::ALL {
            for reason in Reason::ALL {
                let per_cpu = self
                    .counters
                    .get(&counter_index(hook, reason), 0)
                    .map_err(|e| DataplaneError::map(maps::COUNTERS, e))?;
                let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), c| {
                    (p.saturating_add(c.packets), b.saturating_add(c.bytes))
                });
                out.push(CounterTotal {
                    hook,
                    reason,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }
}

/// Which conntrack map an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CtTable {
    Tcp,
    Any,
}

/// One conntrack entry, decoded (ports in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtRecord {
    pub table: CtTable,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub entry: CtEntry,
}

/// One counter summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterTotal {
    pub hook: Hook,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

pub(super) fn failed(map: &'static str, op: StoreOp, e: MapError) -> StoreError {
    StoreError::Failed {
        map,
        op,
        source: Box::new(e),
    }
}

pub(super) fn is_full(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(s) => {
            matches!(
                s.io_error.raw_os_error(),
                Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
            )
        }
        _ => false,
    }
}

pub(super) fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

pub(super) fn put<K: aya::Pod, V: aya::Pod>(
    map: &mut Hash<K, V>,
    name: &'static str,
    k: &K,
    v: &V,
) -> Result<(), StoreError> {
    map.insert(k, v, 0).map_err(|e| {
        if is_full(&e) {
            StoreError::Full { map: name }
        } else {
            failed(name, StoreOp::Put, e)
        }
    })
}

pub(super) fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut Hash<K, V>,
    name: &'static str,
    k: &K,
) -> Result<(), StoreError> {
    match map.remove(k) {
        Err(e) if !is_missing(&e) => Err(failed(name, StoreOp::Delete, e)),
        _ => Ok(()),
    }
}

fn get<K: aya::Pod, V: aya::Pod>(
    map: &Hash<K, V>,
    name: &'static str,
    k: &K,
) -> Result<Option<V>, StoreError> {
    match map.get(k, 0) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(failed(name, StoreOp::Get, e)),
    }
}

/// All entries: batch lookups (a few syscalls for the whole map), or where the kernel
/// has none for the map, a walk (an entry deleted between the key walk and its lookup is
/// skipped).
pub(super) fn list<K: aya::Pod, V: aya::Pod>(
    map: &Hash<K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, StoreError> {
    match batch::lookup_all(map) {
        Ok(entries) => return Ok(entries),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
        Err(e) => {
            return Err(StoreError::Failed {
                map: name,
                op: StoreOp::List,
                source: Box::new(e),
            })
        }
    }
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(failed(name, StoreOp::List, e)),
        }
    }
    Ok(out)
}

/// Adds what the live entries of `map` name to `refs`.
fn collect_references<K: aya::Pod>(
    map: &Hash<K, CtEntry>,
    name: &'static str,
    now: u64,
    refs: &mut CtReferences,
) -> Result<(), StoreError> {
    for (_, entry) in list(map, name)? {
        if entry.expires_ns > now {
            if entry.backend_id != 0 {
                refs.backend_ids.insert(entry.backend_id);
            }
            if entry.service_id != 0 {
                refs.service_ids.insert(entry.service_id);
            }
        }
    }
    Ok(())
}

/// Deletes, in one pass over `map`, the entries of a frontend in `serving` whose backend
/// is not in its set.
fn flush_not_serving<K: aya::Pod>(
    map: &mut Hash<K, CtEntry>,
    name: &'static str,
    serving: &BTreeMap<u32, BTreeSet<u32>>,
) -> Result<usize, StoreError> {
    let doomed: Vec<K> = list(map, name)?
        .into_iter()
        .filter(|(_, e)| {
            serving
                .get(&e.service_id)
                .is_some_and(|set| !set.contains(&e.backend_id))
        })
        .map(|(k, _)| k)
        .collect();
    for k in &doomed {
        delete(map, name, k)?;
    }
    Ok(doomed.len())
}

impl MapStore for BpfMaps {
    fn begin_bulk(&mut self) -> Result<(), StoreError> {
        if self.bulk.is_some() {
            return Ok(());
        }
        self.bulk = Some(Box::new(BulkMaps {
            svc4: Shadow::load(&self.svc4, maps::SERVICES4)?,
            svc6: Shadow::load(&self.svc6, maps::SERVICES6)?,
            be4: Shadow::load(&self.be4, maps::BACKENDS4)?,
            be6: Shadow::load(&self.be6, maps::BACKENDS6)?,
            rn4: Shadow::load(&self.rn4, maps::REVNAT4)?,
            rn6: Shadow::load(&self.rn6, maps::REVNAT6)?,
            vip4: Shadow::load(&self.vip4, maps::VIPS4)?,
            vip6: Shadow::load(&self.vip6, maps::VIPS6)?,
            members: Shadow::load(&self.members, maps::MEMBERS)?,
            names: match &self.names {
                Some(names) => Some(Shadow::load(names, maps::SERVICE_NAMES)?),
                None => None,
            },
            journal: Default::default(),
            error: None,
        }));
        Ok(())
    }

    fn end_bulk(&mut self) -> Result<(), StoreError> {
        self.write_queued();
        match self.bulk.take() {
            Some(b) => b.error.map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    fn put_service(&mut self, key: &SvcKey, value: &SvcValue) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let table = match key {
                SvcKey::V4(k) => {
                    b.svc4.put(*k, *value, maps::SERVICES4)?;
                    Table::Svc4
                }
                SvcKey::V6(k) => {
                    b.svc6.put(*k, *value, maps::SERVICES6)?;
                    Table::Svc6
                }
            };
            return self.queued(table, Kind::Put);
        }
        match key {
            SvcKey::V4(k) => put(&mut self.svc4, maps::SERVICES4, k, value),
            SvcKey::V6(k) => put(&mut self.svc6, maps::SERVICES6, k, value),
        }
    }

    fn delete_service(&mut self, key: &SvcKey) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let queued = match key {
                SvcKey::V4(k) => b.svc4.delete(*k).then_some(Table::Svc4),
                SvcKey::V6(k) => b.svc6.delete(*k).then_some(Table::Svc6),
            };
            return queued.map_or(Ok(()), |t| self.queued(t, Kind::Delete));
        }
        match key {
            SvcKey::V4(k) => delete(&mut self.svc4, maps::SERVICES4, k),
            SvcKey::V6(k) => delete(&mut self.svc6, maps::SERVICES6, k),
        }
    }

    fn get_service(&self, key: &SvcKey) -> Result<Option<SvcValue>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match key {
                SvcKey::V4(k) => b.svc4.get(k),
                SvcKey::V6(k) => b.svc6.get(k),
            });
        }
        match key {
            SvcKey::V4(k) => get(&self.svc4, maps::SERVICES4, k),
            SvcKey::V6(k) => get(&self.svc6, maps::SERVICES6, k),
        }
    }

    fn list_services(&self, family: Family) -> Result<Vec<(SvcKey, SvcValue)>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b.svc4.entries().map(|(k, v)| (SvcKey::V4(k), v)).collect(),
                Family::V6 => b.svc6.entries().map(|(k, v)| (SvcKey::V6(k), v)).collect(),
            });
        }
        Ok(match family {
            Family::V4 => list(&self.svc4, maps::SERVICES4)?
                .into_iter()
                .map(|(k, v)| (SvcKey::V4(k), v))
                .collect(),
            Family::V6 => list(&self.svc6, maps::SERVICES6)?
                .into_iter()
                .map(|(k, v)| (SvcKey::V6(k), v))
                .collect(),
        })
    }

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let table = match value {
                BackendValue::V4(v) => {
                    b.be4.put(id, *v, maps::BACKENDS4)?;
                    Table::Be4
                }
                BackendValue::V6(v) => {
                    b.be6.put(id, *v, maps::BACKENDS6)?;
                    Table::Be6
                }
            };
            return self.queued(table, Kind::Put);
        }
        match value {
            BackendValue::V4(v) => put(&mut self.be4, maps::BACKENDS4, &id, v),
            BackendValue::V6(v) => put(&mut self.be6, maps::BACKENDS6, &id, v),
        }
    }

    fn delete_backend(&mut self, family: Family, id: u32) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let queued = match family {
                Family::V4 => b.be4.delete(id).then_some(Table::Be4),
                Family::V6 => b.be6.delete(id).then_some(Table::Be6),
            };
            return queued.map_or(Ok(()), |t| self.queued(t, Kind::Delete));
        }
        match family {
            Family::V4 => delete(&mut self.be4, maps::BACKENDS4, &id),
            Family::V6 => delete(&mut self.be6, maps::BACKENDS6, &id),
        }
    }

    fn get_backend(&self, family: Family, id: u32) -> Result<Option<BackendValue>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b.be4.get(&id).map(BackendValue::V4),
                Family::V6 => b.be6.get(&id).map(BackendValue::V6),
            });
        }
        Ok(match family {
            Family::V4 => get(&self.be4, maps::BACKENDS4, &id)?.map(BackendValue::V4),
            Family::V6 => get(&self.be6, maps::BACKENDS6, &id)?.map(BackendValue::V6),
        })
    }

    fn list_backends(&self, family: Family) -> Result<Vec<(u32, BackendValue)>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b
                    .be4
                    .entries()
                    .map(|(k, v)| (k, BackendValue::V4(v)))
                    .collect(),
                Family::V6 => b
                    .be6
                    .entries()
                    .map(|(k, v)| (k, BackendValue::V6(v)))
                    .collect(),
            });
        }
        Ok(match family {
            Family::V4 => list(&self.be4, maps::BACKENDS4)?
                .into_iter()
                .map(|(k, v)| (k, BackendValue::V4(v)))
                .collect(),
            Family::V6 => list(&self.be6, maps::BACKENDS6)?
                .into_iter()
                .map(|(k, v)| (k, BackendValue::V6(v)))
                .collect(),
        })
    }

    fn put_revnat(&mut self, service_id: u32, value: &RevNatValue) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let table = match value {
                RevNatValue::V4(v) => {
                    b.rn4.put(service_id, *v, maps::REVNAT4)?;
                    Table::Rn4
                }
                RevNatValue::V6(v) => {
                    b.rn6.put(service_id, *v, maps::REVNAT6)?;
                    Table::Rn6
                }
            };
            return self.queued(table, Kind::Put);
        }
        match value {
            RevNatValue::V4(v) => put(&mut self.rn4, maps::REVNAT4, &service_id, v),
            RevNatValue::V6(v) => put(&mut self.rn6, maps::REVNAT6, &service_id, v),
        }
    }

    fn delete_revnat(&mut self, family: Family, service_id: u32) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let queued = match family {
                Family::V4 => b.rn4.delete(service_id).then_some(Table::Rn4),
                Family::V6 => b.rn6.delete(service_id).then_some(Table::Rn6),
            };
            return queued.map_or(Ok(()), |t| self.queued(t, Kind::Delete));
        }
        match family {
            Family::V4 => delete(&mut self.rn4, maps::REVNAT4, &service_id),
            Family::V6 => delete(&mut self.rn6, maps::REVNAT6, &service_id),
        }
    }

    fn get_revnat(
        &self,
        family: Family,
        service_id: u32,
    ) -> Result<Option<RevNatValue>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b.rn4.get(&service_id).map(RevNatValue::V4),
                Family::V6 => b.rn6.get(&service_id).map(RevNatValue::V6),
            });
        }
        Ok(match family {
            Family::V4 => get(&self.rn4, maps::REVNAT4, &service_id)?.map(RevNatValue::V4),
            Family::V6 => get(&self.rn6, maps::REVNAT6, &service_id)?.map(RevNatValue::V6),
        })
    }

    fn list_revnat(&self, family: Family) -> Result<Vec<(u32, RevNatValue)>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b
                    .rn4
                    .entries()
                    .map(|(k, v)| (k, RevNatValue::V4(v)))
                    .collect(),
                Family::V6 => b
                    .rn6
                    .entries()
                    .map(|(k, v)| (k, RevNatValue::V6(v)))
                    .collect(),
            });
        }
        Ok(match family {
            Family::V4 => list(&self.rn4, maps::REVNAT4)?
                .into_iter()
                .map(|(k, v)| (k, RevNatValue::V4(v)))
                .collect(),
            Family::V6 => list(&self.rn6, maps::REVNAT6)?
                .into_iter()
                .map(|(k, v)| (k, RevNatValue::V6(v)))
                .collect(),
        })
    }

    fn conntrack_references(&self) -> Result<CtReferences, StoreError> {
        let now = clock::now_for(maps::CT4_TCP)?;
        let mut refs = CtReferences::default();
        collect_references(&self.ct4_tcp, maps::CT4_TCP, now, &mut refs)?;
        collect_references(&self.ct4_any, maps::CT4_ANY, now, &mut refs)?;
        collect_references(&self.ct6_tcp, maps::CT6_TCP, now, &mut refs)?;
        collect_references(&self.ct6_any, maps::CT6_ANY, now, &mut refs)?;
        Ok(refs)
    }

    fn flush_udp_conntrack(
        &mut self,
        family: Family,
        serving: &BTreeMap<u32, BTreeSet<u32>>,
    ) -> Result<usize, StoreError> {
        if serving.is_empty() {
            return Ok(0);
        }
        match family {
            Family::V4 => flush_not_serving(&mut self.ct4_any, maps::CT4_ANY, serving),
            Family::V6 => flush_not_serving(&mut self.ct6_any, maps::CT6_ANY, serving),
        }
    }

    fn get_next_ids(&self) -> Result<(u32, u32), StoreError> {
        let meta = self
            .meta
            .get(&0, 0)
            .map_err(|e| failed(maps::META, StoreOp::Get, e))?;
        Ok((meta.next_service_id, meta.next_backend_id))
    }

    fn put_next_ids(
        &mut self,
        next_service_id: u32,
        next_backend_id: u32,
    ) -> Result<(), StoreError> {
        let mut meta = self
            .meta
            .get(&0, 0)
            .map_err(|e| failed(maps::META, StoreOp::Get, e))?;
        meta.next_service_id = next_service_id;
        meta.next_backend_id = next_backend_id;
        self.meta
            .set(0, meta, 0)
            .map_err(|e| failed(maps::META, StoreOp::Put, e))
    }

    fn put_vip(&mut self, addr: IpAddr, value: &VipValue) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let table = match addr {
                IpAddr::V4(a) => {
                    b.vip4.put(a.octets(), *value, maps::VIPS4)?;
                    Table::Vip4
                }
                IpAddr::V6(a) => {
                    b.vip6.put(a.octets(), *value, maps::VIPS6)?;
                    Table::Vip6
                }
            };
            return self.queued(table, Kind::Put);
        }
        match addr {
            IpAddr::V4(a) => put(&mut self.vip4, maps::VIPS4, &a.octets(), value),
            IpAddr::V6(a) => put(&mut self.vip6, maps::VIPS6, &a.octets(), value),
        }
    }

    fn delete_vip(&mut self, addr: IpAddr) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            let queued = match addr {
                IpAddr::V4(a) => b.vip4.delete(a.octets()).then_some(Table::Vip4),
                IpAddr::V6(a) => b.vip6.delete(a.octets()).then_some(Table::Vip6),
            };
            return queued.map_or(Ok(()), |t| self.queued(t, Kind::Delete));
        }
        match addr {
            IpAddr::V4(a) => delete(&mut self.vip4, maps::VIPS4, &a.octets()),
            IpAddr::V6(a) => delete(&mut self.vip6, maps::VIPS6, &a.octets()),
        }
    }

    fn list_vips(&self, family: Family) -> Result<Vec<(IpAddr, VipValue)>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(match family {
                Family::V4 => b
                    .vip4
                    .entries()
                    .map(|(a, v)| (Ipv4Addr::from(a).into(), v))
                    .collect(),
                Family::V6 => b
                    .vip6
                    .entries()
                    .map(|(a, v)| (Ipv6Addr::from(a).into(), v))
                    .collect(),
            });
        }
        Ok(match family {
            Family::V4 => list(&self.vip4, maps::VIPS4)?
                .into_iter()
                .map(|(a, v)| (Ipv4Addr::from(a).into(), v))
                .collect(),
            Family::V6 => list(&self.vip6, maps::VIPS6)?
                .into_iter()
                .map(|(a, v)| (Ipv6Addr::from(a).into(), v))
                .collect(),
        })
    }

    fn put_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError> {
        let len = u32::from(cidr.prefix_len());
        let full = |e: MapError, name| {
            if is_full(&e) {
                StoreError::Full { map: name }
            } else {
                failed(name, StoreOp::Put, e)
            }
        };
        match cidr.addr() {
            IpAddr::V4(a) => self
                .scidr4
                .insert(
                    &lpm_trie::Key::new(len, a.octets()),
                    SERVICE_CIDR_ALLOCATED,
                    0,
                )
                .map_err(|e| full(e, maps::SERVICE_CIDRS4)),
            IpAddr::V6(a) => self
                .scidr6
                .insert(
                    &lpm_trie::Key::new(len, a.octets()),
                    SERVICE_CIDR_ALLOCATED,
                    0,
                )
                .map_err(|e| full(e, maps::SERVICE_CIDRS6)),
        }
    }

    fn delete_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError> {
        let len = u32::from(cidr.prefix_len());
        let (result, name) = match cidr.addr() {
            IpAddr::V4(a) => (
                self.scidr4.remove(&lpm_trie::Key::new(len, a.octets())),
                maps::SERVICE_CIDRS4,
            ),
            IpAddr::V6(a) => (
                self.scidr6.remove(&lpm_trie::Key::new(len, a.octets())),
                maps::SERVICE_CIDRS6,
            ),
        };
        match result {
            Err(e) if !is_missing(&e) => Err(failed(name, StoreOp::Delete, e)),
            _ => Ok(()),
        }
    }

    fn list_service_cidrs(&self, family: Family) -> Result<Vec<Cidr>, StoreError> {
        fn walk<K: aya::Pod, A: Into<IpAddr>>(
            trie: &Trie<K>,
            name: &'static str,
            to_addr: impl Fn(K) -> A,
        ) -> Result<Vec<Cidr>, StoreError> {
            let mut out = Vec::new();
            for item in trie.keys() {
                match item {
                    Ok(key) => {
                        let len = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
                        if let Some(cidr) = Cidr::new(to_addr(key.data()).into(), len) {
                            out.push(cidr);
                        }
                    }
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(failed(name, StoreOp::List, e)),
                }
            }
            Ok(out)
        }
        match family {
            Family::V4 => walk(&self.scidr4, maps::SERVICE_CIDRS4, Ipv4Addr::from),
            Family::V6 => walk(&self.scidr6, maps::SERVICE_CIDRS6, Ipv6Addr::from),
        }
    }

    fn put_member(&mut self, key: &MemberKey, value: &MemberValue) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            b.members.put(*key, *value, maps::MEMBERS)?;
            return self.queued(Table::Members, Kind::Put);
        }
        put(&mut self.members, maps::MEMBERS, key, value)
    }

    fn delete_member(&mut self, key: &MemberKey) -> Result<(), StoreError> {
        if let Some(b) = self.bulk.as_deref_mut() {
            if b.members.delete(*key) {
                return self.queued(Table::Members, Kind::Delete);
            }
            return Ok(());
        }
        delete(&mut self.members, maps::MEMBERS, key)
    }

    fn list_members(&self) -> Result<Vec<(MemberKey, MemberValue)>, StoreError> {
        if let Some(b) = self.bulk.as_deref() {
            return Ok(b.members.entries().collect());
        }
        list(&self.members, maps::MEMBERS)
    }

    fn put_name(&mut self, service_id: u32, value: &SvcName) -> Result<(), StoreError> {
        if let Some(shadow) = self.bulk.as_deref_mut().and_then(|b| b.names.as_mut()) {
            shadow.put(service_id, *value, maps::SERVICE_NAMES)?;
            return self.queued(Table::Names, Kind::Put);
        }
        put(self.names_mut()?, maps::SERVICE_NAMES, &service_id, value)
    }

    fn delete_name(&mut self, service_id: u32) -> Result<(), StoreError> {
        if let Some(shadow) = self.bulk.as_deref_mut().and_then(|b| b.names.as_mut()) {
            if shadow.delete(service_id) {
                return self.queued(Table::Names, Kind::Delete);
            }
            return Ok(());
        }
        match &mut self.names {
            Some(names) => delete(names, maps::SERVICE_NAMES, &service_id),
            None => Ok(()),
        }
    }

    fn get_name(&self, service_id: u32) -> Result<Option<SvcName>, StoreError> {
        if let Some(shadow) = self.bulk.as_deref().and_then(|b| b.names.as_ref()) {
            return Ok(shadow.get(&service_id));
        }
        match &self.names {
            Some(names) => get(names, maps::SERVICE_NAMES, &service_id),
            None => Ok(None),
        }
    }

    fn list_names(&self) -> Result<Vec<(u32, SvcName)>, StoreError> {
        if let Some(shadow) = self.bulk.as_deref().and_then(|b| b.names.as_ref()) {
            return Ok(shadow.entries().collect());
        }
        match &self.names {
            Some(names) => list(names, maps::SERVICE_NAMES),
            None => Ok(Vec::new()),
        }
    }

    fn put_maglev(&mut self, key: &MaglevKey, slots: &[u32]) -> Result<(), StoreError> {
        let size = u32::try_from(slots.len())
            .ok()
            .filter(|n| *n <= MAGLEV_TABLE_MAX)
            .ok_or_else(|| StoreError::Failed {
                map: maps::MAGLEV,
                op: StoreOp::Put,
                source: format!(
                    "a table of {} slots does not fit (at most {MAGLEV_TABLE_MAX})",
                    slots.len()
                )
                .into(),
            })?;
        let map = self.maglev.as_mut().ok_or_else(|| StoreError::Failed {
            map: maps::MAGLEV,
            op: StoreOp::Put,
            source: "the map is not pinned (a data plane older than Maglev: restart the \
                     daemon of this version to create it)"
                .into(),
        })?;
        // 64 KiB: built on the heap, not the stack.
        let mut table = Box::new(MaglevTable::ZERO);
        table.size = size;
        table.slots[..slots.len()].copy_from_slice(slots);
        put(map, maps::MAGLEV, key, &*table)
    }

    fn delete_maglev(&mut self, key: &MaglevKey) -> Result<(), StoreError> {
        match &mut self.maglev {
            Some(map) => delete(map, maps::MAGLEV, key),
            None => Ok(()),
        }
    }

    fn get_maglev(&self, key: &MaglevKey) -> Result<Option<Vec<u32>>, StoreError> {
        let Some(map) = &self.maglev else {
            return Ok(None);
        };
        Ok(get(map, maps::MAGLEV, key)?.map(|table| {
            let size = (table.size as usize).min(table.slots.len());
            table.slots[..size].to_vec()
        }))
    }

    fn put_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError> {
        let len = u32::from(cidr.prefix_len());
        let full = |e: MapError, name| {
            if is_full(&e) {
                StoreError::Full { map: name }
            } else {
                failed(name, StoreOp::Put, e)
            }
        };
        match cidr.addr() {
            IpAddr::V4(a) => {
                let k = SrcRange4Key::new(service_id, a.octets(), len);
                self.north_south_mut(maps::SRC_RANGES4)?
                    .src4
                    .insert(
                        &lpm_trie::Key::new(k.prefix_len, k.data()),
                        SRC_RANGE_ALLOWED,
                        0,
                    )
                    .map_err(|e| full(e, maps::SRC_RANGES4))
            }
            IpAddr::V6(a) => {
                let k = SrcRange6Key::new(service_id, a.octets(), len);
                self.north_south_mut(maps::SRC_RANGES6)?
                    .src6
                    .insert(
                        &lpm_trie::Key::new(k.prefix_len, k.data()),
                        SRC_RANGE_ALLOWED,
                        0,
                    )
                    .map_err(|e| full(e, maps::SRC_RANGES6))
            }
        }
    }

    fn delete_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError> {
        let Some(ns) = self.north_south.as_mut() else {
            return Ok(());
        };
        let len = u32::from(cidr.prefix_len());
        let (result, name) = match cidr.addr() {
            IpAddr::V4(a) => {
                let k = SrcRange4Key::new(service_id, a.octets(), len);
                (
                    ns.src4.remove(&lpm_trie::Key::new(k.prefix_len, k.data())),
                    maps::SRC_RANGES4,
                )
            }
            IpAddr::V6(a) => {
                let k = SrcRange6Key::new(service_id, a.octets(), len);
                (
                    ns.src6.remove(&lpm_trie::Key::new(k.prefix_len, k.data())),
                    maps::SRC_RANGES6,
                )
            }
        };
        match result {
            Err(e) if !is_missing(&e) => Err(failed(name, StoreOp::Delete, e)),
            _ => Ok(()),
        }
    }

    fn list_source_ranges(&self, family: Family) -> Result<Vec<(u32, Cidr)>, StoreError> {
        fn walk<K: aya::Pod>(
            trie: &LpmTrie<MapData, K, u32>,
            name: &'static str,
            split: impl Fn(K) -> (u32, IpAddr),
        ) -> Result<Vec<(u32, Cidr)>, StoreError> {
            let mut out = Vec::new();
            for item in trie.keys() {
                match item {
                    Ok(key) => {
                        let (id, addr) = split(key.data());
                        let len = key.prefix_len().saturating_sub(SRC_RANGE_PREFIX_BITS);
                        let len = u8::try_from(len).unwrap_or(u8::MAX);
                        if let Some(cidr) = Cidr::new(addr, len) {
                            out.push((id, cidr));
                        }
                    }
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(failed(name, StoreOp::List, e)),
                }
            }
            Ok(out)
        }
        let Some(ns) = &self.north_south else {
            return Ok(Vec::new());
        };
        match family {
            Family::V4 => walk(&ns.src4, maps::SRC_RANGES4, |d: SrcRange4Data| {
                (d.service_id, Ipv4Addr::from(d.addr).into())
            }),
            Family::V6 => walk(&ns.src6, maps::SRC_RANGES6, |d: SrcRange6Data| {
                (d.service_id, Ipv6Addr::from(d.addr).into())
            }),
        }
    }

    fn put_node_addresses(&mut self, addrs: &NodeAddresses) -> Result<(), StoreError> {
        let mut value = NodeAddrs::default();
        if let Some(a) = addrs.v4 {
            value.addr4 = a.octets();
            value.flags |= NODEADDR_HAS_V4;
        }
        if let Some(a) = addrs.v6 {
            value.addr6 = a.octets();
            value.flags |= NODEADDR_HAS_V6;
        }
        self.north_south_mut(maps::NODE_ADDRS)?
            .node
            .set(0, value, 0)
            .map_err(|e| failed(maps::NODE_ADDRS, StoreOp::Put, e))
    }

    fn get_node_addresses(&self) -> Result<NodeAddresses, StoreError> {
        let Some(ns) = &self.north_south else {
            return Ok(NodeAddresses::default());
        };
        let v = ns
            .node
            .get(&0, 0)
            .map_err(|e| failed(maps::NODE_ADDRS, StoreOp::Get, e))?;
        Ok(NodeAddresses {
            v4: (v.flags & NODEADDR_HAS_V4 != 0).then(|| Ipv4Addr::from(v.addr4)),
            v6: (v.flags & NODEADDR_HAS_V6 != 0).then(|| Ipv6Addr::from(v.addr6)),
        })
    }
}
