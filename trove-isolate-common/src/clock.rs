//! The flow tables' clock. The datapath stamps flows with CLOCK_MONOTONIC_COARSE, which the
//! daemon's sweep reads too. `bpf_ktime_get_coarse_ns` is a helper call on every tracked packet;
//! the jiffies counter (`bpf_jiffies64`), which the verifier inlines into one load on 64-bit
//! JITs, ticks with it, so once the daemon has measured the kernel's tick it gives the programs
//! the conversion ([`Conversion`]) and they read the coarse clock's time off jiffies:
//! `(jiffies - base) * tick_ns`, within a tick or two of the clock itself (BENCHMARKS.md:
//! 2 to 3 ns a packet). Until then, or where the tick is not one Linux offers, they call the
//! helper.
//!
//! The conversion is one word, so that a program never reads half of one: the tick in ns in its
//! top [`TICK_BITS`] bits, the jiffies at the clock's zero below. 0 means "call the helper".
//! It is written only by the `clock_sync` program (one 8-byte store), which the daemon runs with
//! BPF_PROG_TEST_RUN and which also reports both clocks read at one instant ([`Frame`]).

/// Bits of the tick (ns per jiffy); 10,000,000 (HZ=100) takes 24.
pub const TICK_BITS: u32 = 24;
const BASE_BITS: u32 = 64 - TICK_BITS;
const BASE_MASK: u64 = (1 << BASE_BITS) - 1;

/// The programs call the helper.
pub const OFF: u64 = 0;

/// `(jiffies - base) * tick_ns` packed in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion(pub u64);

impl Conversion {
    /// `None` where either part does not fit its bits (all ones is [`Frame::KEEP`]).
    pub const fn new(tick_ns: u64, base_jiffies: u64) -> Option<Conversion> {
        if tick_ns == 0 || tick_ns >> TICK_BITS != 0 || base_jiffies >= BASE_MASK {
            return None;
        }
        Some(Conversion(tick_ns << BASE_BITS | base_jiffies))
    }

    pub const fn tick_ns(self) -> u64 {
        self.0 >> BASE_BITS
    }

    pub const fn base_jiffies(self) -> u64 {
        self.0 & BASE_MASK
    }

    /// The coarse clock's ns at `jiffies`.
    #[inline(always)]
    pub const fn now_ns(self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_sub(self.base_jiffies())
            .wrapping_mul(self.tick_ns())
    }
}

/// What `clock_sync` reads from and writes into the frame it is run on (little-endian words):
/// in, the word to store ([`OFF`], a [`Conversion`], or [`Frame::KEEP`]); out, `bpf_jiffies64`
/// and `bpf_ktime_get_coarse_ns` read one after the other.
pub struct Frame;

impl Frame {
    pub const SET: usize = 0;
    pub const JIFFIES: usize = 8;
    pub const COARSE_NS: usize = 16;
    pub const LEN: usize = 64;
    /// Store nothing: only read the clocks.
    pub const KEEP: u64 = u64::MAX;
}

/// The program that reads and sets the clock (never attached).
pub const SYNC_PROGRAM: &str = "clock_sync";
