//! Hand-built frames for the packet tables: just enough of each header to be exact about what the
//! datapath sees. Checksums are left zero (the datapath does not read them).

use std::net::IpAddr;

pub const ETH_IP: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_VLAN: u16 = 0x8100;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = SYN | ACK;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header fields the tables vary.
#[derive(Clone, Copy)]
pub struct V4 {
    pub ihl: u8,
    pub frag: u16,
    /// `None`: the real length.
    pub tot_len: Option<u16>,
}

pub const V4_PLAIN: V4 = V4 {
    ihl: 5,
    frag: 0x4000,
    tot_len: None,
};

pub fn ipv4(opts: V4, proto: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("{src} -> {dst}: not IPv4");
    };
    let hlen = usize::from(opts.ihl.max(5)) * 4;
    let tot = opts.tot_len.unwrap_or((hlen + l4.len()) as u16);
    let mut h = vec![0x40 | opts.ihl, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&opts.frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.resize(hlen, 1); // options: NOPs
    h.extend_from_slice(l4);
    eth(ETH_IP, &h)
}

/// IPv4 carrying `options` (padded with no-operations to a multiple of 4 bytes).
pub fn ipv4_options(options: &[u8], proto: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    let mut f = ipv4(V4_PLAIN, proto, src, dst, l4);
    let mut opts = options.to_vec();
    opts.resize(opts.len().div_ceil(4) * 4, 1);
    let hlen = 20 + opts.len();
    f.splice(14 + 20..14 + 20, opts);
    f[14] = 0x40 | (hlen / 4) as u8;
    f[14 + 2..14 + 4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    f
}

/// IPv6 with `ext` as (next header, header bytes) pairs chained in front of the L4 payload.
pub fn ipv6_ext(proto: u8, ext: &[(u8, Vec<u8>)], src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    ipv6_full(proto, 64, ext, src, dst, l4)
}

/// IPv6 with a given hop limit (neighbour discovery needs 255, MLD 1).
pub fn ipv6_hl(proto: u8, hop_limit: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    ipv6_full(proto, hop_limit, &[], src, dst, l4)
}

/// IPv6 with a given hop limit and extension headers.
pub fn ipv6_full(
    proto: u8,
    hop_limit: u8,
    ext: &[(u8, Vec<u8>)],
    src: &str,
    dst: &str,
    l4: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(src), ip(dst)) else {
        panic!("{src} -> {dst}: not IPv6");
    };
    // Each extension header's first byte is the next header of what follows it.
    let mut chain = Vec::new();
    for (i, (_, body)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(nh, _)| *nh);
        let mut b = body.clone();
        b[0] = next;
        chain.extend_from_slice(&b);
    }
    let first = ext.first().map_or(proto, |(nh, _)| *nh);
    let payload_len = (chain.len() + l4.len()) as u16;
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&[first, hop_limit]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&chain);
    h.extend_from_slice(l4);
    eth(ETH_IPV6, &h)
}

pub fn ipv6(proto: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    ipv6_ext(proto, &[], src, dst, l4)
}

/// An 8-byte extension header (hop-by-hop, destination options: padding only).
pub fn ext8() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_seq(sport, dport, flags, 1, 0, 0xffff)
}

/// TCP with the sequence number, acknowledgment number and window given.
pub fn tcp_seq(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, window: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

/// [`tcp_seq`] carrying `data` (a greeting, say: the guest's data promotes a flow the remote
/// opened).
pub fn tcp_data(
    sport: u16,
    dport: u16,
    flags: u8,
    (seq, ack): (u32, u32),
    window: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut t = tcp_seq(sport, dport, flags, seq, ack, window);
    t.extend_from_slice(data);
    t
}

/// TCP with options (padded with NOPs to a multiple of 4 bytes).
#[allow(clippy::too_many_arguments)]
pub fn tcp_opts(
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[u8],
) -> Vec<u8> {
    let mut t = tcp_seq(sport, dport, flags, seq, ack, window);
    let mut options = options.to_vec();
    options.resize(options.len().div_ceil(4) * 4, 1);
    t[12] = ((20 + options.len()) as u8 / 4) << 4;
    t.extend_from_slice(&options);
    t
}

/// The options a Linux SYN carries: MSS, SACK permitted, timestamps, NOP, window scale `shift`.
pub fn linux_syn_options(shift: u8) -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    o.extend_from_slice(&[1, 3, 3, shift]);
    o
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    u
}

/// ICMP or ICMPv6 header with identifier `id` (echo) and `rest` after it (a quoted packet).
pub fn icmp(ty: u8, code: u8, id: u16, rest: &[u8]) -> Vec<u8> {
    let mut i = vec![ty, code, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&[0, 1]);
    i.extend_from_slice(rest);
    i
}

/// The IP packet inside a frame (what an ICMP error quotes), cut to its IP header + 8 bytes.
pub fn quote(frame: &[u8], ip_header_len: usize) -> Vec<u8> {
    frame[14..14 + ip_header_len + 8].to_vec()
}

pub fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
    eth(ETH_ARP, &a)
}

pub fn vlan(inner_ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 10];
    v.extend_from_slice(&inner_ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    eth(ETH_VLAN, &v)
}
