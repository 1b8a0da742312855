//! ClusterIP addresses: the VIP maps (every address a programmed ClusterIP frontend uses)
//! and the service-CIDR LPM tries (every range ClusterIPs are allocated from).
//!
//! On a frontend miss the programs ask, like kube-proxy's `cluster-ips-check` chain:
//! - an address in a VIP map: a ClusterIP on a port its Service does not define, refused
//!   (TCP reset, ICMP port unreachable);
//! - else an address inside a service CIDR: a ClusterIP no Service owns, dropped.
//!
//! Node addresses are never in either map, so they are never refused.

use core::mem::size_of;

/// Value of the VIP maps (key: the raw address, `[u8; 4]` / `[u8; 16]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipValue {
    /// How many frontends (port, protocol, scope) the daemon programmed on this address.
    pub frontends: u32,
    /// `VIP_FLAG_*`.
    pub flags: u32,
}

/// The address is a ClusterIP (the only kind written today).
pub const VIP_FLAG_CLUSTER_IP: u32 = 1 << 0;

impl VipValue {
    pub const fn cluster_ip(frontends: u32) -> Self {
        Self {
            frontends,
            flags: VIP_FLAG_CLUSTER_IP,
        }
    }
}

/// Value of the service-CIDR tries (key: LPM key of prefix length + raw address).
pub const SERVICE_CIDR_ALLOCATED: u32 = 1;

/// Default capacity of each VIP map (one entry per ClusterIP address).
pub const DEFAULT_VIPS_MAX: u32 = 131_072;
/// Capacity of each service-CIDR trie (a cluster has a handful).
pub const SERVICE_CIDRS_MAX: u32 = 64;

const _: () = assert!(size_of::<VipValue>() == 8);

/// Size of the per-CPU scratch buffer the programs build answers (resets, ICMP errors)
/// in, instead of on the 512-byte BPF stack.
pub const SCRATCH_LEN: usize = 256;

/// Value of the one-entry per-CPU scratch array `SLB_SCRATCH_V1` (kernel-only: userspace
/// never reads it).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_LEN],
}

const _: () = assert!(size_of::<Scratch>() == SCRATCH_LEN);
