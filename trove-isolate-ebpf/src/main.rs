//! The trove-isolate TC programs.
//!
//! One program per (role, direction), so the policy domain is a constant of the program rather
//! than something looked up by ifindex (ifindexes collide across network namespaces, and the
//! business NIC lives in the database container's). Each entry is one line into
//! [`verdict::run`], which reads as the pipeline: parse → conntrack → local → policy → count →
//! action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host this crate builds as an empty binary so `cargo build/clippy --workspace` work.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod arp;
mod conntrack;
mod counters;
mod dhcp;
mod events;
mod local;
mod maps;
mod nd;
mod packet;
mod parse;
mod policy;
mod tcp;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use trove_isolate_common::{Direction, Role};

// Program names stay under the kernel's 15-character object name limit; the loader refers to them
// through `trove_isolate_common::programs`.

#[classifier]
pub fn mgmt_ingress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Management, Direction::Ingress)
}

#[classifier]
pub fn mgmt_egress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Management, Direction::Egress)
}

#[classifier]
pub fn biz_ingress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Business, Direction::Ingress)
}

#[classifier]
pub fn biz_egress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Business, Direction::Egress)
}

/// Does nothing: the yardstick `cargo xtask bench` measures our programs against. Never
/// attached; loaded only by the benchmark.
#[classifier]
pub fn bench_empty(_ctx: TcContext) -> i32 {
    trove_isolate_common::action::PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
