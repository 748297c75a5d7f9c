//! Header parsing: Ethernet → IPv4/IPv6 (extension headers walked with a fixed bound) → TCP, UDP,
//! ICMP, ICMPv6, including the packet quoted in an ICMP error.
//!
//! Every read is bounds-checked against the packet; anything truncated or inconsistent is
//! [`Reason::Malformed`], fragments are [`Reason::Fragment`], and headers the policy has no words
//! for are [`Reason::UnsupportedProtocol`]. Nothing unknown passes.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use trove_isolate_common::{family, proto, Reason};

use crate::packet::{Kind, Packet, Parsed};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (fail closed). Real traffic carries zero to two.
const MAX_EXT_HEADERS: usize = 6;
/// No header we read may start beyond this offset; keeps offsets bounded for the verifier and
/// bounds the linear area we ask for.
const MAX_HDR_OFF: usize = 512;
/// Bytes of headers made linear when the skb's linear area is shorter (rare: GRO'd or paged skbs).
const PULL_LEN: u32 = 256;

const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct UdpHdr {
    src: u16,
    dst: u16,
    len: u16,
    check: u16,
}

/// ICMP and ICMPv6 share this shape; `id` is meaningful for echo only.
#[repr(C)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: u16,
    id: u16,
    seq: u16,
}

#[repr(C)]
struct TcpHdr {
    src: u16,
    dst: u16,
    seq: u32,
    ack: u32,
    doff_res: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg: u16,
}

/// A bounds-checked pointer to a `T` at `off` in the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_HDR_OFF || start + off + size_of::<T>() > end {
        return Err(Reason::Malformed);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Reason> {
    ensure_linear(ctx);
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    match u16::from_be(unsafe { (*eth).proto }) {
        ETH_P_ARP => Ok(Parsed::Arp),
        ETH_P_IP => ipv4(ctx, ETH_HLEN),
        ETH_P_IPV6 => ipv6(ctx, ETH_HLEN),
        // VLAN tags, LLDP, anything else: the policy speaks only of IP.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// Makes the headers directly readable when the skb keeps them in pages. Almost never needed
/// (the stack builds headers in the linear area), so the common case is one comparison.
#[inline(always)]
fn ensure_linear(ctx: &TcContext) {
    let want = if ctx.len() < PULL_LEN {
        ctx.len()
    } else {
        PULL_LEN
    };
    if ctx.data_end() - ctx.data() < want as usize {
        // On failure the bounds checks below see the short area and fail closed.
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    let (version_ihl, tot_len, frag_off, ip_proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
        )
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() || tot_len < ihl {
        return Err(Reason::Malformed);
    }
    if off + tot_len > ctx.len() as usize {
        return Err(Reason::Malformed);
    }
    if frag_off & (IP_MF | IP_OFFSET) != 0 {
        return Err(Reason::Fragment);
    }
    let mut pkt = new_packet(family::V4, ip_proto);
    pkt.src[..4].copy_from_slice(&src);
    pkt.dst[..4].copy_from_slice(&dst);
    l4(ctx, off + ihl, pkt)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
    let (version, payload_len, mut next, src, dst) = unsafe {
        (
            (*ip).version_tc_flow[0] >> 4,
            u16::from_be((*ip).payload_len) as usize,
            (*ip).next_header,
            (*ip).src,
            (*ip).dst,
        )
    };
    if version != 6 || off + IPV6_HLEN + payload_len > ctx.len() as usize {
        return Err(Reason::Malformed);
    }
    let mut l4_off = off + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: *const [u8; 2] = ptr_at(ctx, l4_off)?;
                let (nh, len) = unsafe { ((*ext)[0], (*ext)[1]) };
                next = nh;
                l4_off += (len as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => return Err(Reason::Fragment),
            _ => break,
        }
    }
    if matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
    ) {
        // Chain longer than any real packet carries.
        return Err(Reason::Malformed);
    }
    let mut pkt = new_packet(family::V6, next);
    pkt.src = src;
    pkt.dst = dst;
    l4(ctx, l4_off, pkt)
}

#[inline(always)]
fn new_packet(fam: u8, ip_proto: u8) -> Packet {
    Packet {
        family: fam,
        proto: ip_proto,
        kind: Kind::Stream,
        tcp_flags: 0,
        src_port: 0,
        dst_port: 0,
        src: [0; 16],
        dst: [0; 16],
    }
}

#[inline(always)]
fn l4(ctx: &TcContext, off: usize, mut pkt: Packet) -> Result<Parsed, Reason> {
    match (pkt.proto, pkt.family) {
        (proto::TCP, _) => {
            let tcp: *const TcpHdr = ptr_at(ctx, off)?;
            let (src, dst, doff, flags) = unsafe {
                (
                    (*tcp).src,
                    (*tcp).dst,
                    ((*tcp).doff_res >> 4) as usize * 4,
                    (*tcp).flags,
                )
            };
            if doff < size_of::<TcpHdr>() || off + doff > ctx.len() as usize {
                return Err(Reason::Malformed);
            }
            pkt.src_port = src;
            pkt.dst_port = dst;
            pkt.tcp_flags = flags;
            Ok(Parsed::Flow(pkt))
        }
        (proto::UDP, _) => {
            let udp: *const UdpHdr = ptr_at(ctx, off)?;
            unsafe {
                pkt.src_port = (*udp).src;
                pkt.dst_port = (*udp).dst;
            }
            Ok(Parsed::Flow(pkt))
        }
        (proto::ICMP, family::V4) | (proto::ICMPV6, family::V6) => icmp(ctx, off, pkt),
        // ICMP in IPv6 or ICMPv6 in IPv4 included: no such thing on a real network.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// What an ICMP/ICMPv6 type means to us.
enum IcmpClass {
    EchoRequest,
    EchoReply,
    Error,
    NeighborDiscovery,
    Other,
}

#[inline(always)]
fn classify_icmp(fam: u8, ty: u8) -> IcmpClass {
    if fam == family::V4 {
        match ty {
            8 => IcmpClass::EchoRequest,
            0 => IcmpClass::EchoReply,
            // Destination unreachable (incl. fragmentation needed), time exceeded, parameter problem.
            3 | 11 | 12 => IcmpClass::Error,
            _ => IcmpClass::Other,
        }
    } else {
        match ty {
            128 => IcmpClass::EchoRequest,
            129 => IcmpClass::EchoReply,
            // Destination unreachable, packet too big, time exceeded, parameter problem.
            1..=4 => IcmpClass::Error,
            // MLD query/report/done, router/neighbour solicitation and advertisement, redirect,
            // MLDv2 report: the NIC needs them to have an IPv6 address at all.
            130..=137 | 143 => IcmpClass::NeighborDiscovery,
            _ => IcmpClass::Other,
        }
    }
}

#[inline(always)]
fn icmp(ctx: &TcContext, off: usize, mut pkt: Packet) -> Result<Parsed, Reason> {
    let icmp: *const IcmpHdr = ptr_at(ctx, off)?;
    let (ty, id) = unsafe { ((*icmp).ty, (*icmp).id) };
    match classify_icmp(pkt.family, ty) {
        IcmpClass::EchoRequest => {
            pkt.kind = Kind::EchoRequest;
            pkt.src_port = id;
            pkt.dst_port = id;
            Ok(Parsed::Flow(pkt))
        }
        IcmpClass::EchoReply => {
            pkt.kind = Kind::EchoReply;
            pkt.src_port = id;
            pkt.dst_port = id;
            Ok(Parsed::Flow(pkt))
        }
        IcmpClass::NeighborDiscovery => Ok(Parsed::NeighborDiscovery),
        IcmpClass::Other => {
            pkt.kind = Kind::OtherIcmp;
            Ok(Parsed::Flow(pkt))
        }
        IcmpClass::Error => {
            quoted(ctx, off + size_of::<IcmpHdr>(), pkt.family).map(Parsed::Related)
        }
    }
}

/// The packet quoted in an ICMP error: its IP header and the first 8 bytes of its L4 header (which
/// RFC 792 and RFC 4443 guarantee). Only its tuple is needed, to find the tracked flow.
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, fam: u8) -> Result<Packet, Reason> {
    let (mut pkt, l4_off) = if fam == family::V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
        let (version_ihl, frag_off, ip_proto, src, dst) = unsafe {
            (
                (*ip).version_ihl,
                u16::from_be((*ip).frag_off),
                (*ip).proto,
                (*ip).src,
                (*ip).dst,
            )
        };
        let ihl = ((version_ihl & 0x0f) as usize) * 4;
        if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
            return Err(Reason::Malformed);
        }
        if frag_off & IP_OFFSET != 0 {
            // A later fragment carries no ports: nothing to relate it to.
            return Err(Reason::NotTracked);
        }
        let mut pkt = new_packet(family::V4, ip_proto);
        pkt.src[..4].copy_from_slice(&src);
        pkt.dst[..4].copy_from_slice(&dst);
        (pkt, off + ihl)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
        let (version, next, src, dst) = unsafe {
            (
                (*ip).version_tc_flow[0] >> 4,
                (*ip).next_header,
                (*ip).src,
                (*ip).dst,
            )
        };
        if version != 6 {
            return Err(Reason::Malformed);
        }
        let mut pkt = new_packet(family::V6, next);
        pkt.src = src;
        pkt.dst = dst;
        (pkt, off + IPV6_HLEN)
    };
    // TCP and UDP both start with the two ports; 8 bytes is all the quote guarantees.
    match (pkt.proto, pkt.family) {
        (proto::TCP, _) | (proto::UDP, _) => {
            let ports: *const UdpHdr = ptr_at(ctx, l4_off)?;
            unsafe {
                pkt.src_port = (*ports).src;
                pkt.dst_port = (*ports).dst;
            }
        }
        (proto::ICMP, family::V4) | (proto::ICMPV6, family::V6) => {
            let icmp: *const IcmpHdr = ptr_at(ctx, l4_off)?;
            let (ty, id) = unsafe { ((*icmp).ty, (*icmp).id) };
            pkt.kind = match classify_icmp(pkt.family, ty) {
                IcmpClass::EchoRequest => Kind::EchoRequest,
                IcmpClass::EchoReply => Kind::EchoReply,
                // Errors are never sent about errors (or anything else we track).
                _ => return Err(Reason::NotTracked),
            };
            pkt.src_port = id;
            pkt.dst_port = id;
        }
        _ => return Err(Reason::NotTracked),
    }
    Ok(pkt)
}
