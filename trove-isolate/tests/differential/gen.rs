//! Sequences of frames for the differential test: fresh packets over a small universe of
//! addresses and ports (so that steps meet the same flows), replies and continuations of
//! earlier steps (so that flows open, establish and close), ICMP errors quoting earlier steps,
//! raw frames, and mutations of any of them.
//!
//! A [`Step`] is a description; [`build`] turns a sequence into frames, resolving references to
//! earlier steps. References are [`Index`]es over the steps built so far, so removing a step
//! while shrinking keeps every reference valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::{collection::vec, prelude::*, sample::Index};
use trove_isolate_common::{Direction, Role};

use super::{
    frames::{self, Ext, Pkt, ACK, DF, FIN_ACK, L4, PSH, RST, RST_ACK, SYN, SYN_ACK},
    world,
};

#[derive(Clone, Debug)]
pub enum Step {
    /// A packet of its own.
    Fresh {
        role: Role,
        direction: Direction,
        pkt: FreshPkt,
        mutation: Mutation,
    },
    /// A packet of a service the policy names (or nearly: another role), from or to one of
    /// the NIC's own addresses.
    Service {
        svc: Index,
        other_role: bool,
        local: Index,
        ephemeral: PortPick,
        l4: ServiceL4,
        mutation: Mutation,
    },
    /// A TCP handshake with a service: SYN, SYN-ACK, ACK (the first `packets` of them).
    Handshake {
        svc: Index,
        local: Index,
        ephemeral: PortPick,
        isn: (u32, u32),
        window: (u16, u16),
        options: (Vec<u8>, Vec<u8>),
        packets: u8,
    },
    /// DHCP or DHCPv6 client traffic, or something close to it.
    Dhcp {
        role: Role,
        direction: Direction,
        v6: bool,
        standard_ports: bool,
        local: AddrPick,
        remote: AddrPick,
        special: Index,
    },
    /// The end of an earlier step's TCP connection: FIN from the far end, FIN back, then a SYN
    /// reusing the tuple (or a reset instead), the first `packets` of them.
    Teardown {
        of: Index,
        reset: Option<(bool, Delta)>,
        packets: u8,
    },
    /// Neighbour discovery or MLD, mostly as a host sends and receives it.
    NeighborDiscovery {
        role: Role,
        ty: Index,
        usual_direction: bool,
        usual_hop: bool,
        code: u8,
        src: Index,
        dst: Index,
        /// A solicitation's or advertisement's target: the source's own address, or another.
        target: Option<Index>,
        /// Bytes of options after the target (64 bytes of ICMPv6 at most pass).
        options: u8,
        /// The extension headers before the message.
        ext: NdExt,
        /// An MLD report's or done's content.
        mld: MldGen,
    },
    /// A packet answering or continuing an earlier step's.
    Reply {
        to: Index,
        how: ReplyHow,
        mutation: Mutation,
    },
    /// An ICMP error quoting an earlier step's packet.
    Error {
        about: Index,
        err: ErrorGen,
        mutation: Mutation,
    },
    /// A frame that is not built from a packet description.
    Raw {
        role: Role,
        direction: Direction,
        frame: RawFrame,
    },
}

#[derive(Clone, Debug)]
pub enum ServiceL4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        options: Vec<u8>,
    },
    /// UDP or echo request, as the service's protocol says.
    Other { id: u16 },
}

/// What a rule of the test policy allows: (role, direction opening the flow, protocol,
/// remote address, destination port).
pub const SERVICES: &[(Role, Direction, u8, &str, u16)] = &[
    (
        Role::Management,
        Direction::Egress,
        frames::TCP,
        world::RABBIT4,
        5672,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::TCP,
        world::RABBIT6,
        5671,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::TCP,
        world::REGISTRY,
        4000,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::TCP,
        world::WEB6,
        443,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::UDP,
        world::DNS,
        53,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::ICMP,
        world::RABBIT4,
        0,
    ),
    (
        Role::Management,
        Direction::Egress,
        frames::ICMPV6,
        world::RABBIT6,
        0,
    ),
    (
        Role::Management,
        Direction::Ingress,
        frames::TCP,
        world::OPERATOR4,
        22,
    ),
    (
        Role::Management,
        Direction::Ingress,
        frames::TCP,
        world::OPERATOR6,
        22,
    ),
    (
        Role::Management,
        Direction::Ingress,
        frames::TCP,
        world::OPERATOR4,
        9477,
    ),
    (
        Role::Business,
        Direction::Ingress,
        frames::TCP,
        world::CLIENT4,
        3306,
    ),
    (
        Role::Business,
        Direction::Ingress,
        frames::TCP,
        world::CLIENT6,
        5432,
    ),
    (
        Role::Business,
        Direction::Ingress,
        frames::TCP,
        world::OPERATOR4,
        3306,
    ),
    (
        Role::Business,
        Direction::Egress,
        frames::TCP,
        world::PEER4,
        3306,
    ),
    (
        Role::Business,
        Direction::Egress,
        frames::TCP,
        world::PEER6,
        5432,
    ),
];

#[derive(Clone, Debug)]
pub struct FreshPkt {
    v6: bool,
    local: AddrPick,
    remote: AddrPick,
    hop_limit: u8,
    v4_options: Vec<u8>,
    v4_frag: u16,
    ext: Vec<Ext>,
    l4: L4Gen,
}

#[derive(Clone, Debug)]
pub enum AddrPick {
    /// One of the NIC's own addresses of the family.
    Own(Index),
    /// One of the universe's addresses of the family.
    Universe(Index),
    Random(u128),
}

#[derive(Clone, Debug)]
pub enum PortPick {
    Known(Index),
    Random(u16),
}

#[derive(Clone, Debug)]
pub enum IcmpType {
    EchoRequest,
    EchoReply,
    Error(Index),
    NeighborDiscovery(Index),
    Any(u8),
}

#[derive(Clone, Debug)]
pub enum L4Gen {
    Tcp {
        local_port: PortPick,
        remote_port: PortPick,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        options: Vec<u8>,
        /// Carries data.
        data: bool,
    },
    Udp {
        local_port: PortPick,
        remote_port: PortPick,
    },
    Icmp {
        ty: IcmpType,
        code: u8,
        id: u16,
        body: Vec<u8>,
    },
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

/// A sequence number offset for a reply: mostly exact, sometimes at the window's edges.
#[derive(Clone, Debug)]
pub enum Delta {
    Exact,
    Plus(i32),
    /// `(window << shift) + extra` beyond the exact value.
    WindowEdge {
        shift: u8,
        extra: i8,
    },
    Any(u32),
}

#[derive(Clone, Debug)]
pub enum ReplyHow {
    /// From the other end: addresses and ports swapped, the other direction.
    Answer {
        flags: u8,
        seq: Delta,
        ack: Delta,
        window: u16,
        options: Vec<u8>,
        /// Carries data.
        data: bool,
    },
    /// Another packet from the same end, the same direction.
    Again {
        flags: u8,
        seq: Delta,
        ack: Delta,
        window: u16,
    },
    /// The same packet on the other NIC.
    OtherNic,
}

#[derive(Clone, Debug)]
pub struct ErrorGen {
    ty: Index,
    code: u8,
    /// The opposite direction of the quoted packet (how real errors travel).
    back: bool,
    /// `None`: the quoted packet's destination (the far end answers).
    from: Option<AddrPick>,
    /// `None`: the quoted packet's source.
    to: Option<AddrPick>,
    quote: QuoteGen,
}

#[derive(Clone, Debug)]
pub enum QuoteGen {
    /// IP header and 8 bytes.
    Min,
    Whole,
    Cut(Index),
    Flip(Index, u8),
}

#[derive(Clone, Debug)]
pub enum Mutation {
    None,
    Truncate(Index),
    /// XOR a byte of the first 80.
    Flip(Index, u8),
    /// Replace the IP length field (IPv4 total length, IPv6 payload length).
    IpLength(LengthLie),
    /// Ethernet trailer bytes after the IP packet.
    Pad(Vec<u8>),
    /// Replace the TCP data offset nibble.
    TcpDoff(u8),
    /// Run as a GSO skb, the IP length field zero (BIG TCP) or not.
    Gso(bool),
}

#[derive(Clone, Debug)]
pub enum LengthLie {
    Zero,
    Off(i8),
    Any(u16),
}

#[derive(Clone, Debug)]
pub enum RawFrame {
    Arp {
        sender: Index,
        op: u16,
        odd_shape: bool,
        len: Index,
    },
    Vlan,
    Ethertype(u16, Vec<u8>),
    Bytes(Vec<u8>),
}

pub fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Management), Just(Role::Business)]
}

pub fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Egress), Just(Direction::Ingress)]
}

fn addr_pick() -> impl Strategy<Value = AddrPick> {
    prop_oneof![
        8 => any::<Index>().prop_map(AddrPick::Universe),
        3 => any::<Index>().prop_map(AddrPick::Own),
        1 => any::<u128>().prop_map(AddrPick::Random),
    ]
}

fn local_pick() -> impl Strategy<Value = AddrPick> {
    prop_oneof![
        7 => any::<Index>().prop_map(AddrPick::Own),
        3 => any::<Index>().prop_map(AddrPick::Universe),
        1 => any::<u128>().prop_map(AddrPick::Random),
    ]
}

fn port_pick() -> impl Strategy<Value = PortPick> {
    prop_oneof![
        4 => any::<Index>().prop_map(PortPick::Known),
        1 => any::<u16>().prop_map(PortPick::Random),
    ]
}

fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => Just(SYN),
        4 => Just(ACK),
        2 => Just(SYN_ACK),
        2 => Just(FIN_ACK),
        2 => Just(RST),
        1 => Just(RST_ACK),
        2 => Just(PSH | ACK),
        3 => any::<u8>(),
    ]
}

fn window() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(0xffff),
        1 => Just(0),
        1 => Just(1),
        2 => Just(1000),
        2 => any::<u16>(),
    ]
}

fn seq_number() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => any::<u32>(),
        1 => Just(1000),
        1 => Just(u32::MAX - 10),
    ]
}

fn shift() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => 0u8..=14,
        1 => Just(15),
        1 => Just(254),
        1 => Just(255),
        1 => any::<u8>(),
    ]
}

/// TCP options: none, a window scale, what Linux or Windows sends on a SYN, or random bytes.
fn tcp_options() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => Just(vec![]),
        4 => shift().prop_map(|s| vec![1, 3, 3, s]),
        2 => (shift(), any::<u32>()).prop_map(|(s, ts)| {
            let t = ts.to_be_bytes();
            vec![2, 4, 5, 0xb4, 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 1, 3, 3, s]
        }),
        // What Linux sends without timestamps, and what Windows sends.
        1 => (shift(), any::<bool>()).prop_map(|(s, windows)| if windows {
            vec![2, 4, 5, 0xb4, 1, 3, 3, s, 1, 1, 4, 2]
        } else {
            vec![2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, s]
        }),
        2 => vec(any::<u8>(), 0..=40),
        // The window scale behind a run of no-ops (the walk looks at eight options).
        1 => (0usize..=12, shift()).prop_map(|(n, s)| {
            let mut v = vec![1; n];
            v.extend_from_slice(&[3, 3, s]);
            v
        }),
        // The window scale twice (Linux takes the last), or followed by options that do not
        // parse.
        1 => (shift(), shift(), any::<bool>()).prop_map(|(a, b, broken)| {
            if broken {
                vec![3, 3, a, 8, 1]
            } else {
                vec![3, 3, a, 1, 3, 3, b, 0]
            }
        }),
    ]
    .boxed()
}

fn icmp_type() -> impl Strategy<Value = IcmpType> {
    prop_oneof![
        4 => Just(IcmpType::EchoRequest),
        2 => Just(IcmpType::EchoReply),
        1 => any::<Index>().prop_map(IcmpType::Error),
        4 => any::<Index>().prop_map(IcmpType::NeighborDiscovery),
        2 => any::<u8>().prop_map(IcmpType::Any),
    ]
}

fn l4_gen() -> BoxedStrategy<L4Gen> {
    prop_oneof![
        6 => (port_pick(), port_pick(), tcp_flags(), seq_number(), seq_number(), window(), tcp_options(), any::<bool>())
            .prop_map(|(local_port, remote_port, flags, seq, ack, window, options, data)| L4Gen::Tcp {
                local_port, remote_port, flags, seq, ack, window, options, data,
            }),
        3 => (port_pick(), port_pick())
            .prop_map(|(local_port, remote_port)| L4Gen::Udp { local_port, remote_port }),
        4 => (icmp_type(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
              prop_oneof![Just(1u16), Just(2), Just(7), any::<u16>()], vec(any::<u8>(), 0..=24))
            .prop_map(|(ty, code, id, body)| L4Gen::Icmp { ty, code, id, body }),
        1 => (prop_oneof![Just(6u8), Just(17), Just(1), Just(58), Just(132), Just(59),
                          Just(0), Just(43), Just(44), Just(60), any::<u8>()],
              vec(any::<u8>(), 0..=30))
            .prop_map(|(proto, payload)| L4Gen::Raw { proto, payload }),
    ]
    .boxed()
}

fn ext() -> BoxedStrategy<Ext> {
    let len = prop_oneof![4 => Just(0u8), 2 => 1u8..=3, 1 => any::<u8>()];
    prop_oneof![
        3 => len.clone().prop_map(Ext::HopByHop),
        2 => len.clone().prop_map(Ext::Routing),
        1 => len.clone().prop_map(Ext::SourceRoute),
        3 => len.prop_map(Ext::DestOptions),
        1 => (0u16..8192, any::<bool>()).prop_map(|(offset, more)| Ext::Fragment { offset, more }),
    ]
    .boxed()
}

/// IPv4 options: mostly none; some as a socket's `IP_OPTIONS` gives them (record route,
/// timestamps, a loose or strict source route, no-operations, end-of-list), some of any bytes.
fn v4_options() -> BoxedStrategy<Vec<u8>> {
    let option = prop_oneof![
        3 => Just(vec![1u8]),
        1 => Just(vec![0u8]),
        2 => Just(vec![7u8, 7, 4, 0, 0, 0, 0]),
        1 => Just(vec![68u8, 8, 5, 0, 0, 0, 0, 0]),
        2 => Just(vec![131u8, 7, 4, 198, 51, 100, 9]),
        1 => Just(vec![137u8, 7, 4, 198, 51, 100, 9]),
        1 => (any::<u8>(), 0u8..=12).prop_map(|(kind, len)| {
            let mut o = vec![kind, len];
            o.resize(usize::from(len.max(2)), 0);
            o
        }),
    ];
    prop_oneof![
        16 => Just(vec![]),
        3 => vec(option, 1..=10).prop_map(|os| {
            let mut all: Vec<u8> = os.concat();
            all.truncate(40);
            all
        }),
        1 => vec(any::<u8>(), 1..=40),
    ]
    .boxed()
}

fn fresh_pkt() -> BoxedStrategy<FreshPkt> {
    (
        any::<bool>(),
        local_pick(),
        addr_pick(),
        prop_oneof![6 => Just(64u8), 3 => Just(255), 3 => Just(1), 1 => any::<u8>()],
        v4_options(),
        prop_oneof![20 => Just(DF), 4 => Just(0u16), 1 => Just(0x2000), 1 => any::<u16>()],
        prop_oneof![
            16 => Just(vec![]),
            3 => vec(ext(), 1..=3),
            1 => vec(ext(), 4..=8),
        ],
        l4_gen(),
    )
        .prop_map(
            |(v6, local, remote, hop_limit, v4_options, v4_frag, ext, l4)| FreshPkt {
                v6,
                local,
                remote,
                hop_limit,
                v4_options,
                v4_frag,
                ext,
                l4,
            },
        )
        .boxed()
}

fn delta() -> BoxedStrategy<Delta> {
    prop_oneof![
        8 => Just(Delta::Exact),
        // -4: short of a segment's 4 bytes of data (a Fast Open SYN's, refused).
        2 => prop_oneof![Just(-4i32), Just(-2), Just(-1), Just(1), Just(2), -100_000i32..100_000]
            .prop_map(Delta::Plus),
        2 => (prop_oneof![Just(0u8), Just(14), 0u8..=14], -2i8..=2)
            .prop_map(|(shift, extra)| Delta::WindowEdge { shift, extra }),
        1 => any::<u32>().prop_map(Delta::Any),
    ]
    .boxed()
}

fn reply_how() -> BoxedStrategy<ReplyHow> {
    prop_oneof![
        6 => (tcp_flags(), delta(), delta(), window(), tcp_options(), any::<bool>()).prop_map(
            |(flags, seq, ack, window, options, data)| ReplyHow::Answer { flags, seq, ack, window, options, data }
        ),
        3 => (tcp_flags(), delta(), delta(), window())
            .prop_map(|(flags, seq, ack, window)| ReplyHow::Again { flags, seq, ack, window }),
        1 => Just(ReplyHow::OtherNic),
    ]
    .boxed()
}

fn error_gen() -> BoxedStrategy<ErrorGen> {
    (
        any::<Index>(),
        prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![9 => Just(true), 1 => Just(false)],
        prop_oneof![1 => Just(None), 1 => addr_pick().prop_map(Some)],
        prop_oneof![5 => Just(None), 1 => addr_pick().prop_map(Some)],
        prop_oneof![
            6 => Just(QuoteGen::Min),
            2 => Just(QuoteGen::Whole),
            1 => any::<Index>().prop_map(QuoteGen::Cut),
            1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| QuoteGen::Flip(i, x)),
        ],
    )
        .prop_map(|(ty, code, back, from, to, quote)| ErrorGen {
            ty,
            code,
            back,
            from,
            to,
            quote,
        })
        .boxed()
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        30 => Just(Mutation::None),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => prop_oneof![
            Just(LengthLie::Zero),
            (-9i8..=9).prop_map(LengthLie::Off),
            any::<u16>().prop_map(LengthLie::Any),
        ].prop_map(Mutation::IpLength),
        2 => vec(any::<u8>(), 1..=40).prop_map(Mutation::Pad),
        1 => (0u8..16).prop_map(Mutation::TcpDoff),
        2 => any::<bool>().prop_map(Mutation::Gso),
    ]
    .boxed()
}

fn raw_frame() -> BoxedStrategy<RawFrame> {
    prop_oneof![
        4 => (any::<Index>(), prop_oneof![3 => Just(1u16), 3 => Just(2), 1 => any::<u16>()],
              prop_oneof![9 => Just(false), 1 => Just(true)], any::<Index>())
            .prop_map(|(sender, op, odd_shape, len)| RawFrame::Arp { sender, op, odd_shape, len }),
        1 => Just(RawFrame::Vlan),
        1 => (any::<u16>(), vec(any::<u8>(), 0..=60)).prop_map(|(t, p)| RawFrame::Ethertype(t, p)),
        1 => vec(any::<u8>(), 0..=100).prop_map(RawFrame::Bytes),
    ]
    .boxed()
}

fn service_l4() -> BoxedStrategy<ServiceL4> {
    prop_oneof![
        3 => (prop_oneof![4 => Just(SYN), 2 => Just(ACK), 1 => tcp_flags()], seq_number(),
              seq_number(), window(), tcp_options())
            .prop_map(|(flags, seq, ack, window, options)| ServiceL4::Tcp {
                flags, seq, ack, window, options,
            }),
        1 => prop_oneof![Just(1u16), Just(7), any::<u16>()].prop_map(|id| ServiceL4::Other { id }),
    ]
    .boxed()
}

fn ephemeral() -> BoxedStrategy<PortPick> {
    prop_oneof![
        3 => Just(PortPick::Random(40000)),
        1 => Just(PortPick::Random(40001)),
        1 => port_pick(),
    ]
    .boxed()
}

fn service() -> BoxedStrategy<Step> {
    (
        any::<Index>(),
        prop_oneof![9 => Just(false), 1 => Just(true)],
        any::<Index>(),
        ephemeral(),
        service_l4(),
        mutation(),
    )
        .prop_map(
            |(svc, other_role, local, ephemeral, l4, mutation)| Step::Service {
                svc,
                other_role,
                local,
                ephemeral,
                l4,
                mutation,
            },
        )
        .boxed()
}

fn handshake() -> BoxedStrategy<Step> {
    (
        any::<Index>(),
        any::<Index>(),
        ephemeral(),
        (seq_number(), seq_number()),
        (window(), window()),
        (tcp_options(), tcp_options()),
        prop_oneof![1 => Just(1u8), 1 => Just(2), 4 => Just(3)],
    )
        .prop_map(
            |(svc, local, ephemeral, isn, window, options, packets)| Step::Handshake {
                svc,
                local,
                ephemeral,
                isn,
                window,
                options,
                packets,
            },
        )
        .boxed()
}

fn dhcp() -> BoxedStrategy<Step> {
    (
        role(),
        direction(),
        any::<bool>(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        local_pick(),
        addr_pick(),
        any::<Index>(),
    )
        .prop_map(
            |(role, direction, v6, standard_ports, local, remote, special)| Step::Dhcp {
                role,
                direction,
                v6,
                standard_ports,
                local,
                remote,
                special,
            },
        )
        .boxed()
}

fn teardown() -> BoxedStrategy<Step> {
    (
        any::<Index>(),
        prop_oneof![3 => Just(None), 1 => (any::<bool>(), delta()).prop_map(Some)],
        1u8..=4,
    )
        .prop_map(|(of, reset, packets)| Step::Teardown { of, reset, packets })
        .boxed()
}

fn neighbor_discovery() -> BoxedStrategy<Step> {
    (
        (
            role(),
            any::<Index>(),
            prop_oneof![5 => Just(true), 1 => Just(false)],
            prop_oneof![5 => Just(true), 1 => Just(false)],
            prop_oneof![8 => Just(0u8), 1 => any::<u8>()],
        ),
        any::<Index>(),
        any::<Index>(),
        prop_oneof![3 => Just(None), 1 => any::<Index>().prop_map(Some)],
        prop_oneof![3 => Just(8u8), 2 => Just(0u8), 2 => 0u8..=48],
        prop_oneof![
            10 => Just(NdExt::Usual),
            1 => Just(NdExt::Bare),
            1 => ext().prop_map(NdExt::Extra),
            1 => ext().prop_map(NdExt::Only),
        ],
        mld_gen(),
    )
        .prop_map(
            |(
                (role, ty, usual_direction, usual_hop, code),
                src,
                dst,
                target,
                options,
                ext,
                mld,
            )| {
                Step::NeighborDiscovery {
                    role,
                    ty,
                    usual_direction,
                    usual_hop,
                    code,
                    src,
                    dst,
                    target,
                    options,
                    ext,
                    mld,
                }
            },
        )
        .boxed()
}

/// The extension headers before a neighbour discovery or MLD message.
#[derive(Clone, Debug)]
pub enum NdExt {
    /// As Linux sends it: none, or for MLD the hop-by-hop header with the router alert.
    Usual,
    /// None at all.
    Bare,
    /// The usual ones and one more after them.
    Extra(Ext),
    /// One other header in place of the usual ones.
    Only(Ext),
}

/// What an MLD report or done holds, mostly as Linux sends it.
#[derive(Clone, Debug)]
pub struct MldGen {
    /// Record type, group, sources, words of auxiliary data (MLDv1: the first record's group).
    records: Vec<(u8, Index, u8, u8)>,
    /// Added to the record count an MLDv2 report states.
    count_skew: u8,
    /// MLDv2: the reserved bytes; MLDv1: the maximum response delay.
    reserved: u16,
    /// Bytes after the records (MLDv1: after the group).
    trailing: u8,
    /// To where the type goes (else the step's destination).
    usual_dst: bool,
    /// From the NIC's link-local address (else the step's source).
    usual_src: bool,
}

/// Groups an MLD message may name: the solicited-node groups of the world's addresses (fe80::1,
/// 2001:db8:1::1: ff00:1; fe80::2: ff00:2), another address's, and groups a process may join.
const MLD_GROUPS: [&str; 9] = [
    "ff02::1:ff00:1",
    "ff02::1:ff00:2",
    "ff02::1:ff00:1",
    "ff02::1:ff00:2",
    "ff02::1:ff00:1",
    "ff02::1:ff00:99",
    "ff02::1:3",
    "ff02::db8:42",
    "ff05::1:ff00:1",
];

fn mld_gen() -> BoxedStrategy<MldGen> {
    let record = (
        prop_oneof![6 => 1u8..=4, 1 => any::<u8>()],
        any::<Index>(),
        prop_oneof![8 => Just(0u8), 1 => 1u8..=3],
        prop_oneof![8 => Just(0u8), 1 => 1u8..=2],
    );
    (
        prop_oneof![8 => vec(record.clone(), 1..=3), 1 => vec(record, 0..=34)],
        prop_oneof![8 => Just(0u8), 1 => 1u8..=2],
        prop_oneof![8 => Just(0u16), 1 => any::<u16>()],
        prop_oneof![8 => Just(0u8), 1 => 1u8..=20],
        prop_oneof![6 => Just(true), 1 => Just(false)],
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(records, count_skew, reserved, trailing, usual_dst, usual_src)| MldGen {
                records,
                count_skew,
                reserved,
                trailing,
                usual_dst,
                usual_src,
            },
        )
        .boxed()
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => teardown(),
        1 => neighbor_discovery(),
        6 => service(),
        3 => handshake(),
        1 => dhcp(),
        5 => (role(), direction(), fresh_pkt(), mutation()).prop_map(
            |(role, direction, pkt, mutation)| Step::Fresh { role, direction, pkt, mutation }
        ),
        12 => (any::<Index>(), reply_how(), mutation())
            .prop_map(|(to, how, mutation)| Step::Reply { to, how, mutation }),
        3 => (any::<Index>(), error_gen(), mutation())
            .prop_map(|(about, err, mutation)| Step::Error { about, err, mutation }),
        1 => (role(), direction(), raw_frame())
            .prop_map(|(role, direction, frame)| Step::Raw { role, direction, frame }),
    ]
}

pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    vec(step(), 1..=40)
}

/// A step made concrete.
#[derive(Clone, Debug)]
pub struct Built {
    pub role: Role,
    pub direction: Direction,
    /// The packet before mutation (what later steps refer to); `None` for raw frames.
    pub pkt: Option<Pkt>,
    pub mutation: Option<String>,
    pub frame: Vec<u8>,
    /// Run as a GSO skb (`gso_size` set).
    pub gso: bool,
}

impl Built {
    pub fn describe(&self) -> String {
        let mut what = match &self.pkt {
            Some(p) => p.to_string(),
            None => format!("raw frame[{}]", self.frame.len()),
        };
        if self.gso {
            what.push_str(" (GSO skb)");
        }
        match &self.mutation {
            Some(m) => format!("{what}, then {m}"),
            None => what,
        }
    }
}

/// The frames of a sequence. A reference when nothing can be referred to yet drops the step.
pub fn build(steps: &[Step]) -> Vec<Built> {
    let mut out: Vec<Built> = Vec::new();
    for step in steps {
        let referable: Vec<usize> = (0..out.len()).filter(|&i| out[i].pkt.is_some()).collect();
        let target = |ix: &Index| -> Option<Built> {
            if referable.is_empty() {
                None
            } else {
                Some(out[referable[ix.index(referable.len())]].clone())
            }
        };
        let made = match step {
            Step::Teardown { of, reset, packets } => {
                if let Some(t) = target(of) {
                    for (role, direction, p) in teardown_pkts(&t, reset)
                        .into_iter()
                        .take(usize::from(*packets))
                    {
                        out.push(finish(role, direction, p, &Mutation::None));
                    }
                }
                None
            }
            Step::NeighborDiscovery {
                role,
                ty,
                usual_direction,
                usual_hop,
                code,
                src,
                dst,
                target,
                options,
                ext,
                mld,
            } => {
                let how = NdShape {
                    usual_direction: *usual_direction,
                    usual_hop: *usual_hop,
                    code: *code,
                    target: target.as_ref(),
                    options: *options,
                    ext,
                    mld,
                };
                let (direction, p) = nd_pkt(*role, ty, &how, src, dst);
                Some(finish(*role, direction, p, &Mutation::None))
            }
            Step::Service {
                svc,
                other_role,
                local,
                ephemeral,
                l4,
                mutation,
            } => {
                let (role, direction, p) = service_pkt(svc, *other_role, local, ephemeral, l4);
                Some(finish(role, direction, p, mutation))
            }
            Step::Handshake {
                svc,
                local,
                ephemeral,
                isn,
                window,
                options,
                packets,
            } => {
                let hs = handshake_pkts(svc, local, ephemeral, *isn, *window, options);
                for (role, direction, p) in hs.into_iter().take(usize::from(*packets)) {
                    out.push(finish(role, direction, p, &Mutation::None));
                }
                None
            }
            Step::Dhcp {
                role,
                direction,
                v6,
                standard_ports,
                local,
                remote,
                special,
            } => {
                let p = dhcp_pkt(
                    *role,
                    *direction,
                    *v6,
                    *standard_ports,
                    local,
                    remote,
                    special,
                );
                Some(finish(*role, *direction, p, &Mutation::None))
            }
            Step::Fresh {
                role,
                direction,
                pkt,
                mutation,
            } => {
                let p = fresh(*role, *direction, pkt);
                Some(finish(*role, *direction, p, mutation))
            }
            Step::Reply { to, how, mutation } => target(to).map(|t| {
                let (role, direction, p) = reply(&t, how);
                finish(role, direction, p, mutation)
            }),
            Step::Error {
                about,
                err,
                mutation,
            } => target(about).map(|t| {
                let (role, direction, p) = error(&t, err);
                finish(role, direction, p, mutation)
            }),
            Step::Raw {
                role,
                direction,
                frame,
            } => Some(Built {
                role: *role,
                direction: *direction,
                pkt: None,
                mutation: None,
                frame: raw(frame),
                gso: false,
            }),
        };
        out.extend(made);
    }
    out
}

fn own(role: Role, v6: bool) -> Vec<IpAddr> {
    world::nets(role)
        .into_iter()
        .map(|n| n.ip())
        .filter(|a| a.is_ipv6() == v6)
        .collect()
}

fn universe(v6: bool) -> Vec<IpAddr> {
    let list = if v6 {
        world::V6_UNIVERSE
    } else {
        world::V4_UNIVERSE
    };
    list.iter().map(|s| frames::addr(s)).collect()
}

fn resolve(pick: &AddrPick, role: Role, v6: bool) -> IpAddr {
    match pick {
        AddrPick::Own(i) => {
            let own = own(role, v6);
            own[i.index(own.len())]
        }
        AddrPick::Universe(i) => {
            let u = universe(v6);
            u[i.index(u.len())]
        }
        AddrPick::Random(x) if v6 => IpAddr::V6(Ipv6Addr::from(*x)),
        AddrPick::Random(x) => IpAddr::V4(Ipv4Addr::from(*x as u32)),
    }
}

fn port(pick: &PortPick) -> u16 {
    match pick {
        PortPick::Known(i) => world::PORTS[i.index(world::PORTS.len())],
        PortPick::Random(p) => *p,
    }
}

const V4_ERRORS: [u8; 3] = [3, 11, 12];
const V6_ERRORS: [u8; 4] = [1, 2, 3, 4];
const V6_ND: [u8; 9] = [130, 131, 132, 133, 134, 135, 136, 137, 143];

fn fresh(role: Role, direction: Direction, g: &FreshPkt) -> Pkt {
    let local = resolve(&g.local, role, g.v6);
    let remote = resolve(&g.remote, role, g.v6);
    let (src, dst) = match direction {
        Direction::Egress => (local, remote),
        Direction::Ingress => (remote, local),
    };
    let ends = |lp: &PortPick, rp: &PortPick| match direction {
        Direction::Egress => (port(lp), port(rp)),
        Direction::Ingress => (port(rp), port(lp)),
    };
    let l4 = match &g.l4 {
        L4Gen::Tcp {
            local_port,
            remote_port,
            flags,
            seq,
            ack,
            window,
            options,
            data,
        } => {
            let (sport, dport) = ends(local_port, remote_port);
            L4::Tcp {
                sport,
                dport,
                flags: *flags,
                seq: *seq,
                ack: *ack,
                window: *window,
                options: options.clone(),
                payload: data_bytes(*data),
            }
        }
        L4Gen::Udp {
            local_port,
            remote_port,
        } => {
            let (sport, dport) = ends(local_port, remote_port);
            L4::Udp {
                sport,
                dport,
                payload: b"data".to_vec(),
            }
        }
        L4Gen::Icmp { ty, code, id, body } => {
            let ty = match (ty, g.v6) {
                (IcmpType::EchoRequest, false) => 8,
                (IcmpType::EchoRequest, true) => 128,
                (IcmpType::EchoReply, false) => 0,
                (IcmpType::EchoReply, true) => 129,
                (IcmpType::Error(i), false) => V4_ERRORS[i.index(V4_ERRORS.len())],
                (IcmpType::Error(i), true) => V6_ERRORS[i.index(V6_ERRORS.len())],
                (IcmpType::NeighborDiscovery(i), true) => V6_ND[i.index(V6_ND.len())],
                (IcmpType::NeighborDiscovery(i), false) => 13 + (i.index(6) as u8),
                (IcmpType::Any(t), _) => *t,
            };
            L4::Icmp {
                ty,
                code: *code,
                id: *id,
                seq: 1,
                body: body.clone(),
            }
        }
        L4Gen::Raw { proto, payload } => L4::Raw {
            proto: *proto,
            payload: payload.clone(),
        },
    };
    let mut p = Pkt::new(src, dst, l4);
    p.hop_limit = g.hop_limit;
    if g.v6 {
        p.ext = g.ext.clone();
    } else {
        p.v4_options = g.v4_options.clone();
        p.v4_frag = g.v4_frag;
    }
    p
}

fn svc_at(i: usize) -> (Role, Direction, u8, IpAddr, u16) {
    let (role, direction, proto, remote, port) = SERVICES[i];
    (role, direction, proto, frames::addr(remote), port)
}

fn ends(direction: Direction, local: IpAddr, remote: IpAddr) -> (IpAddr, IpAddr) {
    match direction {
        Direction::Egress => (local, remote),
        Direction::Ingress => (remote, local),
    }
}

fn service_pkt(
    svc: &Index,
    other_role: bool,
    local: &Index,
    ephemeral: &PortPick,
    l4: &ServiceL4,
) -> (Role, Direction, Pkt) {
    let (mut role, direction, proto, remote, port) = svc_at(svc.index(SERVICES.len()));
    if other_role {
        role = other(role);
    }
    let own = own(role, remote.is_ipv6());
    let local = own[local.index(own.len())];
    let (src, dst) = ends(direction, local, remote);
    let eph = self::port(ephemeral);
    let (sport, dport) = match direction {
        Direction::Egress => (eph, port),
        Direction::Ingress => (eph, port),
    };
    let l4 = match (proto, l4) {
        (
            frames::TCP,
            ServiceL4::Tcp {
                flags,
                seq,
                ack,
                window,
                options,
            },
        ) => L4::Tcp {
            sport,
            dport,
            flags: *flags,
            seq: *seq,
            ack: *ack,
            window: *window,
            options: options.clone(),
            payload: vec![],
        },
        (frames::TCP, ServiceL4::Other { .. }) => L4::Tcp {
            sport,
            dport,
            flags: SYN,
            seq: 1,
            ack: 0,
            window: 0xffff,
            options: vec![],
            payload: vec![],
        },
        (frames::UDP, _) => L4::Udp {
            sport,
            dport,
            payload: b"query".to_vec(),
        },
        (_, l4) => L4::Icmp {
            ty: if remote.is_ipv6() { 128 } else { 8 },
            code: 0,
            id: match l4 {
                ServiceL4::Other { id } => *id,
                ServiceL4::Tcp { seq, .. } => *seq as u16,
            },
            seq: 1,
            body: vec![],
        },
    };
    (role, direction, Pkt::new(src, dst, l4))
}

fn other(role: Role) -> Role {
    match role {
        Role::Management => Role::Business,
        Role::Business => Role::Management,
    }
}

/// SYN, SYN-ACK, ACK of a connection to a TCP service (a non-TCP service gets the first TCP
/// one after it).
fn handshake_pkts(
    svc: &Index,
    local: &Index,
    ephemeral: &PortPick,
    isn: (u32, u32),
    window: (u16, u16),
    options: &(Vec<u8>, Vec<u8>),
) -> Vec<(Role, Direction, Pkt)> {
    let tcp: Vec<usize> = (0..SERVICES.len())
        .filter(|&i| SERVICES[i].2 == frames::TCP)
        .collect();
    let (role, direction, _, remote, port) = svc_at(tcp[svc.index(tcp.len())]);
    let own = own(role, remote.is_ipv6());
    let local = own[local.index(own.len())];
    let (src, dst) = ends(direction, local, remote);
    let eph = self::port(ephemeral);
    let tcp = |src, dst, sport, dport, flags, seq, ack, window, options: &Vec<u8>| {
        Pkt::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
                options: options.clone(),
                payload: vec![],
            },
        )
    };
    vec![
        (
            role,
            direction,
            tcp(src, dst, eph, port, SYN, isn.0, 0, window.0, &options.0),
        ),
        (
            role,
            direction.reverse(),
            tcp(
                dst,
                src,
                port,
                eph,
                SYN_ACK,
                isn.1,
                isn.0.wrapping_add(1),
                window.1,
                &options.1,
            ),
        ),
        (
            role,
            direction,
            tcp(
                src,
                dst,
                eph,
                port,
                ACK,
                isn.0.wrapping_add(1),
                isn.1.wrapping_add(1),
                window.0,
                &vec![],
            ),
        ),
    ]
}

/// FIN from the far end of `t`'s packet, FIN back, then the opening SYN again; or a reset
/// (`(from the far end, sequence offset)`) instead of the FINs.
fn teardown_pkts(t: &Built, reset: &Option<(bool, Delta)>) -> Vec<(Role, Direction, Pkt)> {
    let p = t.pkt.clone().expect("referable steps have a packet");
    let L4::Tcp {
        sport,
        dport,
        flags,
        seq,
        ack,
        window,
        ..
    } = p.l4
    else {
        return vec![];
    };
    let next = seq.wrapping_add(u32::from(flags & (SYN | frames::FIN) != 0));
    let tcp = |src, dst, sport, dport, flags, seq, ack| {
        Pkt::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window: 0xffff,
                options: vec![],
                payload: vec![],
            },
        )
    };
    let (near, far) = ((t.role, t.direction), (t.role, t.direction.reverse()));
    let mut out = Vec::new();
    match reset {
        None => {
            out.push((far, tcp(p.dst, p.src, dport, sport, FIN_ACK, ack, next)));
            out.push((
                near,
                tcp(
                    p.src,
                    p.dst,
                    sport,
                    dport,
                    FIN_ACK,
                    next,
                    ack.wrapping_add(1),
                ),
            ));
        }
        Some((true, d)) => out.push((
            far,
            tcp(p.dst, p.src, dport, sport, RST, apply(ack, d, window), 0),
        )),
        Some((false, d)) => out.push((
            near,
            tcp(p.src, p.dst, sport, dport, RST, apply(next, d, window), 0),
        )),
    }
    out.push((
        near,
        tcp(p.src, p.dst, sport, dport, SYN, next.wrapping_add(1000), 0),
    ));
    out.into_iter().map(|((r, d), p)| (r, d, p)).collect()
}

/// (type, direction a host uses it in, hop limit).
const ND_TYPES: [(u8, Direction, u8); 11] = [
    (133, Direction::Egress, 255),
    (134, Direction::Ingress, 255),
    (135, Direction::Egress, 255),
    (135, Direction::Ingress, 255),
    (136, Direction::Egress, 255),
    (136, Direction::Ingress, 255),
    (137, Direction::Ingress, 255),
    (130, Direction::Ingress, 1),
    // MLDv2, MLDv1 report or done (by the code): their records and groups want more cases.
    (143, Direction::Egress, 1),
    (143, Direction::Egress, 1),
    (143, Direction::Egress, 1),
];
const ND_ADDRS: [&str; 10] = [
    "fe80::1",
    "fe80::2",
    "fe80::99",
    "::",
    world::G6,
    world::RABBIT6,
    "2001:db8:ffff::1",
    "ff02::1",
    "ff02::16",
    "ff05::1:3",
];

/// How a generated neighbour discovery message departs from the usual.
struct NdShape<'a> {
    usual_direction: bool,
    usual_hop: bool,
    code: u8,
    target: Option<&'a Index>,
    options: u8,
    ext: &'a NdExt,
    mld: &'a MldGen,
}

fn nd_pkt(role: Role, ty: &Index, how: &NdShape, src: &Index, dst: &Index) -> (Direction, Pkt) {
    let (ty, mut direction, mut hop) = ND_TYPES[ty.index(ND_TYPES.len())];
    if !how.usual_direction {
        direction = direction.reverse();
    }
    if !how.usual_hop {
        hop = if hop == 1 { 255 } else { 1 };
    }
    let code = how.code;
    let ty = match (ty, code % 3) {
        (143, 1) => 131,
        (143, 2) if code > 2 => 132,
        _ => ty,
    };
    let pick = |i: &Index| frames::addr(ND_ADDRS[i.index(ND_ADDRS.len())]);
    let src = pick(src);
    let mld = matches!(ty, 131 | 132 | 143);
    let ext = match (how.ext, mld) {
        (NdExt::Usual, true) => vec![Ext::MldRouterAlert],
        (NdExt::Usual | NdExt::Bare, _) => vec![],
        (NdExt::Extra(e), true) => vec![Ext::MldRouterAlert, e.clone()],
        (NdExt::Extra(e) | NdExt::Only(e), _) => vec![e.clone()],
    };
    if mld {
        let src = match (how.mld.usual_src, role) {
            (true, Role::Management) => frames::addr("fe80::1"),
            (true, Role::Business) => frames::addr("fe80::2"),
            (false, _) => src,
        };
        let (id, seq, body, to) = mld_message(ty, how.mld);
        let dst = if how.mld.usual_dst {
            frames::addr(to)
        } else {
            pick(dst)
        };
        let mut p = Pkt::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code: if code.is_multiple_of(3) { code } else { 0 },
                id,
                seq,
                body,
            },
        );
        p.hop_limit = hop;
        p.ext = ext;
        return (direction, p);
    }
    // After the 4 bytes of id and sequence (a solicitation's reserved bytes, an
    // advertisement's flags): the target, then the options.
    let target = how.target.map_or(src, pick);
    let mut body = match target {
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
    };
    body.resize(16 + usize::from(how.options), 0xaa);
    let mut p = Pkt::new(
        src,
        pick(dst),
        L4::Icmp {
            ty,
            code: if code % 3 == 1 { 0 } else { code },
            id: 0,
            seq: 0,
            body,
        },
    );
    p.hop_limit = hop;
    p.ext = ext;
    (direction, p)
}

/// The identifier and sequence fields (bytes 4 to 8), the body, and where the message goes, of
/// an MLD report or done of `ty`.
fn mld_message(ty: u8, m: &MldGen) -> (u16, u16, Vec<u8>, &'static str) {
    let group = |i: &Index| MLD_GROUPS[i.index(MLD_GROUPS.len())];
    let trailing = vec![0x33; usize::from(m.trailing)];
    if ty != 143 {
        let g = m.records.first().map_or(MLD_GROUPS[0], |r| group(&r.1));
        let mut body = frames::v6_octets(g).to_vec();
        body.extend_from_slice(&trailing);
        let to = if ty == 131 { g } else { "ff02::2" };
        return (m.reserved, 0, body, to);
    }
    let mut body = Vec::new();
    for (record_type, g, sources, aux) in &m.records {
        body.extend_from_slice(&[*record_type, *aux, 0, *sources]);
        body.extend_from_slice(&frames::v6_octets(group(g)));
        body.extend(std::iter::repeat_n(0x11, usize::from(*sources) * 16));
        body.extend(std::iter::repeat_n(0x22, usize::from(*aux) * 4));
    }
    body.extend_from_slice(&trailing);
    let count = (m.records.len() as u16).wrapping_add(u16::from(m.count_skew));
    (m.reserved, count, body, "ff02::16")
}

const DHCP_V4_SPECIAL: [&str; 4] = ["255.255.255.255", "0.0.0.0", "192.0.2.254", "10.0.0.1"];
const DHCP_V6_SPECIAL: [&str; 4] = ["ff02::1:2", "fe80::99", "ff05::1:3", "2001:db8:1::99"];

fn dhcp_pkt(
    role: Role,
    direction: Direction,
    v6: bool,
    standard_ports: bool,
    local: &AddrPick,
    remote: &AddrPick,
    special: &Index,
) -> Pkt {
    let specials = if v6 { DHCP_V6_SPECIAL } else { DHCP_V4_SPECIAL };
    let sp = frames::addr(specials[special.index(specials.len())]);
    let local = resolve(local, role, v6);
    // The far end is usually one of the addresses DHCP uses.
    let remote = if matches!(remote, AddrPick::Own(_)) {
        resolve(remote, role, v6)
    } else {
        sp
    };
    let (src, dst) = ends(direction, local, remote);
    let (client, server) = if v6 { (546, 547) } else { (68, 67) };
    let (sport, dport) = match (direction, standard_ports) {
        (Direction::Egress, true) => (client, server),
        (Direction::Ingress, true) => (server, client),
        (Direction::Egress, false) => (12345, server),
        (Direction::Ingress, false) => (12345, client),
    };
    Pkt::new(
        src,
        dst,
        L4::Udp {
            sport,
            dport,
            payload: vec![1, 1, 6, 0],
        },
    )
}

fn apply(base: u32, d: &Delta, window: u16) -> u32 {
    match d {
        Delta::Exact => base,
        Delta::Plus(n) => base.wrapping_add(*n as u32),
        Delta::WindowEdge { shift, extra } => base
            .wrapping_add(u32::from(window) << shift.min(&14))
            .wrapping_add(*extra as i32 as u32),
        Delta::Any(x) => *x,
    }
}

/// The reply or continuation of `t`'s packet.
fn reply(t: &Built, how: &ReplyHow) -> (Role, Direction, Pkt) {
    let p = t.pkt.clone().expect("referable steps have a packet");
    match how {
        ReplyHow::OtherNic => (other(t.role), t.direction, p),
        ReplyHow::Answer {
            flags,
            seq,
            ack,
            window,
            options,
            data,
        } => {
            let mut r = p.clone();
            std::mem::swap(&mut r.src, &mut r.dst);
            r.hop_limit = 64;
            r.l4 = match &p.l4 {
                L4::Tcp {
                    sport,
                    dport,
                    flags: f,
                    seq: s,
                    ack: a,
                    window: w,
                    payload: their_data,
                    ..
                } => {
                    // Their ACK is where our sequence continues; we acknowledge their sequence
                    // (their data, and their SYN or FIN).
                    let consumed =
                        u32::from(f & (SYN | frames::FIN) != 0) + their_data.len() as u32;
                    L4::Tcp {
                        sport: *dport,
                        dport: *sport,
                        flags: *flags,
                        seq: apply(*a, seq, *w),
                        ack: apply(s.wrapping_add(consumed), ack, *window),
                        window: *window,
                        options: if flags & SYN != 0 {
                            options.clone()
                        } else {
                            vec![]
                        },
                        payload: data_bytes(*data),
                    }
                }
                L4::Udp {
                    sport,
                    dport,
                    payload,
                } => L4::Udp {
                    sport: *dport,
                    dport: *sport,
                    payload: payload.clone(),
                },
                L4::Icmp {
                    ty,
                    code,
                    id,
                    seq,
                    body,
                } => L4::Icmp {
                    ty: match *ty {
                        8 => 0,
                        0 => 8,
                        128 => 129,
                        129 => 128,
                        other => other,
                    },
                    code: *code,
                    id: *id,
                    seq: *seq,
                    body: body.clone(),
                },
                other => other.clone(),
            };
            (t.role, t.direction.reverse(), r)
        }
        ReplyHow::Again {
            flags,
            seq,
            ack,
            window,
        } => {
            let mut r = p.clone();
            if let L4::Tcp {
                flags: f,
                seq: s,
                ack: a,
                window: w,
                options,
                ..
            } = &mut r.l4
            {
                let consumed = u32::from(*f & (SYN | frames::FIN) != 0);
                *s = apply(s.wrapping_add(consumed), seq, *w);
                *a = apply(*a, ack, *window);
                *f = *flags;
                *w = *window;
                if *flags & SYN == 0 {
                    options.clear();
                }
            }
            (t.role, t.direction, r)
        }
    }
}

/// An ICMP error about `t`'s packet.
fn error(t: &Built, g: &ErrorGen) -> (Role, Direction, Pkt) {
    let p = t.pkt.clone().expect("referable steps have a packet");
    let v6 = p.v6();
    let ty = if v6 {
        V6_ERRORS[g.ty.index(V6_ERRORS.len())]
    } else {
        V4_ERRORS[g.ty.index(V4_ERRORS.len())]
    };
    let src = g.from.as_ref().map_or(p.dst, |a| resolve(a, t.role, v6));
    let dst = g.to.as_ref().map_or(p.src, |a| resolve(a, t.role, v6));
    let whole = p.ip_bytes();
    let body = match &g.quote {
        QuoteGen::Min => p.quote_min(),
        QuoteGen::Whole => whole,
        QuoteGen::Cut(i) => p.quote(i.index(whole.len() + 1)),
        QuoteGen::Flip(i, x) => {
            let mut b = p.quote_min();
            let n = b.len();
            b[i.index(n)] ^= x;
            b
        }
    };
    let e = Pkt::new(
        src,
        dst,
        L4::Icmp {
            ty,
            code: g.code,
            id: 0,
            seq: 0,
            body,
        },
    );
    let direction = if g.back {
        t.direction.reverse()
    } else {
        t.direction
    };
    (t.role, direction, e)
}

fn finish(role: Role, direction: Direction, pkt: Pkt, m: &Mutation) -> Built {
    let mut frame = pkt.frame();
    let described = mutate(&mut frame, &pkt, m);
    let gso = matches!(m, Mutation::Gso(_));
    Built {
        role,
        direction,
        pkt: Some(pkt),
        mutation: described,
        frame,
        gso,
    }
}

/// Applies `m`; says what it did (`None`: nothing).
fn mutate(frame: &mut Vec<u8>, pkt: &Pkt, m: &Mutation) -> Option<String> {
    match m {
        Mutation::None => None,
        Mutation::Truncate(i) => {
            let at = i.index(frame.len());
            frame.truncate(at);
            Some(format!("truncated to {at} bytes"))
        }
        Mutation::Flip(i, x) => {
            let at = i.index(frame.len().min(80));
            frame[at] ^= x;
            Some(format!("byte {at} ^= {x:#04x} (now {:#04x})", frame[at]))
        }
        Mutation::IpLength(lie) => {
            let (at, real) = if pkt.v6() {
                (18, frame.len() - 14 - 40)
            } else {
                (16, frame.len() - 14)
            };
            let value = match lie {
                LengthLie::Zero => 0,
                LengthLie::Off(d) => (real as i64 + i64::from(*d)).clamp(0, 0xffff) as u16,
                LengthLie::Any(v) => *v,
            };
            frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
            Some(format!("IP length field {value} (true: {real})"))
        }
        Mutation::Pad(bytes) => {
            frame.extend_from_slice(bytes);
            Some(format!(
                "{} bytes of Ethernet trailer {bytes:02x?}",
                bytes.len()
            ))
        }
        Mutation::Gso(zero_length) => {
            if *zero_length {
                let at = if pkt.v6() { 18 } else { 16 };
                frame[at..at + 2].copy_from_slice(&[0, 0]);
                Some("run as a GSO skb with IP length field 0".into())
            } else {
                Some("run as a GSO skb".into())
            }
        }
        Mutation::TcpDoff(d) => {
            if !matches!(pkt.l4, L4::Tcp { .. }) {
                return None;
            }
            let at = 14 + pkt.l4_offset() + 12;
            frame[at] = (frame[at] & 0x0f) | (d << 4);
            Some(format!("TCP data offset {d}"))
        }
    }
}

fn raw(r: &RawFrame) -> Vec<u8> {
    match r {
        RawFrame::Arp {
            sender,
            op,
            odd_shape,
            len,
        } => {
            const SENDERS: [[u8; 4]; 4] =
                [[192, 0, 2, 1], [198, 51, 100, 1], [0; 4], [192, 0, 2, 99]];
            const LENS: [usize; 6] = [42, 60, 64, 65, 41, 100];
            let mut f = frames::arp();
            f[20..22].copy_from_slice(&op.to_be_bytes());
            f[28..32].copy_from_slice(&SENDERS[sender.index(SENDERS.len())]);
            if *odd_shape {
                f[18] = 4; // hardware address length
            }
            f.resize(LENS[len.index(LENS.len())], 0);
            f
        }
        RawFrame::Vlan => {
            let inner = Pkt::tcp(world::G4, world::RABBIT4, 40000, 5672, SYN).ip_bytes();
            let mut v = vec![0, 10, 0x08, 0x00];
            v.extend_from_slice(&inner);
            frames::eth(frames::ETH_VLAN, &v)
        }
        RawFrame::Ethertype(t, p) => frames::eth(*t, p),
        RawFrame::Bytes(b) => b.clone(),
    }
}

/// A TCP segment's data: a few bytes, or none.
fn data_bytes(data: bool) -> Vec<u8> {
    match data {
        true => b"data".to_vec(),
        false => vec![],
    }
}
