//! TCP flag combinations: what no real stack sends opens nothing and passes nowhere.

use trove_isolate_common::Reason;

use crate::packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// SYN+FIN, SYN+RST, FIN+RST, FIN without ACK (Xmas), and no SYN, RST or ACK at all (null) are
/// scans or evasion attempts.
#[inline(always)]
pub fn check_flags(pkt: &Packet) -> Result<(), Reason> {
    let f = pkt.tcp_flags;
    let syn = f & TCP_SYN != 0;
    let fin = f & TCP_FIN != 0;
    let rst = f & TCP_RST != 0;
    let ack = f & TCP_ACK != 0;
    let invalid = (syn && (fin || rst)) || (fin && rst) || (fin && !ack) || !(syn || rst || ack);
    if invalid {
        return Err(Reason::InvalidFlags);
    }
    Ok(())
}

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
