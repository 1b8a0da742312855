//! Desired state -> maps: diff against what the maps hold, apply in the safe order, one
//! Service at a time so that one failing Service never blocks the others.
//! (helper "model" implements this)

use std::collections::BTreeSet;

use super::{MapStore, ServiceWriter};
use crate::model::{ServiceDesired, ServiceName};

/// What one `apply`/`full_sync` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Services whose entries were written.
    pub changed: BTreeSet<ServiceName>,
    pub unchanged: usize,
    pub frontends_upserted: usize,
    pub frontends_removed: usize,
    /// Conntrack entries deleted because their backend left every frontend.
    pub conntrack_purged: usize,
    /// Services left at their last good state, with the error (full map, kernel error).
    pub failed: Vec<(ServiceName, String)>,
}

/// Keeps the maps equal to the desired state.
pub struct Syncer<M: MapStore> {
    writer: ServiceWriter<M>,
}

impl<M: MapStore> Syncer<M> {
    pub fn new(writer: ServiceWriter<M>) -> Self {
        Self { writer }
    }

    /// Applies the desired state of the given Services (an empty `frontends` removes
    /// that Service's frontends).
    pub fn apply(&mut self, _desired: &[ServiceDesired]) -> SyncReport {
        SyncReport::default()
    }

    /// `desired` is EVERY Service: also removes any frontend in the maps that none of them
    /// wants (after a restart, the maps are the truth until this first full sync). Only
    /// call once every source has synced.
    pub fn full_sync(&mut self, _desired: &[ServiceDesired]) -> SyncReport {
        SyncReport::default()
    }

    pub fn writer(&self) -> &ServiceWriter<M> {
        &self.writer
    }
}
