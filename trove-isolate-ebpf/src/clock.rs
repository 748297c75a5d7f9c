//! The flow tables' clock (`trove_isolate_common::clock`): the coarse clock, read off jiffies
//! once the daemon has set the conversion.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use trove_isolate_common::clock::{Conversion, Frame, OFF};

/// Global data (`.bss`): one load, where a map lookup would add its bounds check. Written only
/// by [`sync`].
#[unsafe(no_mangle)]
static mut CLOCK: u64 = OFF;

/// CLOCK_MONOTONIC_COARSE in ns: a flow's timeouts are seconds long, and the coarse clock costs
/// a fraction of the precise one per packet (BENCHMARKS.md). The daemon's sweep reads the same
/// clock.
#[inline(always)]
pub fn now() -> u64 {
    // Volatile: the daemon sets it while the programs run.
    let conversion = unsafe { core::ptr::read_volatile(&raw const CLOCK) };
    if conversion == OFF {
        return unsafe { bpf_ktime_get_coarse_ns() };
    }
    Conversion(conversion).now_ns(unsafe { bpf_jiffies64() })
}

/// `clock_sync`: reads both clocks into the frame and stores the word it carries
/// ([`Frame`]). One aligned 8-byte store, which a program reading [`CLOCK`] sees whole.
#[inline(always)]
pub fn sync(ctx: &TcContext) -> Result<(), i64> {
    let set: u64 = ctx.load(Frame::SET)?;
    if set != Frame::KEEP {
        unsafe { core::ptr::write_volatile(&raw mut CLOCK, set) };
    }
    let jiffies = unsafe { bpf_jiffies64() };
    let coarse = unsafe { bpf_ktime_get_coarse_ns() };
    ctx.store(Frame::JIFFIES, &jiffies, 0)?;
    ctx.store(Frame::COARSE_NS, &coarse, 0)?;
    Ok(())
}
