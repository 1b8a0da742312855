//! Conntrack entries: lookup, lifetimes, creation and the "write only when it matters"
//! refresh rule.
//!
//! - TCP state is kept per direction in the flags (`CT_FLAG_FIN_CLIENT`,
//!   `CT_FLAG_FIN_BACKEND`, `CT_FLAG_RST`); `tcp_state` turns them into the state and
//!   the lifetime: a FIN from one side only keeps the half-closed lifetime, FINs from
//!   both sides or a RST the short closing one.
//! - An expired entry is never used nor refreshed: `live` reports it as missing.
//! - Creation uses `BPF_NOEXIST` (`create`): when two CPUs create one flow at once, one
//!   wins and the other is told, so it follows the winner's translation.
//! - In-place updates (`store`) OR the flags they add into the entry with one atomic
//!   instruction (`BPF_ATOMIC | BPF_OR`; flags are only ever added to a live entry), so
//!   two CPUs setting different flags of one flow at once both land; they never write the
//!   whole entry back from an old copy. State and expiry are plain stores (last writer
//!   wins; the next packet recomputes both from the flags).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_boot_ns,
    maps::LruHashMap,
};
use service_lb_common::{
    conntrack::{
        tcp_state, CT_DIR_SERVICE, CT_FLAGS_STICKY, CT_FLAG_CLOSING, CT_FLAG_FIN_BACKEND,
        CT_FLAG_FIN_CLIENT, CT_FLAG_PORT_NAT, CT_FLAG_RST, CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING,
        CT_STATE_ESTABLISHED, CT_STATE_HALF_CLOSED, CT_STATE_NEW,
    },
    proto::{IPPROTO_TCP, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    CtEntry, DataplaneConfig, Reason,
};

use crate::verdict::{Step, Verdict};

pub const NS_PER_S: u64 = 1_000_000_000;

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

/// A TCP segment that opens a connection (SYN without ACK).
#[inline(always)]
pub fn is_syn_only(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// Whether a TCP flow with these flags is over (FIN both ways or RST).
#[inline(always)]
pub fn is_closing(flags: u16) -> bool {
    tcp_state(flags) == CT_STATE_CLOSING
}

/// State, CLOSING flag and expiry of `entry` from its flags, as of `now`.
#[inline(always)]
pub fn settled(cfg: &DataplaneConfig, proto: u8, entry: CtEntry, now: u64) -> CtEntry {
    let mut next = entry;
    let lifetime_s = if proto == IPPROTO_TCP {
        next.state = tcp_state(entry.flags);
        match next.state {
            CT_STATE_CLOSING => {
                next.flags |= CT_FLAG_CLOSING;
                cfg.ct_tcp_closing_s
            }
            CT_STATE_HALF_CLOSED => cfg.ct_tcp_half_closed_s,
            CT_STATE_ESTABLISHED => cfg.ct_tcp_established_s,
            _ => cfg.ct_tcp_syn_s,
        }
    } else {
        next.state = if entry.flags & CT_FLAG_SEEN_REPLY != 0 {
            CT_STATE_ESTABLISHED
        } else {
            CT_STATE_NEW
        };
        cfg.ct_other_s
    };
    next.expires_ns = now + u64::from(lifetime_s) * NS_PER_S;
    next
}

/// The entry after one more packet of its flow, seen in direction `dir` (`CT_DIR_*`),
/// with `tcp_flags` (0 when not TCP).
#[inline(always)]
pub fn advanced(
    cfg: &DataplaneConfig,
    proto: u8,
    tcp_flags: u8,
    dir: u8,
    entry: CtEntry,
    now: u64,
) -> CtEntry {
    let mut next = entry;
    if dir != CT_DIR_SERVICE {
        next.flags |= CT_FLAG_SEEN_REPLY;
    }
    if proto == IPPROTO_TCP {
        if tcp_flags & TCP_FLAG_FIN != 0 {
            next.flags |= if dir == CT_DIR_SERVICE {
                CT_FLAG_FIN_CLIENT
            } else {
                CT_FLAG_FIN_BACKEND
            };
        }
        if tcp_flags & TCP_FLAG_RST != 0 {
            next.flags |= CT_FLAG_RST;
        }
    }
    settled(cfg, proto, next, now)
}

/// `peer` (the other entry of the flow) after its partner became `next`: the sticky flags
/// of both, state and expiry from them.
#[inline(always)]
pub fn merged(
    cfg: &DataplaneConfig,
    proto: u8,
    peer: CtEntry,
    next: &CtEntry,
    now: u64,
) -> CtEntry {
    let mut both = peer;
    both.flags |= next.flags & CT_FLAGS_STICKY;
    settled(cfg, proto, both, now)
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

/// Writes `next` over the live entry at `slot` (read as `current`): ORs the flags `next`
/// adds into the entry atomically (so a flag another CPU sets at the same time is never
/// lost), then writes state and expiry.
#[inline(always)]
pub fn store(slot: *mut CtEntry, current: &CtEntry, next: &CtEntry) {
    if next.flags & !current.flags != 0 {
        // SAFETY: `slot` points at a live map value of type `CtEntry`; its 8-byte word at
        // the offset of `flags` holds the flags in its low 16 bits (little endian; layout
        // asserted in service-lb-common), so OR-ing a u16 into it touches only the flags.
        unsafe {
            let word = core::ptr::addr_of_mut!((*slot).flags).cast::<u64>();
            atomic_or_u64(word, u64::from(next.flags));
        }
    }
    // SAFETY: as above.
    unsafe {
        core::ptr::addr_of_mut!((*slot).state).write_volatile(next.state);
        core::ptr::addr_of_mut!((*slot).expires_ns).write_volatile(next.expires_ns);
    }
}

/// `*word |= bits` as one `BPF_STX | BPF_ATOMIC | BPF_DW` instruction with `BPF_OR`
/// (kernel >= 5.12, LLVM's `-mcpu=v3` encoding). Written as inline assembly: the BPF
/// target has no compare-and-swap, so core's `AtomicU64::fetch_or` is not there.
///
/// # Safety
/// `word` is an 8-byte aligned pointer into a map value the program may write.
#[inline(always)]
unsafe fn atomic_or_u64(word: *mut u64, bits: u64) {
    // SAFETY: the caller's promise; the instruction touches only `*word`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({word} + 0) |= {bits}",
            word = in(reg) word,
            bits = in(reg) bits,
            options(nostack, preserves_flags),
        );
    }
}

/// Creates or replaces the entry under `key`.
#[inline(always)]
pub fn put<K>(map: &LruHashMap<K, CtEntry>, key: &K, entry: &CtEntry) -> Step<()> {
    map.insert(key, entry, u64::from(BPF_ANY))
        .map_err(|_| Verdict::Drop(Reason::DropCtCreate))
}

/// Outcome of `create`.
pub enum Created {
    /// Our entry is in the map.
    Ours,
    /// Another CPU created a live entry under the key first: the flow is theirs.
    Theirs,
}

/// Creates the entry under `key` only if no live entry holds it (`BPF_NOEXIST`). An
/// expired entry in the way is deleted first (the one place an entry is replaced).
#[inline(always)]
pub fn create<K>(
    map: &LruHashMap<K, CtEntry>,
    key: &K,
    entry: &CtEntry,
    now: u64,
) -> Step<Created> {
    let noexist = u64::from(BPF_NOEXIST);
    if map.insert(key, entry, noexist).is_ok() {
        return Ok(Created::Ours);
    }
    if live(map, key, now).is_some() {
        return Ok(Created::Theirs);
    }
    // A dead entry: remove it (an error means someone else did) and try once more.
    let _already_gone = map.remove(key);
    if map.insert(key, entry, noexist).is_ok() {
        return Ok(Created::Ours);
    }
    if live(map, key, now).is_some() {
        return Ok(Created::Theirs);
    }
    Err(Verdict::Drop(Reason::DropCtCreate))
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

/// The forward entry of a flow whose reply entry is `reply` and whose client port on
/// the wire is `wire_port_be` (the inverse of `reply_of`).
#[inline(always)]
pub fn forward_of(reply: &CtEntry, wire_port_be: u16) -> CtEntry {
    let mut forward = *reply;
    if reply.flags & CT_FLAG_PORT_NAT != 0 {
        forward.nat_port_be = wire_port_be;
    }
    forward
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
