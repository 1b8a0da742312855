//! Socket-level load balancing (cgroup `connect4/6`, `sendmsg4/6`, `recvmsg4/6`,
//! `getpeername4/6`).
//!
//! - `connect()` / unconnected `sendmsg()` to a frontend: a backend is chosen from the same
//!   services/backends/affinity maps the tc programs use, and the socket's destination is
//!   rewritten to it once; the packets then carry the backend address, so the tc programs
//!   see a flow to a pod and pass it (no second DNAT, no conntrack entry).
//! - The reverse maps (LRU, one per family), keyed by (socket cookie, backend address,
//!   backend port), remember the frontend, so `recvmsg()` of an unconnected UDP socket and
//!   `getpeername()` show the ClusterIP and port instead of the backend.
//! - `SLB_SOCK` (load-time global, `SockConfig`): the host's network-namespace cookie and
//!   flags (`SOCK_FLAG_HOSTNS_ONLY`: sockets of other namespaces, i.e. pods, are left to
//!   the tc programs).
//!
//! IPv4-mapped IPv6 destinations (`::ffff:a.b.c.d`) of IPv6 sockets go through the IPv4
//! maps and are written back mapped; their reverse entries live in the IPv4 map.

use core::mem::{offset_of, size_of};

/// Name of the global the socket programs read their configuration from.
pub const SOCK_GLOBAL: &str = "SLB_SOCK";

/// Only sockets of the host's network namespace (`host_netns_cookie`) are translated.
pub const SOCK_FLAG_HOSTNS_ONLY: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockConfig {
    /// `SO_NETNS_COOKIE` of the daemon's (the host's) network namespace; 0 = unknown.
    pub host_netns_cookie: u64,
    /// `SOCK_FLAG_*`.
    pub flags: u32,
    pub _pad: u32,
}

impl SockConfig {
    /// Every socket translated (what the object holds until the daemon patches it).
    pub const ALL_NAMESPACES: Self = Self {
        host_netns_cookie: 0,
        flags: 0,
        _pad: 0,
    };

    pub const fn hostns_only(&self) -> bool {
        self.flags & SOCK_FLAG_HOSTNS_ONLY != 0
    }
}

/// Key of the IPv4 socket reverse map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRev4Key {
    /// `bpf_get_socket_cookie()` of the socket (unique per boot).
    pub cookie: u64,
    /// The backend the socket was sent to.
    pub addr: [u8; 4],
    pub port_be: u16,
    pub _pad: [u8; 2],
}

/// Key of the IPv6 socket reverse map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRev6Key {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 6],
}

/// Value of the IPv4 socket reverse map: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRev4Value {
    pub service_id: u32,
    pub addr: [u8; 4],
    pub port_be: u16,
    pub _pad: [u8; 2],
}

/// Value of the IPv6 socket reverse map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRev6Value {
    pub service_id: u32,
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 2],
}

impl SockRev4Key {
    pub const fn new(cookie: u64, addr: [u8; 4], port_be: u16) -> Self {
        Self {
            cookie,
            addr,
            port_be,
            _pad: [0; 2],
        }
    }
}

impl SockRev6Key {
    pub const fn new(cookie: u64, addr: [u8; 16], port_be: u16) -> Self {
        Self {
            cookie,
            addr,
            port_be,
            _pad: [0; 6],
        }
    }
}

impl SockRev4Value {
    pub const fn new(service_id: u32, addr: [u8; 4], port_be: u16) -> Self {
        Self {
            service_id,
            addr,
            port_be,
            _pad: [0; 2],
        }
    }
}

impl SockRev6Value {
    pub const fn new(service_id: u32, addr: [u8; 16], port_be: u16) -> Self {
        Self {
            service_id,
            addr,
            port_be,
            _pad: [0; 2],
        }
    }
}

/// Capacity of each socket reverse map (LRU: the oldest sockets' entries go first).
pub const SOCK_REV_MAX: u32 = 262_144;

const _: () = {
    assert!(size_of::<SockConfig>() == 16);
    assert!(size_of::<SockRev4Key>() == 16);
    assert!(offset_of!(SockRev4Key, addr) == 8);
    assert!(offset_of!(SockRev4Key, port_be) == 12);
    assert!(size_of::<SockRev6Key>() == 32);
    assert!(offset_of!(SockRev6Key, addr) == 8);
    assert!(offset_of!(SockRev6Key, port_be) == 24);
    assert!(size_of::<SockRev4Value>() == 12);
    assert!(offset_of!(SockRev4Value, port_be) == 8);
    assert!(size_of::<SockRev6Value>() == 24);
    assert!(offset_of!(SockRev6Value, port_be) == 20);
};
