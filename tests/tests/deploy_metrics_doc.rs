//! docs/metrics.md and the alerts in deploy/examples/prometheusrule.yaml name only series the
//! daemon really exports, and every series it exports is documented. The exported names
//! come from the daemon's own registry (its metrics and the data-path collector, with a
//! sample snapshot), encoded as a scrape would be.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use prometheus_client::registry::Registry;
use service_lb::dataplane::writer::Garbage;
use service_lb::telemetry::policy_metrics::PolicyMetrics;
use service_lb::telemetry::{
    metrics::{
        encode_text, DatapathCollector, DatapathSnapshot, MapFill, Metrics, PathCounter, SyncKind,
    },
    process::ProcessCollector,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Series names a scrape can contain: gauges as is, counters with `_total`, histograms as
/// their base name (their `_bucket`/`_sum`/`_count` are folded onto it by `base`).
fn exported() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // Families appear in a scrape once they have a child: record one of each.
    metrics.observe_sync(SyncKind::Full, 0.001);
    metrics.observe_programming_latency(0.1);
    metrics.count_skipped("EndpointSlice", "invalid_ip");
    metrics.count_sync_failure("default/web");
    metrics.count_source_event("Service");
    metrics.count_interface_failure();
    metrics.set_services(1);
    metrics.observe_conntrack(1, Some(&Garbage::default()));
    metrics.count_udp_sockets_destroyed(1);
    let policy = PolicyMetrics::register(&mut registry);
    policy.observe_compile(0.01);
    policy.set_programmed(1);
    policy.set_policies(1);
    policy.count_sync_failure();
    let collector = DatapathCollector::register(&mut registry);
    collector.set(DatapathSnapshot {
        maps: vec![MapFill {
            map: "SLB_SVC4_V1",
            entries: 1,
            capacity: 2,
        }],
        counters: vec![PathCounter {
            hook: "from_pod",
            reason: "dnat_new_flow",
            packets: 1,
            bytes: 1,
        }],
        error: None,
        maps_sampled_at: Some(1.0),
    });
    ProcessCollector::register(&mut registry);
    let text = encode_text(&registry).expect("encodes");
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().expect("name").to_owned();
            match words.next() {
                Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
                _ => name,
            }
        })
        .collect()
}

fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every `service_lb_*` and `process_*` word in `text`.
fn mentioned(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["service_lb_", "process_"]
                .iter()
                .any(|p| w.starts_with(p) && w.len() > p.len())
        })
        .map(|w| base(w).to_owned())
        .collect()
}

#[test]
fn the_metrics_page_documents_exactly_the_exported_series() {
    let exported = exported();
    assert!(exported.len() >= 12, "{exported:?}");
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(exported.contains(process), "{process} not exported");
    }
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    let documented = mentioned(&doc);
    for name in &exported {
        assert!(
            documented.contains(name),
            "{name} is exported but not in docs/metrics.md"
        );
    }
    for name in &documented {
        assert!(
            exported.contains(name),
            "docs/metrics.md names {name}, which the daemon does not export"
        );
    }
}

#[test]
fn the_alerts_use_only_exported_series() {
    let exported = exported();
    let rules = std::fs::read_to_string(repo().join("deploy/examples/prometheusrule.yaml"))
        .expect("prometheusrule.yaml");
    let used = mentioned(&rules);
    assert!(used.len() >= 4, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&name),
            "an alert uses {name}, which is not exported"
        );
    }
}
