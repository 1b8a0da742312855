//! Writes frontends into a `MapStore` in the order that keeps every reader consistent
//! (design.md): backends first, then the reverse-NAT entry and the slots, then the master
//! count last; on shrink the master count first, then the extra slots. A failed insert
//! (full map) rolls back what the call wrote.
//!
//! Connections outlive the frontends that made them (kube-proxy never flushes TCP
//! conntrack): a backend no slot names any more is not deleted but *drained* (state
//! `DRAINING`: never chosen for a new flow, still there for the flows conntrack keeps on
//! it), and a removed frontend keeps its reverse-NAT entry (*retired*), so replies of its
//! live flows are still translated. `collect_garbage` deletes the drained backends and
//! retired reverse-NAT entries that no live conntrack entry names.
//!
//! Ids: service ids (one per frontend key) and backend ids (one per backend address,
//! port and protocol, shared by frontends) are recovered from the maps when the writer
//! opens, reused for the same frontend/backend, and new ones are handed out in increasing
//! order after the highest id seen and after the floor persisted in the meta map (so a
//! freed id is not reused soon, not even after a restart: conntrack entries may still name
//! it). Ids are never 0 and are unique across both families.
//!
//! Cost: the writer keeps, in memory, how many slots name each backend (recovered at open),
//! so a write reads and writes only the entries of the frontend it changes (never a whole
//! map), and an entry that already holds the wanted value is not written again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
};

use service_lb_common::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    service::{BACKEND_FLAG_LOCAL, BACKEND_STATE_DRAINING},
    SvcValue,
};
use tracing::{debug, error, warn};

use super::maps::{BackendValue, Family, MapStore, RevNatValue, StoreError, SvcKey};
use super::vips::Cidr;

mod maglev;
mod members;
mod ranges;
mod vips;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(proto: u8) -> Option<Self> {
        match proto {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A frontend: what clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: L4Proto,
    /// `service::SCOPE_EXTERNAL` or `SCOPE_INTERNAL`.
    pub scope: u8,
}

impl FrontendKey {
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    fn svc_key(&self, slot: u16) -> SvcKey {
        SvcKey::new(self.addr, self.port, self.proto.number(), self.scope, slot)
    }

    fn from_svc_key(key: &SvcKey) -> Option<Self> {
        Some(Self {
            addr: key.addr(),
            port: key.port(),
            proto: L4Proto::from_number(key.proto())?,
            scope: key.scope(),
        })
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} scope {}",
            SocketAddr::new(self.addr, self.port),
            self.proto,
            self.scope
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// `service::BACKEND_STATE_*`.
    pub state: u8,
    /// Runs on this node.
    pub local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub key: FrontendKey,
    /// In slot order; an empty list programs a frontend with no endpoint (count 0).
    pub backends: Vec<BackendSpec>,
    /// `service::SVC_FLAG_*`.
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// loadBalancerSourceRanges (sorted, once each): written into the source-range trie
    /// under the frontend's service id; the caller sets `SVC_FLAG_SOURCE_RANGES` with them.
    pub source_ranges: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendIds {
    pub service_id: u32,
    /// In slot order.
    pub backend_ids: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("frontend {frontend}: backend {backend} is of the other address family")]
    FamilyMismatch {
        frontend: FrontendKey,
        backend: SocketAddr,
    },
    #[error("frontend {frontend}: {count} backends, at most {max} fit in the slots")]
    TooManyBackends {
        frontend: FrontendKey,
        count: usize,
        max: usize,
    },
    #[error("frontend {frontend}: map {map} is full; the frontend's previous entries are kept")]
    MapFull {
        frontend: FrontendKey,
        map: &'static str,
    },
    #[error("no free {what} id left")]
    IdsExhausted { what: &'static str },
    #[error("frontend {frontend}: {source}")]
    Store {
        frontend: FrontendKey,
        #[source]
        source: StoreError,
    },
    #[error("recovering ids from the maps: {0}")]
    Recover(#[source] StoreError),
    #[error("reading conntrack for garbage collection: {0}")]
    Conntrack(#[source] StoreError),
    #[error("deleting a reverse-NAT entry no flow uses: {0}")]
    Gc(#[source] StoreError),
    #[error("writing the id floors into the meta map: {0}")]
    Meta(#[source] StoreError),
    #[error("frontend {frontend}: source range {range} is of the other address family")]
    RangeFamily { frontend: FrontendKey, range: Cidr },
    #[error("reading frontend {frontend}: backend {backend_id} of slot {slot} is missing")]
    MissingBackend {
        frontend: FrontendKey,
        slot: u16,
        backend_id: u32,
    },
    #[error("frontend {frontend}: building its Maglev table: {source}")]
    Maglev {
        frontend: FrontendKey,
        #[source]
        source: crate::model::maglev::MaglevError,
    },
}

/// A backend is the same backend (same id) when address, port and protocol are equal.
type BackendIdentity = (SocketAddr, L4Proto);

/// One write the current call made, and how to take it back.
enum Undo {
    Backend {
        family: Family,
        id: u32,
        previous: Option<BackendValue>,
    },
    RevNat {
        family: Family,
        id: u32,
        previous: Option<RevNatValue>,
    },
    Service {
        key: SvcKey,
        previous: Option<SvcValue>,
    },
    Maglev {
        key: service_lb_common::maglev::MaglevKey,
        previous: Option<Vec<u32>>,
    },
    /// A source range written (it was not in the trie).
    RangeAdded { service_id: u32, cidr: Cidr },
}

/// Monotonic id allocator: `next` after the highest id seen, skipping ids in use and 0.
#[derive(Clone, Debug)]
struct Ids {
    next: u32,
    in_use: BTreeSet<u32>,
}

impl Ids {
    /// Ids in use, and the floor persisted by an earlier run (0 = none).
    fn recovered(in_use: BTreeSet<u32>, floor: u32) -> Self {
        let next = in_use.last().map_or(1, |max| max.wrapping_add(1).max(1));
        Self {
            next: next.max(floor).max(1),
            in_use,
        }
    }

    fn allocate(&mut self, what: &'static str) -> Result<u32, WriteError> {
        if self.in_use.len() >= u32::MAX as usize - 1 {
            return Err(WriteError::IdsExhausted { what });
        }
        loop {
            let id = self.next;
            self.next = self.next.wrapping_add(1).max(1);
            if self.in_use.insert(id) {
                return Ok(id);
            }
        }
    }

    fn release(&mut self, id: u32) {
        self.in_use.remove(&id);
    }
}

pub struct ServiceWriter<M: MapStore> {
    store: M,
    services: BTreeMap<FrontendKey, u32>,
    backends: BTreeMap<BackendIdentity, u32>,
    /// The reverse of `backends` (every id of a known protocol, duplicates included).
    backend_identity: HashMap<u32, BackendIdentity>,
    /// How many slot entries of the maps name each backend id.
    backend_refs: HashMap<u32, u32>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Backend ids in the maps that no slot names: kept for their tracked flows (state
    /// `DRAINING` once `drain` wrote it) until `collect_garbage` finds none.
    draining: BTreeSet<u32>,
    /// Service ids of removed frontends whose reverse-NAT entry is kept for their tracked
    /// flows; `collect_garbage` deletes it. By frontend, when this writer removed it (a
    /// frontend that comes back gets its id again).
    retired: BTreeMap<u32, Family>,
    retired_by_key: HashMap<FrontendKey, u32>,
    /// Slot entries with no master or beyond their master's count (a crash between
    /// writes), found at open; the first full sync deletes them.
    orphan_slots: Vec<SvcKey>,
    /// The id floors last persisted into the meta map.
    persisted_next_ids: (u32, u32),
    /// Backend ids deleted from the maps since the last `take_released_backends`.
    released: Vec<u32>,
    /// Puts and deletes made on the store (rollbacks included).
    writes: u64,
    /// ClusterIP frontends per address: what the VIP maps hold (`vips`).
    cluster_ips: BTreeMap<IpAddr, BTreeSet<FrontendKey>>,
    /// Backend ids in each service id's slots: what the membership map holds (`members`).
    members: BTreeMap<u32, BTreeSet<u32>>,
    /// Maglev tables written, and the table size (`maglev`).
    maglev: maglev::MaglevTables,
    /// Source ranges by service id: what the source-range tries hold (`ranges`).
    ranges: ranges::Ranges,
}

impl<M: MapStore> ServiceWriter<M> {
    /// Wraps `store`, recovering the ids of every frontend and backend it already holds.
    pub fn open(store: M) -> Result<Self, WriteError> {
        let mut services = BTreeMap::new();
        let mut backends = BTreeMap::new();
        let mut backend_identity = HashMap::new();
        let mut backend_refs: HashMap<u32, u32> = HashMap::new();
        let mut service_in_use = BTreeSet::new();
        let mut backend_in_use = BTreeSet::new();
        let mut retired = BTreeMap::new();
        let mut orphan_slots = Vec::new();
        let mut cluster_ips = BTreeMap::new();
        let mut members: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for family in Family::ALL {
            let entries = store.list_services(family).map_err(WriteError::Recover)?;
            let counts: HashMap<SvcKey, u32> = entries
                .iter()
                .filter(|(k, _)| k.slot() == 0)
                .map(|(k, v)| (*k, v.count))
                .collect();
            let mut masters = BTreeSet::new();
            for (key, value) in entries {
                service_in_use.insert(value.service_id);
                if key.slot() != 0
                    && counts
                        .get(&key.with_slot(0))
                        .is_none_or(|count| u32::from(key.slot()) > *count)
                {
                    orphan_slots.push(key);
                    continue;
                }
                if key.slot() == 0 {
                    masters.insert(value.service_id);
                    match FrontendKey::from_svc_key(&key) {
                        Some(frontend) => {
                            services.insert(frontend, value.service_id);
                            vips::note(&mut cluster_ips, frontend, value.flags);
                        }
                        None => warn!(
                            proto = key.proto(),
                            "ignoring a frontend of an unknown protocol"
                        ),
                    }
                } else {
                    backend_in_use.insert(value.backend_id);
                    *backend_refs.entry(value.backend_id).or_default() += 1;
                    members
                        .entry(value.service_id)
                        .or_default()
                        .insert(value.backend_id);
                }
            }
            for (id, _) in store.list_revnat(family).map_err(WriteError::Recover)? {
                service_in_use.insert(id);
                if !masters.contains(&id) {
                    retired.insert(id, family);
                }
            }
            for (id, value) in store.list_backends(family).map_err(WriteError::Recover)? {
                backend_in_use.insert(id);
                let Some(proto) = L4Proto::from_number(value.proto()) else {
                    continue;
                };
                let identity = (SocketAddr::new(value.addr(), value.port()), proto);
                backend_identity.insert(id, identity);
                if let Some(previous) = backends.insert(identity, id) {
                    warn!(backend = %identity.0, previous, id, "two backend ids for one backend; using the later");
                }
            }
        }
        service_in_use.remove(&0);
        backend_in_use.remove(&0);
        retired.remove(&0);
        let draining: BTreeSet<u32> = backend_identity
            .keys()
            .filter(|id| !backend_refs.contains_key(id))
            .copied()
            .collect();
        let (service_floor, backend_floor) = store.get_next_ids().map_err(WriteError::Recover)?;
        debug!(
            frontends = services.len(),
            backends = backends.len(),
            draining = draining.len(),
            retired = retired.len(),
            orphan_slots = orphan_slots.len(),
            "recovered ids from the maps"
        );
        let ranges = ranges::recover(&store)?;
        let service_ids = Ids::recovered(service_in_use, service_floor);
        let backend_ids = Ids::recovered(backend_in_use, backend_floor);
        let mut writer = Self {
            store,
            services,
            backends,
            backend_identity,
            backend_refs,
            persisted_next_ids: (service_floor, backend_floor),
            service_ids,
            backend_ids,
            draining,
            retired,
            retired_by_key: HashMap::new(),
            orphan_slots,
            released: Vec::new(),
            writes: 0,
            cluster_ips,
            members,
            maglev: maglev::MaglevTables::default(),
            ranges,
        };
        writer.recover_vips()?;
        writer.recover_members()?;
        Ok(writer)
    }

    pub fn store(&self) -> &M {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut M {
        &mut self.store
    }

    pub fn into_store(self) -> M {
        self.store
    }

    /// The service id of a frontend this writer knows (programmed or recovered).
    pub fn service_id(&self, key: &FrontendKey) -> Option<u32> {
        self.services.get(key).copied()
    }

    /// Every frontend this writer knows (programmed or recovered), in key order.
    pub fn frontends(&self) -> impl Iterator<Item = &FrontendKey> + '_ {
        self.services.keys()
    }

    /// Puts and deletes made on the store since `open` (rollbacks included): a caller can
    /// tell whether a call changed anything.
    pub fn map_writes(&self) -> u64 {
        self.writes
    }

    /// What the maps hold for `key` (reads only), as the spec that would write it; `None`
    /// when the frontend has no master entry.
    pub fn read_frontend(&self, key: &FrontendKey) -> Result<Option<FrontendSpec>, WriteError> {
        let store_err = |source| WriteError::Store {
            frontend: *key,
            source,
        };
        let Some(master) = self.store.get_service(&key.svc_key(0)).map_err(store_err)? else {
            return Ok(None);
        };
        let mut backends = Vec::new();
        for (index, backend_id) in self.read_slots(key, master.count)?.into_iter().enumerate() {
            let slot = index as u16 + 1;
            let missing = WriteError::MissingBackend {
                frontend: *key,
                slot,
                backend_id,
            };
            if backend_id == 0 {
                return Err(missing);
            }
            let Some(value) = self
                .store
                .get_backend(key.family(), backend_id)
                .map_err(store_err)?
            else {
                return Err(missing);
            };
            backends.push(BackendSpec {
                addr: SocketAddr::new(value.addr(), value.port()),
                state: value.state(),
                local: value.flags() & BACKEND_FLAG_LOCAL != 0,
            });
        }
        Ok(Some(FrontendSpec {
            key: *key,
            backends,
            flags: master.flags,
            affinity_timeout_s: master.affinity_timeout_s,
            source_ranges: self.source_ranges(master.service_id),
        }))
    }

    /// Backend ids deleted from the maps (by `collect_garbage`) since the last call.
    pub fn take_released_backends(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.released)
    }

    /// Creates or updates a frontend. On error nothing of the frontend's previous state
    /// is lost: what this call wrote is rolled back.
    pub fn upsert(&mut self, spec: &FrontendSpec) -> Result<FrontendIds, WriteError> {
        let key = spec.key;
        let family = key.family();
        if let Some(b) = spec
            .backends
            .iter()
            .find(|b| Family::of(&b.addr.ip()) != family)
        {
            return Err(WriteError::FamilyMismatch {
                frontend: key,
                backend: b.addr,
            });
        }
        let max = usize::from(u16::MAX);
        if spec.backends.len() > max {
            return Err(WriteError::TooManyBackends {
                frontend: key,
                count: spec.backends.len(),
                max,
            });
        }
        let store_err = |source| WriteError::Store {
            frontend: key,
            source,
        };

        let old_master = self.store.get_service(&key.svc_key(0)).map_err(store_err)?;
        let old_slots = self.read_slots(&key, old_master.map_or(0, |m| m.count))?;

        let mut undo = Vec::new();
        let mut new_service_id = None;
        let mut new_backend_ids = Vec::new();
        let result = self.write_frontend(
            spec,
            old_master,
            &mut undo,
            &mut new_service_id,
            &mut new_backend_ids,
        );
        let ids = match result {
            Ok(ids) => ids,
            Err(e) => {
                self.roll_back(&key, undo);
                self.maglev_forget(&key);
                let service_id = old_master.map(|m| m.service_id).or(new_service_id);
                self.members_after_failure(&key, service_id, &old_slots);
                if let Some(id) = new_service_id {
                    self.services.remove(&key);
                    self.service_ids.release(id);
                }
                for (identity, id) in new_backend_ids {
                    self.backends.remove(&identity);
                    self.backend_identity.remove(&id);
                    self.backend_ids.release(id);
                }
                return Err(e);
            }
        };

        // Every slot 1..=new count now names the new backend.
        let mut dropped = BTreeSet::new();
        for (index, id) in ids.backend_ids.iter().enumerate() {
            let old = old_slots.get(index).copied().unwrap_or(0);
            if old != *id {
                self.add_ref(*id);
                self.drop_ref(old, &mut dropped);
            }
        }
        // A draining backend that is in a slot again is live again (its state was
        // rewritten with the spec's).
        for id in &ids.backend_ids {
            self.draining.remove(id);
        }
        // Shrink: the master already has the new count; drop the extra slots, then drain
        // the backends no frontend names any more.
        let new_count = spec.backends.len();
        for slot in (new_count + 1)..=old_slots.len() {
            self.writes += 1;
            self.store
                .delete_service(&key.svc_key(slot as u16))
                .map_err(store_err)?;
            self.drop_ref(old_slots[slot - 1], &mut dropped);
        }
        self.maglev_after_master(
            spec,
            old_master.map_or(0, |m| m.flags),
            ids.service_id,
            &ids.backend_ids,
        )?;
        self.drain_unused_backends(&key, family, dropped)?;
        self.keep_members(&key, ids.service_id, &ids.backend_ids)?;
        self.prune_ranges(&key, ids.service_id, &spec.source_ranges)?;
        self.vip_upserted(spec)?;
        Ok(ids)
    }

    /// Removes a frontend: master first, then its slots; its reverse-NAT entry is retired
    /// and the backends no other frontend uses are drained (both stay for the frontend's
    /// tracked flows until `collect_garbage`). Removing an unknown frontend does nothing.
    pub fn remove(&mut self, key: &FrontendKey) -> Result<(), WriteError> {
        let store_err = |source| WriteError::Store {
            frontend: *key,
            source,
        };
        let Some(master) = self.store.get_service(&key.svc_key(0)).map_err(store_err)? else {
            if let Some(id) = self.services.remove(key) {
                self.service_ids.release(id);
            }
            return Ok(());
        };
        let slots = self.read_slots(key, master.count)?;
        self.writes += 1;
        self.store
            .delete_service(&key.svc_key(0))
            .map_err(store_err)?;
        let mut dropped = BTreeSet::new();
        for (index, id) in slots.into_iter().enumerate() {
            self.writes += 1;
            self.store
                .delete_service(&key.svc_key(index as u16 + 1))
                .map_err(store_err)?;
            self.drop_ref(id, &mut dropped);
        }
        self.maglev_delete(key, master.flags, master.service_id)?;
        self.services.remove(key);
        self.prune_ranges(key, master.service_id, &[])?;
        self.retired.insert(master.service_id, key.family());
        self.retired_by_key.insert(*key, master.service_id);
        self.keep_members(key, master.service_id, &[])?;
        self.drain_unused_backends(key, key.family(), dropped)?;
        self.vip_removed(key)
    }

    /// Drains the backends that no slot names (left by a crash between writes, by a
    /// previous run, or by another writer) and deletes the orphan slots found at open:
    /// the first full sync's repair. Returns how many backends it drained.
    pub fn drain_unreferenced_backends(&mut self) -> Result<usize, WriteError> {
        self.prune_orphan_ranges()?;
        for key in std::mem::take(&mut self.orphan_slots) {
            self.writes += 1;
            if let Err(source) = self.store.delete_service(&key) {
                return Err(WriteError::Store {
                    frontend: FrontendKey {
                        addr: key.addr(),
                        port: key.port(),
                        proto: L4Proto::from_number(key.proto()).unwrap_or(L4Proto::Tcp),
                        scope: key.scope(),
                    },
                    source,
                });
            }
            debug!(slot = key.slot(), addr = %key.addr(), port = key.port(), "deleted an orphan slot");
        }
        let unreferenced: Vec<u32> = self
            .backend_identity
            .keys()
            .filter(|id| self.backend_refs.get(id).copied().unwrap_or(0) == 0)
            .copied()
            .collect();
        let mut drained = 0;
        for id in unreferenced {
            if self.drain_backend(id)? {
                drained += 1;
            }
        }
        Ok(drained)
    }

    /// Backend ids no slot names, kept for their tracked flows.
    pub fn draining_backends(&self) -> &BTreeSet<u32> {
        &self.draining
    }

    /// kube-proxy's UDP conntrack clean-up without a conntrack pass, for a backend that
    /// stopped serving: when it is connectionless (UDP) and no slot names it any more, its
    /// entry is deleted from the backends map now, and the kernel re-balances each of its
    /// flows on their next datagram (`dnat_reselect`: a connectionless flow whose backend
    /// is gone picks a live backend of its frontend). Its id stays reserved (draining)
    /// until `collect_garbage` finds no conntrack entry naming it, so no other backend
    /// takes it while such entries live. `false` (nothing done) when a slot still names it
    /// (another frontend uses the same address, port and protocol): only a conntrack pass
    /// can then tell its flows of this frontend from the others'.
    pub fn retire_connectionless_backend(&mut self, id: u32) -> Result<bool, WriteError> {
        let Some(identity) = self.backend_identity.get(&id).copied() else {
            // Unknown here: not in the maps, nothing can use it.
            return Ok(true);
        };
        if identity.1 != L4Proto::Udp || self.backend_refs.get(&id).copied().unwrap_or(0) != 0 {
            return Ok(false);
        }
        self.draining.insert(id);
        self.writes += 1;
        self.store
            .delete_backend(Family::of(&identity.0.ip()), id)
            .map_err(|source| WriteError::Store {
                frontend: frontend_of_backend(identity),
                source,
            })?;
        Ok(true)
    }

    /// Service ids of removed frontends whose reverse-NAT entry is kept.
    pub fn retired_services(&self) -> impl Iterator<Item = u32> + '_ {
        self.retired.keys().copied()
    }

    /// The id of a backend (address, port, protocol) the maps hold, live or draining.
    pub fn backend_id(&self, addr: SocketAddr, proto: L4Proto) -> Option<u32> {
        self.backends.get(&(addr, proto)).copied()
    }

    /// Deletes the draining backends and retired reverse-NAT entries that no live
    /// conntrack entry names (one pass over the conntrack maps; nothing is read when
    /// there is nothing to collect).
    pub fn collect_garbage(&mut self) -> Result<Garbage, WriteError> {
        if self.draining.is_empty() && self.retired.is_empty() {
            return Ok(Garbage::default());
        }
        let refs = self
            .store
            .conntrack_references()
            .map_err(WriteError::Conntrack)?;
        let mut garbage = Garbage::default();
        let doomed: Vec<u32> = self
            .draining
            .iter()
            .filter(|id| !refs.backend_ids.contains(id))
            .copied()
            .collect();
        for id in doomed {
            let Some(identity) = self.backend_identity.get(&id).copied() else {
                self.draining.remove(&id);
                continue;
            };
            self.writes += 1;
            self.store
                .delete_backend(Family::of(&identity.0.ip()), id)
                .map_err(|source| WriteError::Store {
                    frontend: frontend_of_backend(identity),
                    source,
                })?;
            self.forget_backend(id);
            garbage.backends += 1;
        }
        garbage.backends_kept = self.draining.len();
        let doomed: Vec<(u32, Family)> = self
            .retired
            .iter()
            .filter(|(id, _)| !refs.service_ids.contains(id))
            .map(|(id, family)| (*id, *family))
            .collect();
        for (id, family) in doomed {
            self.writes += 1;
            self.store
                .delete_revnat(family, id)
                .map_err(WriteError::Gc)?;
            self.retired.remove(&id);
            self.retired_by_key.retain(|_, retired| *retired != id);
            self.service_ids.release(id);
            garbage.revnat += 1;
        }
        garbage.revnat_kept = self.retired.len();
        Ok(garbage)
    }

    /// Writes the id floors into the meta map when they moved since the last write.
    pub fn persist_next_ids(&mut self) -> Result<(), WriteError> {
        let next = (self.service_ids.next, self.backend_ids.next);
        if next == self.persisted_next_ids {
            return Ok(());
        }
        self.store
            .put_next_ids(next.0, next.1)
            .map_err(WriteError::Meta)?;
        self.persisted_next_ids = next;
        Ok(())
    }

    /// Backend ids of slots `1..=count` as stored (0 for a missing slot).
    fn read_slots(&self, key: &FrontendKey, count: u32) -> Result<Vec<u32>, WriteError> {
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        (1..=count)
            .map(|slot| {
                self.store
                    .get_service(&key.svc_key(slot))
                    .map(|v| v.map_or(0, |v| v.backend_id))
                    .map_err(|source| WriteError::Store {
                        frontend: *key,
                        source,
                    })
            })
            .collect()
    }

    /// Backends, reverse NAT, slots, master: each written only when it differs from what
    /// the store holds, each write recorded in `undo`.
    fn write_frontend(
        &mut self,
        spec: &FrontendSpec,
        old_master: Option<SvcValue>,
        undo: &mut Vec<Undo>,
        new_service_id: &mut Option<u32>,
        new_backend_ids: &mut Vec<(BackendIdentity, u32)>,
    ) -> Result<FrontendIds, WriteError> {
        let key = spec.key;
        let family = key.family();
        let retired = self.retired_by_key.get(&key).copied();
        let service_id = match old_master
            .map(|m| m.service_id)
            .or_else(|| self.services.get(&key).copied())
            .or(retired)
        {
            Some(id) => id,
            None => {
                let id = self.service_ids.allocate("service")?;
                *new_service_id = Some(id);
                id
            }
        };
        self.services.insert(key, service_id);
        if retired == Some(service_id) {
            self.retired_by_key.remove(&key);
            self.retired.remove(&service_id);
        }

        let mut backend_ids = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let identity = (b.addr, key.proto);
            let id = match self.backends.get(&identity) {
                Some(id) => *id,
                None => {
                    let id = self.backend_ids.allocate("backend")?;
                    self.backends.insert(identity, id);
                    self.backend_identity.insert(id, identity);
                    new_backend_ids.push((identity, id));
                    id
                }
            };
            let flags = if b.local { BACKEND_FLAG_LOCAL } else { 0 };
            let value = BackendValue::new(
                b.addr.ip(),
                b.addr.port(),
                key.proto.number(),
                b.state,
                flags,
            );
            let previous = self
                .store
                .get_backend(family, id)
                .map_err(|s| full_or_store(key, s))?;
            if previous != Some(value) {
                self.writes += 1;
                self.store
                    .put_backend(id, &value)
                    .map_err(|s| full_or_store(key, s))?;
                undo.push(Undo::Backend {
                    family,
                    id,
                    previous,
                });
            }
            backend_ids.push(id);
        }

        let revnat = RevNatValue::new(key.addr, key.port);
        let previous = self
            .store
            .get_revnat(family, service_id)
            .map_err(|s| full_or_store(key, s))?;
        if previous != Some(revnat) {
            self.writes += 1;
            self.store
                .put_revnat(service_id, &revnat)
                .map_err(|s| full_or_store(key, s))?;
            undo.push(Undo::RevNat {
                family,
                id: service_id,
                previous,
            });
        }

        self.add_members(key, service_id, &backend_ids)?;
        for (index, id) in backend_ids.iter().enumerate() {
            let slot_key = key.svc_key(index as u16 + 1);
            self.put_if_changed(key, slot_key, SvcValue::slot(*id, service_id), undo)?;
        }

        self.maglev_before_master(spec, service_id, &backend_ids, undo)?;
        self.add_ranges(key, service_id, &spec.source_ranges, undo)?;
        let master = SvcValue::master(
            backend_ids.len() as u32,
            service_id,
            spec.flags,
            spec.affinity_timeout_s,
        );
        self.put_if_changed(key, key.svc_key(0), master, undo)?;
        Ok(FrontendIds {
            service_id,
            backend_ids,
        })
    }

    fn put_if_changed(
        &mut self,
        frontend: FrontendKey,
        key: SvcKey,
        value: SvcValue,
        undo: &mut Vec<Undo>,
    ) -> Result<(), WriteError> {
        let previous = self
            .store
            .get_service(&key)
            .map_err(|s| full_or_store(frontend, s))?;
        if previous != Some(value) {
            self.writes += 1;
            self.store
                .put_service(&key, &value)
                .map_err(|s| full_or_store(frontend, s))?;
            undo.push(Undo::Service { key, previous });
        }
        Ok(())
    }

    /// Takes back `undo` in reverse order. A failure here is logged: the original error
    /// is what the caller needs to see.
    fn roll_back(&mut self, frontend: &FrontendKey, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            self.writes += 1;
            let result = match step {
                Undo::Service {
                    key,
                    previous: Some(v),
                } => self.store.put_service(&key, &v),
                Undo::Service {
                    key,
                    previous: None,
                } => self.store.delete_service(&key),
                Undo::RevNat {
                    id,
                    previous: Some(v),
                    ..
                } => self.store.put_revnat(id, &v),
                Undo::RevNat {
                    family,
                    id,
                    previous: None,
                } => self.store.delete_revnat(family, id),
                Undo::Backend {
                    id,
                    previous: Some(v),
                    ..
                } => self.store.put_backend(id, &v),
                Undo::Backend {
                    family,
                    id,
                    previous: None,
                } => self.store.delete_backend(family, id),
                Undo::Maglev {
                    key,
                    previous: Some(table),
                } => self.store.put_maglev(&key, &table),
                Undo::Maglev {
                    key,
                    previous: None,
                } => self.store.delete_maglev(&key),
                Undo::RangeAdded { service_id, cidr } => match self.undo_range(service_id, &cidr) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        error!(%frontend, error = %e, "rolling back a source range");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                error!(%frontend, error = %e, "rolling back a failed frontend write");
            }
        }
    }

    fn add_ref(&mut self, id: u32) {
        *self.backend_refs.entry(id).or_default() += 1;
    }

    /// One slot less names `id` (0 = an empty slot); `id` joins `unused` at zero.
    fn drop_ref(&mut self, id: u32, unused: &mut BTreeSet<u32>) {
        if id == 0 {
            return;
        }
        let refs = self.backend_refs.entry(id).or_default();
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.backend_refs.remove(&id);
            unused.insert(id);
        }
    }

    /// Drains the backends of `candidates` that no slot names any more (from the
    /// in-memory reference counts: no map is listed).
    fn drain_unused_backends(
        &mut self,
        frontend: &FrontendKey,
        _family: Family,
        candidates: BTreeSet<u32>,
    ) -> Result<(), WriteError> {
        for id in candidates {
            if self.backend_refs.get(&id).copied().unwrap_or(0) != 0 {
                continue;
            }
            self.drain_backend(id).map_err(|e| match e {
                WriteError::Store { source, .. } => WriteError::Store {
                    frontend: *frontend,
                    source,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Marks backend `id` draining and writes state `DRAINING` into its entry (when the
    /// maps hold it). Returns whether anything changed (state written or newly marked).
    fn drain_backend(&mut self, id: u32) -> Result<bool, WriteError> {
        let Some(identity) = self.backend_identity.get(&id).copied() else {
            return Ok(false);
        };
        let family = Family::of(&identity.0.ip());
        let store_err = |source| WriteError::Store {
            frontend: frontend_of_backend(identity),
            source,
        };
        let mut changed = false;
        if let Some(value) = self.store.get_backend(family, id).map_err(store_err)? {
            if value.state() != BACKEND_STATE_DRAINING {
                changed = true;
                let drained = BackendValue::new(
                    value.addr(),
                    value.port(),
                    value.proto(),
                    BACKEND_STATE_DRAINING,
                    value.flags(),
                );
                self.writes += 1;
                self.store.put_backend(id, &drained).map_err(store_err)?;
            }
        }
        Ok(self.draining.insert(id) || changed)
    }

    /// A backend deleted from the maps: its id is released and reported.
    fn forget_backend(&mut self, id: u32) {
        if let Some(identity) = self.backend_identity.remove(&id) {
            if self.backends.get(&identity) == Some(&id) {
                self.backends.remove(&identity);
            }
        }
        self.backend_refs.remove(&id);
        self.draining.remove(&id);
        self.backend_ids.release(id);
        self.released.push(id);
    }
}

/// What one `collect_garbage` deleted and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Garbage {
    /// Draining backends deleted (no live flow named them).
    pub backends: usize,
    /// Draining backends kept (live flows still use them).
    pub backends_kept: usize,
    /// Reverse-NAT entries of removed frontends deleted.
    pub revnat: usize,
    /// Reverse-NAT entries of removed frontends kept for their live flows.
    pub revnat_kept: usize,
}

/// A frontend-shaped key for errors about a backend (no frontend is involved).
fn frontend_of_backend(identity: BackendIdentity) -> FrontendKey {
    FrontendKey {
        addr: identity.0.ip(),
        port: identity.0.port(),
        proto: identity.1,
        scope: 0,
    }
}

fn full_or_store(frontend: FrontendKey, source: StoreError) -> WriteError {
    match source {
        StoreError::Full { map } => WriteError::MapFull { frontend, map },
        source => WriteError::Store { frontend, source },
    }
}
