//! `SLB_SVCNAME_V1`: service id (`u32`, the master entry's `service_id`) -> which Service
//! the frontend was programmed for. Written by the daemon with the frontend, deleted with
//! it; never read by the programs. It lets `service-lb inspect` and `service-lb diff` name
//! frontends from the pinned maps alone, without the daemon.
//!
//! A pinned map rather than a file beside the pins: bpffs holds only BPF objects (no
//! regular files), and a map is written by the same writer as the frontends, in the same
//! sync, so the names cannot drift from the maps they describe.

use core::mem::{offset_of, size_of};

/// Longest namespace and Service name: a DNS-1123 label has at most 63 bytes.
pub const NAME_LEN: usize = 64;
/// Longest Service port name: an IANA_SVC_NAME has at most 15 bytes.
pub const PORT_NAME_LEN: usize = 16;

/// `SvcName::kind`: the kind of frontend. Values are appended as kinds are programmed
/// (NodePort, LoadBalancer, externalIPs come with issue 11); 0 is never written.
pub const KIND_CLUSTER_IP: u8 = 1;
/// A NodePort frontend (a node address and the nodePort).
pub const KIND_NODE_PORT: u8 = 2;
/// An externalIPs frontend.
pub const KIND_EXTERNAL_IP: u8 = 3;
/// A LoadBalancer ingress IP frontend.
pub const KIND_LOAD_BALANCER: u8 = 4;

/// Value of `SLB_SVCNAME_V1`. Strings are UTF-8, NUL-padded (not NUL-terminated when they
/// fill their field); longer input is cut at a character boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcName {
    pub namespace: [u8; NAME_LEN],
    pub name: [u8; NAME_LEN],
    /// The Service port's name, empty when unnamed.
    pub port_name: [u8; PORT_NAME_LEN],
    /// `KIND_*`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<SvcName>() == 148);
const _: () = assert!(offset_of!(SvcName, name) == 64);
const _: () = assert!(offset_of!(SvcName, port_name) == 128);
const _: () = assert!(offset_of!(SvcName, kind) == 144);

/// Copies `s` into a NUL-padded field, cut at a character boundary when too long.
fn field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut len = s.len().min(N);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out[..len].copy_from_slice(&s.as_bytes()[..len]);
    out
}

/// The text of a NUL-padded field (invalid UTF-8 reads as empty).
fn text(field: &[u8]) -> &str {
    let len = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..len]).unwrap_or("")
}

impl SvcName {
    pub fn new(namespace: &str, name: &str, port_name: &str, kind: u8) -> Self {
        Self {
            namespace: field(namespace),
            name: field(name),
            port_name: field(port_name),
            kind,
            _pad: [0; 3],
        }
    }

    pub fn namespace(&self) -> &str {
        text(&self.namespace)
    }

    pub fn name(&self) -> &str {
        text(&self.name)
    }

    pub fn port_name(&self) -> &str {
        text(&self.port_name)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    #[test]
    fn strings_round_trip_and_are_cut_at_a_character_boundary() {
        let n = SvcName::new("kube-system", "kube-dns", "dns-tcp", KIND_CLUSTER_IP);
        assert_eq!(
            (n.namespace(), n.name(), n.port_name()),
            ("kube-system", "kube-dns", "dns-tcp")
        );
        assert_eq!(n.kind, KIND_CLUSTER_IP);
        // 63 bytes (the longest label) fit; 64 fill the field with no NUL.
        let label: String = core::iter::repeat_n('a', 63).collect();
        assert_eq!(SvcName::new(&label, "x", "", 1).namespace(), label);
        let full: String = core::iter::repeat_n('b', 64).collect();
        assert_eq!(SvcName::new("x", &full, "", 1).name(), full);
        // A 2-byte character across the 16-byte port-name field is left out whole.
        let port = "aaaaaaaaaaaaaaaé";
        assert_eq!(
            SvcName::new("x", "y", port, 1).port_name(),
            "aaaaaaaaaaaaaaa"
        );
        assert_eq!(SvcName::new("x", "y", "", 1).port_name(), "");
    }
}
