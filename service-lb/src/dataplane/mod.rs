//! Everything that touches the kernel: load, pin, attach, typed map access, write order.
//! The only module of the crate that uses aya.
//!
//! - `options`: where and how big; `layout`: what each map must look like;
//! - `pin`: the bpffs folder and the pin checks; `loader`: `Dataplane::open`;
//! - `interfaces` + `attach`: TCX attachments pinned as links, `detach_all`, `cleanup`;
//! - `sock`: the socket-LB programs on the `--cgroup` folder, links pinned too;
//! - `maps` (the `MapStore` trait), `bpf_maps` (kernel), `fake_maps` (in memory);
//! - `writer`: `ServiceWriter`, the safe write order, ids, rollback;
//! - `vips`: service CIDRs (`Cidr`); the writer keeps the ClusterIP address maps.
pub mod attach;
pub mod bpf_maps;
pub mod clock;
pub mod error;
pub mod fake_maps;
pub mod interfaces;
pub mod layout;
mod link_detach;
pub mod link_watch;
pub mod loader;
pub mod maps;
pub mod object;
pub mod options;
pub mod pin;
pub mod policy_maps;
pub mod policy_writer;
pub mod snat;
pub mod sock;
pub mod sock_destroy;
pub mod sync;
pub mod vips;
pub mod writer;

#[cfg(test)]
mod policy_writer_tests;
#[cfg(test)]
mod writer_tests;

pub use attach::{cleanup, detach_all, Attachment, Cleaned};
pub use bpf_maps::{AffinityRecord, BpfMaps, CounterTotal, CtRecord, CtTable};
pub use error::DataplaneError;
pub use fake_maps::{FakeCt, FakeMaps, Op};
pub use loader::Dataplane;
pub use maps::{BackendValue, CtReferences, Family, MapStore, RevNatValue, StoreError, SvcKey};
pub use options::{DataplaneOptions, MapSizes, PinMismatch, DEFAULT_BPFFS};
pub use sync::{SyncReport, Syncer};
pub use vips::{program_service_cidrs, Cidr};
pub use writer::{
    BackendSpec, FrontendIds, FrontendKey, FrontendSpec, L4Proto, ServiceWriter, WriteError,
};
