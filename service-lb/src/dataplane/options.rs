//! What the data plane is loaded with: where it is pinned, how big its maps are, and the
//! configuration patched into the programs.

use std::path::PathBuf;

use service_lb_common::{hairpin::HairpinConfig, maps, policy, sock::SockConfig, DataplaneConfig};

/// Default bpffs folder that holds every pin of the data plane.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/service-lb";

/// Capacity of each sized map (the same size for the IPv4 and IPv6 variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Master + slot entries of all frontends.
    pub services: u32,
    pub backends: u32,
    pub revnat: u32,
    /// TCP conntrack (two entries per flow).
    pub ct_tcp: u32,
    /// Non-TCP conntrack (two entries per flow).
    pub ct_any: u32,
    /// NetworkPolicy pod hash (addresses of local isolated pods), per family.
    pub policy_pods: u32,
    /// NetworkPolicy peer tries (peer prefixes of all local isolated pods), per family.
    pub policy_peers: u32,
    /// NetworkPolicy port trie (port blocks of all interned port sets).
    pub policy_ports: u32,
    /// NetworkPolicy allowed-flow LRU, per family.
    pub policy_flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: maps::DEFAULT_SERVICES_MAX,
            backends: maps::DEFAULT_BACKENDS_MAX,
            revnat: maps::DEFAULT_REVNAT_MAX,
            ct_tcp: maps::DEFAULT_CT_TCP_MAX,
            ct_any: maps::DEFAULT_CT_ANY_MAX,
            policy_pods: policy::DEFAULT_POL_PODS_MAX,
            policy_peers: policy::DEFAULT_POL_PEERS_MAX,
            policy_ports: policy::DEFAULT_POL_PORTS_MAX,
            policy_flows: policy::DEFAULT_POL_FLOWS_MAX,
        }
    }
}

/// What happens when a pinned map's layout differs from the one this binary wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PinMismatch {
    /// Refuse to load (the default): nothing is touched.
    #[default]
    Refuse,
    /// Unpin the mismatching map and create a new one. Its content (conntrack included)
    /// is lost: established connections through the data plane break.
    Recreate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneOptions {
    /// bpffs folder for `maps/` and `links/`.
    pub bpffs: PathBuf,
    pub sizes: MapSizes,
    pub config: DataplaneConfig,
    pub on_pin_mismatch: PinMismatch,
    /// Hairpin source addresses (the `SLB_HAIRPIN` global; all-zero = off).
    pub hairpin: HairpinConfig,
    /// Socket LB configuration (the `SLB_SOCK` global: host netns cookie, hostns-only).
    pub sock: SockConfig,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            sizes: MapSizes::default(),
            config: DataplaneConfig::default(),
            on_pin_mismatch: PinMismatch::default(),
            hairpin: HairpinConfig::DEFAULT,
            sock: SockConfig::ALL_NAMESPACES,
        }
    }
}
