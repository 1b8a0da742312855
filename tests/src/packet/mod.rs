//! BPF_PROG_TEST_RUN fixtures: load the real programs (no pinning, no attach), fill the
//! maps with typed entries, build packets, and check every output byte against an
//! expectation computed here, with this module's own checksum code.
//!
//! - `checksum`: ones'-complement sums (IPv4 header, TCP/UDP pseudo-header), written here.
//! - `builder`: IPv4/IPv6 TCP/UDP/ICMP packets (options, extension headers, fragments),
//!   ARP, and the broken variants (truncated, bad lengths).
//! - `dataplane`: the loaded object, `test_run`, and typed map access: frontends,
//!   backends, conntrack and counters.
//! - `clock`: the programs' conntrack clock, read from userspace.
pub mod builder;
pub mod checksum;
pub mod clock;
pub mod dataplane;

pub use builder::{Ipv6Ext, PacketSpec, L4};
pub use dataplane::{ct_map_for, ct_record, BackendRef, CtRecord, Dataplane, Frontend, RunOutput};
