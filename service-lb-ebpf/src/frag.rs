//! Fragmented UDP datagrams (`service_lb_common::frag`).
//!
//! - `classify` (a subprogram, called before the pipeline): not a fragment -> the
//!   pipeline; the first fragment of a UDP datagram -> its key (addresses as it arrived,
//!   IP identification, protocol) waits in the per-CPU pending slot and the pipeline
//!   translates it like a whole datagram (it carries the ports); a later fragment of a
//!   recorded datagram -> its addresses rewritten as its first fragment's were (IPv4
//!   header checksum; nothing at L4: it has no L4 header), counted `dnat_fragment` /
//!   `revnat_fragment`; any other fragment passes untouched (`pass_fragment`).
//! - `record` (a subprogram, called after the pipeline for a first fragment it passed):
//!   when the pipeline changed an address, the translation is recorded under the pending
//!   key for the later fragments.
//!
//! Records are per direction (`FRAG_DIR_*`): the reply's later fragments cross `from_net`
//! before `to_pod`, and only `to_pod` / `to_net` may translate them.
//!
//! Only an IPv6 fragment header right after the fixed header is seen (as `packet` does).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_RECOMPUTE_CSUM},
    cty::c_long,
    maps::LruHashMap,
    programs::TcContext,
};
use service_lb_common::{
    frag::{FragKey4, FragKey6, FragNat4, FragNat6, FragPending, FRAG_DIR_REPLY, FRAG_DIR_REQUEST},
    proto::{ETH_HLEN, IPPROTO_FRAGMENT, IPPROTO_UDP, IPV6_HLEN},
    Hook, Reason,
};

use crate::{
    family::{Family, V4, V6},
    maps::{SLB_FRAG4_V1, SLB_FRAG6_V1, SLB_FRAGP_V1},
    packet::{Ipv6FragHdr, IPV4_FRAG_OFFSET, IPV4_MF_AND_OFFSET},
    verdict::{Verdict, RAW_OTHER},
};

/// Raw outcomes of `classify` besides a verdict.
pub const NOT_FRAGMENT: u64 = RAW_OTHER + 0x100;
pub const FIRST_FRAGMENT: u64 = RAW_OTHER + 0x101;

/// Offset of the IPv4 header checksum.
const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;

/// What a fragment is.
pub enum Kind<K> {
    /// Not a fragment, or one `packet` parses (not UDP: passed as a fragment there).
    Whole,
    First(K),
    Later(K),
}

/// The per-family part.
pub trait Fragments: Family {
    type Key: Copy + 'static;
    type Nat: Copy + PartialEq + 'static;

    /// The fragment key of the packet (IP right after the Ethernet header) in direction
    /// `dir` (`FRAG_DIR_*`).
    fn kind(ctx: &TcContext, dir: u8) -> Kind<Self::Key>;
    fn frags() -> &'static LruHashMap<Self::Key, Self::Nat>;
    fn pending(slot: &mut FragPending) -> &mut Self::Key;
    /// The addresses of `key`.
    fn nat_of(key: &Self::Key) -> Self::Nat;
    /// Same identification and protocol (the addresses may have been translated).
    fn same_datagram(a: &Self::Key, b: &Self::Key) -> bool;
    /// Rewrites the addresses of the packet (which `key` describes) to `nat`.
    fn rewrite(ctx: &TcContext, key: &Self::Key, nat: &Self::Nat) -> Result<(), c_long>;
}

/// `NOT_FRAGMENT`, `FIRST_FRAGMENT` (its key pending), or the raw verdict of a later
/// fragment (translated, or passed untouched).
#[inline(never)]
pub fn classify<F: Fragments>(ctx: &TcContext, hook: Hook) -> u64 {
    match F::kind(ctx, direction(hook)) {
        Kind::Whole => NOT_FRAGMENT,
        Kind::First(key) => match SLB_FRAGP_V1.get_ptr_mut(0) {
            Some(slot) => {
                // SAFETY: a valid per-CPU array slot; the program is not re-entered on
                // this CPU before `record` reads it.
                *F::pending(unsafe { &mut *slot }) = key;
                FIRST_FRAGMENT
            }
            // Cannot happen (a one-entry array); the datagram is then whole-only.
            None => NOT_FRAGMENT,
        },
        Kind::Later(key) => {
            // SAFETY: pointer from a successful lookup, copied at once.
            let Some(nat) = F::frags().get_ptr(key).map(|p| unsafe { p.read() }) else {
                return Verdict::Pass(Reason::PassFragment).to_raw();
            };
            if F::rewrite(ctx, &key, &nat).is_err() {
                return Verdict::Drop(Reason::DropNatFailed).to_raw();
            }
            let reason = if direction(hook) == FRAG_DIR_REPLY {
                Reason::RevNatFragment
            } else {
                Reason::DnatFragment
            };
            Verdict::Pass(reason).to_raw()
        }
    }
}

/// After the pipeline passed (`raw`) a first fragment: records its translation when it
/// changed an address. Returns `raw`.
#[inline(never)]
pub fn record<F: Fragments>(ctx: &TcContext, hook: Hook, raw: u64) -> u64 {
    if !matches!(Verdict::from_raw(raw), Verdict::Pass(_)) {
        return raw;
    }
    let Kind::First(now) = F::kind(ctx, direction(hook)) else {
        return raw;
    };
    let Some(slot) = SLB_FRAGP_V1.get_ptr_mut(0) else {
        return raw;
    };
    // SAFETY: a valid per-CPU array slot, copied at once.
    let arrived = *F::pending(unsafe { &mut *slot });
    let nat = F::nat_of(&now);
    if F::same_datagram(&arrived, &now) && F::nat_of(&arrived) != nat {
        // An LRU insert fails only without memory: the later fragments then pass.
        let _ = F::frags().insert(arrived, nat, u64::from(BPF_ANY));
    }
    raw
}

/// The direction of the hook's packets.
#[inline(always)]
fn direction(hook: Hook) -> u8 {
    if matches!(hook, Hook::ToPod | Hook::ToNet) {
        FRAG_DIR_REPLY
    } else {
        FRAG_DIR_REQUEST
    }
}

impl Fragments for V4 {
    type Key = FragKey4;
    type Nat = FragNat4;

    #[inline(always)]
    fn kind(ctx: &TcContext, dir: u8) -> Kind<FragKey4> {
        let Ok(ip) = ctx.load::<[u8; 20]>(ETH_HLEN) else {
            return Kind::Whole;
        };
        let frag_bits = u16::from_be_bytes([ip[6], ip[7]]) & IPV4_MF_AND_OFFSET;
        if ip[0] >> 4 != 4 || frag_bits == 0 || ip[9] != IPPROTO_UDP {
            return Kind::Whole;
        }
        let key = FragKey4::new(
            [ip[12], ip[13], ip[14], ip[15]],
            [ip[16], ip[17], ip[18], ip[19]],
            [ip[4], ip[5], 0, 0],
            ip[9],
            dir,
        );
        if frag_bits & IPV4_FRAG_OFFSET == 0 {
            Kind::First(key)
        } else {
            Kind::Later(key)
        }
    }

    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey4, FragNat4> {
        &SLB_FRAG4_V1
    }

    #[inline(always)]
    fn pending(slot: &mut FragPending) -> &mut FragKey4 {
        &mut slot.v4
    }

    #[inline(always)]
    fn nat_of(key: &FragKey4) -> FragNat4 {
        FragNat4 {
            saddr: key.saddr,
            daddr: key.daddr,
        }
    }

    #[inline(always)]
    fn same_datagram(a: &FragKey4, b: &FragKey4) -> bool {
        a.id == b.id && a.proto == b.proto
    }

    #[inline(always)]
    fn rewrite(ctx: &TcContext, key: &FragKey4, nat: &FragNat4) -> Result<(), c_long> {
        for (off, old, new) in [
            (V4::SADDR_OFF, key.saddr, nat.saddr),
            (V4::DADDR_OFF, key.daddr, nat.daddr),
        ] {
            if old != new {
                let from = u64::from(u32::from_ne_bytes(old));
                let to = u64::from(u32::from_ne_bytes(new));
                ctx.l3_csum_replace(IPV4_CSUM_OFF, from, to, 4)?;
                ctx.store(ETH_HLEN + off, &new, 0)?;
            }
        }
        Ok(())
    }
}

impl Fragments for V6 {
    type Key = FragKey6;
    type Nat = FragNat6;

    #[inline(always)]
    fn kind(ctx: &TcContext, dir: u8) -> Kind<FragKey6> {
        let Ok(ip) = ctx.load::<[u8; IPV6_HLEN]>(ETH_HLEN) else {
            return Kind::Whole;
        };
        if ip[0] >> 4 != 6 || ip[6] != IPPROTO_FRAGMENT {
            return Kind::Whole;
        }
        let Ok(fh) = ctx.load::<Ipv6FragHdr>(ETH_HLEN + IPV6_HLEN) else {
            return Kind::Whole;
        };
        if fh.next_header != IPPROTO_UDP {
            return Kind::Whole;
        }
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        saddr.copy_from_slice(&ip[8..24]);
        daddr.copy_from_slice(&ip[24..40]);
        let key = FragKey6::new(saddr, daddr, fh.id, fh.next_header, dir);
        // Offset (13 bits, 8-byte units), 2 reserved bits, M flag.
        if u16::from_be_bytes(fh.offset_flags) >> 3 == 0 {
            Kind::First(key)
        } else {
            Kind::Later(key)
        }
    }

    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragNat6> {
        &SLB_FRAG6_V1
    }

    #[inline(always)]
    fn pending(slot: &mut FragPending) -> &mut FragKey6 {
        &mut slot.v6
    }

    #[inline(always)]
    fn nat_of(key: &FragKey6) -> FragNat6 {
        FragNat6 {
            saddr: key.saddr,
            daddr: key.daddr,
        }
    }

    #[inline(always)]
    fn same_datagram(a: &FragKey6, b: &FragKey6) -> bool {
        a.id == b.id && a.proto == b.proto
    }

    #[inline(always)]
    fn rewrite(ctx: &TcContext, key: &FragKey6, nat: &FragNat6) -> Result<(), c_long> {
        // No IP header checksum, no L4 header: the addresses are all there is; the
        // kernel's packet checksum (CHECKSUM_COMPLETE) follows the stored bytes.
        let flags = u64::from(BPF_F_RECOMPUTE_CSUM);
        if key.saddr != nat.saddr {
            ctx.store(ETH_HLEN + V6::SADDR_OFF, &nat.saddr, flags)?;
        }
        if key.daddr != nat.daddr {
            ctx.store(ETH_HLEN + V6::DADDR_OFF, &nat.daddr, flags)?;
        }
        Ok(())
    }
}
