//! Frames built from a description: enough of every header to say exactly what the datapath
//! reads. Shared by the differential test and the model's unit tests (`#[path]`), so it depends
//! on nothing but std. Checksums stay zero: nothing here reads them.

#![allow(dead_code)]

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_VLAN: u16 = 0x8100;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const SYN_ACK: u8 = SYN | ACK;
pub const FIN_ACK: u8 = FIN | ACK;
pub const RST_ACK: u8 = RST | ACK;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// IPv4 flags/fragment field: don't fragment.
pub const DF: u16 = 0x4000;

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The bytes of an IPv6 address.
pub fn v6_octets(s: &str) -> [u8; 16] {
    match addr(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("{s}: not IPv6"),
    }
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `len` in 8-byte units beyond the first 8 (padding only).
    HopByHop(u8),
    /// The hop-by-hop header Linux puts in front of MLD: a router alert for MLD, and padding.
    MldRouterAlert,
    /// A routing header with no segments left (the packet is at its final destination).
    Routing(u8),
    /// A routing header with a segment left: a source route.
    SourceRoute(u8),
    DestOptions(u8),
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    pub fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) | Ext::MldRouterAlert => 0,
            Ext::Routing(_) | Ext::SourceRoute(_) => 43,
            Ext::DestOptions(_) => 60,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(len)
            | Ext::Routing(len)
            | Ext::SourceRoute(len)
            | Ext::DestOptions(len) => {
                let mut b = vec![0u8; (usize::from(*len) + 1) * 8];
                b[0] = next;
                b[1] = *len;
                if matches!(self, Ext::Routing(_) | Ext::SourceRoute(_)) {
                    b[2] = 4; // segment routing type
                    b[3] = u8::from(matches!(self, Ext::SourceRoute(_))); // segments left
                } else {
                    b[2] = 1; // PadN
                    b[3] = (b.len() - 4) as u8;
                }
                b
            }
            Ext::MldRouterAlert => vec![next, 0, 5, 2, 0, 0, 1, 0],
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 7]);
                b
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        /// Raw option bytes (padded to a multiple of 4 with end-of-list).
        options: Vec<u8>,
        /// The segment's data.
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 (by the packet's family): type, code, identifier, sequence, then `body`
    /// (a quoted packet for errors).
    Icmp {
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
        body: Vec<u8>,
    },
    /// Any IP protocol, payload as given.
    Raw { proto: u8, payload: Vec<u8> },
}

/// An IP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub hop_limit: u8,
    /// IPv4: option bytes (padded to a multiple of 4 with NOPs).
    pub v4_options: Vec<u8>,
    /// IPv4: the flags/fragment-offset field.
    pub v4_frag: u16,
    /// IPv6: the extension header chain before the L4 header.
    pub ext: Vec<Ext>,
    pub l4: L4,
}

impl Pkt {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Pkt {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "{src} -> {dst}: mixed families"
        );
        Pkt {
            src,
            dst,
            hop_limit: 64,
            v4_options: Vec::new(),
            v4_frag: DF,
            ext: Vec::new(),
            l4,
        }
    }

    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Pkt {
        Pkt::new(
            addr(src),
            addr(dst),
            L4::Tcp {
                sport,
                dport,
                flags,
                seq: 1000,
                ack: 0,
                window: 0xffff,
                options: Vec::new(),
                payload: Vec::new(),
            },
        )
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Pkt {
        Pkt::new(
            addr(src),
            addr(dst),
            L4::Udp {
                sport,
                dport,
                payload: b"ping".to_vec(),
            },
        )
    }

    pub fn icmp(src: &str, dst: &str, ty: u8, id: u16, body: Vec<u8>) -> Pkt {
        Pkt::new(
            addr(src),
            addr(dst),
            L4::Icmp {
                ty,
                code: 0,
                id,
                seq: 1,
                body,
            },
        )
    }

    pub fn hop(mut self, hop_limit: u8) -> Pkt {
        self.hop_limit = hop_limit;
        self
    }

    /// TCP: sequence, acknowledgment and window.
    pub fn seq_ack(mut self, s: u32, a: u32, w: u16) -> Pkt {
        if let L4::Tcp {
            seq, ack, window, ..
        } = &mut self.l4
        {
            (*seq, *ack, *window) = (s, a, w);
        }
        self
    }

    /// TCP: data in the segment.
    pub fn data(mut self, bytes: &[u8]) -> Pkt {
        if let L4::Tcp { payload, .. } = &mut self.l4 {
            *payload = bytes.to_vec();
        }
        self
    }

    /// TCP: a window scale option (kind 3, length 3) after a NOP.
    pub fn wscale(mut self, shift: u8) -> Pkt {
        if let L4::Tcp { options, .. } = &mut self.l4 {
            *options = vec![1, 3, 3, shift];
        }
        self
    }

    pub fn v6(&self) -> bool {
        self.src.is_ipv6()
    }

    pub fn ip_proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } if self.v6() => ICMPV6,
            L4::Icmp { .. } => ICMP,
            L4::Raw { proto, .. } => *proto,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
                options,
                payload,
            } => {
                let mut opts = options.clone();
                opts.resize(opts.len().div_ceil(4) * 4, 0);
                opts.truncate(40);
                let doff = (20 + opts.len()) / 4;
                let mut t = Vec::new();
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&ack.to_be_bytes());
                t.extend_from_slice(&[(doff as u8) << 4, *flags]);
                t.extend_from_slice(&window.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t.extend_from_slice(payload);
                t
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut u = Vec::new();
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                u
            }
            L4::Icmp {
                ty,
                code,
                id,
                seq,
                body,
            } => {
                let mut i = vec![*ty, *code, 0, 0];
                i.extend_from_slice(&id.to_be_bytes());
                i.extend_from_slice(&seq.to_be_bytes());
                i.extend_from_slice(body);
                i
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }

    /// The IP packet: header(s) and payload, lengths true.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut opts = self.v4_options.clone();
                opts.resize(opts.len().div_ceil(4) * 4, 1);
                opts.truncate(40);
                let hlen = 20 + opts.len();
                let mut h = vec![0x40 | (hlen / 4) as u8, 0];
                h.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 1]);
                h.extend_from_slice(&self.v4_frag.to_be_bytes());
                h.extend_from_slice(&[self.hop_limit, self.ip_proto(), 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                h.extend_from_slice(&l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut chain = Vec::new();
                for (i, e) in self.ext.iter().enumerate() {
                    let next = self.ext.get(i + 1).map_or(self.ip_proto(), Ext::number);
                    chain.extend_from_slice(&e.bytes(next));
                }
                let first = self.ext.first().map_or(self.ip_proto(), Ext::number);
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[first, self.hop_limit]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&chain);
                h.extend_from_slice(&l4);
                h
            }
            _ => unreachable!("checked in Pkt::new"),
        }
    }

    /// Offset of the L4 header in the IP packet.
    pub fn l4_offset(&self) -> usize {
        if self.v6() {
            40 + self.ext.iter().map(|e| e.bytes(0).len()).sum::<usize>()
        } else {
            20 + self.v4_options.len().div_ceil(4).min(10) * 4
        }
    }

    /// The packet with its frame.
    pub fn framed(&self) -> Framed {
        Framed {
            pkt: Some(self.clone()),
            frame: self.frame(),
            gso: false,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let ethertype = if self.v6() { ETH_IPV6 } else { ETH_IPV4 };
        eth(ethertype, &self.ip_bytes())
    }

    /// What an ICMP error quotes of this packet: its IP packet cut to `len` bytes.
    pub fn quote(&self, len: usize) -> Vec<u8> {
        let mut b = self.ip_bytes();
        b.truncate(len);
        b
    }

    /// The usual quote: IP header(s) and 8 bytes of L4.
    pub fn quote_min(&self) -> Vec<u8> {
        self.quote(self.l4_offset() + 8)
    }

    /// The ICMP error `ty` from `src` to `dst` quoting `self`.
    pub fn error(&self, src: IpAddr, dst: IpAddr, ty: u8) -> Pkt {
        Pkt::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code: 0,
                id: 0,
                seq: 0,
                body: self.quote_min(),
            },
        )
    }
}

/// A frame to run, with the packet it was built from (for reports).
#[derive(Clone, Debug)]
pub struct Framed {
    pub pkt: Option<Pkt>,
    pub frame: Vec<u8>,
    /// Run as a GSO skb.
    pub gso: bool,
}

impl Framed {
    pub fn raw(frame: Vec<u8>) -> Framed {
        Framed {
            pkt: None,
            frame,
            gso: false,
        }
    }

    /// Runs it as a GSO skb.
    pub fn gso(mut self) -> Framed {
        self.gso = true;
        self
    }

    /// Changes the frame (the packet stays as built, for the report).
    pub fn edit(mut self, f: impl FnOnce(&mut Vec<u8>)) -> Framed {
        f(&mut self.frame);
        self
    }
}

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
    eth(ETH_ARP, &a)
}

pub fn flags_name(f: u8) -> String {
    let names = [
        (SYN, "S"),
        (ACK, "A"),
        (FIN, "F"),
        (RST, "R"),
        (PSH, "P"),
        (URG, "U"),
        (0x40, "E"),
        (0x80, "C"),
    ];
    let s: String = names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn sock(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

impl fmt::Display for Pkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
                options,
                payload,
            } => write!(
                f,
                "TCP {} -> {} [{}] seq={seq} ack={ack} win={window}{}{}",
                sock(self.src, *sport),
                sock(self.dst, *dport),
                flags_name(*flags),
                if options.is_empty() {
                    String::new()
                } else {
                    format!(" opts={options:02x?}")
                },
                if payload.is_empty() {
                    String::new()
                } else {
                    format!(" data={}", payload.len())
                }
            )?,
            L4::Udp { sport, dport, .. } => write!(
                f,
                "UDP {} -> {}",
                sock(self.src, *sport),
                sock(self.dst, *dport)
            )?,
            L4::Icmp {
                ty, code, id, body, ..
            } => {
                write!(
                    f,
                    "ICMP{} {} -> {} type={ty} code={code} id={id}",
                    if self.v6() { "v6" } else { "" },
                    self.src,
                    self.dst
                )?;
                if !body.is_empty() {
                    write!(f, " body[{}]={:02x?}", body.len(), body)?;
                }
            }
            L4::Raw { proto, payload } => write!(
                f,
                "proto {proto} {} -> {} payload[{}]",
                self.src,
                self.dst,
                payload.len()
            )?,
        }
        if self.hop_limit != 64 {
            write!(f, " hop={}", self.hop_limit)?;
        }
        if !self.v6() && self.v4_frag != DF {
            write!(f, " frag={:#06x}", self.v4_frag)?;
        }
        if !self.v4_options.is_empty() {
            write!(f, " ipopts={}", self.v4_options.len())?;
        }
        if !self.ext.is_empty() {
            write!(f, " ext={:?}", self.ext)?;
        }
        Ok(())
    }
}

/// Helper for tests that need `Ipv4Addr`/`Ipv6Addr` constants.
pub fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

pub fn v6(a: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
    ))
}
