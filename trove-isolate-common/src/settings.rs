//! Per-role settings the datapath reads: an array indexed by [`crate::Role`].
//!
//! A map rather than a load-time constant so that a reload can switch them without replacing
//! the program. The zero value is [`crate::Mode::Enforce`] with DHCP off: fail closed.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`crate::Mode`].
    pub mode: u8,
    /// 1: pass DHCP/DHCPv6 client traffic statelessly (management NIC).
    pub dhcp: u8,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Settings {}
