//! The connection-tracking map: an LRU hash of flows a policy rule allowed.
//!
//! A flow is keyed from the protected NIC's point of view (local / remote), so a packet and its
//! reply find the same entry whichever direction they cross. The role leads the key as in the
//! policy map: the same 5-tuple on the two NICs is two flows.

pub const MAX_ENTRIES: u32 = 65_536;

/// Idle time after which a flow is forgotten (and its next packet judged as new).
pub const TCP_TIMEOUT_NS: u64 = 24 * 3600 * 1_000_000_000;
/// After a FIN or RST: long enough for the closing handshake to finish.
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
pub const UDP_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
pub const ICMP_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
/// `last_seen` is refreshed at most this often, to keep per-packet writes rare.
pub const REFRESH_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub role: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: u8,
    /// Network byte order; for ICMP echo the identifier in `local_port` and 0 in `remote_port`.
    pub local_port: u16,
    pub remote_port: u16,
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

/// `FlowValue::flags` bits.
pub mod flags {
    /// A FIN or RST was seen: the flow gets [`super::TCP_CLOSING_TIMEOUT_NS`].
    pub const CLOSING: u8 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns` of the last refresh.
    pub last_seen_ns: u64,
    /// [`crate::Direction`] of the packet that opened the flow.
    pub origin: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowValue {}
