//! Bulk mode of the kernel maps, for full syncs (`MapStore::begin_bulk` / `end_bulk`).
//!
//! A full sync compares every frontend with the maps: entry by entry that is one lookup
//! syscall per entry read and one update per entry written (70 syscalls for a Service of
//! 10 endpoints). In bulk mode each control-plane hash map (services, backends, reverse
//! NAT, VIPs, members, names) is read once with `BPF_MAP_LOOKUP_BATCH` into a shadow that
//! answers the reads, and the writes are queued in the order they are made and written in
//! runs with `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`.
//!
//! What stays true:
//! - Order: the queue is replayed exactly in the order of the calls (consecutive writes of
//!   one kind to one map make one run, one syscall), so backends still land before the
//!   slots that name them and the master entry (count) last, per frontend.
//! - Full maps: only the daemon writes these maps, so the shadow knows how many entries
//!   each holds; a put of a new key into a map at `max_entries` fails at once with
//!   `StoreError::Full`, as the kernel would, and the writer rolls the frontend back.
//! - Bounded memory: the queue is written out every `FLUSH_AT` writes.
//!
//! A kernel error while a run is written (not expected: fullness is caught before) is
//! returned by the next flush; the entries before it are written, those after are not
//! (a prefix of the ordered writes, so readers still see whole frontends or old ones).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

use aya::maps::MapData;
use service_lb_common::{
    affinity::{MemberKey, MemberValue},
    Backend4, Backend6, RevNat4, RevNat6, Svc4Key, Svc6Key, SvcName, SvcValue, VipValue,
};

use super::{
    batch,
    bpf_maps::{failed, list},
    maps::{StoreError, StoreOp},
};

type Map<K, V> = aya::maps::HashMap<MapData, K, V>;

/// Writes queued before the queue is written out (bounds the queue's memory).
pub(super) const FLUSH_AT: usize = 65_536;

/// One control-plane map in bulk mode: what it holds (pending writes included) and the
/// writes not yet made.
pub(super) struct Shadow<K, V> {
    entries: HashMap<K, V>,
    max_entries: usize,
    puts: VecDeque<(K, V)>,
    deletes: VecDeque<K>,
}

impl<K: aya::Pod + Eq + Hash, V: aya::Pod> Shadow<K, V> {
    /// Reads the whole map (batch lookups).
    pub(super) fn load(map: &Map<K, V>, name: &'static str) -> Result<Self, StoreError> {
        let max_entries = aya::maps::IterableMap::map(map)
            .info()
            .map_err(|e| failed(name, StoreOp::List, e))?
            .max_entries() as usize;
        Ok(Self {
            entries: list(map, name)?.into_iter().collect(),
            max_entries,
            puts: VecDeque::new(),
            deletes: VecDeque::new(),
        })
    }

    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).copied()
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.entries.iter().map(|(k, v)| (*k, *v))
    }

    /// Queues a put; `Full` when the key is new and the map is at its capacity.
    pub(super) fn put(&mut self, key: K, value: V, name: &'static str) -> Result<(), StoreError> {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            return Err(StoreError::Full { map: name });
        }
        self.entries.insert(key, value);
        self.puts.push_back((key, value));
        Ok(())
    }

    /// Queues a delete; `false` (nothing queued) when the map does not hold the key.
    pub(super) fn delete(&mut self, key: K) -> bool {
        if self.entries.remove(&key).is_none() {
            return false;
        }
        self.deletes.push_back(key);
        true
    }

    /// Writes the next `n` queued writes of `kind` into `map`.
    pub(super) fn write(
        &mut self,
        map: &mut Map<K, V>,
        name: &'static str,
        kind: Kind,
        n: usize,
    ) -> Result<(), StoreError> {
        match kind {
            Kind::Put => {
                let run: Vec<(K, V)> = self.puts.drain(..n.min(self.puts.len())).collect();
                let data = aya::maps::IterableMap::map(map);
                match batch::update(data, &run) {
                    Ok(()) => Ok(()),
                    Err((0, e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                        for (k, v) in &run {
                            super::bpf_maps::put(map, name, k, v)?;
                        }
                        Ok(())
                    }
                    Err((_, e)) => Err(batch_failed(name, StoreOp::Put, e)),
                }
            }
            Kind::Delete => {
                let run: Vec<K> = self.deletes.drain(..n.min(self.deletes.len())).collect();
                let data = aya::maps::IterableMap::map(map);
                match batch::delete(data, &run) {
                    Ok(()) => Ok(()),
                    Err((0, e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                        for k in &run {
                            super::bpf_maps::delete(map, name, k)?;
                        }
                        Ok(())
                    }
                    Err((_, e)) => Err(batch_failed(name, StoreOp::Delete, e)),
                }
            }
        }
    }
}

fn batch_failed(name: &'static str, op: StoreOp, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) if op == StoreOp::Put => {
            StoreError::Full { map: name }
        }
        _ => StoreError::Failed {
            map: name,
            op,
            source: Box::new(e),
        },
    }
}

/// The shadows of every control-plane map, and the order of the queued writes.
pub(super) struct BulkMaps {
    pub(super) svc4: Shadow<Svc4Key, SvcValue>,
    pub(super) svc6: Shadow<Svc6Key, SvcValue>,
    pub(super) be4: Shadow<u32, Backend4>,
    pub(super) be6: Shadow<u32, Backend6>,
    pub(super) rn4: Shadow<u32, RevNat4>,
    pub(super) rn6: Shadow<u32, RevNat6>,
    pub(super) vip4: Shadow<[u8; 4], VipValue>,
    pub(super) vip6: Shadow<[u8; 16], VipValue>,
    pub(super) members: Shadow<MemberKey, MemberValue>,
    /// `None` when the names map is not pinned.
    pub(super) names: Option<Shadow<u32, SvcName>>,
    pub(super) journal: Journal,
    /// The first error a write-out met (returned by `end_bulk`).
    pub(super) error: Option<StoreError>,
}

/// Which map a queued write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    Svc4,
    Svc6,
    Be4,
    Be6,
    Rn4,
    Rn6,
    Vip4,
    Vip6,
    Members,
    Names,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Put,
    Delete,
}

/// The order of the queued writes across maps: runs of one kind to one map.
#[derive(Debug, Default)]
pub(super) struct Journal {
    runs: Vec<(Table, Kind, usize)>,
    queued: usize,
}

impl Journal {
    pub(super) fn note(&mut self, table: Table, kind: Kind) {
        self.queued += 1;
        match self.runs.last_mut() {
            Some((t, k, n)) if *t == table && *k == kind => *n += 1,
            _ => self.runs.push((table, kind, 1)),
        }
    }

    /// Enough is queued to write it out.
    pub(super) fn is_large(&self) -> bool {
        self.queued >= FLUSH_AT
    }

    pub(super) fn take(&mut self) -> Vec<(Table, Kind, usize)> {
        self.queued = 0;
        std::mem::take(&mut self.runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_writes_of_one_kind_to_one_map_make_one_run() {
        let mut j = Journal::default();
        for (t, k) in [
            (Table::Be4, Kind::Put),
            (Table::Be4, Kind::Put),
            (Table::Rn4, Kind::Put),
            (Table::Svc4, Kind::Put),
            (Table::Svc4, Kind::Put),
            (Table::Svc4, Kind::Delete),
            (Table::Svc4, Kind::Put),
        ] {
            j.note(t, k);
        }
        assert_eq!(
            j.take(),
            vec![
                (Table::Be4, Kind::Put, 2),
                (Table::Rn4, Kind::Put, 1),
                (Table::Svc4, Kind::Put, 2),
                (Table::Svc4, Kind::Delete, 1),
                (Table::Svc4, Kind::Put, 1),
            ]
        );
        assert!(j.take().is_empty());
    }
}
