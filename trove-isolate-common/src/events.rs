//! Sampled drop events: what the datapath tells userspace about a packet it dropped (or, in audit
//! mode, would have dropped), through a ring buffer.
//!
//! The datapath does the least it can on this path: a per-CPU budget check, then the packet's
//! first [`HEAD`] bytes copied into a reserved slot. Userspace decodes the 5-tuple from those
//! bytes, so the per-packet pipeline carries nothing extra for events. Events over the budget, or
//! that find the ring full (nobody reading), are counted in [`Budget::suppressed`].

/// How many leading bytes of the packet an event carries: Ethernet, an IPv6 header with a few
/// extension headers and the ports fit.
pub const HEAD: usize = 128;
const _: () = assert!(
    HEAD.is_power_of_two(),
    "the datapath bounds the copy with HEAD - 1"
);

/// Size of the ring buffer in bytes (a power of two, a multiple of the page size): about 1,500
/// events, several seconds of the default budget with nobody reading.
pub const RING_BYTES: u32 = 256 * 1024;

/// Length of a budget window.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// One drop event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropEvent {
    /// `bpf_ktime_get_coarse_ns` when the packet was judged.
    pub ktime_ns: u64,
    /// The packet's length on the wire (skb->len).
    pub len: u32,
    /// The interface's ifindex in its own namespace.
    pub ifindex: u32,
    /// [`crate::Role`], [`crate::Direction`], [`crate::Verdict`], [`crate::Reason`].
    pub role: u8,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    /// How many bytes of `head` are the packet's (≤ [`HEAD`]).
    pub captured: u16,
    pub _pad: [u8; 2],
    pub head: [u8; HEAD],
}

/// The per-CPU event budget of a role (the map is indexed by [`crate::Role`]): at most
/// `Settings::events_per_cpu_second` events per [`WINDOW_NS`] on each CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget {
    /// Start of the current window.
    pub window_ns: u64,
    /// Events sent in the current window.
    pub sent: u64,
    /// Events not sent since the maps were created: over budget, or the ring was full.
    pub suppressed: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Budget {}
