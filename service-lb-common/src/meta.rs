//! The `SLB_META_V1` array (one entry): what wrote the pinned maps.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// `maps::LAYOUT_VERSION` of the daemon that created the maps; 0 = never written.
    pub layout_version: u32,
    /// The lowest service id the daemon may hand out next (0 = unknown). Persisted so an
    /// id that conntrack may still name is not handed to another frontend after a restart,
    /// even when nothing in the services maps names it any more.
    pub next_service_id: u32,
    /// The same for backend ids.
    pub next_backend_id: u32,
    pub _reserved: [u32; 5],
}

const _: () = assert!(size_of::<Meta>() == 32);
