//! The membership map (`service_lb_common::affinity`): (service id, backend id) for every
//! backend in a frontend's slots, so the programs can tell with one lookup whether a
//! client's remembered backend still belongs to the frontend.
//!
//! Order: a membership is written before the first slot naming the backend and deleted
//! after the last such slot is gone. The writer keeps the memberships in memory (rebuilt
//! from the slot entries at open, and the map repaired to match).

use std::collections::{BTreeMap, BTreeSet};

use service_lb_common::affinity::{MemberKey, MemberValue};
use tracing::warn;

use super::{FrontendKey, ServiceWriter, WriteError};
use crate::dataplane::maps::MapStore;

impl<M: MapStore> ServiceWriter<M> {
    /// Makes the membership map match the slots recovered at open.
    pub(super) fn recover_members(&mut self) -> Result<(), WriteError> {
        let present: BTreeSet<MemberKey> = self
            .store
            .list_members()
            .map_err(WriteError::Recover)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let wanted: BTreeSet<MemberKey> = self
            .members
            .iter()
            .flat_map(|(sid, ids)| ids.iter().map(|b| MemberKey::new(*sid, *b)))
            .collect();
        for stale in present.difference(&wanted) {
            self.writes += 1;
            self.store
                .delete_member(stale)
                .map_err(WriteError::Recover)?;
        }
        for missing in wanted.difference(&present) {
            self.writes += 1;
            self.store
                .put_member(missing, &MemberValue::IN_SLOTS)
                .map_err(WriteError::Recover)?;
        }
        Ok(())
    }

    /// Before the slots of `service_id` are written: every backend of `backend_ids` is a
    /// member.
    pub(super) fn add_members(
        &mut self,
        frontend: FrontendKey,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<(), WriteError> {
        for id in backend_ids {
            if self
                .members
                .get(&service_id)
                .is_some_and(|s| s.contains(id))
            {
                continue;
            }
            self.writes += 1;
            self.store
                .put_member(&MemberKey::new(service_id, *id), &MemberValue::IN_SLOTS)
                .map_err(|source| WriteError::Store { frontend, source })?;
            self.members.entry(service_id).or_default().insert(*id);
        }
        Ok(())
    }

    /// After the slots of `service_id` hold exactly `backend_ids`: the other memberships
    /// of the service are deleted.
    pub(super) fn keep_members(
        &mut self,
        frontend: &FrontendKey,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<(), WriteError> {
        let keep: BTreeSet<u32> = backend_ids.iter().copied().collect();
        let gone: Vec<u32> = self
            .members
            .get(&service_id)
            .map(|s| s.difference(&keep).copied().collect())
            .unwrap_or_default();
        for id in gone {
            self.writes += 1;
            self.store
                .delete_member(&MemberKey::new(service_id, id))
                .map_err(|source| WriteError::Store {
                    frontend: *frontend,
                    source,
                })?;
            remove_member(&mut self.members, service_id, id);
        }
        Ok(())
    }

    /// After a failed upsert was rolled back to `old_slots`.
    pub(super) fn members_after_failure(
        &mut self,
        frontend: &FrontendKey,
        service_id: Option<u32>,
        old_slots: &[u32],
    ) {
        let Some(service_id) = service_id else {
            return;
        };
        if let Err(e) = self.keep_members(frontend, service_id, old_slots) {
            warn!(%frontend, error = %e, "memberships of a failed write not cleaned; the next sync repairs them");
        }
    }
}

fn remove_member(members: &mut BTreeMap<u32, BTreeSet<u32>>, service_id: u32, id: u32) {
    if let Some(set) = members.get_mut(&service_id) {
        set.remove(&id);
        if set.is_empty() {
            members.remove(&service_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL};

    use super::*;
    use crate::dataplane::{BackendSpec, FakeMaps, FrontendSpec, L4Proto};

    fn spec(port: u16, backends: &[&str]) -> FrontendSpec {
        FrontendSpec {
            key: FrontendKey {
                addr: "198.19.0.10".parse().expect("addr"),
                port,
                proto: L4Proto::Tcp,
                scope: SCOPE_EXTERNAL,
            },
            backends: backends
                .iter()
                .map(|b| BackendSpec {
                    addr: b.parse().expect("backend"),
                    state: BACKEND_STATE_ACTIVE,
                    local: false,
                })
                .collect(),
            flags: 0,
            affinity_timeout_s: 10,
            source_ranges: Vec::new(),
        }
    }

    fn members(w: &ServiceWriter<FakeMaps>) -> Vec<(u32, u32)> {
        w.store()
            .members
            .iter()
            .map(|(k, v)| {
                assert_eq!(*v, MemberValue::IN_SLOTS);
                (k.service_id, k.backend_id)
            })
            .collect()
    }

    #[test]
    fn members_follow_the_slots() {
        let mut w = ServiceWriter::open(FakeMaps::new()).expect("opens");
        let a = "198.18.1.2:8080";
        let b = "198.18.1.3:8080";
        let web = w.upsert(&spec(80, &[a, b])).expect("upsert");
        let other = w.upsert(&spec(81, &[a])).expect("upsert");
        let (sid, ba, bb) = (web.service_id, web.backend_ids[0], web.backend_ids[1]);
        let mut want = vec![(sid, ba), (sid, bb), (other.service_id, ba)];
        want.sort();
        assert_eq!(members(&w), want);

        // b leaves web: its membership goes, a's stays (and the other frontend's).
        w.upsert(&spec(80, &[a])).expect("shrink");
        let mut want = vec![(sid, ba), (other.service_id, ba)];
        want.sort();
        assert_eq!(members(&w), want);

        w.remove(&spec(80, &[]).key).expect("remove");
        assert_eq!(members(&w), [(other.service_id, ba)]);
    }

    #[test]
    fn open_rebuilds_the_membership_map_from_the_slots() {
        let mut w = ServiceWriter::open(FakeMaps::new()).expect("opens");
        let ids = w
            .upsert(&spec(80, &["198.18.1.2:8080", "198.18.1.3:8080"]))
            .expect("upsert");
        let mut maps = w.into_store();
        maps.members.clear();
        maps.members
            .insert(MemberKey::new(999, 1), MemberValue::IN_SLOTS);
        let w = ServiceWriter::open(maps).expect("reopens");
        let mut want: Vec<(u32, u32)> = ids
            .backend_ids
            .iter()
            .map(|b| (ids.service_id, *b))
            .collect();
        want.sort();
        assert_eq!(members(&w), want);
    }
}
