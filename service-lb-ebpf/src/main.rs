//! service-lb's tc programs. Each entry point runs the shared pipeline for its hook and
//! turns the verdict into a counted tc return code; nothing is silently dropped or passed.
#![no_std]
#![no_main]

mod affinity;
mod config;
mod conntrack;
mod counters;
mod family;
mod frag;
mod hairpin;
mod icmp;
mod lb;
mod maps;
mod nat;
mod packet;
mod pipeline;
mod policy;
mod ports;
mod reject;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use service_lb_common::{Hook, Reason};

/// tc ingress of a host-side pod veth: packets leaving a pod.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::FromPod)
}

/// tc egress of a host-side pod veth: packets entering a pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::ToPod)
}

/// tc ingress of an external device.
#[classifier]
pub fn from_net(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::FromNet)
}

/// tc egress of an external device.
#[classifier]
pub fn to_net(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::ToNet)
}

#[inline(always)]
fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    // NetworkPolicy is checked here, at the top level, so its subprogram's frame never
    // adds to the pipeline's deepest call chain.
    let verdict = match hook {
        Hook::FromPod => policy::egress(ctx, pipeline::run(ctx, hook)),
        Hook::ToPod => {
            let policy = policy::ingress(ctx);
            if policy::is_drop(policy) {
                policy::finish(verdict::Verdict::Pass(Reason::PassNotService), policy)
            } else {
                policy::finish(pipeline::run(ctx, hook), policy)
            }
        }
        Hook::FromNet | Hook::ToNet => pipeline::run(ctx, hook),
    };
    counters::finish(ctx, hook, verdict)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
