//! TCP flag combinations: what no real stack sends opens nothing and passes nowhere.

use trove_isolate_common::Reason;

use crate::packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// SYN+FIN, SYN+RST, FIN+RST, FIN without ACK (Xmas), and no SYN, RST or ACK at all (null) are
/// scans or evasion attempts.
#[inline(always)]
pub fn check_flags(pkt: &Packet) -> Result<(), Reason> {
    // One test of a constant bitmap, indexed by the four flags: no value of the test outlives it
    // (LLVM kept each flag's boolean for later stages, a stack slot each across the helpers).
    if (INVALID_FLAGS >> flag_index(pkt.tcp_flags)) & 1 != 0 {
        return Err(Reason::InvalidFlags);
    }
    Ok(())
}

/// FIN, SYN and RST in bits 0 to 2, ACK in bit 3.
#[inline(always)]
const fn flag_index(f: u8) -> u32 {
    ((f & (TCP_FIN | TCP_SYN | TCP_RST)) | ((f & TCP_ACK) >> 1)) as u32
}

/// Bit `flag_index(f)` set where the flags `f` are invalid.
const INVALID_FLAGS: u16 = {
    let mut bits = 0u16;
    let mut i = 0u8;
    while i < 16 {
        let f = (i & 0x07) | ((i & 0x08) << 1);
        let syn = f & TCP_SYN != 0;
        let fin = f & TCP_FIN != 0;
        let rst = f & TCP_RST != 0;
        let ack = f & TCP_ACK != 0;
        if (syn && (fin || rst)) || (fin && rst) || (fin && !ack) || !(syn || rst || ack) {
            bits |= 1 << flag_index(f);
        }
        i += 1;
    }
    bits
};

/// Whether a TCP packet with no tracked flow may open one: a bare SYN, or a bare ACK of a
/// connection that predates enforcement (picked up mid-flow, either way, so database clients,
/// operator SSH and the agent's RabbitMQ session survive the first start; the policy still
/// decides, and only the other side's answer establishes it: the guest's own stack for an
/// inbound one, which answers a connection it does not have with a reset).
#[inline(always)]
pub fn opens_flow(pkt: &Packet) -> bool {
    let f = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST);
    f == TCP_SYN || f == TCP_ACK
}

/// A SYN without ACK: the opening of a connection (a SYN-ACK answers one).
#[inline(always)]
pub fn bare_syn(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}
