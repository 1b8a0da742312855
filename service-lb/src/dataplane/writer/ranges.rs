//! The source-range tries (`SLB_SRCRNG4_V1` / `SLB_SRCRNG6_V1`): for a frontend with
//! `loadBalancerSourceRanges`, one LPM entry per (service id, range). The programs look
//! them up only when the master entry has `SVC_FLAG_SOURCE_RANGES`, so the order is:
//! new ranges are written before the master (with the flag) is written, stale ranges are
//! deleted after it (a range that goes is still allowed for the few microseconds between
//! the two writes; a range that comes never misses), and all of a frontend's ranges go
//! after its master is deleted or written without the flag.
//!
//! The writer keeps each service id's ranges in memory (recovered at open), so a write
//! touches only the entries that differ and never lists a map.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use super::{full_or_store, FrontendKey, ServiceWriter, Undo, WriteError};
use crate::dataplane::{
    maps::{Family, MapStore},
    vips::Cidr,
};

/// Ranges by service id, as the tries hold them.
pub(super) type Ranges = BTreeMap<u32, BTreeSet<Cidr>>;

/// The ranges both tries hold, by service id.
pub(super) fn recover<M: MapStore>(store: &M) -> Result<Ranges, WriteError> {
    let mut out = Ranges::new();
    for family in Family::ALL {
        for (service_id, cidr) in store
            .list_source_ranges(family)
            .map_err(WriteError::Recover)?
        {
            out.entry(service_id).or_default().insert(cidr);
        }
    }
    Ok(out)
}

impl<M: MapStore> ServiceWriter<M> {
    /// The source ranges the tries hold for `service_id`.
    pub fn source_ranges(&self, service_id: u32) -> Vec<Cidr> {
        self.ranges
            .get(&service_id)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Before the master of `key` is written: every range of `wanted` is in the trie
    /// (each write recorded in `undo`). A range of the other family is an error.
    pub(super) fn add_ranges(
        &mut self,
        key: FrontendKey,
        service_id: u32,
        wanted: &[Cidr],
        undo: &mut Vec<Undo>,
    ) -> Result<(), WriteError> {
        for cidr in wanted {
            if cidr.family() != key.family() {
                return Err(WriteError::RangeFamily {
                    frontend: key,
                    range: *cidr,
                });
            }
            if self
                .ranges
                .get(&service_id)
                .is_some_and(|r| r.contains(cidr))
            {
                continue;
            }
            self.writes += 1;
            self.store
                .put_source_range(service_id, cidr)
                .map_err(|s| full_or_store(key, s))?;
            self.ranges.entry(service_id).or_default().insert(*cidr);
            undo.push(Undo::RangeAdded {
                service_id,
                cidr: *cidr,
            });
        }
        Ok(())
    }

    /// Takes back a range `add_ranges` wrote.
    pub(super) fn undo_range(&mut self, service_id: u32, cidr: &Cidr) -> Result<(), WriteError> {
        self.writes += 1;
        if let Some(set) = self.ranges.get_mut(&service_id) {
            set.remove(cidr);
            if set.is_empty() {
                self.ranges.remove(&service_id);
            }
        }
        self.store
            .delete_source_range(service_id, cidr)
            .map_err(WriteError::Gc)
    }

    /// After the master of `key` is written: the ranges of `service_id` not in `keep` are
    /// deleted (all of them when `keep` is empty).
    pub(super) fn prune_ranges(
        &mut self,
        key: &FrontendKey,
        service_id: u32,
        keep: &[Cidr],
    ) -> Result<(), WriteError> {
        let Some(held) = self.ranges.get(&service_id) else {
            return Ok(());
        };
        let stale: Vec<Cidr> = held.iter().filter(|c| !keep.contains(c)).copied().collect();
        for cidr in stale {
            self.writes += 1;
            self.store
                .delete_source_range(service_id, &cidr)
                .map_err(|source| WriteError::Store {
                    frontend: *key,
                    source,
                })?;
            if let Some(set) = self.ranges.get_mut(&service_id) {
                set.remove(&cidr);
            }
        }
        if self.ranges.get(&service_id).is_some_and(BTreeSet::is_empty) {
            self.ranges.remove(&service_id);
        }
        Ok(())
    }

    /// Ranges of service ids that have no master entry (left by a crash, or by a run that
    /// removed the frontend but failed to delete them): deleted by the first full sync.
    pub(super) fn prune_orphan_ranges(&mut self) -> Result<usize, WriteError> {
        let live: BTreeSet<u32> = self.services.values().copied().collect();
        let orphans: Vec<u32> = self
            .ranges
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        let mut deleted = 0;
        for id in orphans {
            let cidrs = self.ranges.remove(&id).unwrap_or_default();
            for cidr in cidrs {
                self.writes += 1;
                match self.store.delete_source_range(id, &cidr) {
                    Ok(()) => deleted += 1,
                    Err(e) => {
                        warn!(service_id = id, range = %cidr, error = %e, "deleting an orphan source range");
                        self.ranges.entry(id).or_default().insert(cidr);
                        return Err(WriteError::Gc(e));
                    }
                }
            }
        }
        Ok(deleted)
    }
}
