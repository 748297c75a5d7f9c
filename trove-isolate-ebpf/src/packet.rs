//! What the parser hands to the later stages: the header fields they judge, not the packet.

use trove_isolate_common::{
    conntrack::{echo_marker, FlowKey4, WideKey},
    Direction,
};

use crate::conntrack::Wide;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An address as the datapath holds it: four words whose bytes are the address's in order
/// (`conntrack::words`, the form every key and set holds), IPv4 in the first and the others
/// zero. Words, not bytes: LLVM kept a byte array as sixteen scalars, shifted out of the loads
/// and put back together into words for every key (BENCHMARKS.md, section 1).
pub type Addr = [u32; 4];

/// Byte `i` (0 to 3) of an address word, in packet order.
#[inline(always)]
pub fn byte(word: u32, i: usize) -> u8 {
    word.to_ne_bytes()[i]
}

/// The L4 shape of a packet, as far as flow tracking cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    EchoRequest,
    EchoReply,
    /// Any other ICMP type: never opens a flow, never belongs to one.
    OtherIcmp,
}

/// The header fields the stages read. Addresses are [`Addr`]s; ports are in network byte order
/// exactly as on the wire (for ICMP echo both carry the identifier).
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub kind: Kind,
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// ICMP/ICMPv6 type and code (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP sequence and acknowledgment numbers and window, host byte order.
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Where the TCP options start in the frame, and their length in bytes: the flow tables
    /// read the window scale from them only when a handshake needs it (`parse::window_scale`).
    /// Neighbour discovery and MLD: where the message starts (`parse::nd_target`), and the
    /// length of the IPv6 extension headers before it, in 8-byte units (at most 255).
    pub options_at: u16,
    pub options_len: u8,
    /// TCP: the bytes of data the segment carries; neighbour discovery: the message's length.
    pub payload_len: u32,
    pub src: Addr,
    pub dst: Addr,
}

impl Packet {
    /// The flow this packet belongs to in the wide tables (every flow but TCP over IPv4), keyed
    /// from the NIC's point of view.
    #[inline(always)]
    pub fn wide_flow(&self, direction: Direction) -> Wide {
        let (local, remote, local_port, mut remote_port) = match direction {
            Direction::Ingress => (&self.dst, &self.src, self.dst_port, self.src_port),
            Direction::Egress => (&self.src, &self.dst, self.src_port, self.dst_port),
        };
        // An echo flow is named by the way its requests go, so a request the other way (an
        // inbound ping on an outbound ping's identifier) is a flow of its own.
        match self.kind {
            Kind::EchoRequest => remote_port = echo_marker(direction),
            Kind::EchoReply => remote_port = echo_marker(direction.reverse()),
            _ => {}
        }
        let key = WideKey::new(
            self.family,
            self.proto,
            local,
            *remote,
            local_port,
            remote_port,
        );
        Wide { key, local: *local }
    }

    /// The key of the same flow in the tables of TCP over IPv4 (for such a packet:
    /// [`Keying::Tcp4`](trove_isolate_common::conntrack::Keying)).
    #[inline(always)]
    pub fn flow_key4(&self, direction: Direction) -> FlowKey4 {
        let (local, remote, local_port, remote_port) = match direction {
            Direction::Ingress => (&self.dst, &self.src, self.dst_port, self.src_port),
            Direction::Egress => (&self.src, &self.dst, self.src_port, self.dst_port),
        };
        FlowKey4 {
            local: local[0],
            remote: remote[0],
            local_port,
            remote_port,
        }
    }

    /// The port a policy rule names: the destination port in both directions (the remote
    /// service's port going out, the local service's port coming in); none for ICMP.
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        match self.kind {
            Kind::Tcp | Kind::Udp => self.dst_port,
            _ => 0,
        }
    }
}

/// An ARP packet's fields the checks read.
pub struct Arp {
    pub sender: [u8; 4],
    /// The whole frame, to bound what an ARP packet can carry.
    pub frame_len: u32,
}

/// What the parser recognised.
pub enum Parsed {
    Arp(Arp),
    /// IPv6 neighbour/router discovery or MLD: type, hop limit and addresses in the packet;
    /// where the message starts in `options_at`, its length in `payload_len`.
    NeighborDiscovery(Packet),
    /// An IP packet of a flow.
    Flow(Packet),
    /// An ICMP error: the outer packet (addresses) and the packet quoted inside it, which
    /// travelled the opposite way.
    Related {
        outer: Packet,
        quoted: Packet,
    },
}
