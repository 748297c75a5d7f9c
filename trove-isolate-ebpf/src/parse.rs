//! Header parsing: Ethernet → IPv4/IPv6 (extension headers walked with a fixed bound) → TCP, UDP,
//! ICMP, ICMPv6, including the packet quoted in an ICMP error.
//!
//! Every read is bounds-checked against the frame, and every transport header against the end of
//! its IP packet (total length or payload length, not the frame: an Ethernet trailer is never
//! judged). Anything truncated or inconsistent is [`Reason::Malformed`], fragments are
//! [`Reason::Fragment`], and headers the policy has no words for are
//! [`Reason::UnsupportedProtocol`]. Nothing unknown passes. A GSO packet over 64 KiB (BIG TCP)
//! carries a zero IP length; its end is the skb's.

use core::mem::size_of;

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use trove_isolate_common::{
    conntrack::{WSCALE_MAX, WSCALE_NONE, WSCALE_UNKNOWN},
    family, proto, Reason,
};

use crate::{
    bits::is_zero,
    packet::{Addr, Arp, Kind, Packet, Parsed},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;
/// The VLAN ID bits of a tag's TCI (the rest is priority and drop eligibility).
const VLAN_VID_MASK: u32 = 0x0fff;

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
/// Options walked in a SYN looking for the window scale. Real stacks send five or six (Linux:
/// MSS, SACK permitted, timestamps, NOP, window scale); a SYN that hides it further gets the
/// widest window, as if it had not been seen. Each option walked costs the verifier a copy of
/// the walk, so the bound stays small.
const TCP_MAX_OPTIONS: usize = 8;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;

const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
/// IPv4 options (RFC 791) walked looking for a source route. Linux sends a few when a socket
/// asks (`IP_OPTIONS`: record route, timestamps, a source route) and none otherwise; a packet
/// with more is refused rather than read in part. Each option walked costs the verifier a copy.
pub const IPV4_MAX_OPTIONS: usize = 8;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct ArpHdr {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
}

const ARPHRD_ETHER: u16 = 1;

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

/// A neighbour solicitation or advertisement (RFC 4861): the ICMPv6 header, 4 bytes of flags or
/// reserved, the target address. An MLDv1 report or done (RFC 2710) has the same shape: the
/// maximum response delay and 2 reserved bytes, the group.
#[repr(C)]
struct NdHdr {
    _icmp: [u8; 4],
    _flags: [u8; 4],
    _target: [u8; 16],
}

/// A multicast address record of an MLDv2 report (RFC 3810 5.2): record type, auxiliary data
/// length, number of sources, the group (then the sources and auxiliary data, which a report
/// that passes has none of). The group is read as an [`Addr`]: its bytes in packet order.
#[repr(C)]
pub struct McRecord {
    pub record_type: u8,
    pub aux_len: u8,
    pub sources: u16,
    pub group: Addr,
}

const _: () = assert!(size_of::<McRecord>() == 20);

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
///
/// Headers are almost always in the skb's linear area. When one is not (a paged skb), the
/// area is extended to cover that header first, and only then: a bulk TCP segment keeps its
/// payload in pages, and pulling past its headers copies payload into the head (for the clones
/// TCP transmits, into a new head). A pull invalidates earlier packet pointers, so callers read
/// what they need from a header before asking for the next.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, Reason> {
    if off > MAX_HDR_OFF {
        return Err(Reason::Malformed);
    }
    if ctx.data() + off + size_of::<T>() > ctx.data_end() {
        // On failure (a truncated packet) the check below sees the short area: fail closed.
        let _ = ctx.pull_data((off + size_of::<T>()) as u32);
    }
    // The check on the pointer itself, as the verifier needs to see it.
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(Reason::Malformed);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Reason> {
    // A VLAN tag Linux has taken off the frame before the hook (a NIC's offload, or its own
    // untagging on receive, which veth frames get too): a frame of a VLAN belongs to a VLAN
    // device, not to this NIC's policy. A priority tag alone (VLAN ID 0) is the untagged frame
    // Linux delivers it as.
    let skb = ctx.skb.skb;
    if unsafe { (*skb).vlan_present } != 0 && unsafe { (*skb).vlan_tci } & VLAN_VID_MASK != 0 {
        return Err(Reason::UnsupportedProtocol);
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    match u16::from_be(unsafe { (*eth).proto }) {
        ETH_P_ARP => arp(ctx, ETH_HLEN),
        ETH_P_IP => ipv4(ctx, ETH_HLEN),
        ETH_P_IPV6 => ipv6(ctx, ETH_HLEN),
        // VLAN tags, LLDP, anything else: the policy speaks only of IP.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// ARP for IPv4 over Ethernet (the only kind a NIC here uses): the fixed header, and the sender's
/// protocol address for the egress check.
#[inline(always)]
fn arp(ctx: &TcContext, off: usize) -> Result<Parsed, Reason> {
    let arp: *const ArpHdr = ptr_at(ctx, off)?;
    let (htype, ptype, hlen, plen, op, sender) = unsafe {
        (
            u16::from_be((*arp).htype),
            u16::from_be((*arp).ptype),
            (*arp).hlen,
            (*arp).plen,
            u16::from_be((*arp).op),
            (*arp).sender_ip,
        )
    };
    if htype != ARPHRD_ETHER
        || ptype != ETH_P_IP
        || hlen != 6
        || plen != 4
        || !(1..=2).contains(&op)
    {
        return Err(Reason::Malformed);
    }
    Ok(Parsed::Arp(Arp {
        sender,
        frame_len: ctx.len(),
    }))
}

#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    let (version_ihl, tot_len, frag_off, ttl, ip_proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).frag_off),
            (*ip).ttl,
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
        )
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Err(Reason::Malformed);
    }
    let end = ip_end(ctx, off, tot_len)?;
    if end < off + ihl {
        return Err(Reason::Malformed);
    }
    if frag_off & (IP_MF | IP_OFFSET) != 0 {
        return Err(Reason::Fragment);
    }
    if ihl > size_of::<Ipv4Hdr>() {
        no_source_route(ctx, off + size_of::<Ipv4Hdr>(), off + ihl)?;
    }
    let mut pkt = new_packet(family::V4, ip_proto, ttl);
    pkt.src[0] = u32::from_ne_bytes(src);
    pkt.dst[0] = u32::from_ne_bytes(dst);
    l4(ctx, off + ihl, end, pkt)
}

/// The IPv4 options from `at` to `end`, walked to their end-of-list: a loose or strict source
/// route names hosts the packet is to visit after the header's destination, so the policy,
/// which judges that destination, has no words for it (and Linux drops one coming in). An option
/// whose length does not fit is malformed. Read with `bpf_skb_load_bytes`: the offsets vary.
///
/// The walk is [`trove_isolate_ipv4_options`], a global function: its many exits come back
/// through one return, and the verifier checks it once, on its own (as a static function it was
/// followed anew for every state the parser arrived with).
#[inline(always)]
fn no_source_route(ctx: &TcContext, at: usize, end: usize) -> Result<(), Reason> {
    match trove_isolate_ipv4_options(ctx.skb.skb, at as u32, end as u32) {
        OPTIONS_OK => Ok(()),
        OPTIONS_SOURCE_ROUTE => Err(Reason::UnsupportedProtocol),
        _ => Err(Reason::Malformed),
    }
}

/// [`trove_isolate_ipv4_options`]'s answers: the options end well; a source route (or more
/// options than walked); anything else is malformed.
const OPTIONS_OK: u32 = 0;
const OPTIONS_SOURCE_ROUTE: u32 = 1;
const OPTIONS_MALFORMED: u32 = 2;

/// The walk of [`no_source_route`] over the IPv4 options from offset `at` to `end`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn trove_isolate_ipv4_options(skb: *mut __sk_buff, at: u32, end: u32) -> u32 {
    match walk_ipv4_options(&TcContext::new(skb), at as usize, end as usize) {
        Ok(()) => OPTIONS_OK,
        Err(Reason::UnsupportedProtocol) => OPTIONS_SOURCE_ROUTE,
        Err(_) => OPTIONS_MALFORMED,
    }
}

#[inline(always)]
fn walk_ipv4_options(ctx: &TcContext, mut at: usize, end: usize) -> Result<(), Reason> {
    for _ in 0..IPV4_MAX_OPTIONS {
        if at >= end {
            return Ok(());
        }
        let kind = ctx.load::<u8>(at).map_err(|_| Reason::Malformed)?;
        match kind {
            IPOPT_END => return Ok(()),
            IPOPT_NOOP => {
                at += 1;
                continue;
            }
            IPOPT_LSRR | IPOPT_SSRR => return Err(Reason::UnsupportedProtocol),
            _ => {}
        }
        if at + 1 >= end {
            return Err(Reason::Malformed);
        }
        let len = ctx.load::<u8>(at + 1).map_err(|_| Reason::Malformed)? as usize;
        if len < 2 || at + len > end {
            return Err(Reason::Malformed);
        }
        at += len;
    }
    match at >= end {
        true => Ok(()),
        false => Err(Reason::UnsupportedProtocol),
    }
}

/// Where the IP packet starting at `off` with the given length field ends. Zero means a BIG TCP
/// GSO packet (the stack leaves the field zero beyond 64 KiB) when the skb is GSO, and is
/// malformed otherwise; a length beyond the frame is malformed.
#[inline(always)]
fn ip_end(ctx: &TcContext, off: usize, len: usize) -> Result<usize, Reason> {
    let skb_len = ctx.len() as usize;
    if len == 0 {
        let gso_size = unsafe { (*ctx.skb.skb).gso_size };
        return match gso_size {
            0 => Err(Reason::Malformed),
            _ => Ok(skb_len),
        };
    }
    if off + len > skb_len {
        return Err(Reason::Malformed);
    }
    Ok(off + len)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
    let (version, payload_len, mut next, hop_limit, (src, dst)) = unsafe {
        (
            (*ip).version_tc_flow[0] >> 4,
            u16::from_be((*ip).payload_len) as usize,
            (*ip).next_header,
            (*ip).hop_limit,
            addresses(ip),
        )
    };
    if version != 6 {
        return Err(Reason::Malformed);
    }
    // payload_len counts from the end of the fixed header; as for IPv4, zero is BIG TCP on GSO.
    let end = match payload_len {
        0 => ip_end(ctx, off, 0)?,
        _ => ip_end(ctx, off, IPV6_HLEN + payload_len)?,
    };
    let mut l4_off = off + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: *const [u8; 4] = l4_at(ctx, l4_off, end)?;
                let (nh, len, segments_left) = unsafe { ((*ext)[0], (*ext)[1], (*ext)[3]) };
                let routing = next == NEXTHDR_ROUTING;
                next = nh;
                l4_off += (len as usize + 1) * 8;
                // The whole header lies inside the packet, or its "next header" is padding.
                if l4_off > end {
                    return Err(Reason::Malformed);
                }
                // A routing header with segments left: the destination is only the next hop
                // of a source route, and the policy judges destinations.
                if routing && segments_left != 0 {
                    return Err(Reason::UnsupportedProtocol);
                }
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
    let mut pkt = new_packet(family::V6, next, hop_limit);
    pkt.src = src;
    pkt.dst = dst;
    // The extension headers' length, for neighbour discovery's shape (TCP's options replace it).
    pkt.options_len = ((l4_off - off - IPV6_HLEN) / 8).min(u8::MAX as usize) as u8;
    l4(ctx, l4_off, end, pkt)
}

/// The source and destination addresses of the IPv6 header at `ip`, eight bytes at a time
/// ([`load_u64`]).
///
/// # Safety
/// `ip` points into the packet, its whole header checked against the packet's end.
#[inline(always)]
unsafe fn addresses(ip: *const Ipv6Hdr) -> (Addr, Addr) {
    let p = ip as *const u8;
    unsafe {
        (
            addr([load_u64::<8>(p), load_u64::<16>(p)]),
            addr([load_u64::<24>(p), load_u64::<32>(p)]),
        )
    }
}

/// The target address of the neighbour solicitation or advertisement `pkt` (`Malformed` when
/// the message is too short to hold one).
#[inline(always)]
pub fn nd_target(ctx: &TcContext, pkt: &Packet) -> Result<Addr, Reason> {
    let off = pkt.options_at as usize;
    let msg: *const NdHdr = l4_at(ctx, off, off + pkt.payload_len as usize)?;
    // `l4_at` checked all 24 bytes against the packet's end.
    Ok(unsafe {
        let p = msg as *const u8;
        addr([load_u64::<8>(p), load_u64::<16>(p)])
    })
}

/// Bytes 4 to 8 of the neighbour discovery or MLD message `pkt` (a solicitation's reserved
/// bytes, an advertisement's flags; MLDv1: the maximum response delay and reserved bytes; an
/// MLDv2 report: reserved bytes and the number of records), in packet order.
#[inline(always)]
pub fn nd_word(ctx: &TcContext, pkt: &Packet) -> Result<[u8; 4], Reason> {
    let off = pkt.options_at as usize;
    let msg: *const [u8; 8] = l4_at(ctx, off, off + pkt.payload_len as usize)?;
    let m = unsafe { *msg };
    Ok([m[4], m[5], m[6], m[7]])
}

/// The 8 bytes before the neighbour discovery or MLD message `pkt`, as one word: its one
/// extension header when `options_len` is 1.
#[inline(always)]
pub fn nd_ext_header(ctx: &TcContext, pkt: &Packet) -> Result<u64, Reason> {
    // Read with `bpf_skb_load_bytes`: a packet pointer below the message's offset loses the
    // verifier's bounds. Below the message, so inside the packet.
    let off = (pkt.options_at as usize).wrapping_sub(8);
    ctx.load::<[u8; 8]>(off)
        .map(u64::from_ne_bytes)
        .map_err(|_| Reason::Malformed)
}

/// The MLDv2 multicast address record at `off` (read with `bpf_skb_load_bytes`: the offset
/// depends on the record's index). The caller keeps it inside the message.
#[inline(always)]
pub fn mld_record(ctx: &TcContext, off: usize) -> Result<McRecord, Reason> {
    ctx.load::<McRecord>(off).map_err(|_| Reason::Malformed)
}

/// The address of two 8-byte loads (packet order), as words.
#[inline(always)]
fn addr(loads: [u64; 2]) -> Addr {
    let half = |w: u64, i: usize| {
        let b = w.to_ne_bytes();
        u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    };
    [
        half(loads[0], 0),
        half(loads[0], 4),
        half(loads[1], 0),
        half(loads[1], 4),
    ]
}

/// Eight bytes of the packet at `base + AT`, in one load. An IPv6 header's addresses are 2-byte
/// aligned (after the 14-byte Ethernet header), and LLVM splits a load it cannot prove aligned
/// into 2-byte loads and puts them back together with shifts and spills: 16 loads per packet
/// where 4 do. The verifier allows a misaligned packet load where the CPU has efficient
/// unaligned access (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`: x86-64, where it is tested, and
/// arm64); on a CPU without it the load would trap or be emulated. Eight bytes, not four: Linux
/// 6.1's verifier followed 50 % more states through the egress programs with the addresses in
/// 4-byte pieces.
///
/// # Safety
/// `base` points into the packet, and its `AT + 8` bytes are checked against the packet's end.
#[inline(always)]
unsafe fn load_u64<const AT: usize>(base: *const u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let w: u64;
        unsafe {
            core::arch::asm!(
                "{0} = *(u64 *)({1} + {2})",
                lateout(reg) w,
                in(reg) base,
                const AT,
                options(pure, readonly, nostack, preserves_flags)
            );
        }
        w
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::ptr::read_unaligned(base.add(AT) as *const u64)
    }
}

#[inline(always)]
fn new_packet(fam: u8, ip_proto: u8, hop_limit: u8) -> Packet {
    Packet {
        family: fam,
        proto: ip_proto,
        kind: Kind::OtherIcmp,
        tcp_flags: 0,
        hop_limit,
        icmp_type: 0,
        icmp_code: 0,
        src_port: 0,
        dst_port: 0,
        seq: 0,
        ack: 0,
        window: 0,
        options_at: 0,
        options_len: 0,
        payload_len: 0,
        src: [0; 4],
        dst: [0; 4],
    }
}

/// A bounds-checked pointer to a `T` at `off` that also lies inside the IP packet ending at
/// `end`.
#[inline(always)]
fn l4_at<T>(ctx: &TcContext, off: usize, end: usize) -> Result<*const T, Reason> {
    if off + size_of::<T>() > end {
        return Err(Reason::Malformed);
    }
    ptr_at(ctx, off)
}

#[inline(always)]
fn l4(ctx: &TcContext, off: usize, end: usize, mut pkt: Packet) -> Result<Parsed, Reason> {
    match (pkt.proto, pkt.family) {
        (proto::TCP, _) => {
            let tcp: *const TcpHdr = l4_at(ctx, off, end)?;
            let (src, dst, seq, ack, doff, flags, window) = unsafe {
                (
                    (*tcp).src,
                    (*tcp).dst,
                    u32::from_be((*tcp).seq),
                    u32::from_be((*tcp).ack),
                    ((*tcp).doff_res >> 4) as usize * 4,
                    (*tcp).flags,
                    u16::from_be((*tcp).window),
                )
            };
            if doff < size_of::<TcpHdr>() || off + doff > end {
                return Err(Reason::Malformed);
            }
            pkt.kind = Kind::Tcp;
            pkt.src_port = src;
            pkt.dst_port = dst;
            pkt.tcp_flags = flags;
            pkt.seq = seq;
            pkt.ack = ack;
            pkt.window = window;
            // `ptr_at` keeps `off` below MAX_HDR_OFF: both fit.
            pkt.options_at = (off + size_of::<TcpHdr>()) as u16;
            pkt.options_len = (doff - size_of::<TcpHdr>()) as u8;
            pkt.payload_len = (end - (off + doff)) as u32;
            Ok(Parsed::Flow(pkt))
        }
        (proto::UDP, _) => {
            let udp: *const UdpHdr = l4_at(ctx, off, end)?;
            pkt.kind = Kind::Udp;
            unsafe {
                pkt.src_port = (*udp).src;
                pkt.dst_port = (*udp).dst;
            }
            Ok(Parsed::Flow(pkt))
        }
        (proto::ICMP, family::V4) | (proto::ICMPV6, family::V6) => icmp(ctx, off, end, pkt),
        // ICMP in IPv6 or ICMPv6 in IPv4 included: no such thing on a real network.
        _ => Err(Reason::UnsupportedProtocol),
    }
}

/// The window scale option among a TCP packet's options (SYN and SYN-ACK only carry it), read
/// only when a handshake needs it (`conntrack`): its shift, `WSCALE_NONE` when the options do not
/// carry one, `WSCALE_UNKNOWN` when they do not parse or carry two (the flow then gets the widest
/// window, never a narrower one than the endpoints use: Linux takes the last of two, and a
/// review found a SYN whose first said 0 and whose second said 14).
///
/// The option lists Linux and Windows send are read at fixed places ([`usual_options`]); any
/// other is walked ([`walk_window_scale`]).
#[inline(always)]
pub fn window_scale(ctx: &TcContext, pkt: &Packet) -> u8 {
    let usual = usual_options(ctx, u32::from(pkt.options_at), u32::from(pkt.options_len));
    if usual == NOT_USUAL {
        walk_window_scale(ctx, pkt)
    } else {
        scale(true, usual as u8)
    }
}

/// [`window_scale`] by a walk of the options, an option at a time, whatever the list.
#[inline(always)]
pub fn walk_window_scale(ctx: &TcContext, pkt: &Packet) -> u8 {
    let at = u32::from(pkt.options_at);
    trove_isolate_walk_wscale(ctx.skb.skb, at, u32::from(pkt.options_len)) as u8
}

/// The walk of [`walk_window_scale`] over the `len` bytes of options at offset `at`.
///
/// A global function (no `static`, its arguments the packet's context and scalars): the verifier
/// checks it once, on its own, where inlined it was followed at each of its two places for every
/// state the handshake's code arrives with, and so was the code after it for each answer it gave
/// (BENCHMARKS.md, section 4). Only a list [`usual_options`] does not know makes the call. (A
/// global function's context argument is known by the kernel's own BTF: the kernel needs
/// `CONFIG_DEBUG_INFO_BTF`, which Ubuntu's and Debian's have.)
///
/// Read with `bpf_skb_load_bytes` rather than direct access: the walk's offset depends on the
/// bytes read, which the verifier cannot follow through direct packet pointers. (Copying the
/// options to the stack in one call and walking them there measured no faster; copying them
/// with direct loads saved 20 ns a handshake packet, and cost each program's load about 40 ms
/// more in the verifier: BENCHMARKS.md.)
#[no_mangle]
#[inline(never)]
pub extern "C" fn trove_isolate_walk_wscale(skb: *mut __sk_buff, at: u32, len: u32) -> u32 {
    u32::from(walk(&TcContext::new(skb), at as usize, len as usize))
}

#[inline(always)]
fn walk(ctx: &TcContext, at: usize, len: usize) -> u8 {
    let mut off = at;
    let end = at + len;
    // Whether the option was seen, and its shift as read: the shift is taken as the answer only
    // once the walk ends, so that the walk carries two cases into each option, not three (none,
    // a shift, a shift clamped): the verifier follows each case through the options after it.
    let mut seen = false;
    let mut shift = 0;
    for _ in 0..TCP_MAX_OPTIONS {
        if off >= end {
            return scale(seen, shift);
        }
        let Ok(kind) = ctx.load::<u8>(off) else {
            return WSCALE_UNKNOWN;
        };
        match kind {
            TCPOPT_EOL => return scale(seen, shift),
            TCPOPT_NOP => off += 1,
            k => {
                let Ok(len) = ctx.load::<u8>(off + 1) else {
                    return WSCALE_UNKNOWN;
                };
                let len = len as usize;
                if len < 2 || off + len > end {
                    return WSCALE_UNKNOWN;
                }
                if k == TCPOPT_WSCALE && len == 3 {
                    if seen {
                        return WSCALE_UNKNOWN;
                    }
                    let Ok(s) = ctx.load::<u8>(off + 2) else {
                        return WSCALE_UNKNOWN;
                    };
                    seen = true;
                    shift = s;
                }
                off += len;
            }
        }
    }
    if off >= end {
        scale(seen, shift)
    } else {
        WSCALE_UNKNOWN
    }
}

/// The window scale's shift of the option lists Linux and Windows put in a SYN or SYN-ACK, read
/// in two loads and checked at fixed places; [`NOT_USUAL`] for any other list, which the walk
/// reads. Each is a list the walk reads the same way (five or six options, each well formed, one
/// window scale); the walk makes a helper call for each byte it reads, ten for Linux's list.
///
/// The lists (MSS and timestamps carry any value):
/// - 20 bytes (Linux with timestamps): MSS, SACK permitted, timestamps, NOP, window scale.
/// - 12 bytes (Linux without timestamps): MSS, NOP, NOP, SACK permitted, NOP, window scale.
/// - 12 bytes (Windows): MSS, NOP, window scale, NOP, NOP, SACK permitted.
///
/// Read with `bpf_skb_load_bytes`, whose offset the verifier takes as any number. Read directly
/// (a packet pointer moved by the offset), the verifier tracked the offset exactly, back to where
/// the parser computed it, and then told apart states it had taken as one: each program's
/// instructions processed went up by a third. The list's bytes are compared without a branch
/// ([`is_zero`]).
#[inline(always)]
fn usual_options(ctx: &TcContext, at: u32, len: u32) -> u32 {
    // Eight bytes of a list as a native-endian word, and the bytes that must be as there.
    const fn word(bytes: [u8; 8]) -> u64 {
        u64::from_ne_bytes(bytes)
    }
    const fn fixed(bytes: [bool; 8]) -> u64 {
        let mut m = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            if bytes[i] {
                m[i] = 0xff;
            }
            i += 1;
        }
        u64::from_ne_bytes(m)
    }
    const T: bool = true;
    const F: bool = false;
    // Bytes 0 to 7 of Linux's 20: the MSS (its value any), SACK permitted, the timestamps' kind
    // and length; bytes 12 to 19: the second timestamp (any), NOP, window scale (the shift last).
    const LINUX_HEAD: u64 = word([2, 4, 0, 0, 4, 2, 8, 10]);
    const LINUX_HEAD_FIXED: u64 = fixed([T, T, F, F, T, T, T, T]);
    const LINUX_LAST: u64 = word([0, 0, 0, 0, 1, 3, 3, 0]);
    const LINUX_LAST_FIXED: u64 = fixed([F, F, F, F, T, T, T, F]);
    // Bytes 0 to 3 of the 12-byte lists: the MSS; bytes 4 to 11 (the shift last, or fourth).
    const MSS: u64 = word([2, 4, 0, 0, 0, 0, 0, 0]);
    const MSS_FIXED: u64 = fixed([T, T, F, F, F, F, F, F]);
    const LINUX_TAIL: u64 = word([1, 1, 4, 2, 1, 3, 3, 0]);
    const LINUX_TAIL_FIXED: u64 = fixed([T, T, T, T, T, T, T, F]);
    const WINDOWS_TAIL: u64 = word([1, 3, 3, 0, 1, 1, 4, 2]);
    const WINDOWS_TAIL_FIXED: u64 = fixed([T, T, T, F, T, T, T, T]);
    let at = at as usize;
    let (is, shift) = match len {
        20 => {
            let Ok(head) = ctx.load::<u64>(at) else {
                return NOT_USUAL;
            };
            let Ok(last) = ctx.load::<u64>(at + 12) else {
                return NOT_USUAL;
            };
            let is = is_zero((head & LINUX_HEAD_FIXED) ^ LINUX_HEAD)
                & is_zero((last & LINUX_LAST_FIXED) ^ LINUX_LAST);
            (is, last >> 56)
        }
        12 => {
            let Ok(head) = ctx.load::<u32>(at) else {
                return NOT_USUAL;
            };
            let Ok(tail) = ctx.load::<u64>(at + 4) else {
                return NOT_USUAL;
            };
            let mss = is_zero((u64::from(head) & MSS_FIXED) ^ MSS);
            let linux = mss & is_zero((tail & LINUX_TAIL_FIXED) ^ LINUX_TAIL);
            let windows = mss & is_zero((tail & WINDOWS_TAIL_FIXED) ^ WINDOWS_TAIL);
            // Each list's shift where it is that list (a mask of all ones), else nothing.
            let pick = |is: u64, shift: u64| 0u64.wrapping_sub(is) & shift;
            (
                linux | windows,
                pick(linux, tail >> 56) | pick(windows, (tail >> 24) & 0xff),
            )
        }
        _ => return NOT_USUAL,
    };
    if is == 0 {
        NOT_USUAL
    } else {
        shift as u32
    }
}

/// [`usual_options`]'s answer for a list it does not know.
const NOT_USUAL: u32 = 0x100;

/// The window scale of a walk that ended: `WSCALE_NONE` when no option carried one; a shift
/// above 14 is taken as 14 (RFC 7323 2.3), and must not alias the markers above it.
#[inline(always)]
fn scale(seen: bool, shift: u8) -> u8 {
    match (seen, shift) {
        (false, _) => WSCALE_NONE,
        (true, s) if s > WSCALE_MAX => WSCALE_MAX,
        (true, s) => s,
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
fn icmp(ctx: &TcContext, off: usize, end: usize, mut pkt: Packet) -> Result<Parsed, Reason> {
    let icmp: *const IcmpHdr = l4_at(ctx, off, end)?;
    let (ty, code, id) = unsafe { ((*icmp).ty, (*icmp).code, (*icmp).id) };
    pkt.icmp_type = ty;
    pkt.icmp_code = code;
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
        IcmpClass::NeighborDiscovery => {
            // Read by `nd::check`, the only stage that needs them.
            pkt.options_at = off as u16;
            pkt.payload_len = (end - off) as u32;
            Ok(Parsed::NeighborDiscovery(pkt))
        }
        IcmpClass::Other => Ok(Parsed::Flow(pkt)),
        IcmpClass::Error => {
            let quoted = quoted(ctx, off + size_of::<IcmpHdr>(), end, pkt.family)?;
            Ok(Parsed::Related { outer: pkt, quoted })
        }
    }
}

/// The packet quoted in an ICMP error: its IP header and the first 8 bytes of its L4 header (which
/// RFC 792 and RFC 4443 guarantee), inside the error's own IP packet. Only its tuple is needed,
/// to find the tracked flow.
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, end: usize, fam: u8) -> Result<Packet, Reason> {
    let (mut pkt, l4_off) = if fam == family::V4 {
        let ip: *const Ipv4Hdr = l4_at(ctx, off, end)?;
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
        let mut pkt = new_packet(family::V4, ip_proto, 0);
        pkt.src[0] = u32::from_ne_bytes(src);
        pkt.dst[0] = u32::from_ne_bytes(dst);
        (pkt, off + ihl)
    } else {
        let ip: *const Ipv6Hdr = l4_at(ctx, off, end)?;
        let (version, next, (src, dst)) = unsafe {
            (
                (*ip).version_tc_flow[0] >> 4,
                (*ip).next_header,
                addresses(ip),
            )
        };
        if version != 6 {
            return Err(Reason::Malformed);
        }
        let mut pkt = new_packet(family::V6, next, 0);
        pkt.src = src;
        pkt.dst = dst;
        (pkt, off + IPV6_HLEN)
    };
    // TCP and UDP both start with the two ports; 8 bytes is all the quote guarantees.
    match (pkt.proto, pkt.family) {
        (proto::TCP, _) | (proto::UDP, _) => {
            let ports: *const UdpHdr = l4_at(ctx, l4_off, end)?;
            pkt.kind = if pkt.proto == proto::TCP {
                Kind::Tcp
            } else {
                Kind::Udp
            };
            unsafe {
                pkt.src_port = (*ports).src;
                pkt.dst_port = (*ports).dst;
            }
        }
        (proto::ICMP, family::V4) | (proto::ICMPV6, family::V6) => {
            let icmp: *const IcmpHdr = l4_at(ctx, l4_off, end)?;
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
