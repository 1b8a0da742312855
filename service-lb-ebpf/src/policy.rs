//! NetworkPolicy verdicts (maps: `service_lb_common::policy`).
//!
//! - Egress of a local pod is checked at `from_pod`, AFTER the pipeline (the tuple on the
//!   wire: a flow through a ClusterIP is decided on its backend's address and port);
//!   ingress at `to_pod`, BEFORE the pipeline (a reply's reverse NAT would hide the
//!   backend), for flows from this node and from others alike.
//! - Only the pod the packet leaves (egress) or enters (ingress) is looked up: each end of
//!   a flow is checked on its own node.
//! - Stateful: an allowed flow is recorded (wire tuple, direction) in the flow LRU; its
//!   later packets and its replies (the reversed tuple, recorded in the other direction)
//!   pass on that one lookup. A flow of an isolated pod is recorded even when the
//!   direction it is checked in is not isolated, so the replies find it in the other one.
//! - Denied flows are not recorded: each of their packets is decided again. A TCP SYN
//!   (without ACK) is always decided again too, so a new connection reusing an old
//!   connection's tuple gets the policy in force now.
//! - No loops: a pod hash lookup, at most two LPM lookups, two flow lookups.
//! - TCP and UDP only; other protocols (ICMP, SCTP) pass (`docs/limitations.md`).

use aya_ebpf::{
    bindings::BPF_ANY,
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap},
    programs::TcContext,
};
use service_lb_common::{
    policy::{
        isolated_bit, PolFlow, PolPeer4, PolPeer6, PolPod, PolPort, POL_DIR_EGRESS,
        POL_DIR_INGRESS, POL_PEER_PREFIX_BITS, POL_PORT_PREFIX_BITS,
    },
    proto::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP},
    CtKey4, CtKey6, Reason,
};

use crate::{
    config,
    conntrack::{is_syn_only, now_ns, NS_PER_S},
    family::{Family, V4, V6},
    lb,
    maps::{
        SLB_POLCFG_V1, SLB_POLFLW4_V1, SLB_POLFLW6_V1, SLB_POLPEER4_V1, SLB_POLPEER6_V1,
        SLB_POLPOD4_V1, SLB_POLPOD6_V1, SLB_POLPORT_V1,
    },
    packet::{self, Headers},
    verdict::{Verdict, RAW_OTHER},
};

/// Policy has nothing to say (not policed, or a known flow, or allowed and not isolated).
const POLICY_PASS: u64 = RAW_OTHER + 20;
/// The first packet of a flow, checked against an isolated pod's policy and allowed.
const POLICY_ALLOWED_NEW: u64 = RAW_OTHER + 21;

/// The policy maps of a family.
pub trait PolicyFamily: Family<Addr: 'static> {
    type Peer: 'static;
    /// Bits of an address.
    const BITS: u32;
    fn pods() -> &'static HashMap<Self::Addr, PolPod>;
    fn peers() -> &'static LpmTrie<Self::Peer, u32>;
    fn flows() -> &'static LruHashMap<Self::CtKey, PolFlow>;
    fn peer(pod_id: u32, dir: u8, addr: Self::Addr) -> Self::Peer;
}

impl PolicyFamily for V4 {
    type Peer = PolPeer4;
    const BITS: u32 = 32;
    #[inline(always)]
    fn pods() -> &'static HashMap<[u8; 4], PolPod> {
        &SLB_POLPOD4_V1
    }
    #[inline(always)]
    fn peers() -> &'static LpmTrie<PolPeer4, u32> {
        &SLB_POLPEER4_V1
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<CtKey4, PolFlow> {
        &SLB_POLFLW4_V1
    }
    #[inline(always)]
    fn peer(pod_id: u32, dir: u8, addr: [u8; 4]) -> PolPeer4 {
        PolPeer4::new(pod_id, dir, addr)
    }
}

impl PolicyFamily for V6 {
    type Peer = PolPeer6;
    const BITS: u32 = 128;
    #[inline(always)]
    fn pods() -> &'static HashMap<[u8; 16], PolPod> {
        &SLB_POLPOD6_V1
    }
    #[inline(always)]
    fn peers() -> &'static LpmTrie<PolPeer6, u32> {
        &SLB_POLPEER6_V1
    }
    #[inline(always)]
    fn flows() -> &'static LruHashMap<CtKey6, PolFlow> {
        &SLB_POLFLW6_V1
    }
    #[inline(always)]
    fn peer(pod_id: u32, dir: u8, addr: [u8; 16]) -> PolPeer6 {
        PolPeer6::new(pod_id, dir, addr)
    }
}

/// Some local pod is isolated: the daemon sets `SLB_POLCFG_V1[0]` while the pod hash is
/// not empty. A node without NetworkPolicy pays this one array lookup.
#[inline(always)]
fn enabled() -> bool {
    SLB_POLCFG_V1.get(0).is_some_and(|on| *on != 0)
}

/// `to_pod`: the ingress policy of the pod the packet enters, before the pipeline (which
/// runs unless `is_drop`); the raw outcome for `finish`.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> u64 {
    // SAFETY: reads two fields of the program's own context.
    let (came_in_on, goes_out_on) =
        unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).ifindex) };
    if came_in_on == goes_out_on {
        // Sent by this very pod and turned around by `from_pod` (a hairpin flow through
        // its own ClusterIP, or its answer): a pod's traffic to itself is always allowed.
        return POLICY_PASS;
    }
    check(ctx, POL_DIR_INGRESS)
}

/// `from_pod`: the egress policy of the pod the packet leaves, on the packet as the
/// pipeline left it (`verdict`); only a passed packet is checked.
#[inline(always)]
pub fn egress(ctx: &TcContext, verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::Pass(_) => finish(verdict, check(ctx, POL_DIR_EGRESS)),
        decided => decided,
    }
}

/// The pipeline's `verdict` with the policy's raw outcome `policy` applied: a drop wins;
/// a new flow allowed by an isolated pod's policy that the pipeline did not translate is
/// counted `policy_allowed_new`.
#[inline(always)]
pub fn finish(verdict: Verdict, policy: u64) -> Verdict {
    match policy {
        POLICY_PASS => verdict,
        POLICY_ALLOWED_NEW => match verdict {
            Verdict::Pass(Reason::PassNotService) => Verdict::Pass(Reason::PolicyAllowedNew),
            other => other,
        },
        drop => Verdict::from_raw(drop),
    }
}

/// Whether `policy` (from `ingress`) drops the packet.
#[inline(always)]
pub fn is_drop(policy: u64) -> bool {
    policy != POLICY_PASS && policy != POLICY_ALLOWED_NEW
}

#[inline(always)]
fn check(ctx: &TcContext, dir: u8) -> u64 {
    if !enabled() {
        return POLICY_PASS;
    }
    match packet::ethertype(ctx) {
        Ok(ETH_P_IP) => enforce::<V4>(ctx, u64::from(dir)),
        Ok(_) => enforce::<V6>(ctx, u64::from(dir)),
        Err(_) => POLICY_PASS,
    }
}

/// A subprogram (own stack frame), called from the entry point only.
#[inline(never)]
fn enforce<F: PolicyFamily>(ctx: &TcContext, dir: u64) -> u64 {
    let Ok(h) = F::parse(ctx) else {
        // Not policed (fragments, truncated: the pipeline counted them already).
        return POLICY_PASS;
    };
    decide::<F>(&h, dir as u8)
}

#[inline(always)]
fn decide<F: PolicyFamily>(h: &Headers<F::Addr>, dir: u8) -> u64 {
    if h.proto != IPPROTO_TCP && h.proto != IPPROTO_UDP {
        return POLICY_PASS;
    }
    let (pod_addr, peer_addr) = if dir == POL_DIR_EGRESS {
        (h.saddr, h.daddr)
    } else {
        (h.daddr, h.saddr)
    };
    let Some(pod) = lb::get(F::pods(), &pod_addr) else {
        return POLICY_PASS;
    };
    // A pod's traffic to itself (hairpin through a ClusterIP) is always allowed.
    if h.saddr == h.daddr {
        return POLICY_PASS;
    }
    let cfg = config::get();
    let now = now_ns();
    let lifetime_s = if h.proto == IPPROTO_TCP {
        cfg.ct_tcp_established_s
    } else {
        cfg.ct_other_s
    };
    let lifetime = u64::from(lifetime_s) * NS_PER_S;
    let flows = F::flows();
    let forward = F::ct_key(h.saddr, h.daddr, h.sport_be, h.dport_be, h.proto, dir);
    // A TCP connection's opening SYN is always decided afresh: a new connection on the
    // tuple of an old one gets today's policy, not the cached verdict.
    if !is_syn_only(h.proto, h.tcp_flags) {
        if refresh(flows, &forward, now, lifetime) {
            return POLICY_PASS;
        }
        let other = if dir == POL_DIR_EGRESS {
            POL_DIR_INGRESS
        } else {
            POL_DIR_EGRESS
        };
        let reply = F::ct_key(h.daddr, h.saddr, h.dport_be, h.sport_be, h.proto, other);
        if refresh(flows, &reply, now, lifetime) {
            return POLICY_PASS;
        }
    }
    let isolated = pod.flags & isolated_bit(dir) != 0;
    if isolated && !allowed::<F>(pod.pod_id, dir, peer_addr, h.proto, h.dport_be) {
        let reason = if dir == POL_DIR_EGRESS {
            Reason::DropPolicyEgress
        } else {
            Reason::DropPolicyIngress
        };
        return Verdict::Drop(reason).to_raw();
    }
    let flow = PolFlow {
        expires_ns: now + lifetime,
        flags: pod.flags,
        _pad: [0; 7],
    };
    if flows.insert(&forward, flow, u64::from(BPF_ANY)).is_err() {
        return Verdict::Drop(Reason::DropPolicyTrack).to_raw();
    }
    if isolated {
        POLICY_ALLOWED_NEW
    } else {
        POLICY_PASS
    }
}

/// A live flow entry under `key`: its expiry pushed out (written only when it moves by
/// more than a second). Expired entries count as missing.
#[inline(always)]
fn refresh<K>(flows: &LruHashMap<K, PolFlow>, key: &K, now: u64, lifetime: u64) -> bool {
    let Some(ptr) = flows.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup of a value of this type.
    let expires = unsafe { (*ptr).expires_ns };
    if now >= expires {
        return false;
    }
    let next = now + lifetime;
    if next > expires + NS_PER_S {
        // SAFETY: as above; a plain store of the expiry (last writer wins).
        unsafe { (*ptr).expires_ns = next };
    }
    true
}

/// The longest peer prefix of `peer` for (pod, direction) names a port set that holds
/// (`proto`, `port_be`).
#[inline(always)]
fn allowed<F: PolicyFamily>(pod_id: u32, dir: u8, peer: F::Addr, proto: u8, port_be: u16) -> bool {
    let key = Key::new(POL_PEER_PREFIX_BITS + F::BITS, F::peer(pod_id, dir, peer));
    let Some(set) = F::peers().get(&key).copied() else {
        return false;
    };
    let port = Key::new(POL_PORT_PREFIX_BITS + 16, PolPort::new(set, proto, port_be));
    SLB_POLPORT_V1.get(&port).is_some()
}
