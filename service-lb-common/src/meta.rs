//! The `SLB_META_V1` array (one entry): what wrote the pinned maps.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// `maps::LAYOUT_VERSION` of the daemon that created the maps; 0 = never written.
    pub layout_version: u32,
    /// Next backend id / service id hints, kept by the daemon (ids are also recovered
    /// from the maps themselves).
    pub _reserved: [u32; 7],
}

const _: () = assert!(size_of::<Meta>() == 32);
