//! `recvmsg()` (UDP) and `getpeername()`: a peer that is the backend a translated socket
//! was sent to is shown as the frontend the application asked for.

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext, EbpfContext};
use service_lb_common::Reason;

use super::SockFamily;
use crate::family::Endpoint;

/// The frontend to show instead of `peer` (`Ok`), or the reason it stays untouched.
#[inline(always)]
pub fn frontend<F: SockFamily>(
    sa: &SockAddrContext,
    peer: Endpoint<F::Addr>,
) -> Result<Endpoint<F::Addr>, Reason> {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.as_ptr()) };
    let value = F::sock_rev()
        .get_ptr(F::rev_key(cookie, peer))
        .ok_or(Reason::SockNoRevEntry)?;
    // SAFETY: pointer from a successful lookup of a value of the map's type.
    Ok(F::rev_frontend(unsafe { &*value }))
}
