//! `MapStore` in memory: BTreeMaps, optional capacities (to simulate a full map) and a log
//! of every write, so tests can assert the write order.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use service_lb_common::{
    affinity::{MemberKey, MemberValue},
    maglev::MaglevKey,
    proto::IPPROTO_TCP,
    CtEntry, SvcName, SvcValue, VipValue,
};

use super::maps::{
    BackendValue, CtReferences, Family, MapStore, NodeAddresses, RevNatValue, StoreError, SvcKey,
};
use super::vips::Cidr;

/// One write, as the fake saw it (reads are not logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32),
    DeleteBackend(u32),
    PutRevNat(u32),
    DeleteRevNat(u32),
    /// A slot entry (slot >= 1) naming `backend_id`.
    PutSlot {
        slot: u16,
        backend_id: u32,
    },
    DeleteSlot(u16),
    /// The master entry (slot 0).
    PutMaster {
        count: u32,
    },
    DeleteMaster,
    /// UDP conntrack entries of (`service_id`, `backend_id`) were flushed (one op per
    /// pair per flush).
    FlushConntrack {
        service_id: u32,
        backend_id: u32,
    },
    /// A Maglev table of (service id, scope) was written / deleted.
    PutMaglev {
        service_id: u32,
        scope: u8,
    },
    DeleteMaglev {
        service_id: u32,
        scope: u8,
    },
    /// A source range of `service_id` written.
    PutRange {
        service_id: u32,
        cidr: Cidr,
    },
    /// A source range of `service_id` deleted.
    DeleteRange {
        service_id: u32,
        cidr: Cidr,
    },
}

/// A conntrack entry of the fake, keyed by an opaque flow number.
pub type FakeFlow = u64;

/// A conntrack entry of the fake: the protocol decides its table (TCP or the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeCt {
    pub proto: u8,
    pub entry: CtEntry,
}

#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    pub services: BTreeMap<SvcKey, SvcValue>,
    pub backends: BTreeMap<(Family, u32), BackendValue>,
    pub revnat: BTreeMap<(Family, u32), RevNatValue>,
    pub conntrack: BTreeMap<(Family, FakeFlow), FakeCt>,
    /// The conntrack clock: entries with `expires_ns <= now_ns` are dead.
    pub now_ns: u64,
    /// The meta map's id floors.
    pub next_ids: (u32, u32),
    pub ops: Vec<Op>,
    /// Capacity of each services map (per family, like the kernel maps); `None` = unbounded.
    pub services_max: Option<usize>,
    pub backends_max: Option<usize>,
    pub revnat_max: Option<usize>,
    /// Passes made over the conntrack maps (one per map read or flushed).
    pub conntrack_passes: usize,
    /// Calls of the `list_*` methods (whole-map reads).
    pub list_calls: Cell<usize>,
    /// The VIP maps (writes are not in `ops`: tests read this map).
    pub vips: BTreeMap<IpAddr, VipValue>,
    /// The service-CIDR tries.
    pub service_cidrs: BTreeSet<Cidr>,
    /// The membership map (writes are not in `ops`).
    pub members: BTreeMap<MemberKey, MemberValue>,
    /// The names map (writes are not in `ops`).
    pub names: BTreeMap<u32, SvcName>,
    /// The Maglev map (writes are in `ops`).
    pub maglev: BTreeMap<MaglevKey, Vec<u32>>,
    /// The source-range tries, as (service id, range).
    pub source_ranges: BTreeSet<(u32, Cidr)>,
    /// The node-address map.
    pub node_addresses: NodeAddresses,
}

impl FakeMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns and clears the op log.
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    fn services_len(&self, family: Family) -> usize {
        self.services
            .keys()
            .filter(|k| k.family() == family)
            .count()
    }
}

/// Counts the entries (`len`) only when a capacity is set: unbounded fakes stay O(log n).
fn would_overflow(len: impl FnOnce() -> usize, exists: bool, max: Option<usize>) -> bool {
    !exists && max.is_some_and(|max| len() >= max)
}

impl MapStore for FakeMaps {
    fn put_service(&mut self, key: &SvcKey, value: &SvcValue) -> Result<(), StoreError> {
        let family = key.family();
        if would_overflow(
            || self.services_len(family),
            self.services.contains_key(key),
            self.services_max,
        ) {
            return Err(StoreError::Full {
                map: family.services_map(),
            });
        }
        self.services.insert(*key, *value);
        self.ops.push(match key.slot() {
            0 => Op::PutMaster { count: value.count },
            slot => Op::PutSlot {
                slot,
                backend_id: value.backend_id,
            },
        });
        Ok(())
    }

    fn delete_service(&mut self, key: &SvcKey) -> Result<(), StoreError> {
        self.services.remove(key);
        self.ops.push(match key.slot() {
            0 => Op::DeleteMaster,
            slot => Op::DeleteSlot(slot),
        });
        Ok(())
    }

    fn get_service(&self, key: &SvcKey) -> Result<Option<SvcValue>, StoreError> {
        Ok(self.services.get(key).copied())
    }

    fn list_services(&self, family: Family) -> Result<Vec<(SvcKey, SvcValue)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .services
            .iter()
            .filter(|(k, _)| k.family() == family)
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError> {
        let family = value.family();
        let len = || self.backends.keys().filter(|(f, _)| *f == family).count();
        if would_overflow(
            len,
            self.backends.contains_key(&(family, id)),
            self.backends_max,
        ) {
            return Err(StoreError::Full {
                map: family.backends_map(),
            });
        }
        self.backends.insert((family, id), *value);
        self.ops.push(Op::PutBackend(id));
        Ok(())
    }

    fn delete_backend(&mut self, family: Family, id: u32) -> Result<(), StoreError> {
        self.backends.remove(&(family, id));
        self.ops.push(Op::DeleteBackend(id));
        Ok(())
    }

    fn get_backend(&self, family: Family, id: u32) -> Result<Option<BackendValue>, StoreError> {
        Ok(self.backends.get(&(family, id)).copied())
    }

    fn list_backends(&self, family: Family) -> Result<Vec<(u32, BackendValue)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .backends
            .iter()
            .filter(|((f, _), _)| *f == family)
            .map(|((_, id), v)| (*id, *v))
            .collect())
    }

    fn put_revnat(&mut self, service_id: u32, value: &RevNatValue) -> Result<(), StoreError> {
        let family = value.family();
        let len = || self.revnat.keys().filter(|(f, _)| *f == family).count();
        if would_overflow(
            len,
            self.revnat.contains_key(&(family, service_id)),
            self.revnat_max,
        ) {
            return Err(StoreError::Full {
                map: family.revnat_map(),
            });
        }
        self.revnat.insert((family, service_id), *value);
        self.ops.push(Op::PutRevNat(service_id));
        Ok(())
    }

    fn delete_revnat(&mut self, family: Family, service_id: u32) -> Result<(), StoreError> {
        self.revnat.remove(&(family, service_id));
        self.ops.push(Op::DeleteRevNat(service_id));
        Ok(())
    }

    fn get_revnat(
        &self,
        family: Family,
        service_id: u32,
    ) -> Result<Option<RevNatValue>, StoreError> {
        Ok(self.revnat.get(&(family, service_id)).copied())
    }

    fn list_revnat(&self, family: Family) -> Result<Vec<(u32, RevNatValue)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .revnat
            .iter()
            .filter(|((f, _), _)| *f == family)
            .map(|((_, id), v)| (*id, *v))
            .collect())
    }

    fn conntrack_references(&self) -> Result<CtReferences, StoreError> {
        let mut refs = CtReferences::default();
        for ct in self.conntrack.values() {
            if ct.entry.expires_ns > self.now_ns {
                if ct.entry.backend_id != 0 {
                    refs.backend_ids.insert(ct.entry.backend_id);
                }
                if ct.entry.service_id != 0 {
                    refs.service_ids.insert(ct.entry.service_id);
                }
            }
        }
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
        self.conntrack_passes += 1;
        let mut removed: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        self.conntrack.retain(|(f, _), ct| {
            let e = &ct.entry;
            let doomed = *f == family
                && ct.proto != IPPROTO_TCP
                && serving
                    .get(&e.service_id)
                    .is_some_and(|set| !set.contains(&e.backend_id));
            if doomed {
                *removed.entry((e.service_id, e.backend_id)).or_default() += 1;
            }
            !doomed
        });
        self.ops.extend(
            removed
                .keys()
                .map(|&(service_id, backend_id)| Op::FlushConntrack {
                    service_id,
                    backend_id,
                }),
        );
        Ok(removed.values().sum())
    }

    fn get_next_ids(&self) -> Result<(u32, u32), StoreError> {
        Ok(self.next_ids)
    }

    fn put_next_ids(
        &mut self,
        next_service_id: u32,
        next_backend_id: u32,
    ) -> Result<(), StoreError> {
        self.next_ids = (next_service_id, next_backend_id);
        Ok(())
    }

    fn put_vip(&mut self, addr: IpAddr, value: &VipValue) -> Result<(), StoreError> {
        self.vips.insert(addr, *value);
        Ok(())
    }

    fn delete_vip(&mut self, addr: IpAddr) -> Result<(), StoreError> {
        self.vips.remove(&addr);
        Ok(())
    }

    fn list_vips(&self, family: Family) -> Result<Vec<(IpAddr, VipValue)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .vips
            .iter()
            .filter(|(a, _)| Family::of(a) == family)
            .map(|(a, v)| (*a, *v))
            .collect())
    }

    fn put_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError> {
        self.service_cidrs.insert(*cidr);
        Ok(())
    }

    fn delete_service_cidr(&mut self, cidr: &Cidr) -> Result<(), StoreError> {
        self.service_cidrs.remove(cidr);
        Ok(())
    }

    fn list_service_cidrs(&self, family: Family) -> Result<Vec<Cidr>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .service_cidrs
            .iter()
            .filter(|c| c.family() == family)
            .copied()
            .collect())
    }

    fn put_member(&mut self, key: &MemberKey, value: &MemberValue) -> Result<(), StoreError> {
        self.members.insert(*key, *value);
        Ok(())
    }

    fn delete_member(&mut self, key: &MemberKey) -> Result<(), StoreError> {
        self.members.remove(key);
        Ok(())
    }

    fn list_members(&self) -> Result<Vec<(MemberKey, MemberValue)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self.members.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_name(&mut self, service_id: u32, value: &SvcName) -> Result<(), StoreError> {
        self.names.insert(service_id, *value);
        Ok(())
    }

    fn delete_name(&mut self, service_id: u32) -> Result<(), StoreError> {
        self.names.remove(&service_id);
        Ok(())
    }

    fn get_name(&self, service_id: u32) -> Result<Option<SvcName>, StoreError> {
        Ok(self.names.get(&service_id).copied())
    }

    fn list_names(&self) -> Result<Vec<(u32, SvcName)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self.names.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_maglev(&mut self, key: &MaglevKey, slots: &[u32]) -> Result<(), StoreError> {
        self.ops.push(Op::PutMaglev {
            service_id: key.service_id,
            scope: key.scope,
        });
        self.maglev.insert(*key, slots.to_vec());
        Ok(())
    }

    fn delete_maglev(&mut self, key: &MaglevKey) -> Result<(), StoreError> {
        self.ops.push(Op::DeleteMaglev {
            service_id: key.service_id,
            scope: key.scope,
        });
        self.maglev.remove(key);
        Ok(())
    }

    fn get_maglev(&self, key: &MaglevKey) -> Result<Option<Vec<u32>>, StoreError> {
        Ok(self.maglev.get(key).cloned())
    }

    fn put_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError> {
        self.source_ranges.insert((service_id, *cidr));
        self.ops.push(Op::PutRange {
            service_id,
            cidr: *cidr,
        });
        Ok(())
    }

    fn delete_source_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), StoreError> {
        self.source_ranges.remove(&(service_id, *cidr));
        self.ops.push(Op::DeleteRange {
            service_id,
            cidr: *cidr,
        });
        Ok(())
    }

    fn list_source_ranges(&self, family: Family) -> Result<Vec<(u32, Cidr)>, StoreError> {
        self.list_calls.set(self.list_calls.get() + 1);
        Ok(self
            .source_ranges
            .iter()
            .filter(|(_, c)| c.family() == family)
            .copied()
            .collect())
    }

    fn put_node_addresses(&mut self, addrs: &NodeAddresses) -> Result<(), StoreError> {
        self.node_addresses = *addrs;
        Ok(())
    }

    fn get_node_addresses(&self) -> Result<NodeAddresses, StoreError> {
        Ok(self.node_addresses)
    }
}
