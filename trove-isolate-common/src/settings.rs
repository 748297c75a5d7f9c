//! Per-role settings the datapath reads on every packet: an array indexed by [`crate::Role`].
//!
//! A map rather than a load-time constant so that a reload can switch enforce/audit without
//! replacing the program. The zero value is [`crate::Mode::Enforce`]: fail closed.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`crate::Mode`].
    pub mode: u8,
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Settings {}
