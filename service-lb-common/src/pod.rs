//! `aya::Pod` for every map type: plain old data, any bit pattern valid, no padding holes
//! (all padding is explicit).

use crate::{
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, DataplaneConfig, Meta, RevNat4, RevNat6,
    Svc4Key, Svc6Key, SvcValue, VipValue,
};

// SAFETY: each type is `#[repr(C)]`, made only of integers and integer arrays, with
// explicit padding fields, so every byte is initialised and every bit pattern is valid.
unsafe impl aya::Pod for Svc4Key {}
unsafe impl aya::Pod for Svc6Key {}
unsafe impl aya::Pod for SvcValue {}
unsafe impl aya::Pod for Backend4 {}
unsafe impl aya::Pod for Backend6 {}
unsafe impl aya::Pod for RevNat4 {}
unsafe impl aya::Pod for RevNat6 {}
unsafe impl aya::Pod for CtKey4 {}
unsafe impl aya::Pod for CtKey6 {}
unsafe impl aya::Pod for CtEntry {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for Meta {}
unsafe impl aya::Pod for DataplaneConfig {}
unsafe impl aya::Pod for VipValue {}
unsafe impl aya::Pod for crate::vip::Scratch {}
unsafe impl aya::Pod for crate::affinity::Affinity4Key {}
unsafe impl aya::Pod for crate::affinity::Affinity6Key {}
unsafe impl aya::Pod for crate::affinity::AffinityValue {}
unsafe impl aya::Pod for crate::affinity::MemberKey {}
unsafe impl aya::Pod for crate::affinity::MemberValue {}
unsafe impl aya::Pod for crate::frag::FragKey4 {}
unsafe impl aya::Pod for crate::frag::FragKey6 {}
unsafe impl aya::Pod for crate::frag::FragNat4 {}
unsafe impl aya::Pod for crate::frag::FragNat6 {}
unsafe impl aya::Pod for crate::frag::FragPending {}
unsafe impl aya::Pod for crate::hairpin::HairpinConfig {}
unsafe impl aya::Pod for crate::sock::SockConfig {}
unsafe impl aya::Pod for crate::sock::SockRev4Key {}
unsafe impl aya::Pod for crate::sock::SockRev6Key {}
unsafe impl aya::Pod for crate::sock::SockRev4Value {}
unsafe impl aya::Pod for crate::sock::SockRev6Value {}
unsafe impl aya::Pod for crate::policy::PolPod {}
unsafe impl aya::Pod for crate::policy::PolPeer4 {}
unsafe impl aya::Pod for crate::policy::PolPeer6 {}
unsafe impl aya::Pod for crate::policy::PolPort {}
unsafe impl aya::Pod for crate::policy::PolFlow {}
unsafe impl aya::Pod for crate::names::SvcName {}
unsafe impl aya::Pod for crate::maglev::MaglevKey {}
unsafe impl aya::Pod for crate::maglev::MaglevTable {}
unsafe impl aya::Pod for crate::northsouth::SrcRange4Key {}
unsafe impl aya::Pod for crate::northsouth::SrcRange6Key {}
unsafe impl aya::Pod for crate::northsouth::SrcRange4Data {}
unsafe impl aya::Pod for crate::northsouth::SrcRange6Data {}
unsafe impl aya::Pod for crate::northsouth::NodeAddrs {}
unsafe impl aya::Pod for crate::northsouth::SnatRev4 {}
unsafe impl aya::Pod for crate::northsouth::SnatRev6 {}
