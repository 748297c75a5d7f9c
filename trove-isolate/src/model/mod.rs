//! A reference model of the datapath: what the TC programs must do with a frame, written to be
//! read rather than to run fast or to pass a verifier.
//!
//! [`Model::judge`] decides from the compiled [`Policy`], the NICs' own addresses and links, the
//! DHCP setting and the flows it tracks itself: `Ok(reason)` passes the frame, `Err(reason)`
//! drops it. There is no clock: every packet is taken to arrive within every timeout. The two
//! NICs (roles) share nothing: each has its own policy, addresses and flows.
//!
//! The rules, in the order they are applied:
//! 1. Parse ([`parse`]): anything but ARP, IPv4 and IPv6 is unsupported; headers out of bounds
//!    are malformed; fragments are refused. ARP passes in its shape and, going out, as the
//!    NIC's own.
//! 2. IPv6 neighbour discovery and MLD pass in their direction, hop limit, code and scope.
//! 3. ICMP errors pass when they quote a tracked flow and travel between its endpoints.
//! 4. TCP flag combinations no stack sends are invalid; ICMP that is not echo tracks nothing;
//!    DHCP client traffic passes untracked when the NIC asks for it.
//! 5. A packet of a tracked flow follows the flow ([`flows`]). A bare SYN first meets rule 6's
//!    rules and own-address check, tracked tuple or not: it asks to open a flow.
//! 6. Otherwise the packet must be able to open a flow, be allowed by a rule, and be the NIC's
//!    own; then its flow is tracked.

pub mod flows;
pub mod parse;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use trove_isolate_common::{proto, Direction, Reason, Role};

use crate::policy::Policy;
pub use flows::{AckSeen, Flow, FlowId, Stage, Table};
use parse::{Frame, Ip, Packet, Quoted, L4};

pub struct Model {
    policy: Policy,
    local: Vec<(Role, IpNetwork)>,
    dhcp: Vec<Role>,
    flows: HashMap<(Role, FlowId), Flow>,
}

impl Model {
    /// `local`: each NIC's addresses with their prefix lengths (the address is the NIC's own,
    /// the prefix is on its link); `dhcp`: the roles that pass DHCP client traffic.
    pub fn new(policy: &Policy, local: &[(Role, IpNetwork)], dhcp: &[Role]) -> Model {
        Model {
            policy: policy.clone(),
            local: local.to_vec(),
            dhcp: dhcp.to_vec(),
            flows: HashMap::new(),
        }
    }

    /// The verdict for `frame` crossing the NIC of `role` in `direction`, updating the tracked
    /// flows as the datapath does.
    pub fn judge(
        &mut self,
        role: Role,
        direction: Direction,
        frame: &[u8],
        gso: bool,
    ) -> Result<Reason, Reason> {
        match parse::frame(frame, gso)? {
            Frame::Arp { sender, frame_len } => self.arp(role, direction, sender, frame_len),
            Frame::NeighborDiscovery {
                ip,
                icmp_type,
                code,
                ext,
                message,
                target,
            } => self.neighbor_discovery(
                role,
                direction,
                &ip,
                (icmp_type, code),
                (&ext, &message),
                target,
            ),
            Frame::IcmpError { outer, quoted } => self.related(role, direction, &outer, &quoted),
            Frame::Flow(pkt) => self.flow(role, direction, &pkt),
        }
    }

    /// Every tracked flow.
    pub fn flows(&self) -> impl Iterator<Item = (Role, &FlowId, &Flow)> {
        self.flows
            .iter()
            .map(|((role, id), flow)| (*role, id, flow))
    }

    /// Forgets every tracked flow.
    pub fn clear_flows(&mut self) {
        self.flows.clear();
    }

    /// `addr` is an address of the NIC of `role`.
    pub fn own(&self, role: Role, addr: IpAddr) -> bool {
        self.local
            .iter()
            .any(|(r, net)| *r == role && net.ip() == addr)
    }

    /// `addr` is on a link of the NIC of `role`: one of its subnets, or IPv6 link-local
    /// (fe80::/10) or link-scope multicast (ff02::/16).
    pub fn on_link(&self, role: Role, addr: IpAddr) -> bool {
        link_local(addr)
            || link_multicast(addr)
            || self
                .local
                .iter()
                .any(|(r, net)| *r == role && net.contains(addr))
    }

    /// ARP keeps the NIC's neighbours, so it passes, but held to its shape: a frame no bigger
    /// than the Ethernet minimum plus a VLAN tag (64 bytes: nothing rides in the padding), and
    /// going out only as one of the NIC's own addresses or as a probe (sender 0.0.0.0).
    fn arp(
        &self,
        role: Role,
        direction: Direction,
        sender: Ipv4Addr,
        frame_len: usize,
    ) -> Result<Reason, Reason> {
        const MAX_ARP_FRAME: usize = 64;
        if frame_len > MAX_ARP_FRAME {
            return Err(Reason::Malformed);
        }
        let probe = sender.is_unspecified();
        if direction == Direction::Egress && !probe && !self.own(role, IpAddr::V4(sender)) {
            return Err(Reason::NotLocal);
        }
        Ok(Reason::Arp)
    }

    /// RFC 4861 and RFC 3810, for a host: router advertisements and redirects come in from a
    /// router's link-local address; router solicitations go out to the link; neighbour
    /// solicitations and advertisements go both ways (out: to the link), all with hop limit
    /// 255. MLD queries come in from a link-local address; reports and done go out from a
    /// link-local address (or :: before one exists) to link-scope multicast, all with hop
    /// limit 1, and code 0. Any other type or direction is unsupported; a wrong hop limit,
    /// code or scope is malformed. Solicitations and advertisements are held to a host's shape,
    /// as ARP is: no extension headers, at most 64 bytes (the message and the options a host
    /// sends), and going out from one of the NIC's own addresses (a solicitation also from ::),
    /// an advertisement for the address it comes from; else `not_local`. Coming in, all but
    /// queries are addressed to one of the NIC's addresses or to ff02::/16 (else `not_local`).
    /// Reports and done are held to what Linux sends ([`Model::mld_report`]).
    fn neighbor_discovery(
        &self,
        role: Role,
        direction: Direction,
        ip: &Ip,
        (icmp_type, code): (u8, u8),
        (ext, message): (&[u8], &[u8]),
        target: Option<Ipv6Addr>,
    ) -> Result<Reason, Reason> {
        use Direction::{Egress, Ingress};
        const ROUTER_SOLICITATION: u8 = 133;
        const ROUTER_ADVERTISEMENT: u8 = 134;
        const NEIGHBOR_SOLICITATION: u8 = 135;
        const NEIGHBOR_ADVERTISEMENT: u8 = 136;
        const REDIRECT: u8 = 137;
        const MLD_QUERY: u8 = 130;
        const MLD_REPORT: u8 = 131;
        const MLD_DONE: u8 = 132;
        const MLD2_REPORT: u8 = 143;
        let (hop_limit, in_scope) = match (icmp_type, direction) {
            (ROUTER_ADVERTISEMENT | REDIRECT, Ingress) => (255, link_local(ip.src)),
            (ROUTER_SOLICITATION, Egress) => (255, self.on_link(role, ip.dst)),
            (NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT, Ingress) => (255, true),
            (NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT, Egress) => {
                (255, self.on_link(role, ip.dst))
            }
            (MLD_QUERY, Ingress) => (1, link_local(ip.src)),
            (MLD_REPORT | MLD_DONE | MLD2_REPORT, Egress) => (
                1,
                (link_local(ip.src) || ip.src.is_unspecified()) && link_multicast(ip.dst),
            ),
            _ => return Err(Reason::UnsupportedProtocol),
        };
        if ip.hop_limit != hop_limit || code != 0 || !in_scope {
            return Err(Reason::Malformed);
        }
        const MAX_LEN: usize = 64;
        let solicit_or_advert = matches!(
            icmp_type,
            ROUTER_SOLICITATION | NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT
        );
        if matches!(icmp_type, MLD_REPORT | MLD_DONE | MLD2_REPORT) {
            return self.mld_report(role, ip, ext, message);
        }
        if solicit_or_advert {
            if message.len() > MAX_LEN || !ext.is_empty() {
                return Err(Reason::Malformed);
            }
            if direction == Egress {
                let advert = icmp_type == NEIGHBOR_ADVERTISEMENT;
                let from_own = self.own(role, ip.src) || (!advert && ip.src.is_unspecified());
                let for_itself = !advert || target.map(IpAddr::V6) == Some(ip.src);
                if !from_own || !for_itself {
                    return Err(Reason::NotLocal);
                }
            }
        }
        // Coming in, to the NIC or its link (a query's hop limit keeps it there): one to
        // another address would be forwarded where the guest forwards IPv6.
        if direction == Ingress
            && icmp_type != MLD_QUERY
            && !link_multicast(ip.dst)
            && !self.own(role, ip.dst)
        {
            return Err(Reason::NotLocal);
        }
        Ok(Reason::NeighborDiscovery)
    }

    /// An MLD report or done going out (RFC 2710, RFC 3810), as Linux sends it: behind one
    /// hop-by-hop header, a router alert for MLD and padding (else `malformed`); from one of the
    /// NIC's addresses or :: (else `not_local`). MLDv1: 24 bytes, the delay and reserved bytes
    /// zero, a report to its group and done to ff02::2 (else `malformed`). MLDv2: to ff02::16,
    /// reserved bytes zero, 1 to 32 records filling the message exactly, each of type 1 to 4
    /// with no sources and no auxiliary data (else `malformed`). Every group named is the
    /// solicited-node group of one of the NIC's IPv6 addresses (else `not_local`). Records are
    /// judged in order; the first that fails gives the reason.
    fn mld_report(
        &self,
        role: Role,
        ip: &Ip,
        ext: &[u8],
        message: &[u8],
    ) -> Result<Reason, Reason> {
        const HOP_BY_HOP: [u8; 8] = [58, 0, 5, 2, 0, 0, 1, 0];
        const MAX_RECORDS: usize = 32;
        let own_group = |group: &[u8]| {
            let group = Ipv6Addr::from(<[u8; 16]>::try_from(group).expect("16 bytes"));
            self.local.iter().any(|(r, net)| {
                *r == role
                    && matches!(net.ip(), IpAddr::V6(a) if crate::local::solicited_node(a) == group)
            })
        };
        if ext != HOP_BY_HOP {
            return Err(Reason::Malformed);
        }
        if !ip.src.is_unspecified() && !self.own(role, ip.src) {
            return Err(Reason::NotLocal);
        }
        let word = &message[4..8];
        if message[0] != 143 {
            let group = message.get(8..24).ok_or(Reason::Malformed)?;
            let to = match message[0] {
                131 => group.to_vec(),
                _ => Ipv6Addr::from(0xff02_u128 << 112 | 2).octets().to_vec(),
            };
            let dst = match ip.dst {
                IpAddr::V6(a) => a.octets().to_vec(),
                IpAddr::V4(_) => unreachable!("ICMPv6 over IPv6"),
            };
            if message.len() != 24 || word != [0; 4] || dst != to {
                return Err(Reason::Malformed);
            }
            return match own_group(group) {
                true => Ok(Reason::NeighborDiscovery),
                false => Err(Reason::NotLocal),
            };
        }
        let records = usize::from(u16::from_be_bytes([word[2], word[3]]));
        if ip.dst != "ff02::16".parse::<IpAddr>().expect("address")
            || word[..2] != [0, 0]
            || !(1..=MAX_RECORDS).contains(&records)
            || message.len() != 8 + 20 * records
        {
            return Err(Reason::Malformed);
        }
        for record in message[8..].chunks_exact(20) {
            let sources = u16::from_be_bytes([record[2], record[3]]);
            if !(1..=4).contains(&record[0]) || record[1] != 0 || sources != 0 {
                return Err(Reason::Malformed);
            }
            if !own_group(&record[4..20]) {
                return Err(Reason::NotLocal);
            }
        }
        Ok(Reason::NeighborDiscovery)
    }

    /// An ICMP error passes when the flow of the packet it quotes is tracked and the error
    /// travels between that flow's endpoints: coming in, to the flow's local address (any
    /// router on the path may send it); going out, from the local to the remote address.
    fn related(
        &self,
        role: Role,
        direction: Direction,
        outer: &Ip,
        quoted: &Quoted,
    ) -> Result<Reason, Reason> {
        // The quoted packet crossed this NIC the other way.
        let id = FlowId::of(&quoted.ip, quoted.ends, direction.reverse());
        let between_endpoints = match direction {
            Direction::Ingress => outer.dst == id.local(),
            Direction::Egress => outer.src == id.local() && outer.dst == id.remote(),
        };
        if between_endpoints && self.flows.contains_key(&(role, id)) {
            Ok(Reason::Related)
        } else {
            Err(Reason::NotTracked)
        }
    }

    /// A packet that is, or may start, a flow.
    fn flow(&mut self, role: Role, direction: Direction, pkt: &Packet) -> Result<Reason, Reason> {
        if let L4::Tcp(tcp) = pkt.l4 {
            if invalid_tcp_flags(tcp.flags) {
                return Err(Reason::InvalidFlags);
            }
        }
        // ICMP other than echo, errors and neighbour discovery belongs to no flow.
        let Some(ends) = pkt.ends() else {
            return Err(Reason::NotTracked);
        };
        if self.dhcp_client_traffic(role, direction, pkt) {
            return Ok(Reason::Dhcp);
        }
        let id = FlowId::of(&pkt.ip, ends, direction);
        // A bare SYN asks to open a flow whatever its tuple holds: it meets the rules first.
        let syn = matches!(pkt.l4, L4::Tcp(t) if t.flags.bare_syn());
        if syn {
            self.admit(role, direction, id, pkt)?;
        }
        // What the SYN carries from a flow it starts over (read before it is forgotten).
        let carried = match self.flows.get(&(role, id)) {
            Some(flow) if syn => flow.reset_to_carry(direction),
            _ => None,
        };
        if let Some(verdict) = self.follow_flow(role, direction, id, &pkt.l4) {
            return verdict;
        }
        if !syn {
            if !opens_flow(direction, &pkt.l4) {
                return Err(Reason::NotTracked);
            }
            self.admit(role, direction, id, pkt)?;
        }
        let mut flow = Flow::open(direction, &pkt.l4);
        flow.restarted_over = carried;
        self.flows.insert((role, id), flow);
        Ok(Reason::Allowed)
    }

    /// What a new flow must pass: a rule allows it, then it is the NIC's own (addressed to it
    /// coming in, sent from it going out).
    fn admit(
        &self,
        role: Role,
        direction: Direction,
        id: FlowId,
        pkt: &Packet,
    ) -> Result<(), Reason> {
        let port = match pkt.l4 {
            L4::Tcp(t) => t.dst_port,
            L4::Udp { dst_port, .. } => dst_port,
            _ => 0,
        };
        let allowed = policy_allows(
            &self.policy,
            role,
            direction,
            pkt.ip.proto,
            id.remote(),
            port,
        );
        if !allowed {
            return Err(Reason::Policy);
        }
        if !self.own(role, id.local()) {
            return Err(Reason::NotLocal);
        }
        Ok(())
    }

    /// The verdict of a packet of a tracked flow; `None` when it has none (or, for an allowed
    /// SYN, when it reopens a closing flow, which is then forgotten, or an unanswered pickup).
    fn follow_flow(
        &mut self,
        role: Role,
        direction: Direction,
        id: FlowId,
        l4: &L4,
    ) -> Option<Result<Reason, Reason>> {
        let flow = self.flows.get_mut(&(role, id))?;
        let bare_syn = match l4 {
            L4::Tcp(t) if t.flags.bare_syn() => Some(t),
            _ => None,
        };
        if let Some(syn) = bare_syn {
            // An unanswered pickup (perhaps a bare ACK posing as one) is no connection to keep,
            // nor is a closed one, nor a handshake the guest opened and never acknowledged when
            // the guest's SYN starts another sequence (a new connection on the tuple; a
            // retransmission starts at the same one): an allowed SYN starts its tuple over (the
            // new flow replaces it). On any other flow it passes (a retransmission, or the other
            // side's SYN of a simultaneous open), and changes nothing but what a remote's SYN
            // again on its handshake leaves unknown: which SYN's window scale the guest took.
            if flow.stage == Stage::Unreplied
                || flow.releases_slot()
                || flow.restarted_by(direction, syn.seq)
            {
                self.flows.remove(&(role, id));
                return None;
            }
            flow.remote_syn_again(direction);
            return Some(Ok(Reason::Tracked));
        }
        match flow.table {
            Table::New if flow.stage != Stage::Established && !flow.guest_done() => {
                Some(flow.embryonic(direction, l4))
            }
            // Established, or closed or reset and finishing in the new table: held to the
            // windows.
            _ => {
                let verdict = flow.established(direction, l4);
                // A connection the guest is done with, or the remote may have reset, holds no
                // established slot: it finishes where the LRU may evict it. Once the guest
                // sends on a reset one again, its socket lives, and it has its slot back.
                flow.table = if flow.releases_slot() {
                    Table::New
                } else {
                    Table::Established
                };
                Some(verdict)
            }
        }
    }

    /// DHCP (RFC 2131) and DHCPv6 (RFC 8415) client traffic on a NIC that asks for it: client
    /// port to server port going out, back coming in, and only in link scope. DHCPv4 goes out
    /// from 0.0.0.0 or an own address to the broadcast address or an on-link server, and comes
    /// back from an on-link server to the broadcast address or an own address; DHCPv6 goes out from a link-local address to
    /// All_DHCP_Relay_Agents_and_Servers (ff02::1:2) or a link-local server and comes back
    /// from a link-local server to an own address.
    fn dhcp_client_traffic(&self, role: Role, direction: Direction, pkt: &Packet) -> bool {
        let L4::Udp { src_port, dst_port } = pkt.l4 else {
            return false;
        };
        if !self.dhcp.contains(&role) {
            return false;
        }
        let (src, dst) = (pkt.ip.src, pkt.ip.dst);
        let (client, server) = if src.is_ipv4() { (68, 67) } else { (546, 547) };
        let ports_ok = match direction {
            Direction::Egress => (src_port, dst_port) == (client, server),
            Direction::Ingress => (src_port, dst_port) == (server, client),
        };
        if !ports_ok {
            return false;
        }
        let broadcast = IpAddr::V4(Ipv4Addr::BROADCAST);
        let all_dhcp_servers = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2));
        match (src.is_ipv4(), direction) {
            (true, Direction::Egress) => {
                (src.is_unspecified() || self.own(role, src))
                    && (dst == broadcast || self.on_link(role, dst))
            }
            (true, Direction::Ingress) => {
                self.on_link(role, src) && (dst == broadcast || self.own(role, dst))
            }
            (false, Direction::Egress) => {
                link_local(src) && (dst == all_dhcp_servers || link_local(dst))
            }
            (false, Direction::Ingress) => link_local(src) && self.own(role, dst),
        }
    }
}

/// Flag combinations no real stack sends (scans, evasion): SYN with FIN or RST, FIN with RST,
/// FIN without ACK, and none of SYN, RST and ACK.
pub fn invalid_tcp_flags(flags: parse::TcpFlags) -> bool {
    let (syn, fin, rst, ack) = (flags.syn(), flags.fin(), flags.rst(), flags.ack());
    (syn && (fin || rst)) || (fin && rst) || (fin && !ack) || !(syn || rst || ack)
}

/// Whether a packet with no tracked flow may open one: a bare SYN or a bare ACK either way (the
/// ACK: a connection that predates enforcement, picked up mid-way); UDP and echo requests;
/// never an echo reply.
pub fn opens_flow(_direction: Direction, l4: &L4) -> bool {
    match l4 {
        L4::Tcp(t) => t.flags.bare_syn() || t.flags.bare_ack(),
        L4::EchoReply { .. } | L4::OtherIcmp { .. } => false,
        L4::Udp { .. } | L4::EchoRequest { .. } => true,
    }
}

/// Whether a rule of `role` allows a flow opened in direction `origin` with IP protocol `proto`
/// to or from `remote` (the destination going out, the source coming in) on `port` (the opening
/// packet's destination port; 0 for ICMP).
pub fn policy_allows(
    policy: &Policy,
    role: Role,
    origin: Direction,
    proto: u8,
    remote: IpAddr,
    port: u16,
) -> bool {
    let Some(nic) = policy.nic(role) else {
        return false;
    };
    let port = match proto {
        proto::TCP | proto::UDP => port,
        _ => 0,
    };
    nic.rules.iter().any(|r| {
        r.direction == origin && r.proto == proto && r.port == port && r.remote.contains(remote)
    })
}

/// fe80::/10.
pub fn link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// ff02::/16.
pub fn link_multicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V6(a) => a.segments()[0] == 0xff02,
        IpAddr::V4(_) => false,
    }
}
