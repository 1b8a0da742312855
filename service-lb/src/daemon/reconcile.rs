//! From source events to map writes: feeds the [`ClusterState`], decides full versus
//! incremental syncs, runs the [`Syncer`] off the async threads, and reports (logs,
//! metrics, health).
//!
//! Restart safety lives here: until every source has listed everything
//! (`ClusterState::synced`), nothing is written at all — the maps are the truth and the
//! data plane keeps serving what it had. The first write is a full sync with every
//! Service; incremental syncs follow.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use kube::runtime::watcher;
use tracing::{debug, error, info, warn};

use super::service_cidrs::ServiceCidrs;
use crate::{
    dataplane::{program_service_cidrs, sync::SyncReport, Cidr, MapStore, Syncer},
    model::{ClusterState, ServiceDesired, ServiceName, Skip},
    source::{Rejection, SourceEvent},
    telemetry::{
        health::Health,
        metrics::{Metrics, SyncKind},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the map writer task panicked; the maps keep their last written state: {0}")]
    SyncerLost(String),
}

/// What one sync did, for the loop and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncDone {
    pub kind: SyncKind,
    pub services: usize,
    pub report: SyncReport,
}

pub struct Reconciler<M: MapStore> {
    state: ClusterState,
    /// `None` only while a sync runs in a blocking task.
    syncer: Option<Syncer<M>>,
    metrics: Metrics,
    health: Arc<Health>,
    node_name: String,
    /// A change arrived since the last sync.
    pending: bool,
    full_synced: bool,
    /// Skips last reported per Service: each is counted once, not on every sync.
    skips_seen: BTreeMap<ServiceName, Vec<Skip>>,
    /// `--service-cidrs` plus the ServiceCIDR objects (written apart from the Services).
    service_cidrs: ServiceCidrs,
}

impl<M: MapStore + Send + 'static> Reconciler<M> {
    pub fn new(
        syncer: Syncer<M>,
        node_name: String,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Self {
        Self {
            state: ClusterState::new(Some(node_name.clone())),
            syncer: Some(syncer),
            metrics,
            health,
            node_name,
            pending: false,
            full_synced: false,
            skips_seen: BTreeMap::new(),
            service_cidrs: ServiceCidrs::new(&[]),
        }
    }

    /// The `--service-cidrs` ranges (programmed at start-up): kept in the union with the
    /// ServiceCIDR objects' ranges.
    #[must_use]
    pub fn with_service_cidr_flag(mut self, flag: &[Cidr]) -> Self {
        self.service_cidrs = ServiceCidrs::new(flag);
        self
    }

    /// The first full sync has been applied.
    pub fn full_synced(&self) -> bool {
        self.full_synced
    }

    /// A sync would do something now: the first full sync once every source has listed
    /// everything, afterwards any pending change.
    pub fn wants_sync(&self) -> bool {
        if self.full_synced {
            self.pending
        } else {
            self.state.synced()
        }
    }

    pub fn syncer(&self) -> Option<&Syncer<M>> {
        self.syncer.as_ref()
    }

    pub fn syncer_mut(&mut self) -> Option<&mut Syncer<M>> {
        self.syncer.as_mut()
    }

    /// Feeds one event into the state (no map is touched here).
    pub fn on_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Service(e) => {
                self.metrics.count_source_event("Service");
                self.changed();
                self.state.apply_service(*e);
            }
            SourceEvent::EndpointSlice(e) => {
                self.metrics.count_source_event("EndpointSlice");
                self.changed();
                self.state.apply_endpoint_slice(*e);
            }
            SourceEvent::Node(e) => {
                self.metrics.count_source_event("Node");
                self.watch_own_node(&e);
                self.changed();
                self.state.apply_node(*e);
            }
            SourceEvent::Rejected(rejection) => {
                self.metrics.count_source_event("Rejected");
                self.rejected(&rejection);
            }
            SourceEvent::ServiceCidr(e) => {
                self.metrics.count_source_event("ServiceCIDR");
                self.service_cidrs.apply(*e);
                self.write_service_cidrs();
            }
        }
    }

    /// Writes the union of flag and ServiceCIDR ranges when it changed (a few LPM-trie
    /// updates, done in place: the Services' syncs do not wait for it). A failed write is
    /// logged and tried again on the next ServiceCIDR event and on every full resync.
    fn write_service_cidrs(&mut self) {
        let Some(cidrs) = self.service_cidrs.change() else {
            return;
        };
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        let result = program_service_cidrs(syncer.writer_mut().store_mut(), &cidrs);
        if let Err(e) = &result {
            error!(error = %e, "writing the service CIDRs failed; will retry");
        }
        self.service_cidrs.programmed(&cidrs, result.is_ok());
    }

    fn changed(&mut self) {
        if !self.pending {
            self.pending = true;
            self.health.change_queued(SystemTime::now());
        }
    }

    fn rejected(&self, r: &Rejection) {
        warn!(origin = %r.origin, reason = r.reason, detail = %r.detail, "input rejected; the last good objects of that origin are kept");
        self.metrics.count_skipped(kind_of(&r.origin), r.reason);
    }

    /// kube-proxy's node eligibility: a node being deleted is not.
    fn watch_own_node(
        &self,
        event: &watcher::Event<std::sync::Arc<k8s_openapi::api::core::v1::Node>>,
    ) {
        let ours = |n: &k8s_openapi::api::core::v1::Node| {
            n.metadata.name.as_deref() == Some(self.node_name.as_str())
        };
        match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) if ours(node) => {
                let eligible = node.metadata.deletion_timestamp.is_none();
                self.health.set_node_eligible(eligible);
            }
            watcher::Event::Delete(node) if ours(node) => self.health.set_node_eligible(false),
            _ => {}
        }
    }

    /// Syncs if [`Self::wants_sync`]: the first time a full sync, then incremental.
    pub async fn sync(&mut self) -> Result<Option<SyncDone>, ReconcileError> {
        if !self.wants_sync() {
            return Ok(None);
        }
        let kind = if self.full_synced {
            SyncKind::Incremental
        } else {
            SyncKind::Full
        };
        self.run(kind).await.map(Some)
    }

    /// The periodic full resync (repairs drift); a no-op before the first full sync.
    pub async fn resync(&mut self) -> Result<Option<SyncDone>, ReconcileError> {
        self.write_service_cidrs();
        if !self.full_synced {
            return Ok(None);
        }
        self.run(SyncKind::Full).await.map(Some)
    }

    async fn run(&mut self, kind: SyncKind) -> Result<SyncDone, ReconcileError> {
        let started = Instant::now();
        let dirty = self.state.take_dirty();
        self.pending = false;
        let names: Vec<ServiceName> = match kind {
            SyncKind::Full => self.state.service_names(),
            SyncKind::Incremental => dirty.into_iter().collect(),
        };
        let desired: Vec<ServiceDesired> = names.iter().map(|n| self.state.desired(n)).collect();
        self.count_new_skips(&desired, kind);

        let Some(mut syncer) = self.syncer.take() else {
            return Err(ReconcileError::SyncerLost("no syncer".into()));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let report = match kind {
                SyncKind::Full => syncer.full_sync(&desired),
                SyncKind::Incremental => syncer.apply(&desired),
            };
            (syncer, report, desired)
        })
        .await;
        let (syncer, report, desired) =
            joined.map_err(|e| ReconcileError::SyncerLost(e.to_string()))?;
        self.syncer = Some(syncer);

        let elapsed = started.elapsed();
        self.metrics.observe_sync(kind, elapsed.as_secs_f64());
        self.metrics.observe_conntrack(
            report.udp_conntrack_flushed,
            (kind == SyncKind::Full).then_some(&report.garbage),
        );
        self.metrics
            .count_udp_sockets_destroyed(report.udp_sockets_destroyed);
        let now = SystemTime::now();
        if kind == SyncKind::Incremental {
            self.observe_programming_latency(&desired, &report, now);
        }
        for (service, why) in &report.failed {
            error!(service = %service, error = %why, "service left at its last good state");
            self.metrics.count_sync_failure(&service.to_string());
        }
        self.full_synced = true;
        self.health.synced(now, kind == SyncKind::Full);
        let known = self.state.service_names().len();
        self.metrics.set_services(known);
        let log_level_info = kind == SyncKind::Full || !report.changed.is_empty();
        if log_level_info {
            info!(
                kind = kind.label(),
                services = desired.len(),
                changed = report.changed.len(),
                upserted = report.frontends_upserted,
                removed = report.frontends_removed,
                udp_conntrack_flushed = report.udp_conntrack_flushed,
                udp_sockets_destroyed = report.udp_sockets_destroyed,
                draining_backends = report.garbage.backends_kept,
                collected_backends = report.garbage.backends,
                failed = report.failed.len(),
                took_ms = elapsed.as_secs_f64() * 1000.0,
                "synced"
            );
        } else {
            debug!(
                kind = kind.label(),
                services = desired.len(),
                "synced, nothing changed"
            );
        }
        Ok(SyncDone {
            kind,
            services: desired.len(),
            report,
        })
    }

    fn count_new_skips(&mut self, desired: &[ServiceDesired], kind: SyncKind) {
        if kind == SyncKind::Full {
            // Forget Services that no longer exist.
            let live: std::collections::BTreeSet<&ServiceName> =
                desired.iter().map(|d| &d.name).collect();
            self.skips_seen.retain(|name, _| live.contains(name));
        }
        for d in desired {
            let before = self.skips_seen.get(&d.name);
            for skip in &d.skipped {
                if before.is_some_and(|b| b.contains(skip)) {
                    continue;
                }
                warn!(service = %d.name, object = %skip.object, reason = skip.reason, detail = %skip.detail, "skipped");
                self.metrics
                    .count_skipped(kind_of(&skip.object), skip.reason);
            }
            if d.skipped.is_empty() {
                self.skips_seen.remove(&d.name);
            } else {
                self.skips_seen.insert(d.name.clone(), d.skipped.clone());
            }
        }
    }

    fn observe_programming_latency(
        &self,
        desired: &[ServiceDesired],
        report: &SyncReport,
        now: SystemTime,
    ) {
        for d in desired.iter().filter(|d| report.changed.contains(&d.name)) {
            let Some(trigger) = &d.last_change_trigger_time else {
                continue;
            };
            match trigger_age(trigger, now) {
                Some(seconds) => self.metrics.observe_programming_latency(seconds),
                None => debug!(service = %d.name, %trigger, "unreadable last-change-trigger-time"),
            }
        }
    }
}

/// Seconds from an RFC 3339 trigger time to `now` (negative clock skew counts as 0).
pub fn trigger_age(trigger: &str, now: SystemTime) -> Option<f64> {
    let trigger: k8s_openapi::jiff::Timestamp = trigger.parse().ok()?;
    let now = k8s_openapi::jiff::Timestamp::try_from(now).ok()?;
    let span = now.duration_since(trigger);
    Some(span.as_secs_f64().max(0.0))
}

/// The object kind an origin or skip description starts with (`EndpointSlice ns/x ...`),
/// `input` when it names a file or anything else.
pub fn kind_of(origin: &str) -> &'static str {
    match origin.split_whitespace().next() {
        Some("Service") => "Service",
        Some("EndpointSlice") => "EndpointSlice",
        Some("Node") => "Node",
        Some("ServiceCIDR") => "ServiceCIDR",
        _ => "input",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_first_word() {
        assert_eq!(
            kind_of("EndpointSlice default/web-abc endpoint 3"),
            "EndpointSlice"
        );
        assert_eq!(kind_of("Service default/web port 'http'"), "Service");
        assert_eq!(kind_of("web.yaml:12"), "input");
        assert_eq!(kind_of(""), "input");
    }

    #[test]
    fn trigger_ages_are_measured_from_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250);
        let age = trigger_age("2023-11-14T22:13:20Z", now).expect("parses");
        assert!((age - 0.25).abs() < 1e-9, "{age}");
        assert_eq!(trigger_age("2023-11-14T22:13:21Z", now), Some(0.0));
        assert_eq!(trigger_age("yesterday", now), None);
    }
}
