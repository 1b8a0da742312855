//! PURE: the `networking.k8s.io/v1` NetworkPolicy model. No I/O, no kernel, no async.
//!
//! [`PolicyModel`] keeps compact views of Pods, Namespaces and NetworkPolicies (`view`)
//! and compiles, for each LOCAL pod (active, `spec.nodeName` = this node), what the data
//! path needs to decide a flow's first packet in O(1) lookups ([`PodPolicy`]).
//!
//! # Semantics (v1)
//! - A pod is isolated for a direction once a policy of its namespace selects it with that
//!   direction in its policyTypes (no policyTypes: Ingress, plus Egress when the policy has
//!   at least one egress rule, as the API server's defaulting).
//! - What is allowed is the union over the policies and rules that select the pod; a
//!   connection needs the source's egress AND the destination's ingress, each checked only
//!   when that pod is isolated in that direction (a non-pod address is never isolated).
//! - Peers: `podSelector` (the policy's namespace), `namespaceSelector` (every pod of the
//!   matching namespaces), both (AND), `ipBlock` minus its `except`s (any address, pods'
//!   included). `from`/`to` empty or absent: every address. An empty rule list: nothing.
//!   Only active pods (addresses, not Succeeded/Failed; host-network pods have none of
//!   their own) are pod peers.
//! - Ports: protocol (TCP default, UDP, SCTP), numeric, ranges with `endPort`, or named,
//!   resolved against the DESTINATION pod's container ports with the same name and
//!   protocol (ingress: the enforced pod; egress: each destination pod, so only pod
//!   addresses can match a named egress port). `ports` empty: every port of every protocol.
//! - Invalid parts (unknown protocol or selector operator, a peer with nothing set...) match
//!   nothing. A namespace not (yet) known has no labels.
//!
//! # Compiled shape (what the kernel maps hold)
//! Per local pod and direction, [`DirectionPolicy`]: `isolated`, and `entries`, a map
//! `peer prefix -> PortSet`. The prefixes are flattened for a longest-prefix match: each
//! atom (a peer pod's /32 or /128, an ipBlock CIDR, each `except`) is an entry whose value
//! is the union of the ports of every rule covering it and not excepting it, so the longest
//! matching prefix alone decides for any address; an `except` inside its CIDR is an entry
//! with an empty set (deny-more-specific) unless another rule allows it. Entries equal to
//! their nearest ancestor are dropped, and no matching entry means deny. This is exact for
//! any nesting of CIDRs, excepts and pod addresses.
//!
//! The data path maps it onto two lookups per new flow:
//! 1. an LPM trie per family keyed by `{prefixlen: u32, pod id: u32, direction: u8,
//!    pad: [u8; 3] = 0, peer address (network order)}` with `prefixlen = 64 + peer prefix
//!    length` (the id, direction and zero padding always fully matched), whose value is
//!    the id of an interned [`PortSet`];
//! 2. an LPM trie keyed by `{prefixlen, port set id: u32, protocol: u8, pad: u8 = 0,
//!    port: u16 big-endian}` with `prefixlen = 48 + block length`, holding
//!    [`PortSet::blocks`] (a port range is at most 30 aligned blocks; every port is one
//!    block of length 0).
//!
//! plus a hash `pod address -> (pod id, isolated flags)`. [`lookup::LookupTables`] does
//! exactly these lookups in user space; the property tests check it against the
//! independent [`reference`] evaluator.
//!
//! # Incremental compile
//! Indexes: pods and policies by namespace, and which local pods each policy selects. A
//! policy change dirties the local pods it selected before or selects now; a pod change
//! dirties itself (if local) and the pods selected by every policy whose peers match it
//! (before or after) or that resolve an egress named port on it; a namespace label change
//! dirties the pods selected by policies whose namespaceSelectors it flips.
//! [`PolicyModel::recompute`] compiles only the dirty pods and reports those whose view
//! changed ([`PolicyChanges`]). Each policy's rules are resolved once per direction (peer
//! addresses, egress named ports) and shared by every local pod the policy selects; the
//! same events that dirty pods drop that cache. [`PolicyModel::compile_all`] compiles from
//! scratch without it (a resync check; the property tests compare the two).
//!
//! Cost: a pod peer is one entry per address, so a policy naming N pods costs N entries
//! per selected local pod (Cilium-style identities would share them; later work).

mod compile;
pub mod lookup;
mod ports;
pub mod reference;
mod selector;
pub mod sink;
pub mod snapshot;
mod state;
mod view;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::IpAddr};

pub use ports::PortSet;
pub use selector::{Labels, Requirement, Selector};
pub use state::PolicyModel;
pub use view::{
    ContainerPortView, Direction, NamespaceView, ObjectKey, Peer, PodView, PolicyView, PortMatch,
    Prefix, Proto, Rule, RulePort,
};

/// The compiled policy of one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub pod: ObjectKey,
    /// Its addresses (the data path's key for "this packet is this pod's").
    pub ips: Vec<IpAddr>,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl PodPolicy {
    pub fn direction(&self, dir: Direction) -> &DirectionPolicy {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// One direction of a local pod: not isolated (everything allowed, `entries` empty), or
/// isolated and allowed exactly what the longest matching entry allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirectionPolicy {
    pub isolated: bool,
    /// Peer prefix (the source for ingress, the destination for egress) -> allowed ports.
    pub entries: BTreeMap<Prefix, PortSet>,
}

/// What a [`PolicyModel::recompute`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    /// Local pods whose compiled view is new or different.
    pub updated: Vec<ObjectKey>,
    /// Pods that were compiled and are no longer local (deleted, finished, moved).
    pub removed: Vec<ObjectKey>,
}

impl PolicyChanges {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}
