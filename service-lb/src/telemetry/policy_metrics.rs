//! Prometheus series of NetworkPolicy enforcement that the daemon updates (the model and
//! its sink). Allowed/denied flow counters by direction come from the data path's
//! `Reason` counters (`service_lb_datapath_packets` and friends), not from here.

use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

/// Cheap to clone (every metric is an `Arc`).
#[derive(Clone, Debug)]
pub struct PolicyMetrics {
    pods_programmed: Gauge,
    policies: Gauge,
    compile_seconds: Histogram,
    sync_failures: Counter,
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            pods_programmed: Gauge::default(),
            policies: Gauge::default(),
            // 100 us .. ~6.5 s.
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            sync_failures: Counter::default(),
        };
        registry.register(
            "service_lb_policy_pods_programmed",
            "Local pods whose compiled NetworkPolicy view the data path holds (at the last successful policy sync)",
            metrics.pods_programmed.clone(),
        );
        registry.register(
            "service_lb_policies",
            "NetworkPolicies known to the daemon (every namespace)",
            metrics.policies.clone(),
        );
        registry.register_with_unit(
            "service_lb_policy_compile",
            "Time to recompile the local pods a change affects (the whole node on the first and the periodic full syncs)",
            Unit::Seconds,
            metrics.compile_seconds.clone(),
        );
        registry.register(
            "service_lb_policy_sync_failures",
            "Policy syncs whose programming failed; the previous policy state keeps serving and the next sync retries in full",
            metrics.sync_failures.clone(),
        );
        metrics
    }

    pub fn observe_compile(&self, seconds: f64) {
        self.compile_seconds.observe(seconds.max(0.0));
    }

    pub fn set_programmed(&self, pods: usize) {
        self.pods_programmed
            .set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    pub fn set_policies(&self, policies: usize) {
        self.policies
            .set(i64::try_from(policies).unwrap_or(i64::MAX));
    }

    pub fn count_sync_failure(&self) {
        self.sync_failures.inc();
    }
}
