//! Every map of the object. The static names are exactly `service_lb_common::maps::*`;
//! sizes are the common crate's defaults, resized by userspace with `map_max_entries`
//! (and pinned by path from userspace, so no `pinned()` here).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use service_lb_common::{
    affinity::{
        Affinity4Key, Affinity6Key, AffinityValue, MemberKey, MemberValue, DEFAULT_AFFINITY_MAX,
    },
    counters::COUNTERS_LEN,
    frag::{FragKey4, FragKey6, FragNat4, FragNat6, FragPending, FRAG_MAX},
    maglev::{MaglevKey, MaglevTable, DEFAULT_MAGLEV_MAX},
    maps::{
        DEFAULT_BACKENDS_MAX, DEFAULT_CT_ANY_MAX, DEFAULT_CT_TCP_MAX, DEFAULT_REVNAT_MAX,
        DEFAULT_SERVICES_MAX,
    },
    names::SvcName,
    northsouth::{
        NodeAddrs, SnatRev4, SnatRev6, SrcRange4Data, SrcRange6Data, SNAT_MAX, SRC_RANGES_MAX,
    },
    policy::{
        PolFlow, PolPeer4, PolPeer6, PolPod, PolPort, DEFAULT_POL_FLOWS_MAX, DEFAULT_POL_PEERS_MAX,
        DEFAULT_POL_PODS_MAX, DEFAULT_POL_PORTS_MAX,
    },
    sock::{SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value, SOCK_REV_MAX},
    vip::{Scratch, DEFAULT_VIPS_MAX, SERVICE_CIDRS_MAX},
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, Meta, RevNat4, RevNat6, Svc4Key, Svc6Key,
    SvcValue, VipValue,
};

/// Maps only user space writes (services, backends, reverse NAT, VIPs, members, names,
/// policy pods) allocate their entries on demand (`BPF_F_NO_PREALLOC`): their memory is
/// what they hold, not their capacity. Maps the programs write (conntrack, affinity,
/// fragments, socket reverse NAT, policy flows) are LRU maps, which always preallocate.
const ON_DEMAND: u32 = service_lb_common::maps::BPF_F_NO_PREALLOC;

#[map]
pub static SLB_SVC4_V1: HashMap<Svc4Key, SvcValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, ON_DEMAND);
#[map]
pub static SLB_SVC6_V1: HashMap<Svc6Key, SvcValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, ON_DEMAND);

#[map]
pub static SLB_BE4_V1: HashMap<u32, Backend4> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, ON_DEMAND);
#[map]
pub static SLB_BE6_V1: HashMap<u32, Backend6> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, ON_DEMAND);

#[map]
pub static SLB_RNAT4_V1: HashMap<u32, RevNat4> =
    HashMap::with_max_entries(DEFAULT_REVNAT_MAX, ON_DEMAND);
#[map]
pub static SLB_RNAT6_V1: HashMap<u32, RevNat6> =
    HashMap::with_max_entries(DEFAULT_REVNAT_MAX, ON_DEMAND);

#[map]
pub static SLB_CT4_TCP_V1: LruHashMap<CtKey4, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_TCP_MAX, 0);
#[map]
pub static SLB_CT4_ANY_V1: LruHashMap<CtKey4, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_ANY_MAX, 0);
#[map]
pub static SLB_CT6_TCP_V1: LruHashMap<CtKey6, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_TCP_MAX, 0);
#[map]
pub static SLB_CT6_ANY_V1: LruHashMap<CtKey6, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_ANY_MAX, 0);

/// Per-CPU (hook, reason) counters, indexed by `counter_index`.
#[map]
pub static SLB_CNT_V6: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Written by userspace only (layout version); the programs never read it.
#[map]
pub static SLB_META_V1: Array<Meta> = Array::with_max_entries(1, 0);

/// Every ClusterIP address with a programmed frontend (`service_lb_common::vip`).
#[map]
pub static SLB_VIP4_V1: HashMap<[u8; 4], VipValue> =
    HashMap::with_max_entries(DEFAULT_VIPS_MAX, ON_DEMAND);
#[map]
pub static SLB_VIP6_V1: HashMap<[u8; 16], VipValue> =
    HashMap::with_max_entries(DEFAULT_VIPS_MAX, ON_DEMAND);

/// The service CIDRs (value `SERVICE_CIDR_ALLOCATED`).
#[map]
pub static SLB_SCIDR4_V1: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(SERVICE_CIDRS_MAX, 0);
#[map]
pub static SLB_SCIDR6_V1: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(SERVICE_CIDRS_MAX, 0);

/// Where answers are built (`reject`): the BPF stack is too small for them.
#[map]
pub static SLB_SCRATCH_V1: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// sessionAffinity ClientIP (`service_lb_common::affinity`).
#[map]
pub static SLB_AFF4_V1: LruHashMap<Affinity4Key, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_MAX, 0);
#[map]
pub static SLB_AFF6_V1: LruHashMap<Affinity6Key, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_MAX, 0);
/// (service id, backend id) of every backend in a frontend's slots.
#[map]
pub static SLB_MEMBER_V1: HashMap<MemberKey, MemberValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, ON_DEMAND);

/// Translations of fragmented UDP datagrams, by first fragment (`common::frag`).
#[map]
pub static SLB_FRAG4_V1: LruHashMap<FragKey4, FragNat4> = LruHashMap::with_max_entries(FRAG_MAX, 0);
#[map]
pub static SLB_FRAG6_V1: LruHashMap<FragKey6, FragNat6> = LruHashMap::with_max_entries(FRAG_MAX, 0);
/// The key of the first fragment being translated (`frag`).
#[map]
pub static SLB_FRAGP_V1: PerCpuArray<FragPending> = PerCpuArray::with_max_entries(1, 0);

/// Socket LB reverse entries: (socket cookie, backend) -> frontend (`common::sock`).
#[map]
pub static SLB_SKRN4_V1: LruHashMap<SockRev4Key, SockRev4Value> =
    LruHashMap::with_max_entries(SOCK_REV_MAX, 0);
#[map]
pub static SLB_SKRN6_V1: LruHashMap<SockRev6Key, SockRev6Value> =
    LruHashMap::with_max_entries(SOCK_REV_MAX, 0);
/// NetworkPolicy (`service_lb_common::policy`): local isolated pods by address.
#[map]
pub static SLB_POLPOD4_V1: HashMap<[u8; 4], PolPod> =
    HashMap::with_max_entries(DEFAULT_POL_PODS_MAX, ON_DEMAND);
#[map]
pub static SLB_POLPOD6_V1: HashMap<[u8; 16], PolPod> =
    HashMap::with_max_entries(DEFAULT_POL_PODS_MAX, ON_DEMAND);
/// (pod id, direction, peer prefix) -> port set id.
#[map]
pub static SLB_POLPEER4_V1: LpmTrie<PolPeer4, u32> =
    LpmTrie::with_max_entries(DEFAULT_POL_PEERS_MAX, 0);
#[map]
pub static SLB_POLPEER6_V1: LpmTrie<PolPeer6, u32> =
    LpmTrie::with_max_entries(DEFAULT_POL_PEERS_MAX, 0);
/// (port set id, protocol, port block) -> `POL_PORT_ALLOWED`.
#[map]
pub static SLB_POLPORT_V1: LpmTrie<PolPort, u32> =
    LpmTrie::with_max_entries(DEFAULT_POL_PORTS_MAX, 0);
/// Allowed flows (the verdict cache), keyed by wire tuple and direction.
#[map]
pub static SLB_POLFLW4_V1: LruHashMap<CtKey4, PolFlow> =
    LruHashMap::with_max_entries(DEFAULT_POL_FLOWS_MAX, 0);
#[map]
pub static SLB_POLFLW6_V1: LruHashMap<CtKey6, PolFlow> =
    LruHashMap::with_max_entries(DEFAULT_POL_FLOWS_MAX, 0);
/// Entry 0 non-zero: some local pod is isolated (policy is checked at all).
#[map]
pub static SLB_POLCFG_V1: Array<u32> = Array::with_max_entries(1, 0);
/// Which Service each frontend (service id) was programmed for (`common::names`): written by
/// the daemon, read by `inspect` and `diff`; no program reads it. Both families share it.
#[map]
pub static SLB_SVCNAME_V1: HashMap<u32, SvcName> =
    HashMap::with_max_entries(2 * DEFAULT_REVNAT_MAX, ON_DEMAND);

/// Maglev tables (`common::maglev`), one per frontend with `SVC_FLAG_MAGLEV`; not
/// preallocated: a 64 KiB value costs memory only once a table is written.
#[map]
pub static SLB_MAGLEV_V1: HashMap<MaglevKey, MaglevTable> =
    HashMap::with_max_entries(DEFAULT_MAGLEV_MAX, ON_DEMAND);

/// loadBalancerSourceRanges (`common::northsouth`): (service id, client prefix) -> allowed.
#[map]
pub static SLB_SRCRNG4_V1: LpmTrie<SrcRange4Data, u32> =
    LpmTrie::with_max_entries(SRC_RANGES_MAX, 0);
#[map]
pub static SLB_SRCRNG6_V1: LpmTrie<SrcRange6Data, u32> =
    LpmTrie::with_max_entries(SRC_RANGES_MAX, 0);
/// This node's addresses SNATed flows leave with (index 0), written by the daemon.
#[map]
pub static SLB_NODEADDR_V1: Array<NodeAddrs> = Array::with_max_entries(1, 0);
/// SNATed flows: reply tuple -> the client's address and port.
#[map]
pub static SLB_SNAT4_V1: LruHashMap<CtKey4, SnatRev4> = LruHashMap::with_max_entries(SNAT_MAX, 0);
#[map]
pub static SLB_SNAT6_V1: LruHashMap<CtKey6, SnatRev6> = LruHashMap::with_max_entries(SNAT_MAX, 0);
