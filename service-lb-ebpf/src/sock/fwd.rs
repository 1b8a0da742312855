//! `connect()` and unconnected `sendmsg()` to a frontend.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext,
};
use service_lb_common::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    Reason,
};

use super::{config, ctx, SockFamily, ALLOW, DENY};
use crate::{
    family::Endpoint,
    lb::{self, Target},
    verdict::Verdict,
};

/// `ECONNREFUSED`, what kube-proxy's reject rules make a client see.
const ECONNREFUSED: i32 = 111;

/// What the socket program does with a destination: the reason it is counted under and
/// the sock_addr return code; `Some(backend)` when the destination is to be rewritten.
pub struct Decision<A> {
    pub reason: Reason,
    pub ret: i32,
    pub backend: Option<Endpoint<A>>,
}

impl<A> Decision<A> {
    #[inline(always)]
    fn keep(reason: Reason) -> Self {
        Self {
            reason,
            ret: ALLOW,
            backend: None,
        }
    }

    /// The system call fails: with ECONNREFUSED (`bpf_set_retval`, allowed in the connect
    /// and sendmsg hooks), else with the kernel's default EPERM.
    #[inline(always)]
    fn refuse(reason: Reason, errno: Option<i32>) -> Self {
        if let Some(errno) = errno {
            // SAFETY: helper with a plain argument. A failure leaves EPERM, still a
            // refusal.
            let _ = unsafe { bpf_set_retval(-errno) };
        }
        Self {
            reason,
            ret: DENY,
            backend: None,
        }
    }
}

/// The decision for a socket of `ctx` sending to `dst` (of family `F`; for an IPv4-mapped
/// destination of an IPv6 socket, `F` is IPv4). A chosen backend's reverse entry is
/// stored here; the caller writes the backend into the context.
#[inline(always)]
pub fn decide<F: SockFamily>(sa: &SockAddrContext, dst: Endpoint<F::Addr>) -> Decision<F::Addr> {
    let proto = ctx::protocol(sa);
    if proto != u32::from(IPPROTO_TCP) && proto != u32::from(IPPROTO_UDP) {
        return Decision::keep(Reason::PassOtherProto);
    }
    let cfg = config();
    // SAFETY: helper on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(sa.as_ptr()) };
    if cfg.hostns_only() && netns != cfg.host_netns_cookie {
        return Decision::keep(Reason::SockOtherNetns);
    }
    let target = Target {
        client: F::netns_client(netns),
        daddr: dst.addr,
        dport_be: dst.port_be,
        proto: proto as u8,
        internal: true,
        mid_flow: false,
        // No source port at connect(): Maglev frontends get a random backend here.
        sport_be: None,
    };
    match lb::choose_for::<F>(&target) {
        Ok(choice) => {
            // SAFETY: helper on the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(sa.as_ptr()) };
            let stored = remember::<F>(cookie, choice.backend, choice.service_id, dst);
            Decision {
                reason: if stored {
                    Reason::SockTranslated
                } else {
                    Reason::SockTranslatedNoRev
                },
                ret: ALLOW,
                backend: Some(choice.backend),
            }
        }
        Err(Verdict::Pass(Reason::PassNotService)) => {
            if F::is_cluster_ip(dst.addr) {
                Decision::refuse(Reason::SockRejectedNoPort, Some(ECONNREFUSED))
            } else {
                Decision::keep(Reason::PassNotService)
            }
        }
        Err(Verdict::Drop(Reason::DropNoBackend)) => {
            Decision::refuse(Reason::SockRejected, Some(ECONNREFUSED))
        }
        // A torn slot list or a vanished backend: the call fails (EPERM) rather than
        // going to the frontend address untranslated.
        Err(Verdict::Drop(reason)) => Decision::refuse(reason, None),
        Err(Verdict::Pass(reason)) | Err(Verdict::Answer(reason)) => Decision::keep(reason),
    }
}

/// Stores (cookie, backend) -> frontend unless the same entry is there (an unconnected UDP
/// socket sends many datagrams to one backend: one lookup, no write). `false` when the
/// entry could not be stored.
#[inline(always)]
fn remember<F: SockFamily>(
    cookie: u64,
    backend: Endpoint<F::Addr>,
    service_id: u32,
    frontend: Endpoint<F::Addr>,
) -> bool {
    let key = F::rev_key(cookie, backend);
    if let Some(old) = F::sock_rev().get_ptr(&key) {
        // SAFETY: pointer from a successful lookup of a value of the map's type.
        let old = unsafe { old.read() };
        if F::rev_frontend(&old) == frontend {
            return true;
        }
    }
    let value = F::rev_value(service_id, frontend);
    F::sock_rev()
        .insert(&key, value, u64::from(BPF_ANY))
        .is_ok()
}
