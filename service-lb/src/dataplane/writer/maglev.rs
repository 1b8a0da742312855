//! Maglev tables (`service_lb_common::maglev`) of the frontends whose flags carry
//! `SVC_FLAG_MAGLEV`.
//!
//! Order, so the kernel never reads a table naming a backend it cannot find:
//! - the table is written after the backends and before the master entry (which carries
//!   the flag and the count): once the master says "Maglev, count > 0", the table names
//!   only backends of that count;
//! - a table is deleted after the master entry lost the flag (or the frontend): the
//!   kernel then no longer reads it.
//!
//! A table is built (`model::maglev::populate`, from the backends' addresses, ports and
//! protocol, so every node builds the same one) only when the frontend's backend set or
//! the table size changed since the last write: the writer remembers each frontend's last
//! set. After a restart the first write of each frontend rebuilds the table and compares
//! it with the stored one, writing nothing when they match.

use std::collections::HashMap;

use service_lb_common::{maglev::MaglevKey, service::SVC_FLAG_MAGLEV};

use super::{FrontendKey, FrontendSpec, ServiceWriter, Undo, WriteError};
use crate::{
    dataplane::maps::MapStore,
    model::maglev::{populate, MaglevBackend, TableSize},
};

/// What a frontend's stored table was built from: the table size and the (identity,
/// backend id) pairs, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Built {
    size: u32,
    backends: Vec<(MaglevBackend, u32)>,
}

/// Per-frontend memory of the Maglev tables and the configured table size.
#[derive(Debug, Default)]
pub(super) struct MaglevTables {
    pub(super) size: TableSize,
    pub(super) built: HashMap<FrontendKey, Built>,
}

/// A frontend's table, or `None` when it should have none (flag off or no backend).
fn wanted(spec: &FrontendSpec, backend_ids: &[u32], size: TableSize) -> Option<Built> {
    if spec.flags & SVC_FLAG_MAGLEV == 0 || backend_ids.is_empty() {
        return None;
    }
    let proto = spec.key.proto.number();
    let mut backends: Vec<(MaglevBackend, u32)> = spec
        .backends
        .iter()
        .zip(backend_ids)
        .map(|(b, id)| {
            (
                MaglevBackend {
                    addr: b.addr,
                    proto,
                },
                *id,
            )
        })
        .collect();
    backends.sort_unstable();
    // The same backend listed twice has one id and one place in the table.
    backends.dedup();
    Some(Built {
        size: size.get(),
        backends,
    })
}

impl<M: MapStore> ServiceWriter<M> {
    /// The table size new tables get (existing ones are rebuilt at their next write).
    pub fn set_maglev_table_size(&mut self, size: TableSize) {
        self.maglev.size = size;
    }

    /// Before the master entry is written: the frontend's table, when it wants one and
    /// its backend set differs from the stored table's.
    pub(super) fn maglev_before_master(
        &mut self,
        spec: &FrontendSpec,
        service_id: u32,
        backend_ids: &[u32],
        undo: &mut Vec<Undo>,
    ) -> Result<(), WriteError> {
        let frontend = spec.key;
        let Some(built) = wanted(spec, backend_ids, self.maglev.size) else {
            return Ok(());
        };
        if self.maglev.built.get(&frontend) == Some(&built) {
            return Ok(());
        }
        let identities: Vec<MaglevBackend> = built.backends.iter().map(|(b, _)| *b).collect();
        let table: Vec<u32> = populate(&identities, self.maglev.size)
            .map_err(|source| WriteError::Maglev { frontend, source })?
            .into_iter()
            .map(|i| built.backends[i].1)
            .collect();
        let key = MaglevKey::new(service_id, frontend.scope);
        let store_err = |source| WriteError::Store { frontend, source };
        let previous = self.store.get_maglev(&key).map_err(store_err)?;
        if previous.as_deref() != Some(table.as_slice()) {
            self.writes += 1;
            self.store
                .put_maglev(&key, &table)
                .map_err(|s| super::full_or_store(frontend, s))?;
            undo.push(Undo::Maglev { key, previous });
        }
        self.maglev.built.insert(frontend, built);
        Ok(())
    }

    /// After the master entry is written: the table of a frontend that no longer wants
    /// one (flag cleared, or no backend left) goes.
    /// `old_flags`: the master's flags before this write (0 for a new frontend).
    pub(super) fn maglev_after_master(
        &mut self,
        spec: &FrontendSpec,
        old_flags: u16,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<(), WriteError> {
        if spec.flags & SVC_FLAG_MAGLEV != 0 && !backend_ids.is_empty() {
            return Ok(());
        }
        self.maglev_delete(&spec.key, old_flags, service_id)
    }

    /// The frontend's table, if any, is deleted (after its master entry is gone or no
    /// longer carries the flag). Only a frontend whose master had the flag, or that this
    /// writer gave a table, is looked up: other frontends cost no read.
    pub(super) fn maglev_delete(
        &mut self,
        frontend: &FrontendKey,
        old_flags: u16,
        service_id: u32,
    ) -> Result<(), WriteError> {
        if old_flags & SVC_FLAG_MAGLEV == 0 && !self.maglev.built.contains_key(frontend) {
            return Ok(());
        }
        let key = MaglevKey::new(service_id, frontend.scope);
        let store_err = |source| WriteError::Store {
            frontend: *frontend,
            source,
        };
        self.maglev.built.remove(frontend);
        if self.store.get_maglev(&key).map_err(store_err)?.is_some() {
            self.writes += 1;
            self.store.delete_maglev(&key).map_err(store_err)?;
        }
        Ok(())
    }

    /// After a failed write was rolled back: what the writer remembers of the frontend's
    /// table may be stale; the next write rebuilds and compares.
    pub(super) fn maglev_forget(&mut self, frontend: &FrontendKey) {
        self.maglev.built.remove(frontend);
    }
}
