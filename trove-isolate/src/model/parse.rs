//! What a frame is, read the plain way: every header is copied out of the frame with `get` after
//! one bounds rule, and each function reads one header.
//!
//! The bounds rule ([`header`]): a header is *malformed* unless it lies inside the frame, starts
//! no later than byte 512 of the frame, and — for everything after the fixed IP header —
//! lies inside its IP packet (the end its length field gives), so an Ethernet trailer is never
//! read as a header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use trove_isolate_common::{proto, Reason};

/// No header may start beyond this frame offset (the datapath's fixed bound).
pub const MAX_HEADER_OFFSET: usize = 512;
/// Extension headers walked before an IPv6 packet is refused as malformed.
pub const MAX_EXTENSION_HEADERS: usize = 6;
/// TCP options walked in a SYN looking for the window scale.
pub const MAX_TCP_OPTIONS_WALKED: usize = 8;

const ETHERNET_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;

const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
/// IPv4 options walked looking for a source route (the datapath's bound).
pub const MAX_IPV4_OPTIONS: usize = 8;
const IPV4_OPTION_END: u8 = 0;
const IPV4_OPTION_NOP: u8 = 1;
const IPV4_OPTION_LSRR: u8 = 131;
const IPV4_OPTION_SSRR: u8 = 137;

const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_WINDOW_SCALE: u8 = 3;

/// What the rules are given about a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// ARP for IPv4 over Ethernet, request or reply.
    Arp { sender: Ipv4Addr, frame_len: usize },
    /// ICMPv6 neighbour/router discovery or MLD: the extension headers before it, the whole
    /// ICMPv6 message, and a neighbour solicitation's or advertisement's target.
    NeighborDiscovery {
        ip: Ip,
        icmp_type: u8,
        code: u8,
        ext: Vec<u8>,
        message: Vec<u8>,
        target: Option<Ipv6Addr>,
    },
    /// An ICMP/ICMPv6 error and the packet it quotes.
    IcmpError { outer: Ip, quoted: Quoted },
    /// A packet that is or may start a flow.
    Flow(Packet),
}

/// The IP header fields the rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// IPv4 protocol or the IPv6 header after the extension headers.
    pub proto: u8,
    /// IPv6: the bytes of extension headers before `proto`'s header.
    pub ext_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub ip: Ip,
    pub l4: L4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Any ICMP type that is neither echo nor an error (nor, in IPv6, neighbour discovery).
    OtherIcmp {
        icmp_type: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// The window scale option, read from SYNs only.
    pub syn_scale: Option<ScaleOption>,
    /// The bytes of data the segment carries.
    pub payload_len: u32,
}

/// The TCP flags byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }

    /// The four flags the rules read; PSH, URG, ECE and CWR never matter.
    fn core(self) -> u8 {
        self.0 & (Self::FIN | Self::SYN | Self::RST | Self::ACK)
    }

    /// SYN and nothing else of SYN/ACK/FIN/RST: a connection's first packet.
    pub fn bare_syn(self) -> bool {
        self.core() == Self::SYN
    }

    /// ACK and nothing else of SYN/ACK/FIN/RST.
    pub fn bare_ack(self) -> bool {
        self.core() == Self::ACK
    }
}

/// The window scale option of a SYN (RFC 7323).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleOption {
    /// The options parse and carry none.
    Absent,
    /// The options do not parse.
    Unparsable,
    /// The option's shift count, as sent (not yet clamped).
    Shift(u8),
}

/// The packet an ICMP error quotes: enough to name its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub ip: Ip,
    pub ends: Ends,
}

/// What names a flow beyond the addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    Tcp { src_port: u16, dst_port: u16 },
    Udp { src_port: u16, dst_port: u16 },
    EchoRequest { id: u16 },
    EchoReply { id: u16 },
}

impl Packet {
    /// The flow-naming part of the packet; `None` for ICMP that belongs to no flow.
    pub fn ends(&self) -> Option<Ends> {
        match self.l4 {
            L4::Tcp(t) => Some(Ends::Tcp {
                src_port: t.src_port,
                dst_port: t.dst_port,
            }),
            L4::Udp { src_port, dst_port } => Some(Ends::Udp { src_port, dst_port }),
            L4::EchoRequest { id } => Some(Ends::EchoRequest { id }),
            L4::EchoReply { id } => Some(Ends::EchoReply { id }),
            L4::OtherIcmp { .. } => None,
        }
    }
}

/// Parses a frame. `gso`: the skb is a GSO packet (a zero IP length then means "to the end").
pub fn frame(frame: &[u8], gso: bool) -> Result<Frame, Reason> {
    let eth: [u8; ETHERNET_LEN] = header(frame, 0, frame.len())?;
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETHERTYPE_ARP => arp(frame, ETHERNET_LEN),
        ETHERTYPE_IPV4 => ipv4(frame, ETHERNET_LEN, gso),
        ETHERTYPE_IPV6 => ipv6(frame, ETHERNET_LEN, gso),
        // VLAN tags and everything else: the policy speaks only of IP.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// The bounds rule: the `N` bytes at `off`, which must start no later than 512 and end by `end`.
fn header<const N: usize>(frame: &[u8], off: usize, end: usize) -> Result<[u8; N], Reason> {
    if off > MAX_HEADER_OFFSET || off + N > end {
        return Err(Reason::Malformed);
    }
    let bytes = frame.get(off..off + N).ok_or(Reason::Malformed)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// ARP (RFC 826) for IPv4 over Ethernet only: hardware type 1, protocol 0x0800, address
/// lengths 6 and 4, operation request (1) or reply (2); anything else is malformed.
fn arp(frame: &[u8], off: usize) -> Result<Frame, Reason> {
    let h: [u8; 28] = header(frame, off, frame.len())?;
    let ethernet_ipv4 =
        be16([h[0], h[1]]) == 1 && be16([h[2], h[3]]) == ETHERTYPE_IPV4 && h[4] == 6 && h[5] == 4;
    let operation = be16([h[6], h[7]]);
    if !ethernet_ipv4 || !(operation == 1 || operation == 2) {
        return Err(Reason::Malformed);
    }
    Ok(Frame::Arp {
        sender: Ipv4Addr::new(h[14], h[15], h[16], h[17]),
        frame_len: frame.len(),
    })
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

fn v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Where an IP packet starting at `off` with `len` bytes (its length field, converted to the
/// whole packet) ends: a zero length is the end of the frame on a GSO skb (BIG TCP) and
/// malformed otherwise; a length past the frame is malformed.
fn ip_end(frame_len: usize, off: usize, len: Option<usize>, gso: bool) -> Result<usize, Reason> {
    match len {
        None if gso => Ok(frame_len),
        None => Err(Reason::Malformed),
        Some(len) if off + len > frame_len => Err(Reason::Malformed),
        Some(len) => Ok(off + len),
    }
}

/// IPv4: version 4, a header of at least 20 bytes inside its total length, no fragment.
fn ipv4(frame: &[u8], off: usize, gso: bool) -> Result<Frame, Reason> {
    let h: [u8; 20] = header(frame, off, frame.len())?;
    let version = h[0] >> 4;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if version != 4 || header_len < 20 {
        return Err(Reason::Malformed);
    }
    let total_len = usize::from(be16([h[2], h[3]]));
    let end = ip_end(frame.len(), off, (total_len != 0).then_some(total_len), gso)?;
    if end < off + header_len {
        return Err(Reason::Malformed);
    }
    let frag = be16([h[6], h[7]]);
    if frag & (IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET) != 0 {
        return Err(Reason::Fragment);
    }
    no_source_route(&frame[off + 20..off + header_len])?;
    let ip = Ip {
        src: v4(&h[12..16]),
        dst: v4(&h[16..20]),
        hop_limit: h[8],
        proto: h[9],
        ext_len: 0,
    };
    transport(frame, off + header_len, end, ip)
}

/// IPv4 options (RFC 791), walked option by option to their end-of-list, at most
/// [`MAX_IPV4_OPTIONS`] (a no-operation is one byte, any other a kind and a length of at least 2
/// that fits): a loose or strict source route, or more options than that, is *unsupported* (the
/// destination would be only the next hop); a length that does not fit is *malformed*.
fn no_source_route(options: &[u8]) -> Result<(), Reason> {
    let mut at = 0;
    for _ in 0..MAX_IPV4_OPTIONS {
        let Some(&kind) = options.get(at) else {
            return Ok(());
        };
        match kind {
            IPV4_OPTION_END => return Ok(()),
            IPV4_OPTION_NOP => {
                at += 1;
                continue;
            }
            IPV4_OPTION_LSRR | IPV4_OPTION_SSRR => return Err(Reason::UnsupportedProtocol),
            _ => {}
        }
        let len = usize::from(*options.get(at + 1).ok_or(Reason::Malformed)?);
        if len < 2 || at + len > options.len() {
            return Err(Reason::Malformed);
        }
        at += len;
    }
    if at < options.len() {
        return Err(Reason::UnsupportedProtocol);
    }
    Ok(())
}

/// IPv6: version 6, hop-by-hop / routing / destination options headers walked (at most six,
/// each inside the packet), a fragment header refused as a fragment, a routing header with
/// segments left (a source route) refused as unsupported.
fn ipv6(frame: &[u8], off: usize, gso: bool) -> Result<Frame, Reason> {
    let h: [u8; 40] = header(frame, off, frame.len())?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload_len = usize::from(be16([h[4], h[5]]));
    let end = ip_end(
        frame.len(),
        off,
        (payload_len != 0).then_some(40 + payload_len),
        gso,
    )?;
    let mut next = h[6];
    let mut l4_off = off + 40;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext: [u8; 4] = header(frame, l4_off, end)?;
                let ext_len = (usize::from(ext[1]) + 1) * 8;
                // The whole extension header lies inside the packet.
                if l4_off + ext_len > end {
                    return Err(Reason::Malformed);
                }
                if next == IPV6_ROUTING && ext[3] != 0 {
                    return Err(Reason::UnsupportedProtocol);
                }
                next = ext[0];
                l4_off += ext_len;
            }
            IPV6_FRAGMENT => return Err(Reason::Fragment),
            _ => break,
        }
    }
    if matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS | IPV6_FRAGMENT
    ) {
        // A seventh extension header: longer than any real chain.
        return Err(Reason::Malformed);
    }
    let ip = Ip {
        src: v6(&h[8..24]),
        dst: v6(&h[24..40]),
        hop_limit: h[7],
        proto: next,
        ext_len: l4_off - off - 40,
    };
    transport(frame, l4_off, end, ip)
}

/// TCP, UDP, and the ICMP of the packet's own family; nothing else.
fn transport(frame: &[u8], off: usize, end: usize, ip: Ip) -> Result<Frame, Reason> {
    match ip.proto {
        proto::TCP => tcp(frame, off, end, ip),
        proto::UDP => {
            let h: [u8; 8] = header(frame, off, end)?;
            let l4 = L4::Udp {
                src_port: be16([h[0], h[1]]),
                dst_port: be16([h[2], h[3]]),
            };
            Ok(Frame::Flow(Packet { ip, l4 }))
        }
        p if p == icmp_proto(ip.src) => icmp(frame, off, end, ip),
        // Other protocols, and ICMP in IPv6 or ICMPv6 in IPv4.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// The ICMP protocol number of the address family of `addr`.
fn icmp_proto(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => proto::ICMP,
        IpAddr::V6(_) => proto::ICMPV6,
    }
}

/// TCP: a header of at least 20 bytes (data offset) inside the packet.
fn tcp(frame: &[u8], off: usize, end: usize, ip: Ip) -> Result<Frame, Reason> {
    let h: [u8; 20] = header(frame, off, end)?;
    let header_len = usize::from(h[12] >> 4) * 4;
    if header_len < 20 || off + header_len > end {
        return Err(Reason::Malformed);
    }
    let flags = TcpFlags(h[13]);
    let syn_scale = if flags.syn() {
        let options = frame
            .get(off + 20..off + header_len)
            .ok_or(Reason::Malformed)?;
        Some(window_scale(options))
    } else {
        None
    };
    let l4 = L4::Tcp(Tcp {
        src_port: be16([h[0], h[1]]),
        dst_port: be16([h[2], h[3]]),
        flags,
        seq: be32([h[4], h[5], h[6], h[7]]),
        ack: be32([h[8], h[9], h[10], h[11]]),
        window: be16([h[14], h[15]]),
        syn_scale,
        payload_len: (end - (off + header_len)) as u32,
    });
    Ok(Frame::Flow(Packet { ip, l4 }))
}

/// The window scale option among TCP options (RFC 9293 section 3.2): end-of-list and no-op are
/// one byte, every other option is kind, length (at least 2, inside the options), data. The
/// walk takes eight options at most (no-ops and the end of the list included): real stacks
/// send five to eight, and a SYN with more is taken as unparsable (the widest window). So is
/// one that carries the option twice (Linux takes the last, the first may say less), or
/// options that do not parse after it.
fn window_scale(options: &[u8]) -> ScaleOption {
    let mut rest = options;
    let mut found = ScaleOption::Absent;
    for _ in 0..MAX_TCP_OPTIONS_WALKED {
        match rest {
            [] | [TCP_OPTION_END, ..] => return found,
            [TCP_OPTION_NOP, tail @ ..] => rest = tail,
            [kind, len, ..] => {
                let len = usize::from(*len);
                if len < 2 || len > rest.len() {
                    return ScaleOption::Unparsable;
                }
                if *kind == TCP_OPTION_WINDOW_SCALE && len == 3 {
                    if found != ScaleOption::Absent {
                        return ScaleOption::Unparsable;
                    }
                    found = ScaleOption::Shift(rest[2]);
                }
                rest = &rest[len..];
            }
            // A kind with no room for its length.
            [_] => return ScaleOption::Unparsable,
        }
    }
    if rest.is_empty() {
        found
    } else {
        ScaleOption::Unparsable
    }
}

/// What an ICMP type means to the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpClass {
    EchoRequest,
    EchoReply,
    Error,
    NeighborDiscovery,
    Other,
}

/// ICMP (RFC 792): 8 echo request, 0 echo reply, 3/11/12 errors (unreachable, time exceeded,
/// parameter problem). ICMPv6 (RFC 4443, 4861, 3810): 128/129 echo, 1–4 errors, 130–137 and
/// 143 neighbour discovery and MLD.
pub fn classify_icmp(v6: bool, icmp_type: u8) -> IcmpClass {
    match (v6, icmp_type) {
        (false, 8) | (true, 128) => IcmpClass::EchoRequest,
        (false, 0) | (true, 129) => IcmpClass::EchoReply,
        (false, 3 | 11 | 12) | (true, 1..=4) => IcmpClass::Error,
        (true, 130..=137 | 143) => IcmpClass::NeighborDiscovery,
        _ => IcmpClass::Other,
    }
}

/// ICMP: an 8-byte header inside the packet; errors carry a quoted packet after it.
fn icmp(frame: &[u8], off: usize, end: usize, ip: Ip) -> Result<Frame, Reason> {
    let h: [u8; 8] = header(frame, off, end)?;
    let (icmp_type, code) = (h[0], h[1]);
    let id = be16([h[4], h[5]]);
    let l4 = match classify_icmp(ip.src.is_ipv6(), icmp_type) {
        IcmpClass::EchoRequest => L4::EchoRequest { id },
        IcmpClass::EchoReply => L4::EchoReply { id },
        IcmpClass::Other => L4::OtherIcmp { icmp_type },
        IcmpClass::NeighborDiscovery => {
            // A neighbour solicitation or advertisement (135, 136; RFC 4861): 4 bytes after
            // the header, then the target address.
            let target = match icmp_type {
                135 | 136 => {
                    let m: [u8; 24] = header(frame, off, end)?;
                    let t: [u8; 16] = m[8..].try_into().expect("16 bytes");
                    Some(Ipv6Addr::from(t))
                }
                _ => None,
            };
            return Ok(Frame::NeighborDiscovery {
                ip,
                icmp_type,
                code,
                ext: frame[off - ip.ext_len..off].to_vec(),
                message: frame[off..end].to_vec(),
                target,
            });
        }
        IcmpClass::Error => {
            let quoted = quoted(frame, off + 8, end, ip.src.is_ipv6())?;
            return Ok(Frame::IcmpError { outer: ip, quoted });
        }
    };
    Ok(Frame::Flow(Packet { ip, l4 }))
}

/// The packet an ICMP error quotes (RFC 792, RFC 4443): its IP header (IPv4: a real header,
/// not a later fragment; IPv6: the fixed header, no extension headers walked) and the first 8
/// bytes after it — TCP/UDP ports or an echo identifier — all inside the error's packet. A quote
/// that names no flow is *not tracked*; one that does not fit is *malformed*.
fn quoted(frame: &[u8], off: usize, end: usize, v6_family: bool) -> Result<Quoted, Reason> {
    let (ip, l4_off) = if v6_family {
        let h: [u8; 40] = header(frame, off, end)?;
        if h[0] >> 4 != 6 {
            return Err(Reason::Malformed);
        }
        let ip = Ip {
            src: v6(&h[8..24]),
            dst: v6(&h[24..40]),
            hop_limit: h[7],
            proto: h[6],
            ext_len: 0,
        };
        (ip, off + 40)
    } else {
        let h: [u8; 20] = header(frame, off, end)?;
        let header_len = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || header_len < 20 {
            return Err(Reason::Malformed);
        }
        if be16([h[6], h[7]]) & IPV4_FRAGMENT_OFFSET != 0 {
            // A later fragment carries no ports.
            return Err(Reason::NotTracked);
        }
        let ip = Ip {
            src: v4(&h[12..16]),
            dst: v4(&h[16..20]),
            hop_limit: h[8],
            proto: h[9],
            ext_len: 0,
        };
        (ip, off + header_len)
    };
    let ends = match ip.proto {
        proto::TCP | proto::UDP => {
            let h: [u8; 8] = header(frame, l4_off, end)?;
            let (src_port, dst_port) = (be16([h[0], h[1]]), be16([h[2], h[3]]));
            if ip.proto == proto::TCP {
                Ends::Tcp { src_port, dst_port }
            } else {
                Ends::Udp { src_port, dst_port }
            }
        }
        p if p == icmp_proto(ip.src) => {
            let h: [u8; 8] = header(frame, l4_off, end)?;
            let id = be16([h[4], h[5]]);
            match classify_icmp(v6_family, h[0]) {
                IcmpClass::EchoRequest => Ends::EchoRequest { id },
                IcmpClass::EchoReply => Ends::EchoReply { id },
                // No error is about an error, or about anything else untracked.
                _ => return Err(Reason::NotTracked),
            }
        }
        _ => return Err(Reason::NotTracked),
    };
    Ok(Quoted { ip, ends })
}
