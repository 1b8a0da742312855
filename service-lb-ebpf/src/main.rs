//! service-lb's tc programs and socket-LB (cgroup sock_addr) programs. Each tc entry point
//! runs the shared pipeline for its hook and turns the verdict into a counted tc return
//! code; each socket entry point counts its outcome (`sock`). Nothing is silently dropped
//! or passed.
#![no_std]
#![no_main]
// `asm!` on the BPF target (conntrack's atomic flag OR).
#![feature(asm_experimental_arch)]

mod affinity;
mod config;
mod conntrack;
mod counters;
mod family;
mod fib;
mod frag;
mod hairpin;
mod icmp;
mod lb;
mod maglev;
mod maps;
mod nat;
mod northsouth;
mod packet;
mod pipeline;
mod policy;
mod ports;
mod reject;
mod sock;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier},
    programs::{SockAddrContext, SockContext, TcContext},
};
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

/// Socket LB (`sock`): `connect()` of a socket in the cgroup.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, Hook::SockConnect)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, Hook::SockConnect)
}

/// Socket LB: `sendmsg()` with an address (unconnected UDP).
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, Hook::SockSendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, Hook::SockSendmsg)
}

/// Socket LB: the source of a datagram a UDP socket receives.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx, Hook::SockRecvmsg)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx, Hook::SockRecvmsg)
}

/// Socket LB: `getpeername()`.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx, Hook::SockGetpeername)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx, Hook::SockGetpeername)
}

/// Socket LB: a socket of the cgroup is released (`close()`): its reverse entry goes.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    sock::release::release(&ctx)
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
        // The socket hooks never reach `handle` (their own entry points above).
        _ => pipeline::run(ctx, hook),
    };
    // A packet SNATed (source: this node's address) or reverse-SNATed (source: the
    // frontend, an address of this node) at ingress: the IPv4 stack would drop it as a
    // martian source, so it is routed and redirected out here (`fib`), a subprogram of
    // its own called from this frame.
    if let (
        Hook::FromNet | Hook::FromPod,
        verdict::Verdict::Pass(
            reason @ (Reason::SnatNewFlow | Reason::SnatEstablished | Reason::RevSnatReply),
        ),
    ) = (hook, verdict)
    {
        return fib::forward(ctx, hook, reason);
    }
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

/// The benchmark's baseline (never attached, never loaded by the daemon): does nothing
/// and passes. BPF_PROG_TEST_RUN of it with the same packet and run count as a real
/// program measures the harness's own cost (skb set-up, timer, the call), which the
/// per-packet benchmark subtracts to report net figures.
#[classifier]
pub fn tc_empty(_ctx: TcContext) -> i32 {
    service_lb_common::proto::VERDICT_PASS
}
