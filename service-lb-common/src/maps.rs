//! Map names and default sizes.
//!
//! Names are short (the kernel keeps 15 characters), prefixed `SLB_` and versioned `_V<n>`:
//! a layout change gets a new name, so an old pin is never reused with a new layout.
//! (`SLB_CNT_V3`: reasons were added (conntrack, ICMP errors, refusals). The conntrack
//! value gained `nat_port_be` in what were padding bytes, always zero before, and new flag
//! bits and a new state value (`CT_STATE_HALF_CLOSED`) that old entries never carry, so
//! pinned conntrack maps stay valid and keep their name: established flows survive an
//! upgrade. `SLB_CNT_V4`: the fragment and hairpin reasons were appended, which moves every index
//! `hook * Reason::COUNT + reason`. `SLB_CNT_V5`: the socket hooks, their reasons, the
//! NetworkPolicy reasons and `pass_mid_flow` were appended. `SLB_CNT_V6`: the `sock_release` hook
//! and the north-south reasons (`drop_source_range` .. `snat_established`, 43-49) and
//! `sock_rev_released` (50) and `snat_route_pass` (51) were appended. An upgrade across a counters
//! rename starts counting from zero; the old pin stays until `service-lb cleanup`, so a
//! downgrade finds its own counters again.)
//! The eBPF statics carry exactly these names.

/// Layout version written into the `SLB_META_V1` map; bumped on any ABI change.
pub const LAYOUT_VERSION: u32 = 1;

pub const SERVICES4: &str = "SLB_SVC4_V1";
pub const SERVICES6: &str = "SLB_SVC6_V1";
pub const BACKENDS4: &str = "SLB_BE4_V1";
pub const BACKENDS6: &str = "SLB_BE6_V1";
pub const REVNAT4: &str = "SLB_RNAT4_V1";
pub const REVNAT6: &str = "SLB_RNAT6_V1";
pub const CT4_TCP: &str = "SLB_CT4_TCP_V1";
pub const CT4_ANY: &str = "SLB_CT4_ANY_V1";
pub const CT6_TCP: &str = "SLB_CT6_TCP_V1";
pub const CT6_ANY: &str = "SLB_CT6_ANY_V1";
pub const COUNTERS: &str = "SLB_CNT_V6";
pub const META: &str = "SLB_META_V1";
/// ClusterIP addresses (`vip::VipValue`), one map per family.
pub const VIPS4: &str = "SLB_VIP4_V1";
pub const VIPS6: &str = "SLB_VIP6_V1";
/// Service CIDRs (LPM tries), one per family.
pub const SERVICE_CIDRS4: &str = "SLB_SCIDR4_V1";
pub const SERVICE_CIDRS6: &str = "SLB_SCIDR6_V1";
/// Per-CPU scratch buffer of the programs (`vip::Scratch`), never read by userspace.
pub const SCRATCH: &str = "SLB_SCRATCH_V1";
/// sessionAffinity ClientIP (`affinity`): LRU per family, and the membership map.
pub const AFFINITY4: &str = "SLB_AFF4_V1";
pub const AFFINITY6: &str = "SLB_AFF6_V1";
pub const MEMBERS: &str = "SLB_MEMBER_V1";
/// Fragmented UDP datagrams (`frag`): LRU per family, and the per-CPU pending key.
pub const FRAG4: &str = "SLB_FRAG4_V1";
pub const FRAG6: &str = "SLB_FRAG6_V1";
pub const FRAG_PENDING: &str = "SLB_FRAGP_V1";
/// Socket LB reverse maps (`sock`): (socket cookie, backend) -> frontend, LRU per family.
pub const SOCK_REV4: &str = "SLB_SKRN4_V1";
pub const SOCK_REV6: &str = "SLB_SKRN6_V1";

/// NetworkPolicy (`policy`): pod hash and peer LPM trie per family, the port-set LPM trie,
/// the allowed-flow LRU per family, and the "any pod isolated" switch.
pub const POL_PODS4: &str = "SLB_POLPOD4_V1";
pub const POL_PODS6: &str = "SLB_POLPOD6_V1";
pub const POL_PEERS4: &str = "SLB_POLPEER4_V1";
pub const POL_PEERS6: &str = "SLB_POLPEER6_V1";
pub const POL_PORTS: &str = "SLB_POLPORT_V1";
pub const POL_FLOWS4: &str = "SLB_POLFLW4_V1";
pub const POL_FLOWS6: &str = "SLB_POLFLW6_V1";
pub const POL_CONFIG: &str = "SLB_POLCFG_V1";

/// Service id -> namespace/name, port name and kind of the frontend (`names`): written by
/// the daemon only, read by `inspect` and `diff`.
pub const SERVICE_NAMES: &str = "SLB_SVCNAME_V1";

/// Maglev lookup tables (`maglev`): (service id, scope) -> backend ids, one per frontend
/// with `SVC_FLAG_MAGLEV`.
pub const MAGLEV: &str = "SLB_MAGLEV_V1";

/// North-south (`northsouth`): source-range LPM tries per family, this node's addresses
/// for SNAT, and the SNAT reverse LRU per family.
pub const SRC_RANGES4: &str = "SLB_SRCRNG4_V1";
pub const SRC_RANGES6: &str = "SLB_SRCRNG6_V1";
pub const NODE_ADDRS: &str = "SLB_NODEADDR_V1";
pub const SNAT4: &str = "SLB_SNAT4_V1";
pub const SNAT6: &str = "SLB_SNAT6_V1";

/// Every map the object defines, in the order `inspect` and the layout check list them.
pub const ALL: [&str; 40] = [
    SERVICES4,
    SERVICES6,
    BACKENDS4,
    BACKENDS6,
    REVNAT4,
    REVNAT6,
    CT4_TCP,
    CT4_ANY,
    CT6_TCP,
    CT6_ANY,
    COUNTERS,
    META,
    VIPS4,
    VIPS6,
    SERVICE_CIDRS4,
    SERVICE_CIDRS6,
    SCRATCH,
    AFFINITY4,
    AFFINITY6,
    MEMBERS,
    FRAG4,
    FRAG6,
    FRAG_PENDING,
    SOCK_REV4,
    SOCK_REV6,
    POL_PODS4,
    POL_PODS6,
    POL_PEERS4,
    POL_PEERS6,
    POL_PORTS,
    POL_FLOWS4,
    POL_FLOWS6,
    POL_CONFIG,
    SERVICE_NAMES,
    MAGLEV,
    SRC_RANGES4,
    SRC_RANGES6,
    NODE_ADDRS,
    SNAT4,
    SNAT6,
];

/// Default capacity of each services map: master + slot entries of all frontends.
/// 100k services with 10 backends each need 1.1M entries; the daemon's flag raises it.
pub const DEFAULT_SERVICES_MAX: u32 = 262_144;
/// Default capacity of each backends map (backends are shared across services by id).
pub const DEFAULT_BACKENDS_MAX: u32 = 131_072;
/// Default capacity of each reverse-NAT map (one entry per frontend).
pub const DEFAULT_REVNAT_MAX: u32 = 131_072;
/// Default capacity of each TCP conntrack LRU map (two entries per flow).
pub const DEFAULT_CT_TCP_MAX: u32 = 524_288;
/// Default capacity of each non-TCP conntrack LRU map (two entries per flow).
pub const DEFAULT_CT_ANY_MAX: u32 = 262_144;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_versioned() {
        for name in ALL {
            // BPF_OBJ_NAME_LEN is 16 including the NUL.
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
            let version = name.rsplit_once("_V").map(|(_, v)| v);
            assert!(name.starts_with("SLB_"), "{name}");
            assert!(
                version.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())),
                "{name} does not end in _V<n>"
            );
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(!ALL[i + 1..].contains(a), "{a} listed twice");
        }
    }
}

/// `BPF_F_NO_PREALLOC`: a hash map allocates an entry when it is inserted (its memory is
/// what it holds). For maps only user space writes; LRU maps always preallocate.
pub const BPF_F_NO_PREALLOC: u32 = 1;
