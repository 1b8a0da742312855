//! Every map of the object. The static names are exactly `service_lb_common::maps::*`;
//! sizes are the common crate's defaults, resized by userspace with `map_max_entries`
//! (and pinned by path from userspace, so no `pinned()` here).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use service_lb_common::{
    counters::COUNTERS_LEN,
    maps::{
        DEFAULT_BACKENDS_MAX, DEFAULT_CT_ANY_MAX, DEFAULT_CT_TCP_MAX, DEFAULT_REVNAT_MAX,
        DEFAULT_SERVICES_MAX,
    },
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, Meta, RevNat4, RevNat6, Svc4Key, Svc6Key,
    SvcValue,
};

#[map]
pub static SLB_SVC4_V1: HashMap<Svc4Key, SvcValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, 0);
#[map]
pub static SLB_SVC6_V1: HashMap<Svc6Key, SvcValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, 0);

#[map]
pub static SLB_BE4_V1: HashMap<u32, Backend4> = HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, 0);
#[map]
pub static SLB_BE6_V1: HashMap<u32, Backend6> = HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, 0);

#[map]
pub static SLB_RNAT4_V1: HashMap<u32, RevNat4> = HashMap::with_max_entries(DEFAULT_REVNAT_MAX, 0);
#[map]
pub static SLB_RNAT6_V1: HashMap<u32, RevNat6> = HashMap::with_max_entries(DEFAULT_REVNAT_MAX, 0);

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
pub static SLB_CNT_V3: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Written by userspace only (layout version); the programs never read it.
#[map]
pub static SLB_META_V1: Array<Meta> = Array::with_max_entries(1, 0);
