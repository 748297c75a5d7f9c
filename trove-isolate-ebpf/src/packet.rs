//! What the parser hands to the later stages: a flow tuple, not the packet.

use trove_isolate_common::{proto, Direction};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The L4 shape of a packet, as far as flow tracking cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP.
    Stream,
    EchoRequest,
    EchoReply,
    /// Any other ICMP type: never opens a flow, never belongs to one.
    OtherIcmp,
}

/// The header fields the stages read. Addresses hold IPv4 in their first four bytes; ports are in
/// network byte order exactly as on the wire (for ICMP echo both carry the identifier).
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub kind: Kind,
    pub tcp_flags: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Packet {
    /// Whether this packet may open a new flow when no tracked flow holds it.
    ///
    /// Inbound TCP needs a bare SYN. Outbound TCP may be picked up mid-flow: the local stack only
    /// sends on connections it has, and the policy still decides, so a connection that predates
    /// enforcement (the guest agent's AMQP session) survives the first attach.
    #[inline(always)]
    pub fn opens_flow(&self, direction: Direction) -> bool {
        match self.kind {
            Kind::Stream if self.proto == proto::TCP => match direction {
                Direction::Ingress => self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
                Direction::Egress => true,
            },
            Kind::Stream | Kind::EchoRequest => true,
            Kind::EchoReply | Kind::OtherIcmp => false,
        }
    }

    /// The port a policy rule names: the destination port in both directions (the remote
    /// service's port going out, the local service's port coming in); none for ICMP.
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        match self.kind {
            Kind::Stream => self.dst_port,
            _ => 0,
        }
    }
}

/// What the parser recognised.
pub enum Parsed {
    Arp,
    /// IPv6 neighbour/router discovery or MLD.
    NeighborDiscovery,
    /// An IP packet of a flow.
    Flow(Packet),
    /// An ICMP error; the tuple is that of the packet quoted inside it, which travelled the
    /// opposite way.
    Related(Packet),
}
