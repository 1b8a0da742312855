//! Per-CPU counters: one `Counter` per (hook, reason), index `hook * REASONS + reason`.
//!
//! Every packet a program sees is counted under exactly one reason.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(size_of::<Counter>() == 16);

/// The attachment point a program runs at (design.md, "Data paths").
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tc ingress of a host-side pod veth: packets leaving a pod.
    FromPod = 0,
    /// tc egress of a host-side pod veth: packets entering a pod.
    ToPod = 1,
    /// tc ingress of an external device.
    FromNet = 2,
    /// tc egress of an external device.
    ToNet = 3,
    /// cgroup `connect4`/`connect6`: a socket's `connect()` (one count per call).
    SockConnect = 4,
    /// cgroup `sendmsg4`/`sendmsg6`: `sendmsg()` with an address on an unconnected UDP
    /// socket.
    SockSendmsg = 5,
    /// cgroup `recvmsg4`/`recvmsg6`: a datagram received by a UDP socket.
    SockRecvmsg = 6,
    /// cgroup `getpeername4`/`getpeername6`.
    SockGetpeername = 7,
    /// cgroup `sock_release`: a socket of the cgroup is closed (one count per socket).
    SockRelease = 8,
}

impl Hook {
    pub const COUNT: u32 = 9;
    pub const ALL: [Hook; 9] = [
        Hook::FromPod,
        Hook::ToPod,
        Hook::FromNet,
        Hook::ToNet,
        Hook::SockConnect,
        Hook::SockSendmsg,
        Hook::SockRecvmsg,
        Hook::SockGetpeername,
        Hook::SockRelease,
    ];
    /// The tc hooks: each is one program, attached per interface.
    pub const TC: [Hook; 4] = [Hook::FromPod, Hook::ToPod, Hook::FromNet, Hook::ToNet];

    /// Name of the hook; for a tc hook also the name of its eBPF program function (the
    /// socket hooks have one program per family, `service_lb_common::sock`).
    pub const fn name(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToPod => "to_pod",
            Hook::FromNet => "from_net",
            Hook::ToNet => "to_net",
            Hook::SockConnect => "sock_connect",
            Hook::SockSendmsg => "sock_sendmsg",
            Hook::SockRecvmsg => "sock_recvmsg",
            Hook::SockGetpeername => "sock_getpeername",
            Hook::SockRelease => "sock_release",
        }
    }

    /// A tc hook (a packet), not a socket hook (a system call).
    pub const fn is_tc(self) -> bool {
        (self as u32) < Hook::SockConnect as u32
    }
}

/// Why a packet got the verdict it got.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4/IPv6: passed untouched.
    PassNotIp = 0,
    /// IP but neither TCP nor UDP (ICMP, ...): passed untouched.
    PassOtherProto = 1,
    /// A fragment passed untouched: of another protocol than UDP, or a later fragment of a
    /// datagram whose first fragment was not translated (or not seen).
    PassFragment = 2,
    /// TCP/UDP, neither to a frontend nor part of a translated flow: passed untouched.
    PassNotService = 3,
    /// New flow to a frontend: backend chosen, DNAT, conntrack created.
    DnatNewFlow = 4,
    /// Packet of a known flow: DNAT to the flow's backend.
    DnatEstablished = 5,
    /// Reply of a translated flow: source rewritten back to the frontend.
    RevNatReply = 6,
    /// Packet of a direct flow (to a pod, no frontend) whose reply tuple a translated flow
    /// held: its source port rewritten (forward) or restored (reply).
    NatPortClash = 7,
    /// Frontend with zero backends. No longer counted by the programs (such packets are
    /// refused, `RejectNoEndpoint`); kept so the numbering stays stable.
    DropNoBackend = 8,
    /// Truncated or inconsistent headers.
    DropMalformed = 9,
    /// The flow's backend no longer exists.
    DropBackendGone = 10,
    /// A master entry names a slot that is not there (a writer bug or a torn update).
    DropSlotMissing = 11,
    /// Conntrack entry could not be created.
    DropCtCreate = 12,
    /// A rewrite or checksum helper failed.
    DropNatFailed = 13,
    /// Reply of a flow whose frontend's revnat entry is gone.
    DropRevNatMissing = 14,
    /// A flow's reply tuple was taken and no free source port was found for it.
    DropNoFreePort = 15,
    /// A connectionless datagram whose tracked backend is gone: re-balanced in place to a
    /// live backend of the same frontend (new choice, entries rewritten, DNAT).
    DnatReselect = 16,
    /// First packet of a flow that another CPU created at the same moment: the winner's
    /// translation (its backend) was used.
    DnatCtRace = 17,
    /// Packet of an established flow whose reply entry was gone (LRU eviction): DNAT, and
    /// the reply entry re-created.
    DnatCtReplyEvicted = 18,
    /// Reply of a translated flow whose forward entry was gone (LRU eviction): reverse
    /// NAT, and the forward entry re-created.
    RevNatCtForwardEvicted = 19,
    /// ICMP error quoting a packet of a translated flow, towards the client: reverse
    /// translated (quoted packet, outer source when from the backend, checksums).
    RevNatIcmpError = 20,
    /// ICMP error from a client about a reply of a translated flow, towards the backend:
    /// translated (quoted packet, outer destination, checksums).
    DnatIcmpError = 21,
    /// New flow to a frontend with no usable endpoint: answered at once (TCP reset, ICMP
    /// port unreachable) and redirected back to the client.
    RejectNoEndpoint = 22,
    /// New flow to a ClusterIP on a port its Service does not define: answered as above.
    RejectNoPort = 23,
    /// Packet to an address inside a service CIDR that no Service owns.
    DropServiceCidr = 24,
    /// A packet that is refused but gets no answer: a TCP reset (never answered), IPv4
    /// with options, or a helper that failed while building the answer.
    DropRefusedNoAnswer = 25,
    /// A later fragment (no L4 header) of a UDP datagram whose first fragment was
    /// translated towards a backend: its addresses rewritten as the first one's were.
    DnatFragment = 26,
    /// A later fragment of a reply datagram whose first fragment was reverse translated:
    /// its addresses rewritten as the first one's were.
    RevNatFragment = 27,
    /// New flow whose chosen backend is the client itself (hairpin): DNAT, SNAT to the
    /// hairpin address, sent back into the pod.
    HairpinNewFlow = 28,
    /// Packet of a known hairpin flow: the same translation, sent back into the pod.
    HairpinEstablished = 29,
    /// The pod's reply to the hairpin address: source back to the frontend, destination
    /// back to the pod, sent back into the pod.
    HairpinReply = 30,
    /// Socket LB: `connect()` or `sendmsg()` to a frontend; a backend was chosen and the
    /// socket's destination rewritten (`sock_*` hooks).
    SockTranslated = 31,
    /// Socket LB: `connect()` or `sendmsg()` to a frontend with no usable endpoint,
    /// refused with ECONNREFUSED.
    SockRejected = 32,
    /// Socket LB: `connect()` or `sendmsg()` to a ClusterIP on a port its Service does not
    /// define, refused with ECONNREFUSED.
    SockRejectedNoPort = 33,
    /// Socket LB: `recvmsg()` or `getpeername()` of a translated socket; the backend
    /// address shown as the frontend.
    SockRevTranslated = 34,
    /// Socket LB: `recvmsg()` or `getpeername()` of a socket with no reverse entry for the
    /// peer (not translated, or the LRU evicted it): left untouched. At `sock_release`: a
    /// socket closed with no reverse entry for its peer (not connected, not translated, or
    /// the entry already gone).
    SockNoRevEntry = 35,
    /// Socket LB: a socket of another network namespace than the host's with
    /// `--socket-lb-hostns-only`: left to the tc programs.
    SockOtherNetns = 36,
    /// Socket LB: translated, but the reverse entry could not be stored (`recvmsg()` and
    /// `getpeername()` then show the backend).
    SockTranslatedNoRev = 37,
    /// A new flow the NetworkPolicy of the pod it enters (`to_pod`) does not allow.
    DropPolicyIngress = 38,
    /// A new flow the NetworkPolicy of the pod it leaves (`from_pod`) does not allow.
    DropPolicyEgress = 39,
    /// First packet of a flow to no frontend, checked against the NetworkPolicy of an
    /// isolated local pod and allowed (counted instead of `pass_not_service`; a translated
    /// flow keeps its translation's reason).
    PolicyAllowedNew = 40,
    /// An allowed flow could not be recorded in the policy flow map: dropped, since its
    /// replies could not be recognised.
    DropPolicyTrack = 41,
    /// A TCP segment without SYN to a frontend, of no flow conntrack knows: not a new
    /// flow, passed untouched to the kernel, whose own conntrack may hold it (a connection
    /// kube-proxy's rules translated before service-lb started: it keeps its backend).
    PassMidFlow = 42,
    /// New north-south flow (or a pod's) to a frontend with `SVC_FLAG_SOURCE_RANGES`
    /// whose client matches no source range of it: dropped (never refused).
    DropSourceRange = 43,
    /// New flow to a frontend with `SVC_FLAG_DROP_NO_ENDPOINT` and no (local) endpoint
    /// (external/internalTrafficPolicy Local): dropped silently, never refused.
    DropNoLocalEndpoint = 44,
    /// New flow through a master entry with `SVC_FLAG_SNAT`: backend chosen, DNAT, source
    /// rewritten to this node's address and an allocated port, conntrack and SNAT entries
    /// created.
    SnatNewFlow = 45,
    /// Reply of an SNATed flow (backend -> node address:allocated port): destination back
    /// to the client, source back to the frontend.
    RevSnatReply = 46,
    /// New SNAT flow of a family this node has no address of (`SLB_NODEADDR_V1`).
    DropSnatNoAddress = 47,
    /// New SNAT flow for which no free source port was found in the bounded tries.
    DropSnatPortsExhausted = 48,
    /// Packet of a known SNATed flow: DNAT and SNAT from conntrack.
    SnatEstablished = 49,
    /// Socket LB, `sock_release`: a connected socket was closed and its reverse entry
    /// (cookie, the backend it was connected to) deleted.
    SockRevReleased = 50,
    /// Packet of an SNATed flow translated at tc ingress (`snat_new_flow`,
    /// `snat_established`, `revsnat_reply`) for which no usable route was found
    /// (`bpf_fib_lookup` failed, forwarding disabled, TTL spent): passed to the stack
    /// instead of redirected out (IPv4 drops it there as a martian source).
    SnatRoutePass = 51,
}

impl Reason {
    pub const COUNT: u32 = 52;
    pub const ALL: [Reason; 52] = [
        Reason::PassNotIp,
        Reason::PassOtherProto,
        Reason::PassFragment,
        Reason::PassNotService,
        Reason::DnatNewFlow,
        Reason::DnatEstablished,
        Reason::RevNatReply,
        Reason::NatPortClash,
        Reason::DropNoBackend,
        Reason::DropMalformed,
        Reason::DropBackendGone,
        Reason::DropSlotMissing,
        Reason::DropCtCreate,
        Reason::DropNatFailed,
        Reason::DropRevNatMissing,
        Reason::DropNoFreePort,
        Reason::DnatReselect,
        Reason::DnatCtRace,
        Reason::DnatCtReplyEvicted,
        Reason::RevNatCtForwardEvicted,
        Reason::RevNatIcmpError,
        Reason::DnatIcmpError,
        Reason::RejectNoEndpoint,
        Reason::RejectNoPort,
        Reason::DropServiceCidr,
        Reason::DropRefusedNoAnswer,
        Reason::DnatFragment,
        Reason::RevNatFragment,
        Reason::HairpinNewFlow,
        Reason::HairpinEstablished,
        Reason::HairpinReply,
        Reason::SockTranslated,
        Reason::SockRejected,
        Reason::SockRejectedNoPort,
        Reason::SockRevTranslated,
        Reason::SockNoRevEntry,
        Reason::SockOtherNetns,
        Reason::SockTranslatedNoRev,
        Reason::DropPolicyIngress,
        Reason::DropPolicyEgress,
        Reason::PolicyAllowedNew,
        Reason::DropPolicyTrack,
        Reason::PassMidFlow,
        Reason::DropSourceRange,
        Reason::DropNoLocalEndpoint,
        Reason::SnatNewFlow,
        Reason::RevSnatReply,
        Reason::DropSnatNoAddress,
        Reason::DropSnatPortsExhausted,
        Reason::SnatEstablished,
        Reason::SockRevReleased,
        Reason::SnatRoutePass,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassOtherProto => "pass_other_proto",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNotService => "pass_not_service",
            Reason::DnatNewFlow => "dnat_new_flow",
            Reason::DnatEstablished => "dnat_established",
            Reason::RevNatReply => "revnat_reply",
            Reason::NatPortClash => "nat_port_clash",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropBackendGone => "drop_backend_gone",
            Reason::DropSlotMissing => "drop_slot_missing",
            Reason::DropCtCreate => "drop_ct_create",
            Reason::DropNatFailed => "drop_nat_failed",
            Reason::DropRevNatMissing => "drop_revnat_missing",
            Reason::DropNoFreePort => "drop_no_free_port",
            Reason::DnatReselect => "dnat_reselect",
            Reason::DnatCtRace => "dnat_ct_race",
            Reason::DnatCtReplyEvicted => "dnat_ct_reply_evicted",
            Reason::RevNatCtForwardEvicted => "revnat_ct_forward_evicted",
            Reason::RevNatIcmpError => "revnat_icmp_error",
            Reason::DnatIcmpError => "dnat_icmp_error",
            Reason::RejectNoEndpoint => "reject_no_endpoint",
            Reason::RejectNoPort => "reject_no_port",
            Reason::DropServiceCidr => "drop_service_cidr",
            Reason::DropRefusedNoAnswer => "drop_refused_no_answer",
            Reason::DnatFragment => "dnat_fragment",
            Reason::RevNatFragment => "revnat_fragment",
            Reason::HairpinNewFlow => "hairpin_new_flow",
            Reason::HairpinEstablished => "hairpin_established",
            Reason::HairpinReply => "hairpin_reply",
            Reason::SockTranslated => "sock_translated",
            Reason::SockRejected => "sock_rejected",
            Reason::SockRejectedNoPort => "sock_rejected_no_port",
            Reason::SockRevTranslated => "sock_rev_translated",
            Reason::SockNoRevEntry => "sock_no_rev_entry",
            Reason::SockOtherNetns => "sock_other_netns",
            Reason::SockTranslatedNoRev => "sock_translated_no_rev",
            Reason::DropPolicyIngress => "drop_policy_ingress",
            Reason::DropPolicyEgress => "drop_policy_egress",
            Reason::PolicyAllowedNew => "policy_allowed_new",
            Reason::DropPolicyTrack => "drop_policy_track",
            Reason::PassMidFlow => "pass_mid_flow",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropNoLocalEndpoint => "drop_no_local_endpoint",
            Reason::SnatNewFlow => "snat_new_flow",
            Reason::RevSnatReply => "revsnat_reply",
            Reason::DropSnatNoAddress => "drop_snat_no_address",
            Reason::DropSnatPortsExhausted => "drop_snat_ports_exhausted",
            Reason::SnatEstablished => "snat_established",
            Reason::SockRevReleased => "sock_rev_released",
            Reason::SnatRoutePass => "snat_route_pass",
        }
    }

    /// Whether packets counted under this reason are dropped (a refused packet is not: its
    /// answer goes out). Reasons appended after `DropNoFreePort` mix pass and drop, so
    /// those are listed by name. The socket reasons count system calls, not packets: none
    /// is a drop (a refused `connect()` fails at once, nothing is sent).
    pub const fn is_drop(self) -> bool {
        let n = self as u32;
        (n >= Reason::DropNoBackend as u32 && n <= Reason::DropNoFreePort as u32)
            || matches!(
                self,
                Reason::DropServiceCidr
                    | Reason::DropRefusedNoAnswer
                    | Reason::DropPolicyIngress
                    | Reason::DropPolicyEgress
                    | Reason::DropPolicyTrack
                    | Reason::DropSourceRange
                    | Reason::DropNoLocalEndpoint
                    | Reason::DropSnatNoAddress
                    | Reason::DropSnatPortsExhausted
            )
    }

    /// The packet is turned into an answer to its sender (reset, ICMP error).
    pub const fn is_reject(self) -> bool {
        matches!(self, Reason::RejectNoEndpoint | Reason::RejectNoPort)
    }
}

/// Number of entries of the counters map.
pub const COUNTERS_LEN: u32 = Hook::COUNT * Reason::COUNT;

/// Index of a (hook, reason) counter.
#[inline(always)]
pub const fn counter_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * Reason::COUNT + reason as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_matches_discriminants() {
        assert_eq!(Reason::ALL.len() as u32, Reason::COUNT);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{} out of place", r.name());
        }
    }

    #[test]
    fn hook_table_matches_discriminants() {
        assert_eq!(Hook::ALL.len() as u32, Hook::COUNT);
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(*h as u32, i as u32, "{} out of place", h.name());
        }
    }

    #[test]
    fn the_tc_hooks_are_exactly_the_first_four() {
        for h in Hook::ALL {
            assert_eq!(h.is_tc(), Hook::TC.contains(&h), "{}", h.name());
            assert_eq!(!h.is_tc(), h.name().starts_with("sock_"), "{}", h.name());
        }
    }

    #[test]
    fn counter_indices_are_distinct_and_in_range() {
        let mut seen = [false; COUNTERS_LEN as usize];
        for h in Hook::ALL {
            for r in Reason::ALL {
                let i = counter_index(h, r) as usize;
                assert!(i < seen.len());
                assert!(!seen[i], "{}/{} collides", h.name(), r.name());
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn drops_are_exactly_the_drop_reasons() {
        for r in Reason::ALL {
            assert_eq!(r.is_drop(), r.name().starts_with("drop_"), "{}", r.name());
            assert_eq!(
                r.is_reject(),
                r.name().starts_with("reject_"),
                "{}",
                r.name()
            );
        }
    }
}
