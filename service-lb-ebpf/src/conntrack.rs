//! Conntrack entries: lookup, lifetimes, creation and the "write only when it matters"
//! refresh rule.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_boot_ns, maps::LruHashMap};
use service_lb_common::{
    conntrack::{
        CT_FLAG_CLOSING, CT_FLAG_PORT_NAT, CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING,
        CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    proto::{IPPROTO_TCP, TCP_FLAG_FIN, TCP_FLAG_RST},
    CtEntry, DataplaneConfig, Reason,
};

use crate::verdict::{Step, Verdict};

const NS_PER_S: u64 = 1_000_000_000;

/// The conntrack clock (CLOCK_BOOTTIME, keeps counting through suspend).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// A live entry of `map` under `key`: a pointer to write it in place and a copy to read.
/// Expired entries are reported as missing: they are never reused.
#[inline(always)]
pub fn live<K>(map: &LruHashMap<K, CtEntry>, key: &K, now: u64) -> Option<(*mut CtEntry, CtEntry)> {
    let ptr = map.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup of a value of this type.
    let entry = unsafe { ptr.read() };
    (now < entry.expires_ns).then_some((ptr, entry))
}

/// The entry after one more packet of its flow (`tcp_flags` of that packet, 0 when not
/// TCP): state, CLOSING flag and expiry per `DataplaneConfig`.
#[inline(always)]
pub fn advanced(
    cfg: &DataplaneConfig,
    proto: u8,
    tcp_flags: u8,
    entry: CtEntry,
    now: u64,
) -> CtEntry {
    let mut next = entry;
    let seen_reply = entry.flags & CT_FLAG_SEEN_REPLY != 0;
    let lifetime_s = if proto == IPPROTO_TCP {
        if entry.state == CT_STATE_CLOSING || tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
            next.state = CT_STATE_CLOSING;
            next.flags |= CT_FLAG_CLOSING;
            cfg.ct_tcp_closing_s
        } else if seen_reply {
            next.state = CT_STATE_ESTABLISHED;
            cfg.ct_tcp_established_s
        } else {
            next.state = CT_STATE_NEW;
            cfg.ct_tcp_syn_s
        }
    } else {
        next.state = if seen_reply {
            CT_STATE_ESTABLISHED
        } else {
            CT_STATE_NEW
        };
        cfg.ct_other_s
    };
    next.expires_ns = now + u64::from(lifetime_s) * NS_PER_S;
    next
}

/// Whether `next` differs enough from `current` to be written: any flag or state change,
/// a shorter lifetime, or a lifetime at least 1 s longer (so a busy flow does not write
/// its entry on every packet).
#[inline(always)]
pub fn worth_writing(current: &CtEntry, next: &CtEntry) -> bool {
    current.flags != next.flags
        || current.state != next.state
        || next.expires_ns < current.expires_ns
        || next.expires_ns - current.expires_ns >= NS_PER_S
}

/// Creates or replaces the entry under `key`.
#[inline(always)]
pub fn put<K>(map: &LruHashMap<K, CtEntry>, key: &K, entry: &CtEntry) -> Step<()> {
    map.insert(key, entry, u64::from(BPF_ANY))
        .map_err(|_| Verdict::Drop(Reason::DropCtCreate))
}

/// A fresh entry of a new flow.
#[inline(always)]
pub fn new_entry(backend_id: u32, service_id: u32, flags: u16) -> CtEntry {
    CtEntry {
        expires_ns: 0,
        backend_id,
        service_id,
        flags,
        state: CT_STATE_NEW,
        ..CtEntry::default()
    }
}

/// The reply entry of a flow whose forward entry is `forward`: the same state; with
/// `CT_FLAG_PORT_NAT` it names the client's own port (`client_port_be`) instead of the
/// port on the wire.
#[inline(always)]
pub fn reply_of(forward: &CtEntry, client_port_be: u16) -> CtEntry {
    let mut reply = *forward;
    if forward.flags & CT_FLAG_PORT_NAT != 0 {
        reply.nat_port_be = client_port_be;
    }
    reply
}

/// The client's port on the wire for a flow with this forward entry.
#[inline(always)]
pub fn wire_port(forward: &CtEntry, client_port_be: u16) -> u16 {
    if forward.flags & CT_FLAG_PORT_NAT != 0 {
        forward.nat_port_be
    } else {
        client_port_be
    }
}
