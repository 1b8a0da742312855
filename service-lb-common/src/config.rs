//! Load-time configuration of the programs, patched into the `SLB_CONFIG` global with
//! `EbpfLoader::override_global` (read-only to the programs, so the verifier sees
//! constants).

use core::mem::size_of;

/// Name of the global the programs read their configuration from.
pub const CONFIG_GLOBAL: &str = "SLB_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// TCP flow before any reply was seen (SYN sent).
    pub ct_tcp_syn_s: u32,
    /// TCP flow after a reply was seen.
    pub ct_tcp_established_s: u32,
    /// TCP flow after a FIN from both sides, or a RST.
    pub ct_tcp_closing_s: u32,
    /// UDP and other flows (refreshed by every packet).
    pub ct_other_s: u32,
    /// TCP flow after a FIN from one side only (the other may still send): kube-proxy's
    /// `nf_conntrack_tcp_timeout_close_wait` (1 h).
    pub ct_tcp_half_closed_s: u32,
}

impl DataplaneConfig {
    /// Cilium-like defaults: 60 s SYN, 6 h established, 10 s closing, 60 s UDP; 1 h
    /// half-closed like kube-proxy.
    pub const DEFAULT: Self = Self {
        ct_tcp_syn_s: 60,
        ct_tcp_established_s: 21_600,
        ct_tcp_closing_s: 10,
        ct_other_s: 60,
        ct_tcp_half_closed_s: 3_600,
    };
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const _: () = assert!(size_of::<DataplaneConfig>() == 20);
