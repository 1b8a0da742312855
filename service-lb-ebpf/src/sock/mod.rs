//! Socket-level load balancing (cgroup sock_addr hooks, see `service_lb_common::sock`).
//!
//! - `fwd`: `connect()` and unconnected `sendmsg()`: the frontend lookup and backend
//!   choice of the tc path (`lb::choose_for`, same maps, internal scope, affinity), the
//!   socket's destination rewritten once, the reverse entry stored; a frontend with no
//!   endpoint (or a ClusterIP on an undefined port) refused with ECONNREFUSED.
//! - `rev`: `recvmsg()` and `getpeername()`: the backend shown as the frontend.
//! - `release`: `close()`: a connected socket's reverse entry deleted (O(1)).
//! - `ctx`: the few `bpf_sock_addr` fields the programs read and write.
//!
//! Every call is counted once under (socket hook, reason), with zero bytes.

pub mod ctx;
pub mod fwd;
pub mod release;
pub mod rev;

use aya_ebpf::maps::LruHashMap;
use service_lb_common::{
    counters::counter_index,
    sock::{SockConfig, SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value},
    Hook, Reason,
};

use crate::{
    affinity::Sticky,
    family::{Endpoint, V4, V6},
    maps::{SLB_CNT_V6, SLB_SKRN4_V1, SLB_SKRN6_V1},
    reject::Refuse,
};

/// sock_addr return codes: go on with the system call, or fail it (with the error set by
/// `bpf_set_retval`, EPERM when none was set).
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

/// Read-only to the programs; patched by userspace (`SOCK_GLOBAL`).
#[no_mangle]
static SLB_SOCK: SockConfig = SockConfig::ALL_NAMESPACES;

/// The socket configuration in force (volatile: not folded before userspace patches it).
#[inline(always)]
pub fn config() -> SockConfig {
    // SAFETY: a plain `#[repr(C)]` static of integers, always initialised.
    unsafe { core::ptr::read_volatile(&SLB_SOCK) }
}

/// The family parts of the socket programs.
pub trait SockFamily: Refuse + Sticky {
    type RevKey: 'static;
    type RevValue: Copy + 'static;
    fn sock_rev() -> &'static LruHashMap<Self::RevKey, Self::RevValue>;
    fn rev_key(cookie: u64, backend: Endpoint<Self::Addr>) -> Self::RevKey;
    fn rev_value(service_id: u32, frontend: Endpoint<Self::Addr>) -> Self::RevValue;
    fn rev_frontend(value: &Self::RevValue) -> Endpoint<Self::Addr>;
    /// The affinity-map key of every socket of a network namespace: the socket's source
    /// address is not known at `connect()`, so sockets are sticky per namespace (as
    /// Cilium's socket LB). The key lies in `0.0.0.0/8` / `::/64`, never a packet's source,
    /// so it never meets a tc-path entry.
    fn netns_client(netns_cookie: u64) -> Self::Addr;
}

impl SockFamily for V4 {
    type RevKey = SockRev4Key;
    type RevValue = SockRev4Value;
    #[inline(always)]
    fn sock_rev() -> &'static LruHashMap<SockRev4Key, SockRev4Value> {
        &SLB_SKRN4_V1
    }
    #[inline(always)]
    fn rev_key(cookie: u64, backend: Endpoint<[u8; 4]>) -> SockRev4Key {
        SockRev4Key::new(cookie, backend.addr, backend.port_be)
    }
    #[inline(always)]
    fn rev_value(service_id: u32, frontend: Endpoint<[u8; 4]>) -> SockRev4Value {
        SockRev4Value::new(service_id, frontend.addr, frontend.port_be)
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRev4Value) -> Endpoint<[u8; 4]> {
        Endpoint {
            addr: value.addr,
            port_be: value.port_be,
        }
    }
    #[inline(always)]
    fn netns_client(netns_cookie: u64) -> [u8; 4] {
        let b = netns_cookie.to_be_bytes();
        [0, b[5], b[6], b[7]]
    }
}

impl SockFamily for V6 {
    type RevKey = SockRev6Key;
    type RevValue = SockRev6Value;
    #[inline(always)]
    fn sock_rev() -> &'static LruHashMap<SockRev6Key, SockRev6Value> {
        &SLB_SKRN6_V1
    }
    #[inline(always)]
    fn rev_key(cookie: u64, backend: Endpoint<[u8; 16]>) -> SockRev6Key {
        SockRev6Key::new(cookie, backend.addr, backend.port_be)
    }
    #[inline(always)]
    fn rev_value(service_id: u32, frontend: Endpoint<[u8; 16]>) -> SockRev6Value {
        SockRev6Value::new(service_id, frontend.addr, frontend.port_be)
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRev6Value) -> Endpoint<[u8; 16]> {
        Endpoint {
            addr: value.addr,
            port_be: value.port_be,
        }
    }
    #[inline(always)]
    fn netns_client(netns_cookie: u64) -> [u8; 16] {
        let b = netns_cookie.to_be_bytes();
        [
            0, 0, 0, 0, 0, 0, 0, 0, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]
    }
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`.
#[inline(always)]
pub fn unmap(addr: [u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    (addr[..12] == prefix).then_some([addr[12], addr[13], addr[14], addr[15]])
}

/// `a.b.c.d` -> `::ffff:a.b.c.d`.
#[inline(always)]
pub fn map_v4(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Counts one call of `hook` under `reason` and returns `ret`.
#[inline(always)]
pub fn finish(hook: Hook, reason: Reason, ret: i32) -> i32 {
    // Every (hook, reason) index is below the array's length: only a broken map fails.
    if let Some(counter) = SLB_CNT_V6.get_ptr_mut(counter_index(hook, reason)) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { (*counter).packets += 1 };
    }
    ret
}

/// `connect4` / `sendmsg4`.
#[inline(always)]
pub fn forward4(sa: &aya_ebpf::programs::SockAddrContext, hook: Hook) -> i32 {
    let d = fwd::decide::<V4>(sa, ctx::addr4(sa));
    if let Some(backend) = d.backend {
        ctx::set_addr4(sa, backend);
    }
    finish(hook, d.reason, d.ret)
}

/// `connect6` / `sendmsg6`; an IPv4-mapped destination goes through the IPv4 maps and
/// its backend is written back mapped.
#[inline(always)]
pub fn forward6(sa: &aya_ebpf::programs::SockAddrContext, hook: Hook) -> i32 {
    let dst = ctx::addr6(sa);
    if let Some(v4) = unmap(dst.addr) {
        let d = fwd::decide::<V4>(
            sa,
            Endpoint {
                addr: v4,
                port_be: dst.port_be,
            },
        );
        if let Some(backend) = d.backend {
            ctx::set_addr6(
                sa,
                Endpoint {
                    addr: map_v4(backend.addr),
                    port_be: backend.port_be,
                },
            );
        }
        return finish(hook, d.reason, d.ret);
    }
    let d = fwd::decide::<V6>(sa, dst);
    if let Some(backend) = d.backend {
        ctx::set_addr6(sa, backend);
    }
    finish(hook, d.reason, d.ret)
}

/// `recvmsg4` / `getpeername4` (always allowed: these hooks cannot fail the call).
#[inline(always)]
pub fn reverse4(sa: &aya_ebpf::programs::SockAddrContext, hook: Hook) -> i32 {
    match rev::frontend::<V4>(sa, ctx::addr4(sa)) {
        Ok(frontend) => {
            ctx::set_addr4(sa, frontend);
            finish(hook, Reason::SockRevTranslated, ALLOW)
        }
        Err(reason) => finish(hook, reason, ALLOW),
    }
}

/// `recvmsg6` / `getpeername6`; an IPv4-mapped peer is looked up in the IPv4 map.
#[inline(always)]
pub fn reverse6(sa: &aya_ebpf::programs::SockAddrContext, hook: Hook) -> i32 {
    let peer = ctx::addr6(sa);
    if let Some(v4) = unmap(peer.addr) {
        let peer4 = Endpoint {
            addr: v4,
            port_be: peer.port_be,
        };
        return match rev::frontend::<V4>(sa, peer4) {
            Ok(frontend) => {
                ctx::set_addr6(
                    sa,
                    Endpoint {
                        addr: map_v4(frontend.addr),
                        port_be: frontend.port_be,
                    },
                );
                finish(hook, Reason::SockRevTranslated, ALLOW)
            }
            Err(reason) => finish(hook, reason, ALLOW),
        };
    }
    match rev::frontend::<V6>(sa, peer) {
        Ok(frontend) => {
            ctx::set_addr6(sa, frontend);
            finish(hook, Reason::SockRevTranslated, ALLOW)
        }
        Err(reason) => finish(hook, reason, ALLOW),
    }
}
