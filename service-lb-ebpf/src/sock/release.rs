//! `close()` of a socket of the cgroup (`cgroup/sock_release`): the reverse entry of a
//! connected socket is deleted at once. Its key is the socket's cookie and the backend the
//! socket is connected to, both readable from the socket at release: one delete, O(1).
//!
//! Entries this cannot find age out of the LRU instead (`docs/operations.md`): those of an
//! unconnected UDP socket (one per backend it sent to, not known at release) and those of
//! a socket's earlier `connect()`s (a socket connected again keeps only its last peer).

use aya_ebpf::{
    bindings::bpf_sock, helpers::bpf_get_socket_cookie, programs::SockContext, EbpfContext,
};
use service_lb_common::{
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    Hook, Reason,
};

use super::{finish, unmap, SockFamily, ALLOW};
use crate::family::{Endpoint, V4, V6};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Reads a field of the socket (whole words, or the 16-bit `dst_port`, as the verifier
/// allows for `bpf_sock`).
macro_rules! field {
    ($sk:expr, $($f:tt)+) => {
        // SAFETY: a readable field of the program's own context.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$sk).$($f)+)) }
    };
}

#[inline(always)]
fn forget<F: SockFamily>(ctx: &SockContext, peer: Endpoint<F::Addr>) -> Reason {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match F::sock_rev().remove(F::rev_key(cookie, peer)) {
        Ok(()) => Reason::SockRevReleased,
        Err(_) => Reason::SockNoRevEntry,
    }
}

/// Counted under `sock_release`; never fails the call (the hook cannot).
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    let proto = field!(sk, protocol);
    if proto != u32::from(IPPROTO_TCP) && proto != u32::from(IPPROTO_UDP) {
        return finish(Hook::SockRelease, Reason::PassOtherProto, ALLOW);
    }
    let port_be: u16 = field!(sk, dst_port);
    if port_be == 0 {
        // Not connected: nothing names its entries.
        return finish(Hook::SockRelease, Reason::SockNoRevEntry, ALLOW);
    }
    let reason = match field!(sk, family) {
        AF_INET => forget::<V4>(
            ctx,
            Endpoint {
                addr: field!(sk, dst_ip4).to_ne_bytes(),
                port_be,
            },
        ),
        AF_INET6 => {
            let (w0, w1, w2, w3) = (
                field!(sk, dst_ip6[0]).to_ne_bytes(),
                field!(sk, dst_ip6[1]).to_ne_bytes(),
                field!(sk, dst_ip6[2]).to_ne_bytes(),
                field!(sk, dst_ip6[3]).to_ne_bytes(),
            );
            let addr = [
                w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
                w3[0], w3[1], w3[2], w3[3],
            ];
            match unmap(addr) {
                Some(v4) => forget::<V4>(ctx, Endpoint { addr: v4, port_be }),
                None => forget::<V6>(ctx, Endpoint { addr, port_be }),
            }
        }
        _ => Reason::PassOtherProto,
    };
    finish(Hook::SockRelease, reason, ALLOW)
}
