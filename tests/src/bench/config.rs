//! What a run measures and how many times: full (`cargo xtask bench`), quick
//! (`--quick`) and smallest (the `bench_quick` test: seconds, only so the code cannot rot).

use std::time::Duration;

use super::e2e::LoopBounds;

/// Sizes and repeat counts of one benchmark run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Name of the mode, for the report ("full", "quick", "smallest").
    pub mode: &'static str,
    /// Numbers of services (10 backends each) in the maps for the per-packet section.
    pub per_packet_services: Vec<u32>,
    /// BPF_PROG_TEST_RUN calls (one run each, each paired with one of the empty
    /// program) per round for the established, reply and pass-through paths.
    pub per_packet_calls: u32,
    /// Distinct new flows (one run each) for the new-flow DNAT path.
    pub new_flows: u32,
    /// Numbers of services for the daemon's full sync, its memory, and the kube-proxy
    /// ruleset loads.
    pub control_plane_services: Vec<u32>,
    /// Services present during the change -> map latency test, and how many changes.
    pub change_services: u32,
    pub changes: u32,
    /// Bounds on one daemon sync and on one `iptables-restore` / `nft -f`.
    pub sync_bound: Duration,
    pub rule_load_bound: Duration,
    /// Services in place for the end-to-end latency runs.
    pub e2e_services: Vec<u32>,
    /// Latency loop and bulk stream bounds of one end-to-end run.
    pub e2e_bounds: LoopBounds,
}

/// Backends per service everywhere in the benchmark.
pub const BACKENDS_PER_SERVICE: u32 = 10;

/// `service-lb run` map-size flags for `services` Services of `BACKENDS_PER_SERVICE`
/// backends each (with headroom), and the given TCP conntrack size.
pub fn daemon_map_args(services: u32, ct_tcp_max: u32) -> Vec<String> {
    vec![
        format!(
            "--map-services-max={}",
            services * (BACKENDS_PER_SERVICE + 1) + 1_024
        ),
        format!(
            "--map-backends-max={}",
            services * BACKENDS_PER_SERVICE + 1_024
        ),
        format!("--map-revnat-max={}", services + 1_024),
        format!("--map-ct-tcp-max={ct_tcp_max}"),
        "--map-ct-any-max=16384".into(),
    ]
}

impl BenchConfig {
    pub fn full() -> Self {
        Self {
            mode: "full",
            per_packet_services: vec![10, 1_000, 10_000, 100_000],
            per_packet_calls: 20_000,
            new_flows: 50_000,
            control_plane_services: vec![1_000, 10_000, 100_000],
            change_services: 10_000,
            changes: 100,
            sync_bound: Duration::from_secs(240),
            rule_load_bound: Duration::from_secs(180),
            e2e_services: vec![1_000, 10_000],
            e2e_bounds: LoopBounds {
                connections: 2_000,
                warmup: 200,
                time: Duration::from_secs(60),
                bulk_bytes: 2 << 30,
                load: Duration::from_secs(200),
            },
        }
    }

    pub fn quick() -> Self {
        Self {
            mode: "quick",
            per_packet_services: vec![10, 1_000],
            per_packet_calls: 5_000,
            new_flows: 10_000,
            control_plane_services: vec![100],
            change_services: 100,
            changes: 20,
            sync_bound: Duration::from_secs(120),
            rule_load_bound: Duration::from_secs(60),
            e2e_services: vec![100],
            e2e_bounds: LoopBounds {
                connections: 500,
                warmup: 50,
                time: Duration::from_secs(30),
                bulk_bytes: 100 << 20,
                load: Duration::from_secs(60),
            },
        }
    }

    /// The quick mode at its smallest size: every section runs, in seconds.
    pub fn smallest() -> Self {
        Self {
            mode: "smallest",
            per_packet_services: vec![10],
            per_packet_calls: 500,
            new_flows: 200,
            control_plane_services: vec![10],
            change_services: 10,
            changes: 5,
            sync_bound: Duration::from_secs(60),
            rule_load_bound: Duration::from_secs(30),
            e2e_services: vec![10],
            e2e_bounds: LoopBounds {
                connections: 30,
                warmup: 5,
                time: Duration::from_secs(15),
                bulk_bytes: 4 << 20,
                load: Duration::from_secs(30),
            },
        }
    }
}
