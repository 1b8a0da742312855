//! service-lb's tc programs. Each entry point runs the shared pipeline for its hook and
//! turns the verdict into a counted tc return code; nothing is silently dropped or passed.
#![no_std]
#![no_main]
// `asm!` on the BPF target (conntrack's atomic flag OR).
#![feature(asm_experimental_arch)]

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
mod ports;
mod reject;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use service_lb_common::Hook;

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
    counters::finish(ctx, hook, pipeline::run(ctx, hook))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
