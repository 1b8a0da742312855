//! `slb-bench`: the benchmark behind `cargo xtask bench` (issue 4).
//!
//! - `config`: sizes and repeat counts of the full, quick and smallest runs.
//! - `machine`: CPU model, cores, kernel, the clock, for the report header.
//! - `report`: sections of rows, printed as text tables and written as markdown.
//! - `chart`: a hand-drawn SVG line chart (x on a log scale).
//! - `net_cost`: a tc program's BPF_PROG_TEST_RUN cost net of the harness (an empty
//!   program on the same packet), by the test-run timer and by BPF run-time statistics.
//! - `per_packet`: ns per packet of the tc programs through BPF_PROG_TEST_RUN, with N
//!   services of 10 backends in the maps.
//! - `control_plane`: the real daemon's full sync of N services, its memory, and the
//!   change -> map latency; `process_memory`: VmRSS and BPF map memlock of a pid.
//! - `ct_cleanup`: sync time of one UDP endpoint change with a large conntrack table.
//! - `rule_load`: `iptables-restore` / `nft -f` of kube-proxy's layout for N services.
//! - `e2e`: connect + request/response latency, connections/s and bulk throughput from a
//!   client pod: pod IP, ClusterIP via service-lb (tc path and socket LB), via kube-proxy's
//!   iptables and nftables.
//! - `run`: runs every section in order and writes the report and the chart.
pub mod chart;
pub mod config;
pub mod control_plane;
pub mod ct_cleanup;
pub mod e2e;
pub mod machine;
pub mod net_cost;
pub mod per_packet;
pub mod process_memory;
pub mod report;
pub mod rule_load;
pub mod run;

pub use config::BenchConfig;
pub use run::{run, run_control_plane, run_socket_lb, Outcome};
