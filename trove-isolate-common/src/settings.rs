//! Per-role settings the datapath reads: an array indexed by [`crate::Role`].
//!
//! A map rather than a load-time constant so that a reload can switch them without replacing
//! the program. The zero value is [`crate::Mode::Enforce`] with DHCP off and no drop events:
//! fail closed. The size stays 8 bytes, so settings pinned by an older loader are adopted.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`crate::Mode`].
    pub mode: u8,
    /// 1: pass DHCP/DHCPv6 client traffic statelessly (management NIC).
    pub dhcp: u8,
    pub _pad: [u8; 2],
    /// Drop events each CPU may send per second (0: none). Read only on the drop path.
    pub events_per_cpu_second: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Settings {}
