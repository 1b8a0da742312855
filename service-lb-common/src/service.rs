//! Frontends (services maps), backends and reverse NAT.
//!
//! A frontend `(vip, port, proto, scope)` owns `count + 1` entries in the services map:
//! slot 0 is the master entry (`count`, `service_id`, flags), slots `1..=count` each name
//! one backend by id. Readers pick `slot = random % count + 1`, so writers keep the
//! order of `shared/design.md`: backends first, then slots, then the master count last;
//! on shrink, the master count first, then the slots, then unused backends.

use core::mem::{offset_of, size_of};

/// Lookup scope of a frontend (see `SVC_FLAG_TWO_SCOPES`).
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// The frontend has a second entry set under `SCOPE_INTERNAL` for in-cluster clients
/// (different internal/external traffic policies).
pub const SVC_FLAG_TWO_SCOPES: u16 = 1 << 0;
/// ClusterIP frontend (set for every frontend this version programs).
pub const SVC_FLAG_CLUSTER_IP: u16 = 1 << 1;
/// NodePort frontend (a node address and the node port). Frontend kind, for `inspect`.
pub const SVC_FLAG_NODE_PORT: u16 = 1 << 2;
/// externalIPs frontend. Frontend kind, for `inspect`.
pub const SVC_FLAG_EXTERNAL_IP: u16 = 1 << 3;
/// LoadBalancer ingress IP frontend. Frontend kind, for `inspect`.
pub const SVC_FLAG_LOAD_BALANCER: u16 = 1 << 4;
/// Every new flow through this master entry is SNATed to this node's address of the
/// family (`northsouth::NodeAddrs`), with a source port allocated by the programs.
pub const SVC_FLAG_SNAT: u16 = 1 << 5;
/// `count` 0 means drop silently (counted `DropNoLocalEndpoint`), never refuse
/// (externalTrafficPolicy / internalTrafficPolicy Local without a local endpoint).
pub const SVC_FLAG_DROP_NO_ENDPOINT: u16 = 1 << 6;
/// The client must match an entry of the source-range trie (`northsouth::SrcRange4Key`)
/// of this frontend's service id (loadBalancerSourceRanges); a miss is dropped, counted
/// `DropSourceRange`.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 1 << 7;
/// Backends are chosen by Maglev consistent hashing (`maglev`): the frontend has a table
/// in `SLB_MAGLEV_V1`, written before this flag is set.
pub const SVC_FLAG_MAGLEV: u16 = 1 << 8;

/// Key of the IPv4 services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    pub addr: [u8; 4],
    pub port_be: u16,
    pub proto: u8,
    pub scope: u8,
    /// 0 = master entry, 1..=count = backend slots.
    pub slot: u16,
    pub _pad: [u8; 2],
}

/// Key of the IPv6 services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc6Key {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub _pad: [u8; 2],
}

impl Svc4Key {
    pub const fn new(addr: [u8; 4], port_be: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            addr,
            port_be,
            proto,
            scope,
            slot,
            _pad: [0; 2],
        }
    }
}

impl Svc6Key {
    pub const fn new(addr: [u8; 16], port_be: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            addr,
            port_be,
            proto,
            scope,
            slot,
            _pad: [0; 2],
        }
    }
}

/// Value of both services maps. In the master entry (slot 0) `count`, `service_id`,
/// `flags` and `affinity_timeout_s` are set and `backend_id` is 0; in a slot entry only
/// `backend_id` (and `service_id`, for dumps) is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcValue {
    pub backend_id: u32,
    /// Number of backend slots; 0 means the frontend exists but has no endpoint.
    pub count: u32,
    /// Frontend id: key of the revnat map, stored in conntrack entries.
    pub service_id: u32,
    pub flags: u16,
    pub _pad0: u16,
    /// sessionAffinity ClientIP timeout, 0 = no affinity.
    pub affinity_timeout_s: u32,
    pub _pad1: u32,
}

impl SvcValue {
    pub const fn master(count: u32, service_id: u32, flags: u16, affinity_timeout_s: u32) -> Self {
        Self {
            backend_id: 0,
            count,
            service_id,
            flags,
            _pad0: 0,
            affinity_timeout_s,
            _pad1: 0,
        }
    }
    pub const fn slot(backend_id: u32, service_id: u32) -> Self {
        Self {
            backend_id,
            count: 0,
            service_id,
            flags: 0,
            _pad0: 0,
            affinity_timeout_s: 0,
            _pad1: 0,
        }
    }
}

pub const BACKEND_STATE_ACTIVE: u8 = 0;
pub const BACKEND_STATE_TERMINATING: u8 = 1;
pub const BACKEND_STATE_QUARANTINED: u8 = 2;
pub const BACKEND_STATE_MAINTENANCE: u8 = 3;
/// In no slot of any frontend (its endpoint stopped serving new connections or left its
/// slices): kept only for the tracked flows that still use it, never chosen for a new flow,
/// deleted by the daemon's garbage collection once no live conntrack entry names it.
pub const BACKEND_STATE_DRAINING: u8 = 4;

/// The backend runs on this node.
pub const BACKEND_FLAG_LOCAL: u8 = 1 << 0;

/// Value of the IPv4 backends map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend4 {
    pub addr: [u8; 4],
    pub port_be: u16,
    pub proto: u8,
    pub state: u8,
    pub zone: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of the IPv6 backends map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub state: u8,
    pub zone: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl Backend4 {
    pub const fn new(addr: [u8; 4], port_be: u16, proto: u8, state: u8, flags: u8) -> Self {
        Self {
            addr,
            port_be,
            proto,
            state,
            zone: 0,
            flags,
            _pad: [0; 2],
        }
    }
}

impl Backend6 {
    pub const fn new(addr: [u8; 16], port_be: u16, proto: u8, state: u8, flags: u8) -> Self {
        Self {
            addr,
            port_be,
            proto,
            state,
            zone: 0,
            flags,
            _pad: [0; 2],
        }
    }
}

/// Value of the IPv4 revnat map (key: service id, `u32`): what replies are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    pub addr: [u8; 4],
    pub port_be: u16,
    pub _pad: u16,
}

/// Value of the IPv6 revnat map (key: service id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: u16,
}

impl RevNat4 {
    pub const fn new(addr: [u8; 4], port_be: u16) -> Self {
        Self {
            addr,
            port_be,
            _pad: 0,
        }
    }
}

impl RevNat6 {
    pub const fn new(addr: [u8; 16], port_be: u16) -> Self {
        Self {
            addr,
            port_be,
            _pad: 0,
        }
    }
}

const _: () = {
    assert!(size_of::<Svc4Key>() == 12);
    assert!(offset_of!(Svc4Key, port_be) == 4);
    assert!(offset_of!(Svc4Key, proto) == 6);
    assert!(offset_of!(Svc4Key, scope) == 7);
    assert!(offset_of!(Svc4Key, slot) == 8);
    assert!(size_of::<Svc6Key>() == 24);
    assert!(offset_of!(Svc6Key, port_be) == 16);
    assert!(offset_of!(Svc6Key, slot) == 20);
    assert!(size_of::<SvcValue>() == 24);
    assert!(offset_of!(SvcValue, count) == 4);
    assert!(offset_of!(SvcValue, service_id) == 8);
    assert!(offset_of!(SvcValue, flags) == 12);
    assert!(offset_of!(SvcValue, affinity_timeout_s) == 16);
    assert!(size_of::<Backend4>() == 12);
    assert!(offset_of!(Backend4, port_be) == 4);
    assert!(offset_of!(Backend4, flags) == 9);
    assert!(size_of::<Backend6>() == 24);
    assert!(offset_of!(Backend6, port_be) == 16);
    assert!(size_of::<RevNat4>() == 8);
    assert!(size_of::<RevNat6>() == 20);
};
