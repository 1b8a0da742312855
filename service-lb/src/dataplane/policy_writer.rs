//! `PolicyWriter`: the `PolicySink` that programs compiled pod policies into the policy
//! maps (`policy_maps`), with what it programmed kept in memory to diff against.
//!
//! Only pods isolated in at least one direction are programmed (a pod absent from the
//! pod hash is allowed everything). Port sets are interned: equal sets share one id and
//! one set of port trie entries, deleted when no peer entry names them.
//!
//! # Write order (make before break)
//! 1. port sets new to this update (their blocks), so every id written later is complete;
//! 2. peer entries new or changed, longest prefix first;
//! 3. pod hash entries (new pods, new flags, new addresses), the "enabled" switch on first;
//! 4. pod hash entries of removed pods and addresses;
//! 5. peer entries no longer wanted, shortest prefix first;
//! 6. port sets no longer named; the switch off when no pod is left.
//!
//! With that order every lookup during an update answers as the old or as the new
//! policy for each (pod, direction, peer address): while entries are added longest first,
//! a longest match is either a new entry (every longer new entry covering the address is
//! already written, so it is the new answer) or an old one no new entry is longer than
//! (the old answer); while old-only entries are deleted shortest first, a remaining one
//! that matches is the old table's longest match. So a half-applied update never denies
//! what both the old and the new policy allow.
//!
//! A failed write returns the error; what was written is recorded, so the next `apply`
//! or `resync` finishes the job (the kernel's state is always a mix as described above).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::Context as _;
use service_lb_common::policy::{
    PolPod, POL_DIR_EGRESS, POL_DIR_INGRESS, POL_ISOLATED_EGRESS, POL_ISOLATED_INGRESS,
};

use super::{
    maps::StoreError,
    policy_maps::{PeerKey, PolicyMapStore, PortKey},
};
use crate::model::policy::{
    sink::PolicySink, Direction, ObjectKey, PodPolicy, PolicyChanges, PolicyModel, PortSet, Prefix,
};

/// What one pod is programmed as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Programmed {
    id: u32,
    flags: u8,
    ips: BTreeSet<IpAddr>,
    /// (direction, peer prefix) -> port set id.
    peers: BTreeMap<(u8, Prefix), u32>,
}

/// An interned port set.
#[derive(Clone, Debug)]
struct Interned {
    id: u32,
    /// Peer entries (programmed or being programmed) that name it.
    refs: usize,
}

/// Programs `PodPolicy`s into a `PolicyMapStore` (see the module doc).
#[derive(Debug)]
pub struct PolicyWriter<S> {
    store: S,
    pods: BTreeMap<ObjectKey, Programmed>,
    sets: BTreeMap<PortSet, Interned>,
    set_by_id: BTreeMap<u32, PortSet>,
    next_pod_id: u32,
    next_set_id: u32,
    free_pod_ids: BTreeSet<u32>,
    free_set_ids: BTreeSet<u32>,
    enabled: Option<bool>,
    /// A write failed: the in-memory record may differ from the maps. The next `apply`
    /// or `resync` reprograms everything under fresh ids and sweeps the rest.
    broken: bool,
}

/// Wanted state of one pod (`None`: not programmed).
type Wanted = Option<(u8, BTreeSet<IpAddr>, BTreeMap<(u8, Prefix), PortSet>)>;

fn dir_code(dir: Direction) -> u8 {
    match dir {
        Direction::Ingress => POL_DIR_INGRESS,
        Direction::Egress => POL_DIR_EGRESS,
    }
}

fn wanted_of(policy: Option<&PodPolicy>) -> Wanted {
    let policy = policy?;
    let mut flags = 0;
    if policy.ingress.isolated {
        flags |= POL_ISOLATED_INGRESS;
    }
    if policy.egress.isolated {
        flags |= POL_ISOLATED_EGRESS;
    }
    if flags == 0 || policy.ips.is_empty() {
        return None;
    }
    let mut peers = BTreeMap::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let d = policy.direction(dir);
        if !d.isolated {
            continue;
        }
        for (prefix, set) in &d.entries {
            peers.insert((dir_code(dir), *prefix), set.clone());
        }
    }
    Some((flags, policy.ips.iter().copied().collect(), peers))
}

impl<S: PolicyMapStore> PolicyWriter<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            pods: BTreeMap::new(),
            sets: BTreeMap::new(),
            set_by_id: BTreeMap::new(),
            next_pod_id: 0,
            next_set_id: 0,
            free_pod_ids: BTreeSet::new(),
            free_set_ids: BTreeSet::new(),
            enabled: None,
            broken: false,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Number of programmed pods, peer entries and interned port sets.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let peers = self.pods.values().map(|p| p.peers.len()).sum();
        (self.pods.len(), peers, self.sets.len())
    }

    fn alloc_pod_id(&mut self) -> u32 {
        if let Some(id) = self.free_pod_ids.pop_first() {
            return id;
        }
        let id = self.next_pod_id;
        self.next_pod_id = self.next_pod_id.wrapping_add(1);
        id
    }

    /// Interns `set`, writing its blocks if it is new; one more reference.
    fn intern(&mut self, set: &PortSet) -> Result<u32, StoreError> {
        if let Some(i) = self.sets.get_mut(set) {
            i.refs += 1;
            return Ok(i.id);
        }
        let id = match self.free_set_ids.pop_first() {
            Some(id) => id,
            None => {
                let id = self.next_set_id;
                self.next_set_id = self.next_set_id.wrapping_add(1);
                id
            }
        };
        for (proto, first, len) in set.blocks() {
            self.store.put_pol_port(&PortKey {
                set_id: id,
                proto: proto.number(),
                first,
                len,
            })?;
        }
        self.sets.insert(set.clone(), Interned { id, refs: 1 });
        self.set_by_id.insert(id, set.clone());
        Ok(id)
    }

    /// One reference fewer on set `id`; its blocks deleted at zero.
    fn release(&mut self, id: u32) -> Result<(), StoreError> {
        let Some(set) = self.set_by_id.get(&id).cloned() else {
            return Ok(());
        };
        let Some(i) = self.sets.get_mut(&set) else {
            return Ok(());
        };
        i.refs = i.refs.saturating_sub(1);
        if i.refs > 0 {
            return Ok(());
        }
        for (proto, first, len) in set.blocks() {
            self.store.delete_pol_port(&PortKey {
                set_id: id,
                proto: proto.number(),
                first,
                len,
            })?;
        }
        self.sets.remove(&set);
        self.set_by_id.remove(&id);
        self.free_set_ids.insert(id);
        Ok(())
    }

    fn set_enabled(&mut self, on: bool) -> Result<(), StoreError> {
        if self.enabled != Some(on) {
            self.store.set_policy_enabled(on)?;
            self.enabled = Some(on);
        }
        Ok(())
    }

    /// Programs `wanted` for each pod, in the module doc's order.
    fn program(&mut self, wanted: BTreeMap<ObjectKey, Wanted>) -> Result<(), StoreError> {
        // 1 + 2: port sets, then new or changed peer entries, longest prefix first.
        let mut next: BTreeMap<ObjectKey, Programmed> = BTreeMap::new();
        for (key, want) in &wanted {
            let Some((flags, ips, peers)) = want else {
                continue;
            };
            let id = match self.pods.get(key) {
                Some(p) => p.id,
                None => self.alloc_pod_id(),
            };
            let mut programmed = Programmed {
                id,
                flags: *flags,
                ips: ips.clone(),
                peers: BTreeMap::new(),
            };
            let mut order: Vec<(&(u8, Prefix), &PortSet)> = peers.iter().collect();
            order.sort_by_key(|((_, p), _)| std::cmp::Reverse(p.prefix_len()));
            for (&(dir, prefix), set) in order {
                let set_id = self.intern(set)?;
                let unchanged =
                    self.pods.get(key).and_then(|p| p.peers.get(&(dir, prefix))) == Some(&set_id);
                if !unchanged {
                    let peer = PeerKey {
                        pod_id: id,
                        dir,
                        prefix,
                    };
                    self.store.put_pol_peer(&peer, set_id)?;
                }
                programmed.peers.insert((dir, prefix), set_id);
            }
            next.insert(key.clone(), programmed);
        }

        // 3: pod hash entries of wanted pods.
        if !next.is_empty() {
            self.set_enabled(true)?;
        }
        for (key, p) in &next {
            let value = PolPod::new(p.id, p.flags);
            let old = self.pods.get(key);
            for ip in &p.ips {
                let same = old.is_some_and(|o| o.flags == p.flags && o.ips.contains(ip));
                if !same {
                    self.store.put_pol_pod(*ip, &value)?;
                }
            }
        }
        // Addresses now owned by a wanted pod (an address may move between pods).
        let owned: BTreeSet<IpAddr> = next.values().flat_map(|p| p.ips.iter().copied()).collect();
        let kept: BTreeSet<IpAddr> = self
            .pods
            .iter()
            .filter(|(k, _)| !wanted.contains_key(*k))
            .flat_map(|(_, p)| p.ips.iter().copied())
            .collect();

        // 4: pod hash entries of removed pods and addresses.
        for key in wanted.keys() {
            let Some(old) = self.pods.get(key) else {
                continue;
            };
            for ip in &old.ips {
                if !owned.contains(ip) && !kept.contains(ip) {
                    self.store.delete_pol_pod(*ip)?;
                }
            }
        }

        // 5: old-only peer entries, shortest prefix first; 6: their sets.
        for key in wanted.keys() {
            let Some(old) = self.pods.get(key).cloned() else {
                continue;
            };
            let new_peers = next.get(key).map(|p| &p.peers);
            let same_id = next.get(key).is_some_and(|p| p.id == old.id);
            let mut gone: Vec<(&(u8, Prefix), &u32)> = old
                .peers
                .iter()
                .filter(|(k, _)| !same_id || !new_peers.is_some_and(|n| n.contains_key(*k)))
                .collect();
            gone.sort_by_key(|((_, p), _)| p.prefix_len());
            for (&(dir, prefix), _) in gone {
                self.store.delete_pol_peer(&PeerKey {
                    pod_id: old.id,
                    dir,
                    prefix,
                })?;
            }
            // Every old reference goes (the new ones were counted by `intern`).
            for set_id in old.peers.values() {
                self.release(*set_id)?;
            }
            self.pods.remove(key);
            if !next.contains_key(key) {
                self.free_pod_ids.insert(old.id);
            }
        }
        self.pods.extend(next);
        if self.pods.is_empty() {
            self.set_enabled(false)?;
        }
        Ok(())
    }

    /// Highest pod id and set id found in the maps (after a restart, fresh ids start
    /// above them, so entries of the previous run are never mixed with new ones).
    fn floor_ids_from_maps(&mut self) -> Result<(), StoreError> {
        let max_pod = self
            .store
            .list_pol_peers()?
            .iter()
            .map(|(k, _)| k.pod_id)
            .chain(self.store.list_pol_pods()?.iter().map(|(_, p)| p.pod_id))
            .max();
        let max_set = self.store.list_pol_ports()?.iter().map(|k| k.set_id).max();
        if let Some(m) = max_pod {
            self.next_pod_id = self.next_pod_id.max(m.wrapping_add(1));
        }
        if let Some(m) = max_set {
            self.next_set_id = self.next_set_id.max(m.wrapping_add(1));
        }
        Ok(())
    }

    /// Deletes map entries this writer did not program (a previous run's leftovers),
    /// pods first, then peers shortest prefix first, then port blocks.
    fn sweep_foreign(&mut self) -> Result<(), StoreError> {
        let ours_ips: BTreeMap<IpAddr, PolPod> = self
            .pods
            .values()
            .flat_map(|p| {
                p.ips
                    .iter()
                    .map(move |ip| (*ip, PolPod::new(p.id, p.flags)))
            })
            .collect();
        for (ip, value) in self.store.list_pol_pods()? {
            if ours_ips.get(&ip) != Some(&value) {
                match ours_ips.get(&ip) {
                    Some(v) => self.store.put_pol_pod(ip, v)?,
                    None => self.store.delete_pol_pod(ip)?,
                }
            }
        }
        let ours_peers: BTreeMap<PeerKey, u32> = self
            .pods
            .values()
            .flat_map(|p| {
                p.peers.iter().map(move |(&(dir, prefix), &set)| {
                    (
                        PeerKey {
                            pod_id: p.id,
                            dir,
                            prefix,
                        },
                        set,
                    )
                })
            })
            .collect();
        let mut foreign: Vec<PeerKey> = self
            .store
            .list_pol_peers()?
            .into_iter()
            .filter(|(k, v)| ours_peers.get(k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        foreign.sort_by_key(|k| k.prefix.prefix_len());
        for k in foreign {
            match ours_peers.get(&k) {
                Some(v) => self.store.put_pol_peer(&k, *v)?,
                None => self.store.delete_pol_peer(&k)?,
            }
        }
        let ours_ports: BTreeSet<PortKey> = self
            .set_by_id
            .iter()
            .flat_map(|(&id, set)| {
                set.blocks()
                    .into_iter()
                    .map(move |(proto, first, len)| PortKey {
                        set_id: id,
                        proto: proto.number(),
                        first,
                        len,
                    })
            })
            .collect();
        for k in self.store.list_pol_ports()? {
            if !ours_ports.contains(&k) {
                self.store.delete_pol_port(&k)?;
            }
        }
        Ok(())
    }
}

impl<S: PolicyMapStore> PolicySink for PolicyWriter<S> {
    fn apply(&mut self, model: &PolicyModel, changes: &PolicyChanges) -> anyhow::Result<()> {
        if self.broken {
            return self.resync(model);
        }
        let mut wanted = BTreeMap::new();
        for key in &changes.updated {
            wanted.insert(key.clone(), wanted_of(model.pod_policy(key)));
        }
        for key in &changes.removed {
            wanted.insert(key.clone(), None);
        }
        let done = self.program(wanted);
        self.broken = done.is_err();
        done.context("programming NetworkPolicy maps")
    }

    fn resync(&mut self, model: &PolicyModel) -> anyhow::Result<()> {
        let start_over = self.broken;
        self.broken = true;
        self.resync_inner(model, start_over)?;
        self.broken = false;
        Ok(())
    }
}

impl<S: PolicyMapStore> PolicyWriter<S> {
    fn resync_inner(&mut self, model: &PolicyModel, start_over: bool) -> anyhow::Result<()> {
        if start_over {
            // Start over under ids above every id in the maps: the new entries are
            // complete before the pod hash points at them, the old ones swept after.
            self.pods.clear();
            self.sets.clear();
            self.set_by_id.clear();
            self.free_pod_ids.clear();
            self.free_set_ids.clear();
        }
        if self.pods.is_empty() && self.sets.is_empty() {
            self.floor_ids_from_maps()
                .context("reading NetworkPolicy maps")?;
        }
        let mut wanted: BTreeMap<ObjectKey, Wanted> =
            self.pods.keys().map(|k| (k.clone(), None)).collect();
        for (key, policy) in model.compiled() {
            wanted.insert(key.clone(), wanted_of(Some(policy)));
        }
        self.program(wanted)
            .context("programming NetworkPolicy maps")?;
        // The switch follows the pod hash even when nothing changed (a fresh writer).
        let on = !self.pods.is_empty();
        self.enabled = None;
        self.set_enabled(on)
            .context("writing the NetworkPolicy switch")?;
        self.sweep_foreign()
            .context("removing stale NetworkPolicy entries")
    }
}
