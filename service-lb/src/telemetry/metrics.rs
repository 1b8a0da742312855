//! Prometheus metrics of the daemon (prometheus-client; the registry is built here and
//! passed down, no globals). Names are `service_lb_*` with unit suffixes.
//!
//! Two kinds of series:
//! - updated by the daemon as things happen ([`Metrics`]: sync durations, programming
//!   latency, skipped objects, sync failures, source events);
//! - read from the data plane ([`DatapathCollector`]): the programs' per-CPU counters
//!   summed over CPUs are read at each scrape (a fixed-size array: hooks x reasons); map
//!   entries are *sampled* off the scrape path (`daemon::datapath`: the service, backend
//!   and reverse-NAT maps after each sync, the conntrack maps on a timer), so a scrape
//!   costs the same whatever the maps hold.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::{Registry, Unit},
};

use crate::dataplane::writer::Garbage;

/// `kind` of a sync: the periodic/first full sync or an incremental one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    Full,
    Incremental,
}

impl SyncKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SkipLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// The series the daemon updates itself. Cheap to clone (every metric is an `Arc`).
#[derive(Clone, Debug)]
pub struct Metrics {
    sync_duration: Family<KindLabel, Histogram>,
    programming_latency: Histogram,
    syncs: Family<KindLabel, Counter>,
    objects_skipped: Family<SkipLabels, Counter>,
    sync_failures: Family<ServiceLabel, Counter>,
    source_events: Family<KindLabel, Counter>,
    services: Gauge,
    interface_failures: Counter,
    udp_conntrack_flushed: Counter,
    udp_sockets_destroyed: Counter,
    backends_draining: Gauge,
    revnat_retired: Gauge,
    garbage_collected: Family<KindLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// Registers every series in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sync_duration: Family::new_with_constructor(latency_histogram),
            programming_latency: latency_histogram(),
            syncs: Family::default(),
            objects_skipped: Family::default(),
            sync_failures: Family::default(),
            source_events: Family::default(),
            services: Gauge::default(),
            interface_failures: Counter::default(),
            udp_conntrack_flushed: Counter::default(),
            udp_sockets_destroyed: Counter::default(),
            backends_draining: Gauge::default(),
            revnat_retired: Gauge::default(),
            garbage_collected: Family::default(),
        };
        registry.register_with_unit(
            "service_lb_sync_duration",
            "Time to compute and write the desired state of the changed Services (kind=full|incremental)",
            Unit::Seconds,
            metrics.sync_duration.clone(),
        );
        registry.register_with_unit(
            "service_lb_network_programming_latency",
            "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to its maps being written",
            Unit::Seconds,
            metrics.programming_latency.clone(),
        );
        registry.register(
            "service_lb_syncs",
            "Syncs applied to the maps (kind=full|incremental)",
            metrics.syncs.clone(),
        );
        registry.register(
            "service_lb_objects_skipped",
            "Objects or parts of objects left out (kind=Service|EndpointSlice|Node|input, reason=short label)",
            metrics.objects_skipped.clone(),
        );
        registry.register(
            "service_lb_sync_failures",
            "Services left at their last good state because writing them failed",
            metrics.sync_failures.clone(),
        );
        registry.register(
            "service_lb_source_events",
            "Watch events received from the source (kind=Service|EndpointSlice|Node|Rejected)",
            metrics.source_events.clone(),
        );
        registry.register(
            "service_lb_services",
            "Services currently known to the daemon",
            metrics.services.clone(),
        );
        registry.register(
            "service_lb_interface_attach_failures",
            "Interfaces that appeared (or changed) and could not get the programs attached",
            metrics.interface_failures.clone(),
        );
        registry.register(
            "service_lb_udp_conntrack_flushed",
            "UDP conntrack entries flushed because their backend stopped serving the frontend (kube-proxy's conntrack clean-up)",
            metrics.udp_conntrack_flushed.clone(),
        );
        registry.register(
            "service_lb_udp_sockets_destroyed",
            "Connected UDP sockets of the node's network namespace destroyed (netlink SOCK_DESTROY) because the backend the socket LB gave them stopped serving their Service",
            metrics.udp_sockets_destroyed.clone(),
        );
        registry.register(
            "service_lb_backends_draining",
            "Backends in no frontend's slots kept for the connections conntrack still holds on them (at the last full sync)",
            metrics.backends_draining.clone(),
        );
        registry.register(
            "service_lb_revnat_retired",
            "Reverse-NAT entries of removed frontends kept for their live connections (at the last full sync)",
            metrics.revnat_retired.clone(),
        );
        registry.register(
            "service_lb_garbage_collected",
            "Draining backends (kind=backend) and retired reverse-NAT entries (kind=revnat) deleted once no live connection named them",
            metrics.garbage_collected.clone(),
        );
        metrics
    }

    /// The conntrack side of a sync: UDP flushes, and (full syncs) garbage collection.
    /// Connected UDP sockets destroyed by a sync (socket LB).
    pub fn count_udp_sockets_destroyed(&self, n: usize) {
        self.udp_sockets_destroyed
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    pub fn observe_conntrack(&self, flushed: usize, garbage: Option<&Garbage>) {
        self.udp_conntrack_flushed
            .inc_by(u64::try_from(flushed).unwrap_or(u64::MAX));
        let Some(garbage) = garbage else {
            return;
        };
        let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.backends_draining.set(clamp(garbage.backends_kept));
        self.revnat_retired.set(clamp(garbage.revnat_kept));
        for (kind, n) in [("backend", garbage.backends), ("revnat", garbage.revnat)] {
            self.garbage_collected
                .get_or_create(&KindLabel { kind })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    pub fn observe_sync(&self, kind: SyncKind, seconds: f64) {
        let label = KindLabel { kind: kind.label() };
        self.sync_duration.get_or_create(&label).observe(seconds);
        self.syncs.get_or_create(&label).inc();
    }

    pub fn observe_programming_latency(&self, seconds: f64) {
        self.programming_latency.observe(seconds.max(0.0));
    }

    pub fn count_skipped(&self, kind: &str, reason: &str) {
        self.objects_skipped
            .get_or_create(&SkipLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn count_sync_failure(&self, service: &str) {
        self.sync_failures
            .get_or_create(&ServiceLabel {
                service: service.to_owned(),
            })
            .inc();
    }

    pub fn count_source_event(&self, kind: &'static str) {
        self.source_events.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn count_interface_failure(&self) {
        self.interface_failures.inc();
    }

    pub fn set_services(&self, count: usize) {
        self.services.set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// One map's fill level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// One data-path counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathCounter {
    pub hook: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// What the data plane looked like: counters at the last scrape, map fills at the last
/// sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatapathSnapshot {
    pub maps: Vec<MapFill>,
    pub counters: Vec<PathCounter>,
    /// Why the last read of the counters failed (the series are then left out).
    pub error: Option<String>,
    /// When `maps` was sampled (seconds since the epoch).
    pub maps_sampled_at: Option<f64>,
}

/// Encodes the last [`DatapathSnapshot`] on each scrape.
#[derive(Clone, Default)]
pub struct DatapathCollector {
    snapshot: Arc<Mutex<DatapathSnapshot>>,
}

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatapathCollector").finish_non_exhaustive()
    }
}

impl DatapathCollector {
    /// Registers a collector in `registry` and returns a handle to feed it.
    pub fn register(registry: &mut Registry) -> Self {
        let collector = Self::default();
        registry.register_collector(Box::new(collector.clone()));
        collector
    }

    pub fn set(&self, snapshot: DatapathSnapshot) {
        *self.lock() = snapshot;
    }

    /// The sampler's part: map fills, and when they were read.
    pub fn set_maps(&self, maps: Vec<MapFill>, sampled_at: std::time::SystemTime) {
        let at = sampled_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut snapshot = self.lock();
        snapshot.maps = maps;
        snapshot.maps_sampled_at = Some(at);
    }

    /// The scrape's part: the counters, or why they could not be read.
    pub fn set_counters(&self, counters: Result<Vec<PathCounter>, String>) {
        let mut snapshot = self.lock();
        match counters {
            Ok(counters) => {
                snapshot.counters = counters;
                snapshot.error = None;
            }
            Err(e) => {
                snapshot.counters.clear();
                snapshot.error = Some(e);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DatapathSnapshot> {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self) -> DatapathSnapshot {
        self.lock().clone()
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.get();
        let entries_unit = Unit::Other("entries".into());
        if !snapshot.maps.is_empty() {
            let mut family = encoder.encode_descriptor(
                "service_lb_map_entries",
                "Entries in each BPF map, as last sampled (service maps after each sync, conntrack maps every 30 s)",
                None,
                MetricType::Gauge,
            )?;
            for fill in &snapshot.maps {
                let labels = [("map", fill.map)];
                ConstGauge::new(clamp(fill.entries)).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "service_lb_map_capacity",
                "Capacity (max_entries) of each BPF map",
                Some(&entries_unit),
                MetricType::Gauge,
            )?;
            for fill in &snapshot.maps {
                let labels = [("map", fill.map)];
                ConstGauge::new(clamp(fill.capacity)).encode(family.encode_family(&labels)?)?;
            }
        }
        if !snapshot.counters.is_empty() {
            let mut family = encoder.encode_descriptor(
                "service_lb_datapath_packets",
                "Packets seen by the eBPF programs, per hook and outcome, summed over CPUs",
                None,
                MetricType::Counter,
            )?;
            for c in &snapshot.counters {
                let labels = [("hook", c.hook), ("reason", c.reason)];
                ConstCounter::new(c.packets).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "service_lb_datapath_bytes",
                "Bytes seen by the eBPF programs, per hook and outcome, summed over CPUs",
                None,
                MetricType::Counter,
            )?;
            for c in &snapshot.counters {
                let labels = [("hook", c.hook), ("reason", c.reason)];
                ConstCounter::new(c.bytes).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(at) = snapshot.maps_sampled_at {
            let family = encoder.encode_descriptor(
                "service_lb_map_entries_sampled_timestamp",
                "When service_lb_map_entries was last sampled, seconds since the epoch",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
            g.set(at);
            g.encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "service_lb_datapath_read_errors",
            "1 when the last scrape could not read the pinned maps",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snapshot.error.is_some())).encode(family)?;
        Ok(())
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders the registry in the text exposition format.
pub fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Content type of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Parses sample lines (`name{labels} value`) into name+labels -> value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample has a value");
                (
                    series.to_owned(),
                    value.parse::<f64>().expect("numeric value"),
                )
            })
            .collect()
    }

    #[test]
    fn daemon_series_are_named_with_units_and_count() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe_sync(SyncKind::Full, 0.003);
        metrics.observe_sync(SyncKind::Incremental, 0.001);
        metrics.observe_sync(SyncKind::Incremental, 0.002);
        metrics.observe_programming_latency(0.25);
        metrics.count_skipped("EndpointSlice", "invalid_ip");
        metrics.count_skipped("EndpointSlice", "invalid_ip");
        metrics.count_skipped("input", "parse_error");
        metrics.count_sync_failure("default/web");
        metrics.set_services(3);
        let text = encode_text(&registry).expect("encodes");
        let s = samples(&text);
        assert_eq!(s["service_lb_syncs_total{kind=\"incremental\"}"], 2.0);
        assert_eq!(
            s["service_lb_sync_duration_seconds_count{kind=\"full\"}"],
            1.0
        );
        assert_eq!(
            s["service_lb_objects_skipped_total{kind=\"EndpointSlice\",reason=\"invalid_ip\"}"],
            2.0
        );
        assert_eq!(
            s["service_lb_objects_skipped_total{kind=\"input\",reason=\"parse_error\"}"],
            1.0
        );
        assert_eq!(
            s["service_lb_sync_failures_total{service=\"default/web\"}"],
            1.0
        );
        assert_eq!(
            s["service_lb_network_programming_latency_seconds_count"],
            1.0
        );
        assert_eq!(
            s["service_lb_network_programming_latency_seconds_sum"],
            0.25
        );
        assert_eq!(s["service_lb_services"], 3.0);
        assert!(text.contains("# TYPE service_lb_sync_duration_seconds histogram"));
    }

    #[test]
    fn the_datapath_snapshot_is_encoded_at_scrape_time() {
        let mut registry = Registry::default();
        let collector = DatapathCollector::register(&mut registry);
        let before = samples(&encode_text(&registry).expect("encodes"));
        assert_eq!(before["service_lb_datapath_read_errors"], 0.0);
        assert!(!before
            .keys()
            .any(|k| k.starts_with("service_lb_map_entries")));

        collector.set(DatapathSnapshot {
            maps: vec![MapFill {
                map: "SLB_SVC4_V1",
                entries: 7,
                capacity: 1024,
            }],
            counters: vec![PathCounter {
                hook: "from_pod",
                reason: "dnat_new_flow",
                packets: 12,
                bytes: 900,
            }],
            error: None,
            maps_sampled_at: Some(1_764_000_000.0),
        });
        let s = samples(&encode_text(&registry).expect("encodes"));
        assert_eq!(
            s["service_lb_map_entries_sampled_timestamp_seconds"],
            1_764_000_000.0
        );
        assert_eq!(s["service_lb_map_entries{map=\"SLB_SVC4_V1\"}"], 7.0);
        assert_eq!(
            s["service_lb_map_capacity_entries{map=\"SLB_SVC4_V1\"}"],
            1024.0
        );
        assert_eq!(
            s["service_lb_datapath_packets_total{hook=\"from_pod\",reason=\"dnat_new_flow\"}"],
            12.0
        );
        assert_eq!(
            s["service_lb_datapath_bytes_total{hook=\"from_pod\",reason=\"dnat_new_flow\"}"],
            900.0
        );

        collector.set(DatapathSnapshot {
            error: Some("gone".into()),
            ..DatapathSnapshot::default()
        });
        let s = samples(&encode_text(&registry).expect("encodes"));
        assert_eq!(s["service_lb_datapath_read_errors"], 1.0);
    }
}
