//! Hairpin: a pod that is a backend of a Service it connects to reaches itself through the
//! ClusterIP. When the chosen backend is the client's own address, the source is also
//! rewritten (SNAT) to a hairpin address, so the pod's reply (pod -> hairpin address)
//! leaves the pod again and `from_pod` can translate it back (source -> frontend,
//! destination -> the pod). Without it the pod's kernel would answer itself from the
//! backend address and the client socket (connected to the ClusterIP) would drop it.
//!
//! The addresses are load-time configuration: the `SLB_HAIRPIN` global, patched by the
//! daemon with `EbpfLoader::override_global`. An all-zero address turns hairpin off for
//! its family.

use core::mem::size_of;

/// Name of the global the programs read the hairpin addresses from.
pub const HAIRPIN_GLOBAL: &str = "SLB_HAIRPIN";

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HairpinConfig {
    /// IPv4 hairpin source; 0.0.0.0 = off.
    pub v4: [u8; 4],
    /// IPv6 hairpin source; :: = off.
    pub v6: [u8; 16],
}

impl HairpinConfig {
    /// Off for both families (what the object holds until the daemon patches it).
    pub const OFF: Self = Self {
        v4: [0; 4],
        v6: [0; 16],
    };

    /// The daemon's defaults for a real cluster (`--hairpin-ipv4`, `--hairpin-ipv6`):
    /// - IPv4 169.254.42.1, Cilium's service loopback address (link-local space: never
    ///   a pod's, a node's or a Service's address, and never routed off the node);
    /// - IPv6 100::42:1, in the discard-only prefix 100::/64 (RFC 6666): never anyone's
    ///   address, and a packet that escaped translation is discarded by design. (The
    ///   link-local fe80::/10 would make the pod look its hairpin peer up with neighbour
    ///   discovery on eth0 instead of sending the reply to its gateway.)
    pub const DEFAULT: Self = Self {
        v4: [169, 254, 42, 1],
        v6: [0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42, 0, 0x01],
    };
}

const _: () = assert!(size_of::<HairpinConfig>() == 20);
