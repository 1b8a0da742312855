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

use super::node_addresses::snat_addresses;
use super::policy::{PolicySync, PolicySyncDone};
use super::service_cidrs::ServiceCidrs;
use crate::{
    dataplane::{
        maps::NodeAddresses, program_service_cidrs, sync::SyncReport, Cidr, MapStore, Syncer,
    },
    model::{ClusterState, HealthCheck, NodePortAddresses, ServiceDesired, ServiceName, Skip},
    source::{Rejection, SourceEvent},
    telemetry::{
        health::Health,
        metrics::{Metrics, SyncKind},
        service_health::ServiceHealthServers,
    },
};

/// kube-proxy's `ToBeDeletedTaint`: the cluster autoscaler is about to delete the node.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

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
    /// Told after each sync that changed the maps (the metrics' map sampler).
    on_sync: Option<Arc<tokio::sync::Notify>>,
    /// Kubernetes Events (start, failed syncs).
    events: Option<Arc<dyn super::events::EventSink>>,
    /// NetworkPolicy (`--network-policy on`); `None` only while a policy sync runs in a
    /// blocking task, or when enforcement is off.
    policy: Option<PolicySync>,
    policy_on: bool,
    /// Health check node ports wanted, by Service (from the last desired state of each).
    health_checks: BTreeMap<ServiceName, HealthCheck>,
    /// Where they are served (`None`: not served, e.g. in unit tests).
    service_health: Option<ServiceHealthServers>,
    /// Reads the external interfaces' addresses (NodePort addresses), before each full
    /// sync.
    interface_addresses: Option<InterfaceAddresses>,
    /// Service syncs run (full and incremental): what coalescing is judged by.
    syncs_run: u64,
    /// The SNAT source addresses last written into `SLB_NODEADDR_V1` (`None`: not yet).
    node_addresses: Option<NodeAddresses>,
}

/// Reads this node's external interface addresses.
pub type InterfaceAddresses = Box<dyn Fn() -> Vec<std::net::IpAddr> + Send>;

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
            on_sync: None,
            events: None,
            policy: None,
            policy_on: false,
            health_checks: BTreeMap::new(),
            service_health: None,
            interface_addresses: None,
            syncs_run: 0,
            node_addresses: None,
        }
    }

    /// The `--service-cidrs` ranges (programmed at start-up): kept in the union with the
    /// ServiceCIDR objects' ranges.
    #[must_use]
    pub fn with_service_cidr_flag(mut self, flag: &[Cidr]) -> Self {
        self.service_cidrs = ServiceCidrs::new(flag);
        self
    }

    /// Start and failed-sync events go to `sink`.
    pub fn with_events(mut self, sink: Arc<dyn super::events::EventSink>) -> Self {
        self.events = Some(sink);
        self
    }

    /// `notify` is told after each sync that changed the maps.
    pub fn notify_on_sync(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_sync = Some(notify);
        self
    }

    /// Enforces NetworkPolicy with `policy` (without it, Pod, Namespace and
    /// NetworkPolicy events are ignored).
    #[must_use]
    pub fn with_policy(mut self, policy: PolicySync) -> Self {
        self.policy = Some(policy);
        self.policy_on = true;
        self
    }

    pub fn policy(&self) -> Option<&PolicySync> {
        self.policy.as_ref()
    }

    /// Where the external interfaces' addresses come from (read before each full sync).
    pub fn with_interface_addresses(mut self, read: InterfaceAddresses) -> Self {
        self.interface_addresses = Some(read);
        self
    }

    /// `--lb-algorithm`.
    pub fn with_lb_algorithm(mut self, algorithm: crate::model::maglev::LbAlgorithm) -> Self {
        self.state.set_lb_algorithm(algorithm);
        self
    }

    /// `--nodeport-addresses`.
    pub fn with_nodeport_addresses(mut self, nodeport: NodePortAddresses) -> Self {
        self.state.set_nodeport_addresses(nodeport);
        self
    }

    /// Serves the health check node ports of the Services that need one.
    pub fn with_service_health(mut self, servers: ServiceHealthServers) -> Self {
        self.service_health = Some(servers);
        self
    }

    /// The health check node ports wanted now, by Service.
    pub fn health_checks(&self) -> &BTreeMap<ServiceName, HealthCheck> {
        &self.health_checks
    }

    /// Service syncs run so far (full and incremental).
    pub fn syncs_run(&self) -> u64 {
        self.syncs_run
    }

    /// The first full sync has been applied.
    pub fn full_synced(&self) -> bool {
        self.full_synced
    }

    /// A sync would do something now: the first full sync once every source has listed
    /// everything, afterwards any pending change.
    pub fn wants_sync(&self) -> bool {
        self.services_want_sync() || self.policy.as_ref().is_some_and(PolicySync::wants_sync)
    }

    fn services_want_sync(&self) -> bool {
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
            SourceEvent::Pod(e) => {
                self.metrics.count_source_event("Pod");
                if let Some(policy) = self.policy.as_mut() {
                    policy.on_pod(*e);
                }
            }
            SourceEvent::Namespace(e) => {
                self.metrics.count_source_event("Namespace");
                if let Some(policy) = self.policy.as_mut() {
                    policy.on_namespace(*e);
                }
            }
            SourceEvent::NetworkPolicy(e) => {
                self.metrics.count_source_event("NetworkPolicy");
                if let Some(policy) = self.policy.as_mut() {
                    policy.on_policy(*e);
                }
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

    /// Recompiles and programs the policy changes (off the async threads); `None` when
    /// policy is off or not every policy kind has listed yet.
    pub async fn sync_policy(
        &mut self,
        full: bool,
    ) -> Result<Option<PolicySyncDone>, ReconcileError> {
        if !self.policy_on {
            return Ok(None);
        }
        let Some(mut policy) = self.policy.take() else {
            return Err(ReconcileError::SyncerLost("no policy sync".into()));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let done = policy.sync(full);
            (policy, done)
        })
        .await;
        let (policy, done) = joined.map_err(|e| ReconcileError::SyncerLost(e.to_string()))?;
        self.policy = Some(policy);
        Ok(done)
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

    /// kube-proxy's node eligibility (`SyncNode`): a node being deleted, or tainted
    /// `ToBeDeletedByClusterAutoscaler`, is not.
    fn watch_own_node(
        &self,
        event: &watcher::Event<std::sync::Arc<k8s_openapi::api::core::v1::Node>>,
    ) {
        let ours = |n: &k8s_openapi::api::core::v1::Node| {
            n.metadata.name.as_deref() == Some(self.node_name.as_str())
        };
        match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) if ours(node) => {
                let to_be_deleted = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
                let eligible = node.metadata.deletion_timestamp.is_none() && !to_be_deleted;
                self.health.set_node_eligible(eligible);
            }
            watcher::Event::Delete(node) if ours(node) => self.health.set_node_eligible(false),
            _ => {}
        }
    }

    /// Syncs if [`Self::wants_sync`]: the first time a full sync, then incremental.
    /// A pending policy change is synced first (its own full/incremental choice).
    pub async fn sync(&mut self) -> Result<Option<SyncDone>, ReconcileError> {
        if self.policy.as_ref().is_some_and(PolicySync::wants_sync) {
            self.sync_policy(false).await?;
        }
        if !self.services_want_sync() {
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
        self.sync_policy(true).await?;
        if !self.full_synced {
            return Ok(None);
        }
        self.run(SyncKind::Full).await.map(Some)
    }

    async fn run(&mut self, kind: SyncKind) -> Result<SyncDone, ReconcileError> {
        let started = Instant::now();
        self.syncs_run += 1;
        if kind == SyncKind::Full {
            if let Some(read) = &self.interface_addresses {
                self.state.set_interface_addresses(read());
            }
        }
        self.write_node_addresses();
        let dirty = self.state.take_dirty();
        self.pending = false;
        let names: Vec<ServiceName> = match kind {
            SyncKind::Full => self.state.service_names(),
            SyncKind::Incremental => dirty.into_iter().collect(),
        };
        let desired: Vec<ServiceDesired> = names.iter().map(|n| self.state.desired(n)).collect();
        self.count_new_skips(&desired, kind);
        self.note_health_checks(&desired, kind);

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
            if let Some(events) = &self.events {
                events.sync_failed(service, why);
            }
        }
        if !self.full_synced {
            if let Some(events) = &self.events {
                let programmed = desired
                    .iter()
                    .filter(|d| !d.frontends.is_empty())
                    .count()
                    .saturating_sub(report.failed.len());
                events.started(&self.node_name, programmed);
            }
        }
        self.full_synced = true;
        self.health.synced(now, kind == SyncKind::Full);
        if let Some(servers) = self.service_health.as_mut() {
            for (service, e) in servers.sync(&self.health_checks).await {
                error!(service = %service, error = %e, "health check node port not open");
            }
        }
        // The count only: listing 100k names here cost every incremental sync.
        let (known, _) = self.state.object_counts();
        self.metrics.set_services(known);
        if report.frontends_upserted + report.frontends_removed > 0
            || !report.changed.is_empty()
            || report.garbage.backends + report.garbage.revnat > 0
        {
            if let Some(notify) = &self.on_sync {
                notify.notify_one();
            }
        }
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
        let services = desired.len();
        drop(desired);
        if kind == SyncKind::Full {
            release_free_heap();
        }
        Ok(SyncDone {
            kind,
            services,
            report,
        })
    }

    /// Writes this node's SNAT source addresses when they changed (before the frontends
    /// that use them). A failure is logged and retried on the next sync.
    fn write_node_addresses(&mut self) {
        let wanted = snat_addresses(self.state.node().as_ref(), &self.state.nodeport_addresses());
        if self.node_addresses == Some(wanted) {
            return;
        }
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        match syncer.writer_mut().store_mut().put_node_addresses(&wanted) {
            Ok(()) => {
                info!(v4 = ?wanted.v4, v6 = ?wanted.v6, "SNAT source addresses written");
                self.node_addresses = Some(wanted);
            }
            Err(e) => error!(error = %e, "writing the SNAT source addresses failed; will retry"),
        }
    }

    fn note_health_checks(&mut self, desired: &[ServiceDesired], kind: SyncKind) {
        if kind == SyncKind::Full {
            let live: std::collections::BTreeSet<&ServiceName> =
                desired.iter().map(|d| &d.name).collect();
            self.health_checks.retain(|name, _| live.contains(name));
        }
        for d in desired {
            match d.health_check {
                Some(check) => {
                    self.health_checks.insert(d.name.clone(), check);
                }
                None => {
                    self.health_checks.remove(&d.name);
                }
            }
        }
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

/// Gives the heap pages freed by a full sync (the parsed initial lists, the maps'
/// snapshot of bulk mode) back to the system: glibc keeps them in its arenas otherwise,
/// and they stay in the daemon's RSS for good.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
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
        Some("Pod") => "Pod",
        Some("Namespace") => "Namespace",
        Some("NetworkPolicy") => "NetworkPolicy",
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
