//! The trove-isolate TC programs.
//!
//! One program per (role, direction), so the policy domain is a constant of the program rather
//! than something looked up by ifindex (ifindexes collide across network namespaces, and the
//! business NIC lives in the database container's). Each entry is one line into
//! [`verdict::run`], which reads as the pipeline: parse → conntrack → policy → local → count →
//! action (a SYN meets the policy before conntrack).
//!
//! Stack: Linux 5.15 (Ubuntu 22.04's) rounds each frame of a chain of calls up to 32 bytes and
//! refuses a chain over 512. A role's program has a frame of 384 bytes, most of it LLVM's spills
//! (BPF keeps four registers across a call, so each value kept across a helper's call takes a
//! slot), and its longest chains are that plus the IPv6 rules' lookup (88 bytes, counted as 96),
//! and that plus a claim (64) and the claim's static functions (none, counted as 32): 480. So
//! the programs' frame may grow by 32 bytes at most, and the functions they call may not pass
//! 96 (`cargo xtask test` loads them on 5.15; BENCHMARKS.md, section 1, "A handshake's options
//! read at fixed places", says how the room was made).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for BPF (`parse::load_u64`): a packet load LLVM would otherwise split. The
// compare-and-exchange of the flow tables' slots (`flow_table::cas`): the target has no
// `AtomicU64::compare_exchange`, while its instruction set has the instruction (BPF_CMPXCHG,
// Linux 5.12).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch, core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// On the host this crate builds as an empty binary so `cargo build/clippy --workspace` work.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod arp;
mod bits;
mod clock;
mod conntrack;
mod counters;
mod dhcp;
mod events;
mod flow_table;
mod guard;
mod local;
mod maps;
mod nd;
mod packet;
mod parse;
mod policy;
mod tcp;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use trove_isolate_common::{action, Direction, Role};

// Program names stay under the kernel's 15-character object name limit; the loader refers to them
// through `trove_isolate_common::programs`. `#[classifier]` wraps the function in the program's
// entry; `inline(always)` makes the two one, where LLVM left a BPF-to-BPF call per packet.

#[classifier]
#[inline(always)]
pub fn mgmt_ingress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Management, Direction::Ingress)
}

#[classifier]
#[inline(always)]
pub fn mgmt_egress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Management, Direction::Egress)
}

#[classifier]
#[inline(always)]
pub fn biz_ingress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Business, Direction::Ingress)
}

#[classifier]
#[inline(always)]
pub fn biz_egress(ctx: TcContext) -> i32 {
    verdict::run(&ctx, Role::Business, Direction::Egress)
}

/// The boot guard's, attached to every NIC until Trove's files say which is which (never with
/// the roles' programs but for the moment the daemon takes over).
#[classifier]
pub fn guard_ingress(ctx: TcContext) -> i32 {
    guard::run(&ctx, Direction::Ingress, false)
}

#[classifier]
pub fn guard_egress(ctx: TcContext) -> i32 {
    guard::run(&ctx, Direction::Egress, false)
}

/// The guard's shut pair: ARP and neighbour discovery alone (`trove_isolate_common::guard`).
#[classifier]
pub fn guard_shut_in(ctx: TcContext) -> i32 {
    guard::run(&ctx, Direction::Ingress, true)
}

#[classifier]
pub fn guard_shut_out(ctx: TcContext) -> i32 {
    guard::run(&ctx, Direction::Egress, true)
}

/// Holds a role's place on a hook while a first start verifies the role's program, which then
/// replaces it in place (`trove_isolate_common::PLACE_PROGRAM`): on to the next program, as if
/// it were not there.
#[classifier]
pub fn hold_place(_ctx: TcContext) -> i32 {
    action::PASS
}

/// Reads the clocks and sets the flow tables' (`clock::sync`); the daemon runs it with
/// BPF_PROG_TEST_RUN, it is never attached.
#[classifier]
pub fn clock_sync(ctx: TcContext) -> i32 {
    match clock::sync(&ctx) {
        Ok(()) => action::PASS,
        Err(_) => action::DROP,
    }
}

/// `cargo xtask bench`'s yardsticks and stages, never attached (the loader loads them only for
/// the benchmark). `bench_empty` does nothing; the others each do one stage of the pipeline
/// alone on an established flow's packet, so the benchmark can say where the time goes.
mod bench {
    use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
    use trove_isolate_common::{action, conntrack::WSCALE_MAX, Direction, Reason, Role, Verdict};

    use crate::{
        counters,
        flow_table::Store as _,
        local, maps,
        packet::{Addr, Packet, Parsed},
        parse, policy,
    };

    #[classifier]
    pub fn bench_empty(_ctx: TcContext) -> i32 {
        action::PASS
    }

    /// Parsing alone.
    #[classifier]
    pub fn bench_parse(ctx: TcContext) -> i32 {
        match parse::parse(&ctx) {
            Ok(_) => action::PASS,
            Err(_) => action::DROP,
        }
    }

    /// Parsing, the flow key, and the established table's lookup (no update, no clock): a TCP
    /// packet over IPv4, so the 12-byte key, looked up inline as the established path does.
    #[classifier]
    pub fn bench_lookup(ctx: TcContext) -> i32 {
        match parse::parse(&ctx) {
            Ok(Parsed::Flow(pkt)) => {
                let key = pkt.flow_key4(Direction::Ingress);
                match maps::flows_tcp4(Role::Management).est.get_inline(&key) {
                    Some(_) => action::PASS,
                    None => action::DROP,
                }
            }
            _ => action::DROP,
        }
    }

    /// A new flow's decision without the flow tables: parsing, the policy lookup and the
    /// own-address lookup of a packet coming in to the business NIC, in the pipeline's order.
    #[classifier]
    pub fn bench_decide(ctx: TcContext) -> i32 {
        let (role, direction) = (Role::Business, Direction::Ingress);
        let pkt = match parse::parse(&ctx) {
            Ok(Parsed::Flow(pkt)) => pkt,
            _ => return action::DROP,
        };
        if policy::check(role, direction, &pkt).is_err() {
            return action::DROP;
        }
        if local::own(role, pkt.family, &pkt.dst) {
            action::PASS
        } else {
            action::DROP
        }
    }

    /// A SYN's window scale, as a handshake reads it (Linux's and Windows' option lists at fixed
    /// places, any other walked).
    #[classifier]
    pub fn bench_wscale(ctx: TcContext) -> i32 {
        wscale_stage(&ctx, parse::window_scale)
    }

    /// A SYN's window scale by the walk alone, an option at a time.
    #[classifier]
    pub fn bench_wscale_walk(ctx: TcContext) -> i32 {
        wscale_stage(&ctx, parse::walk_window_scale)
    }

    #[inline(always)]
    fn wscale_stage(ctx: &TcContext, read: impl Fn(&TcContext, &Packet) -> u8) -> i32 {
        match parse::parse(ctx) {
            Ok(Parsed::Flow(pkt)) if read(ctx, &pkt) <= WSCALE_MAX => action::PASS,
            _ => action::DROP,
        }
    }

    /// Parsing and the own-address check (the role's set of the NIC's addresses).
    #[classifier]
    pub fn bench_own(ctx: TcContext) -> i32 {
        own_stage(&ctx, local::own)
    }

    /// Parsing and the own-address check in the LPM trie (for an address the set does not hold).
    #[classifier]
    pub fn bench_own_trie(ctx: TcContext) -> i32 {
        own_stage(&ctx, local::own_in_trie)
    }

    #[inline(always)]
    fn own_stage(ctx: &TcContext, own: impl Fn(Role, u8, &Addr) -> bool) -> i32 {
        match parse::parse(ctx) {
            Ok(Parsed::Flow(pkt)) if own(Role::Management, pkt.family, &pkt.dst) => action::PASS,
            _ => action::DROP,
        }
    }

    /// Parsing and a lookup that misses the established table, as a new flow's does.
    #[classifier]
    pub fn bench_miss(ctx: TcContext) -> i32 {
        match parse::parse(&ctx) {
            Ok(Parsed::Flow(pkt)) => {
                let mut key = pkt.flow_key4(Direction::Ingress);
                // No flow has local port 0.
                key.local_port = 0;
                match maps::flows_tcp4(Role::Management).est.get_inline(&key) {
                    Some(_) => action::DROP,
                    None => action::PASS,
                }
            }
            _ => action::DROP,
        }
    }

    /// The precise clock, which the flow tables never read (for comparison).
    #[classifier]
    pub fn bench_clock(_ctx: TcContext) -> i32 {
        clock_read(unsafe { bpf_ktime_get_ns() })
    }

    /// The coarse clock's helper, the flow tables' clock until the daemon has measured the tick.
    #[classifier]
    pub fn bench_clock_coarse(_ctx: TcContext) -> i32 {
        clock_read(unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() })
    }

    /// The jiffies counter (`bpf_jiffies64`, which the verifier inlines on 64-bit JITs), which
    /// the flow tables read the coarse clock's time off (`clock::now`).
    #[classifier]
    pub fn bench_clock_jif(_ctx: TcContext) -> i32 {
        clock_read(unsafe { aya_ebpf::helpers::bpf_jiffies64() })
    }

    /// A verdict that depends on the clock read, so the read stays.
    #[inline(always)]
    fn clock_read(now: u64) -> i32 {
        if now == 0 {
            action::DROP
        } else {
            action::PASS
        }
    }

    /// Counting one packet.
    #[classifier]
    pub fn bench_count(ctx: TcContext) -> i32 {
        counters::count(
            Role::Management,
            Direction::Ingress,
            Verdict::Pass,
            Reason::Tracked,
            ctx.len(),
        );
        action::PASS
    }
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
