//! service-lb-tests: privileged test harness.
//!
//! - `packet`: BPF_PROG_TEST_RUN fixtures (packet builders, independent checksum checks).
//! - `netns`, `topology`, `servers`: network-namespace topologies per
//!   `shared/notes/test-network.md`, small TCP/UDP servers and clients.
//! - `capture`: a passive AF_PACKET capture on one interface of a test namespace.
//! - `scenario`: end-to-end scenarios shared by the tests and `cargo xtask demo`.
pub mod bench;
pub mod capture;
pub mod cgroup;
pub mod daemon;
pub mod fake_apiserver;
pub mod journey;
pub mod kube_proxy_rules;
pub mod load;
pub mod netns;
pub mod packet;
pub mod policy;
pub mod privileges;
pub mod scenario;
pub mod servers;
pub mod topology;
