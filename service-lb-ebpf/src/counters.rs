//! Per-CPU (hook, reason) counters and the mapping of a verdict to a tc return code.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use service_lb_common::{
    counters::counter_index,
    proto::{VERDICT_DROP, VERDICT_PASS},
    Hook, Reason,
};

use crate::{maps::SLB_CNT_V6, verdict::Verdict};

/// Counts the packet under (hook, reason) and returns the tc verdict for it.
#[inline(always)]
pub fn finish(ctx: &TcContext, hook: Hook, verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass(reason) => {
            count(ctx, hook, reason);
            VERDICT_PASS
        }
        Verdict::Drop(reason) => {
            count(ctx, hook, reason);
            VERDICT_DROP
        }
        Verdict::Answer(reason) => {
            count(ctx, hook, reason);
            // SAFETY: reads the program's own context. Egress of the device the packet
            // arrived on: the answer goes back towards its sender.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // SAFETY: helper with plain arguments; TC_ACT_REDIRECT or TC_ACT_SHOT.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
    }
}

#[inline(always)]
pub fn count(ctx: &TcContext, hook: Hook, reason: Reason) {
    // The array has COUNTERS_LEN entries and every (hook, reason) index is below it, so
    // the lookup only fails if the map itself is broken; there is nothing else to tell.
    if let Some(counter) = SLB_CNT_V6.get_ptr_mut(counter_index(hook, reason)) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(ctx.len());
        }
    }
}
