//! Desired state -> maps: diff against what the maps hold, apply in the safe order, one
//! Service at a time so that one failing Service never blocks the others.
//!
//! Per Service: its `DesiredFrontend`s become `FrontendSpec`s; the frontends it no longer
//! wants are removed, the others upserted (the writer writes only entries that differ).
//! The Syncer remembers which frontends each Service owns and the spec last applied, so an
//! `apply` of an unchanged Service costs nothing (not even a read), and a failure
//! (full map, kernel error) puts every frontend the Service touched back to its previous
//! spec.
//!
//! Conntrack, as kube-proxy does it: TCP entries are never flushed (a backend that leaves
//! every slot is drained, not deleted, and keeps its established connections); after a
//! batch, the UDP entries of a frontend whose DNAT target is no longer a *serving*
//! endpoint of it are flushed (only for frontends that lost a serving endpoint, and only
//! when one is left, as kube-proxy's `CleanStaleEntries`); a full sync applies that rule to
//! every UDP frontend, repairs what a crash left behind, and collects the drained backends
//! and retired reverse-NAT entries no live flow names any more.
//!
//! A frontend belongs to one Service: a Service that wants a frontend another Service owns
//! fails (reported) until the owner lets it go.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use service_lb_common::{
    names::{SvcName, KIND_CLUSTER_IP},
    service::{
        BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, SCOPE_EXTERNAL, SCOPE_INTERNAL,
        SVC_FLAG_CLUSTER_IP, SVC_FLAG_DROP_NO_ENDPOINT, SVC_FLAG_TWO_SCOPES,
    },
};
use tracing::{debug, error, warn};

use super::{
    sock_destroy::{ServingBackends, UdpSocketReaper},
    writer::Garbage,
    BackendSpec, Family, FrontendKey, FrontendSpec, L4Proto, MapStore, ServiceWriter, WriteError,
};
use crate::model::{DesiredFrontend, NoEndpoints, Protocol, Scope, ServiceDesired, ServiceName};

mod external;
pub use external::{external_spec, frontend_kind};

/// What one `apply`/`full_sync` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Services whose entries were written.
    pub changed: BTreeSet<ServiceName>,
    pub unchanged: usize,
    pub frontends_upserted: usize,
    pub frontends_removed: usize,
    /// UDP conntrack entries flushed because their backend stopped serving the frontend.
    pub udp_conntrack_flushed: usize,
    /// UDP backends that stopped serving and left every slot, deleted from the backends
    /// map so the kernel re-balances their flows (no conntrack pass).
    pub udp_backends_retired: usize,
    /// Connected UDP sockets (socket LB) destroyed because their backend stopped serving
    /// the frontend.
    pub udp_sockets_destroyed: usize,
    /// What garbage collection deleted and kept (full syncs only).
    pub garbage: Garbage,
    /// Services left at their last good state, with the error (full map, kernel error).
    pub failed: Vec<(ServiceName, String)>,
    /// Errors that belong to no Service (conntrack purge, stale frontends, orphan backends).
    pub errors: Vec<String>,
}

/// The map entry a desired ClusterIP frontend becomes (`SVC_FLAG_TWO_SCOPES` is added by
/// `specs_of`, which sees the twins).
pub fn frontend_spec(frontend: &DesiredFrontend) -> FrontendSpec {
    FrontendSpec {
        key: frontend_key(
            frontend.addr,
            frontend.port,
            frontend.protocol,
            frontend.scope,
        ),
        backends: backend_specs(&frontend.backends),
        flags: SVC_FLAG_CLUSTER_IP | no_endpoint_flag(frontend.no_endpoints),
        affinity_timeout_s: frontend.affinity_timeout_s,
        source_ranges: Vec::new(),
    }
}

fn frontend_key(
    addr: std::net::IpAddr,
    port: u16,
    protocol: Protocol,
    scope: Scope,
) -> FrontendKey {
    FrontendKey {
        addr,
        port,
        proto: match protocol {
            Protocol::Tcp => L4Proto::Tcp,
            Protocol::Udp => L4Proto::Udp,
        },
        scope: match scope {
            Scope::External => SCOPE_EXTERNAL,
            Scope::Internal => SCOPE_INTERNAL,
        },
    }
}

fn backend_specs(backends: &[crate::model::DesiredBackend]) -> Vec<BackendSpec> {
    backends
        .iter()
        .map(|b| BackendSpec {
            addr: b.addr,
            state: if b.terminating {
                BACKEND_STATE_TERMINATING
            } else {
                BACKEND_STATE_ACTIVE
            },
            local: b.local,
        })
        .collect()
}

/// kube-proxy drops (never rejects) when the Service has endpoints but none this traffic
/// policy allows from this node.
fn no_endpoint_flag(no_endpoints: NoEndpoints) -> u16 {
    match no_endpoints {
        NoEndpoints::Reject => 0,
        NoEndpoints::Drop => SVC_FLAG_DROP_NO_ENDPOINT,
    }
}

/// A Service's frontends by key.
type Specs = BTreeMap<FrontendKey, FrontendSpec>;

/// Whether the Syncer may trust what it remembers (`apply`) or must let the writer compare
/// every frontend with the maps (`full_sync`, which repairs drift).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Incremental,
    Full,
}

/// One step a Service's apply took, and what to do with it on failure.
struct Touched {
    key: FrontendKey,
    restore: Restore,
}

enum Restore {
    /// Write this spec again.
    Spec(FrontendSpec),
    /// The frontend did not exist: remove it.
    Remove,
    /// What the maps held could not be read back (drift): leave it as the writer left it
    /// (the writer already undoes its own failed call).
    Keep,
}

/// Keeps the maps equal to the desired state.
pub struct Syncer<M: MapStore> {
    writer: ServiceWriter<M>,
    /// The frontends of each Service, as last applied.
    owned: BTreeMap<ServiceName, Specs>,
    owners: HashMap<FrontendKey, ServiceName>,
    /// The serving endpoints of each UDP frontend, as last applied.
    udp_serving: HashMap<FrontendKey, BTreeSet<SocketAddr>>,
    /// Destroys connected UDP sockets whose backend stopped serving (socket LB on).
    sock_reaper: Option<Box<dyn UdpSocketReaper>>,
    /// The names map entries written for each Service's frontends, by service id.
    named: BTreeMap<ServiceName, BTreeMap<u32, SvcName>>,
}

impl<M: MapStore> Syncer<M> {
    pub fn new(writer: ServiceWriter<M>) -> Self {
        Self {
            writer,
            owned: BTreeMap::new(),
            owners: HashMap::new(),
            udp_serving: HashMap::new(),
            sock_reaper: None,
            named: BTreeMap::new(),
        }
    }

    /// With socket LB on: after each batch, the connected UDP sockets whose backend left
    /// the serving endpoints of their frontend are destroyed by `reaper` (the same
    /// frontends as the UDP conntrack clean-up, and also those left with no endpoint).
    #[must_use]
    pub fn with_socket_reaper(mut self, reaper: Box<dyn UdpSocketReaper>) -> Self {
        self.sock_reaper = Some(reaper);
        self
    }

    /// Applies the desired state of the given Services (an empty `frontends` removes
    /// that Service's frontends).
    pub fn apply(&mut self, desired: &[ServiceDesired]) -> SyncReport {
        let mut report = SyncReport::default();
        let batch: Vec<(ServiceName, Specs)> = desired
            .iter()
            .map(|d| (d.name.clone(), specs_of(d)))
            .collect();
        self.apply_batch(batch, Mode::Incremental, &mut report);
        self.write_names(desired, Mode::Incremental, &mut report);
        self.flush_udp(desired, Mode::Incremental, &mut report);
        self.persist_ids(&mut report);
        report
    }

    /// `desired` is EVERY Service: also removes any frontend in the maps that none of them
    /// wants (after a restart, the maps are the truth until this first full sync). Only
    /// call once every source has synced.
    ///
    /// Frontends still wanted keep their ids and are not rewritten when the maps already
    /// hold them; every frontend is compared with the maps, which repairs drift.
    pub fn full_sync(&mut self, desired: &[ServiceDesired]) -> SyncReport {
        let mut report = SyncReport::default();
        // Reads from one snapshot, writes queued and made in batches (same order).
        let bulk = match self.writer.store_mut().begin_bulk() {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "bulk mode unavailable; writing entry by entry");
                false
            }
        };
        let mut batch: BTreeMap<ServiceName, Specs> = desired
            .iter()
            .map(|d| (d.name.clone(), specs_of(d)))
            .collect();
        // Services this Syncer programmed that are no longer desired at all.
        for name in self.owned.keys() {
            batch.entry(name.clone()).or_default();
        }
        let wanted: BTreeSet<FrontendKey> =
            batch.values().flat_map(|s| s.keys()).copied().collect();
        // Frontends in the maps that no Service owns or wants (left by a previous run).
        let stale: Vec<FrontendKey> = self
            .writer
            .frontends()
            .filter(|k| !wanted.contains(k) && !self.owners.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            match self.writer.remove(&key) {
                Ok(()) => {
                    debug!(frontend = %key, "removed a frontend no Service wants");
                    report.frontends_removed += 1;
                }
                Err(e) => report
                    .errors
                    .push(format!("removing stale frontend {key}: {e}")),
            }
        }
        self.apply_batch(batch.into_iter().collect(), Mode::Full, &mut report);
        if let Err(e) = self.writer.drain_unreferenced_backends() {
            report
                .errors
                .push(format!("draining unreferenced backends: {e}"));
        }
        self.write_names(desired, Mode::Full, &mut report);
        if bulk {
            if let Err(e) = self.writer.store_mut().end_bulk() {
                error!(error = %e, "writing the full sync's queued map updates");
                report
                    .errors
                    .push(format!("writing queued map updates: {e}"));
            }
        }
        self.flush_udp(desired, Mode::Full, &mut report);
        self.collect_garbage(&mut report);
        self.persist_ids(&mut report);
        report
    }

    /// Deletes the drained backends and retired reverse-NAT entries no live conntrack
    /// entry names (see `ServiceWriter::collect_garbage`); the periodic full sync calls it.
    pub fn collect_garbage(&mut self, report: &mut SyncReport) {
        match self.writer.collect_garbage() {
            Ok(garbage) => {
                if garbage.backends + garbage.revnat > 0 {
                    debug!(
                        ?garbage,
                        "collected backends and reverse-NAT entries no flow uses"
                    );
                }
                report.garbage = garbage;
            }
            Err(e) => {
                error!(error = %e, "garbage collection");
                report.errors.push(e.to_string());
            }
        }
    }

    pub fn writer(&self) -> &ServiceWriter<M> {
        &self.writer
    }

    pub fn writer_mut(&mut self) -> &mut ServiceWriter<M> {
        &mut self.writer
    }

    /// The Service a frontend was programmed for (by this Syncer).
    pub fn owner(&self, key: &FrontendKey) -> Option<&ServiceName> {
        self.owners.get(key)
    }

    /// Applies each Service of `batch`. A Service that wants a frontend another Service of
    /// the batch gives up waits until that one is done.
    fn apply_batch(
        &mut self,
        batch: Vec<(ServiceName, Specs)>,
        mode: Mode,
        report: &mut SyncReport,
    ) {
        let mut pending = batch;
        loop {
            let releasing: BTreeSet<ServiceName> = pending.iter().map(|(n, _)| n.clone()).collect();
            let (ready, waiting): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(name, specs)| {
                    !specs.keys().any(|k| {
                        self.owners
                            .get(k)
                            .is_some_and(|owner| owner != name && releasing.contains(owner))
                    })
                });
            let progress = !ready.is_empty();
            for (name, specs) in ready {
                self.apply_service(name, specs, mode, report);
            }
            if waiting.is_empty() {
                return;
            }
            if !progress {
                // A cycle of Services swapping frontends: apply in order; the conflicts are
                // reported and resolved by the next sync.
                for (name, specs) in waiting {
                    self.apply_service(name, specs, mode, report);
                }
                return;
            }
            pending = waiting;
        }
    }

    fn apply_service(
        &mut self,
        name: ServiceName,
        wanted: Specs,
        mode: Mode,
        report: &mut SyncReport,
    ) {
        let previous = self.owned.get(&name);
        if mode == Mode::Incremental && previous.map_or(wanted.is_empty(), |p| *p == wanted) {
            report.unchanged += 1;
            return;
        }
        let previous = previous.cloned().unwrap_or_default();
        if let Some((key, owner)) = wanted.keys().find_map(|k| {
            self.owners
                .get(k)
                .filter(|owner| **owner != name)
                .map(|owner| (k, owner))
        }) {
            let message = format!("frontend {key} is already programmed for Service {owner}");
            warn!(service = %name, "{message}");
            report.failed.push((name, message));
            return;
        }

        let writes_before = self.writer.map_writes();
        let mut touched = Vec::new();
        let mut upserted = 0;
        let mut removed = 0;
        let result = self.write_service(
            &previous,
            &wanted,
            mode,
            &mut touched,
            &mut upserted,
            &mut removed,
        );
        if let Err(e) = result {
            error!(service = %name, error = %e, "service left at its last good state");
            self.roll_back(&name, touched);
            report.failed.push((name, e.to_string()));
            return;
        }

        for key in previous.keys().filter(|k| !wanted.contains_key(*k)) {
            self.owners.remove(key);
            // A frontend that is gone gets no UDP rule, as with kube-proxy: the flows of
            // a deleted Service (port) run out on their own.
            self.udp_serving.remove(key);
        }
        for key in wanted.keys() {
            self.owners.insert(*key, name.clone());
        }
        report.frontends_upserted += upserted;
        report.frontends_removed += removed;
        if self.writer.map_writes() != writes_before {
            report.changed.insert(name.clone());
        } else {
            report.unchanged += 1;
        }
        if wanted.is_empty() {
            self.owned.remove(&name);
        } else {
            self.owned.insert(name, wanted);
        }
    }

    /// Removes what the Service no longer wants, then upserts what it wants; each step is
    /// recorded in `touched` before it is taken.
    fn write_service(
        &mut self,
        previous: &Specs,
        wanted: &Specs,
        mode: Mode,
        touched: &mut Vec<Touched>,
        upserted: &mut usize,
        removed: &mut usize,
    ) -> Result<(), WriteError> {
        // Internal-scope twins are written before the external master that sends
        // in-cluster clients to them (`SVC_FLAG_TWO_SCOPES`), and removed after it stopped
        // doing so.
        let gone = |internal: bool| {
            previous
                .iter()
                .filter(move |(k, _)| !wanted.contains_key(*k) && internal == is_internal(k))
        };
        let stale: Vec<(FrontendKey, FrontendSpec)> =
            gone(false).map(|(k, s)| (*k, s.clone())).collect();
        self.remove_frontends(&stale, touched, removed)?;
        let ordered = wanted
            .iter()
            .filter(|(k, _)| is_internal(k))
            .chain(wanted.iter().filter(|(k, _)| !is_internal(k)));
        for (key, spec) in ordered {
            let restore = match previous.get(key) {
                Some(before) if mode == Mode::Incremental && before == spec => continue,
                Some(before) => Restore::Spec(before.clone()),
                // Not programmed by this Syncer: what the maps hold (after a restart).
                None => match self.writer.read_frontend(key) {
                    Ok(Some(before)) => Restore::Spec(before),
                    Ok(None) => Restore::Remove,
                    Err(e) => {
                        warn!(frontend = %key, error = %e, "cannot read what the maps hold; overwriting it");
                        Restore::Keep
                    }
                },
            };
            touched.push(Touched { key: *key, restore });
            let writes_before = self.writer.map_writes();
            self.writer.upsert(spec)?;
            if self.writer.map_writes() != writes_before {
                *upserted += 1;
            }
        }
        let stale: Vec<(FrontendKey, FrontendSpec)> =
            gone(true).map(|(k, s)| (*k, s.clone())).collect();
        self.remove_frontends(&stale, touched, removed)
    }

    fn remove_frontends(
        &mut self,
        stale: &[(FrontendKey, FrontendSpec)],
        touched: &mut Vec<Touched>,
        removed: &mut usize,
    ) -> Result<(), WriteError> {
        for (key, spec) in stale {
            touched.push(Touched {
                key: *key,
                restore: Restore::Spec(spec.clone()),
            });
            self.writer.remove(key)?;
            *removed += 1;
        }
        Ok(())
    }

    /// Puts every touched frontend back as it was, newest first.
    fn roll_back(&mut self, name: &ServiceName, touched: Vec<Touched>) {
        for step in touched.into_iter().rev() {
            let result = match &step.restore {
                Restore::Spec(spec) => self.writer.upsert(spec).map(|_| ()),
                Restore::Remove => self.writer.remove(&step.key),
                Restore::Keep => Ok(()),
            };
            if let Err(e) = result {
                error!(service = %name, frontend = %step.key, error = %e, "restoring a frontend failed");
            }
        }
    }

    /// The names map (`SLB_SVCNAME_V1`): for each Service of `desired` that was applied,
    /// the namespace/name, port name and kind of each frontend it owns, by service id;
    /// names of frontends it no longer owns go. Only entries that differ are written
    /// (incremental: from what this Syncer wrote; full: from what the map holds, which
    /// repairs drift, and names of service ids no frontend has any more are deleted).
    /// A failure here is reported but fails no Service: names only describe the maps.
    fn write_names(&mut self, desired: &[ServiceDesired], mode: Mode, report: &mut SyncReport) {
        let failed: BTreeSet<&ServiceName> = report.failed.iter().map(|(n, _)| n).collect();
        for d in desired.iter().filter(|d| !failed.contains(&d.name)) {
            let mut now = BTreeMap::new();
            let cluster = d
                .frontends
                .iter()
                .map(|f| (frontend_spec(f).key, f.port_name.as_str(), KIND_CLUSTER_IP));
            let external = d.external.iter().map(|f| {
                (
                    external_spec(f).key,
                    f.port_name.as_str(),
                    frontend_kind(f.kind),
                )
            });
            for (key, port_name, kind) in cluster.chain(external) {
                if self.owners.get(&key) != Some(&d.name) {
                    continue;
                }
                if let Some(id) = self.writer.service_id(&key) {
                    let record = SvcName::new(&d.name.namespace, &d.name.name, port_name, kind);
                    now.insert(id, record);
                }
            }
            let before = self.named.remove(&d.name).unwrap_or_default();
            let store = self.writer.store_mut();
            for (id, record) in &now {
                let same = match mode {
                    Mode::Incremental => before.get(id) == Some(record),
                    Mode::Full => matches!(store.get_name(*id), Ok(Some(r)) if r == *record),
                };
                if !same {
                    if let Err(e) = store.put_name(*id, record) {
                        report
                            .errors
                            .push(format!("naming service id {id} ({}): {e}", d.name));
                    }
                }
            }
            for id in before.keys().filter(|id| !now.contains_key(id)) {
                if let Err(e) = store.delete_name(*id) {
                    report.errors.push(format!("deleting name {id}: {e}"));
                }
            }
            if !now.is_empty() {
                self.named.insert(d.name.clone(), now);
            }
        }
        if mode == Mode::Full {
            let live: BTreeSet<u32> = self
                .writer
                .frontends()
                .filter_map(|k| self.writer.service_id(k))
                .collect();
            let wanted: BTreeSet<&ServiceName> = desired.iter().map(|d| &d.name).collect();
            self.named.retain(|name, _| wanted.contains(name));
            let store = self.writer.store_mut();
            match store.list_names() {
                Ok(names) => {
                    for (id, _) in names.into_iter().filter(|(id, _)| !live.contains(id)) {
                        if let Err(e) = store.delete_name(id) {
                            report.errors.push(format!("deleting name {id}: {e}"));
                        }
                    }
                }
                Err(e) => report.errors.push(format!("listing names: {e}")),
            }
        }
    }

    /// kube-proxy's UDP conntrack clean-up for the frontends of `desired` that were
    /// applied: entries whose backend is not a serving endpoint of their frontend go, for
    /// frontends with a serving endpoint left. Incremental: only frontends that lost a
    /// serving endpoint since the last apply (nothing at all when none did), and without
    /// walking conntrack when every lost backend left all slots: such a backend is deleted
    /// from the backends map and the kernel re-balances its flows
    /// (`ServiceWriter::retire_connectionless_backend`); a pass over the UDP conntrack map
    /// only when one is still in another frontend's slots. Full: a pass for every UDP
    /// frontend (repairs what a restart missed).
    fn flush_udp(&mut self, desired: &[ServiceDesired], mode: Mode, report: &mut SyncReport) {
        let failed: BTreeSet<&ServiceName> = report.failed.iter().map(|(n, _)| n).collect();
        let mut rules: BTreeMap<Family, BTreeMap<u32, BTreeSet<u32>>> = BTreeMap::new();
        let mut sockets = ServingBackends::new();
        for d in desired.iter().filter(|d| !failed.contains(&d.name)) {
            for frontend in d.frontends.iter().filter(|f| f.protocol == Protocol::Udp) {
                let spec = frontend_spec(frontend);
                let serving: BTreeSet<SocketAddr> = frontend.serving.iter().copied().collect();
                let previous = self.udp_serving.insert(spec.key, serving.clone());
                let lost_addrs: Vec<SocketAddr> = previous
                    .map(|p| p.difference(&serving).copied().collect())
                    .unwrap_or_default();
                let lost = !lost_addrs.is_empty();
                if mode == Mode::Incremental && !lost {
                    continue;
                }
                let Some(service_id) = self.writer.service_id(&spec.key) else {
                    continue;
                };
                if self.sock_reaper.is_some() {
                    sockets.insert(service_id, serving.clone());
                }
                if serving.is_empty() {
                    continue;
                }
                if mode == Mode::Incremental {
                    // Backends that left every slot go from the backends map: the kernel
                    // re-balances their flows itself, no conntrack pass is needed. Only
                    // one still in another frontend's slots needs the pass.
                    let mut needs_pass = false;
                    for addr in lost_addrs.iter() {
                        let Some(id) = self.writer.backend_id(*addr, L4Proto::Udp) else {
                            continue;
                        };
                        match self.writer.retire_connectionless_backend(id) {
                            Ok(true) => report.udp_backends_retired += 1,
                            Ok(false) => needs_pass = true,
                            Err(e) => {
                                error!(error = %e, "deleting a UDP backend that stopped serving");
                                report.errors.push(e.to_string());
                                needs_pass = true;
                            }
                        }
                    }
                    if !needs_pass {
                        continue;
                    }
                }
                let ids: BTreeSet<u32> = serving
                    .iter()
                    .filter_map(|addr| self.writer.backend_id(*addr, L4Proto::Udp))
                    .collect();
                rules
                    .entry(spec.key.family())
                    .or_default()
                    .insert(service_id, ids);
            }
        }
        for (family, rules) in rules {
            match self.writer.store_mut().flush_udp_conntrack(family, &rules) {
                Ok(n) => report.udp_conntrack_flushed += n,
                Err(e) => {
                    error!(error = %e, "flushing UDP conntrack of endpoints that stopped serving");
                    report.errors.push(e.to_string());
                }
            }
        }
        if let (Some(reaper), false) = (self.sock_reaper.as_mut(), sockets.is_empty()) {
            match reaper.reap(&sockets) {
                Ok(n) => report.udp_sockets_destroyed += n,
                Err(e) => {
                    error!(error = %e, "destroying connected UDP sockets of endpoints that stopped serving");
                    report.errors.push(e.to_string());
                }
            }
        }
    }

    fn persist_ids(&mut self, report: &mut SyncReport) {
        if let Err(e) = self.writer.persist_next_ids() {
            error!(error = %e, "persisting the id floors");
            report.errors.push(e.to_string());
        }
    }
}

/// Every frontend of the Service (ClusterIP and north-south), with `SVC_FLAG_TWO_SCOPES`
/// on both entries of a frontend that has an entry of each scope: what the Syncer writes
/// (and `service-lb diff` compares).
pub fn specs_of(desired: &ServiceDesired) -> BTreeMap<FrontendKey, FrontendSpec> {
    let mut specs: Specs = desired
        .frontends
        .iter()
        .map(frontend_spec)
        .chain(desired.external.iter().map(external_spec))
        .map(|spec| (spec.key, spec))
        .collect();
    let twins: Vec<FrontendKey> = specs
        .keys()
        .filter(|k| {
            let other = if is_internal(k) {
                SCOPE_EXTERNAL
            } else {
                SCOPE_INTERNAL
            };
            specs.contains_key(&FrontendKey {
                scope: other,
                ..**k
            })
        })
        .copied()
        .collect();
    for key in twins {
        if let Some(spec) = specs.get_mut(&key) {
            spec.flags |= SVC_FLAG_TWO_SCOPES;
        }
    }
    specs
}

fn is_internal(key: &FrontendKey) -> bool {
    key.scope == SCOPE_INTERNAL
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
