//! The `bpf_sock_addr` fields the socket programs use, read and written as whole 32-bit
//! words (the verifier's rule for these fields), volatile so the compiler neither merges
//! nor splits the accesses.
//!
//! `user_ip4` holds the address in network order; `user_port` the network-order port in
//! its low 16 bits, which is exactly the raw `port_be` of the maps.

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};

use crate::family::Endpoint;

#[inline(always)]
fn raw(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

/// The socket's protocol (`IPPROTO_TCP`, `IPPROTO_UDP`, ...).
#[inline(always)]
pub fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the program's own context, a readable field.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*raw(ctx)).protocol)) }
}

#[inline(always)]
fn port_be(ctx: &SockAddrContext) -> u16 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*raw(ctx)).user_port)) as u16 }
}

#[inline(always)]
fn set_port_be(ctx: &SockAddrContext, port_be: u16) {
    // SAFETY: a writable field of the program's own context (4-byte store).
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*raw(ctx)).user_port),
            u32::from(port_be),
        )
    }
}

/// `user_ip4` / `user_port`: the destination (connect, sendmsg) or the peer (recvmsg,
/// getpeername).
#[inline(always)]
pub fn addr4(ctx: &SockAddrContext) -> Endpoint<[u8; 4]> {
    // SAFETY: as above.
    let ip = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*raw(ctx)).user_ip4)) };
    Endpoint {
        addr: ip.to_ne_bytes(),
        port_be: port_be(ctx),
    }
}

#[inline(always)]
pub fn set_addr4(ctx: &SockAddrContext, ep: Endpoint<[u8; 4]>) {
    // SAFETY: a writable field of the program's own context (4-byte store).
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*raw(ctx)).user_ip4),
            u32::from_ne_bytes(ep.addr),
        )
    };
    set_port_be(ctx, ep.port_be);
}

/// Word `$i` of `user_ip6` (a constant index: ctx offsets must be constants).
macro_rules! ip6_word {
    ($ctx:expr, $i:literal) => {
        // SAFETY: a readable field of the program's own context (4-byte load).
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*raw($ctx)).user_ip6[$i])) }
            .to_ne_bytes()
    };
}

macro_rules! set_ip6_word {
    ($ctx:expr, $i:literal, $bytes:expr) => {
        // SAFETY: a writable field of the program's own context (4-byte store).
        unsafe {
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*raw($ctx)).user_ip6[$i]),
                u32::from_ne_bytes($bytes),
            )
        }
    };
}

/// `user_ip6` / `user_port`.
#[inline(always)]
pub fn addr6(ctx: &SockAddrContext) -> Endpoint<[u8; 16]> {
    let (w0, w1, w2, w3) = (
        ip6_word!(ctx, 0),
        ip6_word!(ctx, 1),
        ip6_word!(ctx, 2),
        ip6_word!(ctx, 3),
    );
    Endpoint {
        addr: [
            w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
            w3[0], w3[1], w3[2], w3[3],
        ],
        port_be: port_be(ctx),
    }
}

#[inline(always)]
pub fn set_addr6(ctx: &SockAddrContext, ep: Endpoint<[u8; 16]>) {
    let a = ep.addr;
    set_ip6_word!(ctx, 0, [a[0], a[1], a[2], a[3]]);
    set_ip6_word!(ctx, 1, [a[4], a[5], a[6], a[7]]);
    set_ip6_word!(ctx, 2, [a[8], a[9], a[10], a[11]]);
    set_ip6_word!(ctx, 3, [a[12], a[13], a[14], a[15]]);
    set_port_be(ctx, ep.port_be);
}
