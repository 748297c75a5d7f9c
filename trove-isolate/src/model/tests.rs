//! The model on hand-built frames (no BPF, no root).

#[path = "../../tests/differential/frames.rs"]
mod frames;
#[path = "../../tests/differential/world.rs"]
mod world;

use std::{net::IpAddr, path::Path};

use frames::*;
use trove_isolate_common::{Direction, Reason, Role};
use world::*;
use Direction::{Egress as E, Ingress as I};
use Reason::*;
use Role::{Business as B, Management as M};

use super::{parse, parse::ScaleOption, policy_allows, Model, Stage, Table};
use crate::{config::Config, policy::Policy};

fn policy() -> Policy {
    let path = Path::new("differential.toml");
    let config = Config::parse(CONFIG, path).expect("config parses");
    Policy::from_config(&config, path).expect("config compiles")
}

fn model() -> Model {
    Model::new(&policy(), &local(), DHCP)
}

/// A frame crossing a NIC, and the verdict it must get.
type Step = (Role, Direction, Vec<u8>, Result<Reason, Reason>);

/// Runs `steps` in order on one model and checks each verdict.
fn run(m: &mut Model, steps: &[Step]) {
    for (i, (role, dir, frame, want)) in steps.iter().enumerate() {
        let got = m.judge(*role, *dir, frame, false);
        assert_eq!(got, *want, "step {i}: {role:?} {dir:?} {frame:02x?}");
    }
}

fn parse_err(frame: &[u8]) -> Reason {
    match parse::frame(frame, false) {
        Ok(f) => panic!("parsed: {f:?}"),
        Err(r) => r,
    }
}

#[test]
fn ethernet_and_ip_headers() {
    assert!(matches!(
        parse::frame(&arp(), false),
        Ok(parse::Frame::Arp { .. })
    ));
    assert_eq!(parse_err(&eth(ETH_VLAN, &[0; 60])), UnsupportedProtocol);
    assert_eq!(parse_err(&[0; 13]), Malformed);
    let syn = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN).frame();
    assert!(parse::frame(&syn, false).is_ok());
    // Every truncation is malformed (the IP length then lies).
    for cut in 0..syn.len() {
        assert_eq!(parse_err(&syn[..cut]), Malformed, "cut at {cut}");
    }
    // Trailing Ethernet padding is never read.
    let mut padded = syn.clone();
    padded.extend_from_slice(&[0xff; 20]);
    assert_eq!(parse::frame(&padded, false), parse::frame(&syn, false));

    let mut f = syn.clone();
    f[14] = 0x44; // ihl 4
    assert_eq!(parse_err(&f), Malformed);
    f[14] = 0x65; // version 6 in an IPv4 frame
    assert_eq!(parse_err(&f), Malformed);
    let mut f = syn.clone();
    f[16..18].copy_from_slice(&[0, 0]); // total length 0
    assert_eq!(parse_err(&f), Malformed);
    assert!(
        parse::frame(&f, true).is_ok(),
        "zero length is BIG TCP on GSO"
    );
    f[16..18].copy_from_slice(&[0, 19]); // shorter than the header
    assert_eq!(parse_err(&f), Malformed);
    f[16..18].copy_from_slice(&[0, 200]); // beyond the frame
    assert_eq!(parse_err(&f), Malformed);
    let mut frag = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN);
    frag.v4_frag = 0x2000;
    assert_eq!(parse_err(&frag.frame()), Fragment);
    frag.v4_frag = 0x0001;
    assert_eq!(parse_err(&frag.frame()), Fragment);
    let mut tcp_short = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN).frame();
    tcp_short[14 + 20 + 12] = 0x40; // doff 4
    assert_eq!(parse_err(&tcp_short), Malformed);
    tcp_short[14 + 20 + 12] = 0xf0; // doff 15: beyond the packet
    assert_eq!(parse_err(&tcp_short), Malformed);
    // ICMP in IPv6, ICMPv6 in IPv4, other protocols.
    let mut other = Pkt::udp(G6, RABBIT6, 1, 2);
    other.l4 = frames::L4::Raw {
        proto: ICMP,
        payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
    };
    assert_eq!(parse_err(&other.frame()), UnsupportedProtocol);
    other.l4 = frames::L4::Raw {
        proto: 132,
        payload: vec![0; 20],
    };
    assert_eq!(parse_err(&other.frame()), UnsupportedProtocol);
}

#[test]
fn source_routes_are_unsupported() {
    let v4 = |options: &[u8]| {
        let mut p = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN);
        p.v4_options = options.to_vec();
        p.frame()
    };
    let lsrr = [131, 7, 4, 198, 51, 100, 9];
    assert_eq!(parse_err(&v4(&lsrr)), UnsupportedProtocol);
    assert_eq!(
        parse_err(&v4(&[&[1, 1][..], &[137, 3, 4]].concat())),
        UnsupportedProtocol
    );
    assert!(parse::frame(&v4(&[&[0][..], &lsrr].concat()), false).is_ok());
    assert!(parse::frame(&v4(&[7, 7, 4, 0, 0, 0, 0]), false).is_ok());
    assert!(parse::frame(&v4(&[1; 8]), false).is_ok());
    assert_eq!(parse_err(&v4(&[1; 9])), UnsupportedProtocol);
    assert_eq!(parse_err(&v4(&[7, 9, 4, 0])), Malformed);
    assert_eq!(parse_err(&v4(&[7, 1, 0, 0])), Malformed);
    assert_eq!(parse_err(&v4(&[1, 1, 1, 7])), Malformed);
    let v6 = |ext: Ext| {
        let mut p = Pkt::tcp(G6, RABBIT6, 40000, 5671, SYN);
        p.ext = vec![ext];
        p.frame()
    };
    assert_eq!(parse_err(&v6(Ext::SourceRoute(0))), UnsupportedProtocol);
    assert!(parse::frame(&v6(Ext::Routing(0)), false).is_ok());
}

#[test]
fn ipv6_extension_headers() {
    let with = |ext: Vec<Ext>| {
        let mut p = Pkt::tcp(G6, RABBIT6, 40000, 5671, SYN);
        p.ext = ext;
        p.frame()
    };
    assert!(parse::frame(&with(vec![Ext::HopByHop(0); 6]), false).is_ok());
    assert_eq!(parse_err(&with(vec![Ext::DestOptions(0); 7])), Malformed);
    let frag = Ext::Fragment {
        offset: 0,
        more: true,
    };
    assert_eq!(parse_err(&with(vec![frag.clone()])), Fragment);
    assert_eq!(
        parse_err(&with(vec![Ext::Routing(1), frag.clone()])),
        Fragment
    );
    // The fragment header as the seventh: the chain is too long first.
    let mut seven = vec![Ext::HopByHop(0); 6];
    seven.push(frag);
    assert_eq!(parse_err(&with(seven)), Malformed);
    // An extension header reaching past the packet (into a trailer) is malformed, whatever
    // follows it.
    let mut p = Pkt::udp(G6, RABBIT6, 1, 2);
    p.ext = vec![Ext::DestOptions(0)];
    p.l4 = frames::L4::Raw {
        proto: 59,
        payload: vec![],
    };
    let mut f = p.frame();
    assert_eq!(parse_err(&f), UnsupportedProtocol);
    f[14 + 40 + 1] = 1; // 16 bytes long, 8 in the packet
    f.extend_from_slice(&[0; 8]);
    assert_eq!(parse_err(&f), Malformed);
    // 512 bytes of extension headers put the transport header beyond the bound.
    let long = with(vec![Ext::HopByHop(31), Ext::HopByHop(31)]);
    assert_eq!(parse_err(&long), Malformed);
}

#[test]
fn tcp_window_scale_option() {
    let scale = |options: Vec<u8>| {
        let mut p = Pkt::tcp(G4, RABBIT4, 1, 2, SYN);
        if let frames::L4::Tcp { options: o, .. } = &mut p.l4 {
            *o = options;
        }
        match parse::frame(&p.frame(), false) {
            Ok(parse::Frame::Flow(parse::Packet {
                l4: parse::L4::Tcp(t),
                ..
            })) => t.syn_scale,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(scale(vec![]), Some(ScaleOption::Absent));
    assert_eq!(scale(vec![1, 3, 3, 7]), Some(ScaleOption::Shift(7)));
    assert_eq!(
        scale(vec![2, 4, 5, 0xb4, 1, 3, 3, 14]),
        Some(ScaleOption::Shift(14))
    );
    assert_eq!(scale(vec![0, 3, 3, 7]), Some(ScaleOption::Absent));
    assert_eq!(scale(vec![2, 1, 3, 3]), Some(ScaleOption::Unparsable));
    assert_eq!(scale(vec![1, 1, 1, 3]), Some(ScaleOption::Unparsable));
    assert_eq!(scale(vec![2, 9, 0, 0]), Some(ScaleOption::Unparsable));
    assert_eq!(scale(vec![3, 4, 7, 0]), Some(ScaleOption::Absent));
    // Eight options are looked at, no-ops and the end of the list (here the padding) included.
    let mut hidden = vec![1; 6];
    hidden.extend_from_slice(&[3, 3, 5]);
    assert_eq!(scale(hidden), Some(ScaleOption::Shift(5)));
    let mut hidden = vec![1; 7];
    hidden.extend_from_slice(&[3, 3, 5]);
    assert_eq!(scale(hidden), Some(ScaleOption::Unparsable));
    assert_eq!(scale(vec![1; 8]), Some(ScaleOption::Absent));
    // Twice (Linux takes the last: the first may say less), or before options that do not
    // parse: the widest.
    assert_eq!(
        scale(vec![3, 3, 0, 3, 3, 14]),
        Some(ScaleOption::Unparsable)
    );
    assert_eq!(scale(vec![3, 3, 7, 8, 1]), Some(ScaleOption::Unparsable));
}

#[test]
fn handshake_data_and_in_window_fin() {
    let mut m = model();
    let syn = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN)
        .seq_ack(100, 0, 1000)
        .wscale(2);
    let syn_ack = Pkt::tcp(RABBIT4, G4, 5672, 40000, SYN_ACK)
        .seq_ack(5000, 101, 2000)
        .wscale(3);
    let ack = Pkt::tcp(G4, RABBIT4, 40000, 5672, ACK).seq_ack(101, 5001, 1000);
    run(
        &mut m,
        &[
            (M, E, syn.frame(), Ok(Allowed)),
            (M, I, syn_ack.frame(), Ok(Tracked)),
            (M, E, ack.frame(), Ok(Tracked)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!(
        (flow.table, flow.stage),
        (Table::Established, Stage::Established)
    );
    // The guest's window: 1000 << 2 from ack 5001. A FIN from the server may start anywhere
    // from 5000 to 9001.
    let fin = |seq| {
        Pkt::tcp(RABBIT4, G4, 5672, 40000, FIN_ACK)
            .seq_ack(seq, 101, 2000)
            .frame()
    };
    let guest_fin = Pkt::tcp(G4, RABBIT4, 40000, 5672, FIN_ACK).seq_ack(101, 5002, 1000);
    run(
        &mut m,
        &[
            (M, I, fin(4999), Err(OutOfWindow)),
            (M, I, fin(9002), Err(OutOfWindow)),
            (M, I, fin(9001), Ok(Tracked)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert!(!flow.closing, "one FIN does not close");
    run(&mut m, &[(M, E, guest_fin.frame(), Ok(Tracked))]);
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert!(flow.closing, "FINs both ways close");
    assert_eq!(
        (flow.table, flow.stage),
        (Table::New, Stage::Established),
        "a closed flow finishes in the new table"
    );
    // A retransmitted FIN still passes, and is still held to the guest's window (its ACK of
    // the FIN moved the window's start to 5002).
    run(
        &mut m,
        &[
            (M, I, fin(9001), Ok(Tracked)),
            (M, I, fin(9003), Err(OutOfWindow)),
        ],
    );
    // A new SYN on the closing flow starts over, and meets the policy again.
    run(&mut m, &[(M, E, syn.frame(), Ok(Allowed))]);
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!(flow.table, Table::New);
}

#[test]
fn forged_out_of_window_rst() {
    let mut m = model();
    // Picked up mid-flow: both windows are taken at the widest scale (14).
    let ack = Pkt::tcp(G4, RABBIT4, 40000, 5672, ACK).seq_ack(1, 1_000_000, 1);
    let reply = Pkt::tcp(RABBIT4, G4, 5672, 40000, ACK).seq_ack(1_000_000, 1, 10);
    let rst = |seq| {
        Pkt::tcp(RABBIT4, G4, 5672, 40000, RST)
            .seq_ack(seq, 0, 0)
            .frame()
    };
    run(
        &mut m,
        &[
            (M, E, ack.frame(), Ok(Allowed)),
            (M, I, reply.frame(), Ok(Tracked)),
            (M, I, rst(1_000_000 + (1 << 14) + 1), Err(OutOfWindow)),
            (M, I, rst(999_998), Err(OutOfWindow)),
            (M, I, rst(1_000_000 + (1 << 14)), Ok(Tracked)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert!(!flow.closing, "only an exact reset closes");
    run(&mut m, &[(M, I, rst(1_000_000), Ok(Tracked))]);
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert!(flow.closing);
    assert_eq!(
        flow.table,
        Table::New,
        "a reset flow leaves the established table"
    );
}

#[test]
fn remote_opened_tcp_is_proved_by_the_guest() {
    let mut m = model();
    let syn = Pkt::tcp(OPERATOR4, G4, 50000, 22, SYN).seq_ack(10, 0, 100);
    let syn_ack = Pkt::tcp(G4, OPERATOR4, 22, 50000, SYN_ACK).seq_ack(70, 11, 100);
    let ack = Pkt::tcp(OPERATOR4, G4, 50000, 22, ACK).seq_ack(11, 71, 100);
    let bare = Pkt::tcp(G4, OPERATOR4, 22, 50000, ACK).seq_ack(71, 11, 100);
    let data = Pkt::tcp(G4, OPERATOR4, 22, 50000, PSH | ACK)
        .seq_ack(71, 11, 100)
        .data(b"SSH-2.0");
    run(
        &mut m,
        &[
            (M, I, syn.frame(), Ok(Allowed)),
            (M, E, syn_ack.frame(), Ok(Tracked)),
            (M, I, ack.frame(), Ok(Tracked)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!((flow.table, flow.stage), (Table::New, Stage::Acked));
    // A bare ACK proves no socket: the request socket answers an ACK it discards with one.
    run(&mut m, &[(M, E, bare.frame(), Ok(Tracked))]);
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!((flow.table, flow.stage), (Table::New, Stage::Acked));
    run(&mut m, &[(M, E, data.frame(), Ok(Tracked))]);
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!(flow.table, Table::Established);
}

#[test]
fn a_syn_meets_the_rules_even_on_a_tracked_tuple() {
    let mut m = model();
    let syn = Pkt::tcp(OPERATOR4, G4, 50000, 22, SYN).seq_ack(10, 0, 100);
    // The guest's SYN back on the same tuple (a simultaneous open): no rule lets the guest open
    // a flow to the operator's port, so it is refused although the tuple is tracked.
    let crossing = Pkt::tcp(G4, OPERATOR4, 22, 50000, SYN).seq_ack(70, 0, 100);
    run(
        &mut m,
        &[
            (M, I, syn.frame(), Ok(Allowed)),
            (M, I, syn.frame(), Ok(Tracked)),
            (M, E, crossing.frame(), Err(Policy)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!((flow.table, flow.stage), (Table::New, Stage::SynSent));
}

#[test]
fn a_syn_starts_an_unanswered_pickup_over() {
    let mut m = model();
    let ack = Pkt::tcp(OPERATOR4, G4, 50000, 22, ACK).seq_ack(5, 4_000_000_000, 0);
    let syn = Pkt::tcp(OPERATOR4, G4, 50000, 22, SYN).seq_ack(10, 0, 100);
    run(
        &mut m,
        &[
            (M, I, ack.frame(), Ok(Allowed)),
            (M, I, syn.frame(), Ok(Allowed)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!((flow.table, flow.stage), (Table::New, Stage::SynSent));
    assert_eq!(flow.acks, [None, None], "nothing of the ACK is kept");
}

#[test]
fn arp_in_its_shape() {
    let mut m = model();
    let mut probe = arp();
    probe[28..32].copy_from_slice(&[0, 0, 0, 0]);
    let mut foreign = arp();
    foreign[28..32].copy_from_slice(&[192, 0, 2, 99]);
    let mut padded = arp();
    padded.resize(64, 0);
    let mut long = arp();
    long.resize(65, 0);
    let mut rarp = arp();
    rarp[21] = 3;
    run(
        &mut m,
        &[
            (M, E, arp(), Ok(Arp)),
            (M, E, probe, Ok(Arp)),
            (M, E, foreign.clone(), Err(NotLocal)),
            (M, I, foreign, Ok(Arp)),
            (B, E, padded, Ok(Arp)),
            (B, I, long, Err(Malformed)),
            (M, I, rarp, Err(Malformed)),
            (M, I, arp()[..41].to_vec(), Err(Malformed)),
        ],
    );
}

#[test]
fn window_scale_only_when_both_syns_carry_it() {
    let mut m = model();
    let syn = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN)
        .seq_ack(100, 0, 1000)
        .wscale(5);
    // No option on the SYN-ACK: neither side scales.
    let syn_ack = Pkt::tcp(RABBIT4, G4, 5672, 40000, SYN_ACK).seq_ack(5000, 101, 2000);
    let ack = Pkt::tcp(G4, RABBIT4, 40000, 5672, ACK).seq_ack(101, 5001, 1000);
    let rst = |seq| {
        Pkt::tcp(RABBIT4, G4, 5672, 40000, RST)
            .seq_ack(seq, 0, 0)
            .frame()
    };
    run(
        &mut m,
        &[
            (M, E, syn.frame(), Ok(Allowed)),
            (M, I, syn_ack.frame(), Ok(Tracked)),
            (M, E, ack.frame(), Ok(Tracked)),
            (M, I, rst(6002), Err(OutOfWindow)),
            (M, I, rst(6001), Ok(Tracked)),
        ],
    );
}

#[test]
fn echo_request_the_wrong_way() {
    let mut m = model();
    let request = Pkt::icmp(G4, RABBIT4, 8, 7, vec![]);
    let reply = Pkt::icmp(RABBIT4, G4, 0, 7, vec![]);
    let inbound_request = Pkt::icmp(RABBIT4, G4, 8, 7, vec![]);
    run(
        &mut m,
        &[
            (M, I, reply.frame(), Err(NotTracked)),
            (M, E, request.frame(), Ok(Allowed)),
            (M, I, reply.frame(), Ok(Tracked)),
            // Same identifier, requested from outside: another flow, which no rule allows.
            (M, I, inbound_request.frame(), Err(Policy)),
            // The other NIC never saw the request.
            (B, I, reply.frame(), Err(NotTracked)),
            // Other ICMP never belongs to a flow.
            (
                M,
                I,
                Pkt::icmp(RABBIT4, G4, 13, 7, vec![]).frame(),
                Err(NotTracked),
            ),
        ],
    );
}

#[test]
fn icmp_errors_between_the_endpoints_only() {
    let mut m = model();
    let syn = Pkt::tcp(G4, RABBIT4, 40000, 5672, SYN);
    let router = addr("192.0.2.254");
    run(
        &mut m,
        &[
            (
                M,
                I,
                syn.error(router, addr(G4), 3).frame(),
                Err(NotTracked),
            ),
            (M, E, syn.frame(), Ok(Allowed)),
            (M, I, syn.error(router, addr(G4), 3).frame(), Ok(Related)),
            (
                M,
                I,
                syn.error(router, addr(CLIENT4), 3).frame(),
                Err(NotTracked),
            ),
            // Not a flow of the other NIC.
            (
                B,
                I,
                syn.error(router, addr(G4), 3).frame(),
                Err(NotTracked),
            ),
        ],
    );
    // Going out: an error about an inbound flow, from its local to its remote end.
    let ssh = Pkt::tcp(OPERATOR4, G4, 50000, 22, SYN);
    run(
        &mut m,
        &[
            (M, I, ssh.frame(), Ok(Allowed)),
            (
                M,
                E,
                ssh.error(addr(G4), addr(OPERATOR4), 3).frame(),
                Ok(Related),
            ),
            (
                M,
                E,
                ssh.error(addr(G4), addr(CLIENT4), 3).frame(),
                Err(NotTracked),
            ),
            (
                M,
                E,
                ssh.error(router, addr(OPERATOR4), 3).frame(),
                Err(NotTracked),
            ),
        ],
    );
    // Quotes that name nothing, or do not fit.
    let mut later_fragment = syn.clone();
    later_fragment.v4_frag = 0x0010;
    let err = |body: Vec<u8>| Pkt::icmp(RABBIT4, G4, 3, 0, body).frame();
    run(
        &mut m,
        &[
            (M, I, err(later_fragment.quote_min()), Err(NotTracked)),
            (M, I, err(syn.quote(27)), Err(Malformed)),
            (M, I, err(syn.quote(19)), Err(Malformed)),
            (
                M,
                I,
                err(Pkt::icmp(G4, RABBIT4, 3, 0, vec![]).quote(28)),
                Err(NotTracked),
            ),
        ],
    );
}

#[test]
fn dhcp_client_traffic() {
    let mut m = model();
    run(
        &mut m,
        &[
            (
                M,
                E,
                Pkt::udp("0.0.0.0", "255.255.255.255", 68, 67).frame(),
                Ok(Dhcp),
            ),
            (
                M,
                I,
                Pkt::udp("192.0.2.254", "255.255.255.255", 67, 68).frame(),
                Ok(Dhcp),
            ),
            (M, I, Pkt::udp("192.0.2.254", G4, 67, 68).frame(), Ok(Dhcp)),
            (
                M,
                E,
                Pkt::udp(MGMT_LL, "ff02::1:2", 546, 547).frame(),
                Ok(Dhcp),
            ),
            (
                M,
                I,
                Pkt::udp(ROUTER_LL, MGMT_LL, 547, 546).frame(),
                Ok(Dhcp),
            ),
            // Not from the server port: an ordinary new flow, which no rule allows.
            (
                M,
                I,
                Pkt::udp("8.8.8.8", G4, 12345, 68).frame(),
                Err(Policy),
            ),
            (
                M,
                I,
                Pkt::udp("8.8.8.8", "255.255.255.255", 12345, 68).frame(),
                Err(Policy),
            ),
            // The business NIC does not ask for DHCP: ordinary UDP, which no rule allows.
            (
                B,
                E,
                Pkt::udp("0.0.0.0", "255.255.255.255", 68, 67).frame(),
                Err(Policy),
            ),
        ],
    );
}

#[test]
fn neighbor_discovery() {
    let mut m = model();
    let nd = |src: &str, dst: &str, ty: u8, hop: u8| {
        Pkt::icmp(src, dst, ty, 0, vec![0; 16]).hop(hop).frame()
    };
    let mld = |src: &str, group: &str| {
        let mut record = vec![4, 0, 0, 0];
        record.extend_from_slice(&v6_octets(group));
        // Identifier 0 and sequence 1: reserved bytes, then a count of one record.
        let mut p = Pkt::icmp(src, "ff02::16", 143, 0, record).hop(1);
        p.ext = vec![Ext::MldRouterAlert];
        p.frame()
    };
    run(
        &mut m,
        &[
            (
                M,
                I,
                nd(ROUTER_LL, "ff02::1", 134, 255),
                Ok(NeighborDiscovery),
            ),
            (
                M,
                E,
                nd(MGMT_LL, "ff02::1", 134, 255),
                Err(UnsupportedProtocol),
            ),
            (M, I, nd(RABBIT6, "ff02::1", 134, 255), Err(Malformed)),
            (M, I, nd(ROUTER_LL, "ff02::1", 134, 64), Err(Malformed)),
            (
                M,
                E,
                nd(MGMT_LL, "ff02::2", 133, 255),
                Ok(NeighborDiscovery),
            ),
            (M, E, nd(G6, RABBIT6, 135, 255), Ok(NeighborDiscovery)),
            (M, E, nd(G6, "2001:db8:ffff::1", 135, 255), Err(Malformed)),
            (
                M,
                I,
                nd("2001:db8:ffff::1", G6, 136, 255),
                Ok(NeighborDiscovery),
            ),
            (
                M,
                I,
                nd(ROUTER_LL, "ff02::1", 130, 1),
                Ok(NeighborDiscovery),
            ),
            // An MLDv2 report of one record, the NIC's solicited-node group (ff02::1:ff00:1).
            (M, E, mld(MGMT_LL, "ff02::1:ff00:1"), Ok(NeighborDiscovery)),
            (M, E, mld("::", "ff02::1:ff00:1"), Ok(NeighborDiscovery)),
            (M, E, mld(MGMT_LL, "ff02::db8:42"), Err(NotLocal)),
            // Without Linux's hop-by-hop header.
            (M, E, nd("::", "ff02::16", 143, 1), Err(Malformed)),
            (M, E, nd(G6, "ff02::16", 143, 1), Err(Malformed)),
            (M, E, nd(MGMT_LL, "ff05::1:3", 131, 1), Err(Malformed)),
            (
                M,
                E,
                {
                    let mut f = nd(MGMT_LL, "ff02::2", 133, 255);
                    f[14 + 40 + 1] = 1; // code 1
                    f
                },
                Err(Malformed),
            ),
        ],
    );
}

#[test]
fn flows_are_per_nic_and_local() {
    let mut m = model();
    let client = Pkt::tcp(CLIENT4, G4, 50000, 3306, SYN);
    let syn_ack = Pkt::tcp(G4, CLIENT4, 3306, 50000, SYN_ACK);
    run(
        &mut m,
        &[
            (M, I, client.frame(), Err(Policy)),
            (B, I, client.frame(), Ok(Allowed)),
            (M, E, syn_ack.frame(), Err(NotTracked)),
            (B, E, syn_ack.frame(), Ok(Tracked)),
            (
                B,
                I,
                Pkt::tcp(CLIENT4, BIZ4, 50000, 3306, SYN).frame(),
                Ok(Allowed),
            ),
            (
                M,
                E,
                Pkt::tcp(BIZ4, RABBIT4, 1, 5672, SYN).frame(),
                Err(NotLocal),
            ),
            (
                B,
                I,
                Pkt::tcp(CLIENT4, "192.0.2.2", 50000, 3306, SYN).frame(),
                Err(NotLocal),
            ),
            (
                M,
                I,
                Pkt::tcp(CLIENT4, G4, 50000, 3306, SYN | FIN).frame(),
                Err(InvalidFlags),
            ),
            (
                M,
                I,
                Pkt::tcp(CLIENT4, G4, 50000, 3306, 0).frame(),
                Err(InvalidFlags),
            ),
            // A bare ACK may be a session older than enforcement: the policy decides it.
            (
                M,
                I,
                Pkt::tcp(CLIENT4, G4, 50000, 3306, ACK).frame(),
                Err(Policy),
            ),
            (
                B,
                I,
                Pkt::tcp(CLIENT4, G4, 50001, 3306, ACK).frame(),
                Ok(Allowed),
            ),
        ],
    );
}

#[test]
fn an_answered_query_stays_new() {
    let mut m = model();
    let query = Pkt::udp(G4, DNS, 40000, 53);
    let answer = Pkt::udp(DNS, G4, 53, 40000);
    run(
        &mut m,
        &[
            (M, E, query.frame(), Ok(Allowed)),
            (M, E, query.frame(), Ok(Tracked)),
            (M, I, answer.frame(), Ok(Tracked)),
            (M, E, query.frame(), Ok(Tracked)),
            (M, I, answer.frame(), Ok(Tracked)),
        ],
    );
    let (_, _, flow) = m.flows().next().expect("one flow");
    assert_eq!((flow.table, flow.stage), (Table::New, Stage::Replied));
}

#[test]
fn policy_lookup() {
    let p = policy();
    let a = |s: &str| -> IpAddr { addr(s) };
    assert!(policy_allows(&p, M, E, 6, a(RABBIT4), 5672));
    assert!(!policy_allows(&p, M, E, 6, a(RABBIT4), 5671));
    assert!(policy_allows(&p, M, E, 6, a(RABBIT6), 5671));
    assert!(!policy_allows(&p, B, E, 6, a(RABBIT4), 5672));
    assert!(policy_allows(&p, M, I, 6, a(OPERATOR4), 22));
    assert!(policy_allows(&p, M, I, 6, a(OPERATOR6), 22));
    assert!(!policy_allows(&p, M, I, 6, a(CLIENT4), 22));
    assert!(policy_allows(&p, M, E, 1, a(RABBIT4), 0));
    assert!(policy_allows(&p, M, E, 58, a(RABBIT6), 0));
    assert!(!policy_allows(&p, M, E, 58, a(RABBIT4), 0));
    assert!(policy_allows(&p, M, E, 17, a(DNS), 53));
    assert!(
        !policy_allows(&p, M, E, 17, a("8.8.8.8"), 67),
        "DHCP is a flag, not rules"
    );
    assert!(policy_allows(&p, B, I, 6, a(CLIENT6), 5432));
    assert!(!policy_allows(&p, B, I, 6, a("2001:db8:ffff::1"), 5432));
}
