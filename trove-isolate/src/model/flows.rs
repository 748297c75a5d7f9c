//! Tracked flows: what each rule about a flow's life does to it.
//!
//! A flow starts in the *new* table and moves to the *established* table once it has proved
//! two-way (the TCP handshake completed, or the first reply of a TCP flow picked up mid-way),
//! and back to the new table once it closes, to finish there. Echo flows stay new, and so do UDP
//! flows here: the datapath promotes one only once it is a stream, 2 s old, and the model has no
//! clock. TCP flows remember each direction's highest acknowledgment and window, so that a FIN
//! or RST is held to the receiver's window (RFC 5961).

use std::net::{IpAddr, SocketAddr};

use trove_isolate_common::{Direction, Reason};

use super::parse::{Ends, Ip, ScaleOption, Tcp, L4};

/// The largest window scale shift (RFC 7323 section 2.3).
pub const MAX_SHIFT: u8 = 14;

/// A flow, from the NIC's point of view (local end, remote end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowId {
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Named by the way its requests go: a request the other way on the same identifier is
    /// another flow.
    Echo {
        local: IpAddr,
        remote: IpAddr,
        id: u16,
        requests: Direction,
    },
}

impl FlowId {
    /// The flow of a packet with these addresses and ends crossing the NIC in `direction`.
    pub fn of(ip: &Ip, ends: Ends, direction: Direction) -> FlowId {
        // Coming in, the destination is ours; going out, the source.
        let (local, remote) = match direction {
            Direction::Ingress => (ip.dst, ip.src),
            Direction::Egress => (ip.src, ip.dst),
        };
        let sockets = |src_port: u16, dst_port: u16| match direction {
            Direction::Ingress => (
                SocketAddr::new(local, dst_port),
                SocketAddr::new(remote, src_port),
            ),
            Direction::Egress => (
                SocketAddr::new(local, src_port),
                SocketAddr::new(remote, dst_port),
            ),
        };
        match ends {
            Ends::Tcp { src_port, dst_port } => {
                let (local, remote) = sockets(src_port, dst_port);
                FlowId::Tcp { local, remote }
            }
            Ends::Udp { src_port, dst_port } => {
                let (local, remote) = sockets(src_port, dst_port);
                FlowId::Udp { local, remote }
            }
            Ends::EchoRequest { id } => FlowId::Echo {
                local,
                remote,
                id,
                requests: direction,
            },
            Ends::EchoReply { id } => FlowId::Echo {
                local,
                remote,
                id,
                requests: direction.reverse(),
            },
        }
    }

    pub fn local(&self) -> IpAddr {
        match self {
            FlowId::Tcp { local, .. } | FlowId::Udp { local, .. } => local.ip(),
            FlowId::Echo { local, .. } => *local,
        }
    }

    pub fn remote(&self) -> IpAddr {
        match self {
            FlowId::Tcp { remote, .. } | FlowId::Udp { remote, .. } => remote.ip(),
            FlowId::Echo { remote, .. } => *remote,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    New,
    Established,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// TCP: the opening SYN was seen.
    SynSent,
    /// TCP: the SYN-ACK answered it.
    SynAcked,
    /// TCP opened by the remote: the remote acknowledged the SYN-ACK; the guest's first data
    /// proves the handshake.
    Acked,
    /// UDP, echo, or TCP picked up mid-flow: no reply yet.
    Unreplied,
    /// UDP: a reply was seen. The datapath promotes the flow once it is a stream, still
    /// carrying datagrams 2 s after it began (`UDP_STREAM_NS`); the model has no clock, and its
    /// flows never get that old (the packet tables' test waits for it).
    Replied,
    /// Proved two-way: in the established table (in the new table once it closes).
    Established,
}

/// An acknowledgment a direction sent, with the window that came with it (as sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckSeen {
    pub ack: u32,
    pub window: u16,
    /// The window is a SYN's (a SYN-ACK's), never scaled (RFC 7323).
    pub unscaled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub table: Table,
    /// The direction of the packet that opened the flow.
    pub origin: Direction,
    pub stage: Stage,
    /// FINs were seen both ways, or a reset that closes.
    pub closing: bool,
    /// The highest sequence number of the remote's in-window resets that close nothing by the
    /// exact rule, while the guest has not acknowledged past it: its stack may take one (Linux
    /// takes more than the exact one), so the flow holds no established slot.
    pub reset_seen: Option<u32>,
    /// An in-window FIN was sent that way, indexed by `Direction as usize`.
    pub fin_seen: [bool; 2],
    /// TCP: the highest acknowledgment sent each way, indexed by `Direction as usize`.
    pub acks: [Option<AckSeen>; 2],
    /// TCP: the sequence number just past the furthest the guest has sent (data, SYN, FIN;
    /// never a reset's, whose sequence may be a stray segment's choice).
    pub guest_end: Option<u32>,
    /// TCP: the window scale option of each side's SYN, indexed by the direction it travelled;
    /// `None` while that SYN was not seen.
    pub syn_scale: [Option<ScaleOption>; 2],
    /// TCP: the data the guest's opening SYN carried (Fast Open), in bytes, at most 65,535.
    pub syn_data: u16,
    /// TCP: a remote's SYN opened this handshake over a connection the guest was not done with
    /// and a remote's reset had demoted: that reset (`reset_seen`'s), which the guest's data
    /// must acknowledge past to pick the connection up.
    pub restarted_over: Option<u32>,
}

fn side(direction: Direction) -> usize {
    direction as usize
}

impl Flow {
    /// A flow a rule allowed `l4` to open in `direction`.
    pub fn open(direction: Direction, l4: &L4) -> Flow {
        let mut flow = Flow {
            table: Table::New,
            origin: direction,
            stage: Stage::Unreplied,
            closing: false,
            reset_seen: None,
            fin_seen: [false; 2],
            acks: [None; 2],
            guest_end: None,
            syn_scale: [None; 2],
            syn_data: 0,
            restarted_over: None,
        };
        if let L4::Tcp(tcp) = l4 {
            if tcp.flags.syn() {
                flow.stage = Stage::SynSent;
                flow.syn_scale[side(direction)] = tcp.syn_scale;
                if direction == Direction::Egress {
                    flow.syn_data = u16::try_from(tcp.payload_len).unwrap_or(u16::MAX);
                }
            }
            flow.record_ack(direction, tcp);
        }
        flow
    }

    /// A packet of an established flow, or of a closed one finishing in the new table (never a
    /// bare SYN: the caller judges those).
    pub fn established(&mut self, direction: Direction, l4: &L4) -> Result<Reason, Reason> {
        if let L4::Tcp(tcp) = l4 {
            if tcp.flags.fin() || tcp.flags.rst() {
                // RFC 5961: a FIN or RST must fall in the receiver's window.
                if !self.in_receiver_window(direction, tcp.seq) {
                    return Err(Reason::OutOfWindow);
                }
                if self.closes(direction, tcp) {
                    self.closing = true;
                } else if tcp.flags.rst() {
                    // The remote's (the guest's closes): its stack may take it. The highest.
                    self.reset_seen = Some(match self.reset_seen {
                        Some(seen) if (seen.wrapping_sub(tcp.seq) as i32) > 0 => seen,
                        _ => tcp.seq,
                    });
                }
            }
            self.record_ack(direction, tcp);
            // The guest acknowledges more than one past every such reset (Linux takes one just
            // below its next expected number once it has the remote's FIN, which may have
            // passed unnoted): its stack takes none. Any less proves nothing: it may
            // acknowledge the data in front of a reset it then takes.
            if let Some(seen) = self.reset_seen {
                if direction == Direction::Egress
                    && tcp.flags.ack()
                    && !tcp.flags.rst()
                    && (tcp.ack.wrapping_sub(seen) as i32) > 1
                {
                    self.reset_seen = None;
                }
            }
        }
        Ok(Reason::Tracked)
    }

    /// What closes an established flow, once its FIN or RST is in the window: only what a
    /// blind sender cannot forge. FINs both ways; a reset from the guest; a reset from the
    /// remote at exactly the sequence number the guest acknowledged last (RFC 5961 section 3.2;
    /// any reset when the guest never acknowledged anything). Another in-window reset passes
    /// (the guest answers it with a challenge ACK) and closes nothing.
    fn closes(&mut self, direction: Direction, tcp: &Tcp) -> bool {
        if tcp.flags.rst() {
            return match direction {
                Direction::Egress => true,
                Direction::Ingress => match self.acks[side(Direction::Egress)] {
                    None => true,
                    Some(guest) => tcp.seq == guest.ack,
                },
            };
        }
        self.fin_closes(direction)
    }

    /// Notes a FIN sent in `direction`; whether FINs have now gone both ways.
    fn fin_closes(&mut self, direction: Direction) -> bool {
        self.fin_seen[side(direction)] = true;
        self.fin_seen[side(direction.reverse())]
    }

    /// A packet of a flow in the new table: the handshake moves on, and the packet that proves
    /// the flow two-way promotes it. For TCP the proof comes from the guest's own stack, which
    /// a remote sender cannot fake: the guest's ACK of the SYN-ACK when the guest opened the
    /// flow; its first data after the remote's ACK when the remote opened it; for a flow picked
    /// up mid-way, the other side's first reply (the guest's with data, the remote's
    /// acknowledging all the guest has sent).
    pub fn embryonic(&mut self, direction: Direction, l4: &L4) -> Result<Reason, Reason> {
        let reply = direction != self.origin;
        let from_guest = direction == Direction::Egress;
        match l4 {
            L4::Tcp(tcp) => {
                self.record_ack(direction, tcp);
                // A connection that closes before it is proved (FINs both ways) finishes in the
                // new table: it is never promoted. A FIN counts only inside a window its
                // receiver has acknowledged (a blind one marks nothing).
                if tcp.flags.fin()
                    && self.acks[side(direction.reverse())].is_some()
                    && self.in_receiver_window(direction, tcp.seq)
                    && self.fin_closes(direction)
                {
                    self.closing = true;
                }
                let syn_ack = tcp.flags.syn() && tcp.flags.ack();
                // The remote's SYN-ACK must acknowledge the guest's SYN: a blind one would set
                // the window scales the flow's FIN and RST are held to. All the guest sent, or
                // less by at most the data its SYN carried: a Fast Open server may refuse that
                // (RFC 7413), acknowledging the SYN alone.
                let acks_guest_syn = from_guest
                    || matches!(self.guest_end,
                        Some(end) if end.wrapping_sub(tcp.ack) <= u32::from(self.syn_data));
                if self.stage == Stage::SynSent && reply && syn_ack && acks_guest_syn {
                    self.stage = Stage::SynAcked;
                    self.syn_scale[side(direction)] = tcp.syn_scale;
                } else if tcp.flags.bare_ack() && !self.guest_done() {
                    match self.stage {
                        // The guest opened the flow and acknowledges the SYN-ACK.
                        Stage::SynAcked if !reply && from_guest => self.promote(),
                        // The remote opened it and acknowledges the guest's SYN-ACK: all of
                        // what the guest sent, which a blind sender cannot know (the guest
                        // also answers a stray SYN with a bare ACK, which must promote
                        // nothing).
                        Stage::SynAcked if !reply && self.guest_end == Some(tcp.ack) => {
                            self.stage = Stage::Acked
                        }
                        // ... and the guest's stack, having accepted that, sends data (the
                        // handshake's request socket answers an ACK it discards with a bare
                        // ACK, and keeps no socket).
                        Stage::Acked if from_guest && tcp.payload_len > 0 => self.promote(),
                        // Picked up mid-way: the other side answers. For a flow picked up
                        // coming in, that is the guest's stack, which resets one it lacks, and
                        // must send data (a socket in TIME_WAIT answers with a bare ACK too);
                        // for one picked up going out, the remote, acknowledging all the guest
                        // has sent (a spoofed sender never saw it: a socket in TIME_WAIT answers
                        // a spoofed ACK), or one past it (a keepalive or window probe is sent one
                        // below the next sequence number, and answered at the next).
                        Stage::Unreplied
                            if reply
                                && if from_guest {
                                    tcp.payload_len > 0
                                } else {
                                    matches!(self.guest_end,
                                        Some(end) if tcp.ack.wrapping_sub(end) <= 1)
                                } =>
                        {
                            self.promote()
                        }
                        // The guest's data, past the reset, on a handshake a remote's SYN
                        // started over a connection (`restarted_over`) and the guest never
                        // answered: its socket lives (the SYN was a spoofed one it discarded).
                        // Picked up as above, at the widest scale for the remote, whose SYN the
                        // guest never agreed to.
                        Stage::SynSent
                            if reply
                                && from_guest
                                && tcp.payload_len > 0
                                && self.restarted_over.is_some_and(|reset| {
                                    (tcp.ack.wrapping_sub(reset) as i32) > 1
                                }) =>
                        {
                            self.syn_scale[side(Direction::Ingress)] =
                                Some(ScaleOption::Unparsable);
                            self.promote()
                        }
                        _ => {}
                    }
                }
            }
            L4::Udp { .. } if reply && self.stage == Stage::Unreplied => {
                self.stage = Stage::Replied
            }
            _ => {}
        }
        Ok(Reason::Tracked)
    }

    /// Whether a bare SYN sent in `direction` at sequence `seq` is another connection than
    /// this handshake the guest opened and never acknowledged: the guest's SYN at another
    /// sequence number than the one it opened with (its data, a Fast Open SYN's, aside).
    pub fn restarted_by(&self, direction: Direction, seq: u32) -> bool {
        direction == Direction::Egress
            && self.origin == Direction::Egress
            && matches!(self.stage, Stage::SynSent | Stage::SynAcked)
            && matches!(self.guest_end,
                Some(end) if seq != end.wrapping_sub(1 + u32::from(self.syn_data)))
    }

    /// The reset a remote's SYN on this flow carries into the handshake it starts over it: a
    /// connection the guest is not done with, which a remote's reset demoted.
    pub fn reset_to_carry(&self, direction: Direction) -> Option<u32> {
        if direction == Direction::Ingress && self.stage == Stage::Established && !self.guest_done()
        {
            self.reset_seen
        } else {
            None
        }
    }

    /// Whether the guest has finished with the flow: its FIN sent, or the flow closed. Such a
    /// flow is never promoted, and leaves the established table.
    pub fn guest_done(&self) -> bool {
        self.closing || self.fin_seen[side(Direction::Egress)]
    }

    /// Whether the flow holds no established slot: the guest is done with it, or the remote
    /// may have reset it (`reset_seen`).
    pub fn releases_slot(&self) -> bool {
        self.guest_done() || self.reset_seen.is_some()
    }

    fn promote(&mut self) {
        self.table = Table::Established;
        self.stage = Stage::Established;
    }

    /// Notes the acknowledgment and window of a TCP packet with ACK when they move forward
    /// (RFC 1982 serial order): a newer ACK, or the same ACK with another window.
    /// The guest's segments also move `guest_end`, and the remote's acknowledgment is noted only
    /// up to it (a forged one beyond what the guest sent would hold the guest's FIN out of the
    /// window).
    fn record_ack(&mut self, direction: Direction, tcp: &Tcp) {
        // The guest's SYN-ACK starts its side of the connection: its numbers replace what an
        // earlier connection on the tuple left (a socket in TIME_WAIT answers the new SYN with
        // a bare ACK of its old numbers), which the client's ACK of it would never match.
        let restart = direction == Direction::Egress && tcp.flags.syn() && tcp.flags.ack();
        if direction == Direction::Egress && !tcp.flags.rst() {
            let end = tcp
                .seq
                .wrapping_add(tcp.payload_len)
                .wrapping_add(u32::from(tcp.flags.syn()))
                .wrapping_add(u32::from(tcp.flags.fin()));
            let further = match self.guest_end {
                None => true,
                Some(_) if restart => true,
                Some(old) => end.wrapping_sub(old) as i32 > 0,
            };
            if further {
                self.guest_end = Some(end);
            }
        }
        if !tcp.flags.ack() {
            return;
        }
        // Nothing from the remote is noted before the guest has sent something to hold it to.
        if direction == Direction::Ingress {
            match self.guest_end {
                None => return,
                Some(end) if tcp.ack.wrapping_sub(end) as i32 > 0 => return,
                Some(_) => {}
            }
        }
        // A SYN's window is never scaled: noted as it is, and read so.
        let syn = tcp.flags.syn();
        // The remote's SYN-ACK answering the guest's SYN starts the remote's side afresh: what
        // was noted before it was read at a scale the SYN-ACK settles otherwise.
        let answers = direction == Direction::Ingress
            && syn
            && self.stage == Stage::SynSent
            && self.origin == Direction::Egress
            && matches!(self.guest_end,
                Some(end) if end.wrapping_sub(tcp.ack) <= u32::from(self.syn_data));
        let shift = self.shift(direction);
        let slot = &mut self.acks[side(direction)];
        let (window, unscaled) = match slot {
            None => (tcp.window, syn),
            Some(_) if restart || answers => (tcp.window, syn),
            Some(old) => {
                let ahead = tcp.ack.wrapping_sub(old.ack) as i32;
                if ahead < 0 || (ahead == 0 && old.window == tcp.window && old.unscaled == syn) {
                    return;
                }
                // The right edge never moves left: a segment the receiver's stack discards
                // may carry any window, and TC cannot tell it from one it takes.
                let old_shift = if old.unscaled { 0 } else { shift };
                let new_shift = if syn { 0 } else { shift };
                let old_edge = u64::from(old.window) << old_shift;
                let moved = u64::from(tcp.ack.wrapping_sub(old.ack));
                let new_edge = moved + (u64::from(tcp.window) << new_shift);
                if new_edge < old_edge {
                    let left = (old_edge - moved).div_ceil(1 << old_shift);
                    (u16::try_from(left).expect("within"), old.unscaled)
                } else {
                    (tcp.window, syn)
                }
            }
        };
        *slot = Some(AckSeen {
            ack: tcp.ack,
            window,
            unscaled,
        });
    }

    /// A bare SYN from the remote again on the handshake it opened: the guest's stack may have
    /// taken it rather than the first, so the remote's window scale is no longer known.
    pub fn remote_syn_again(&mut self, direction: Direction) {
        if direction == Direction::Ingress
            && self.origin == Direction::Ingress
            && self.stage == Stage::SynSent
        {
            self.syn_scale[side(Direction::Ingress)] = Some(ScaleOption::Unparsable);
        }
    }

    /// The window scale shift of the windows `sender` advertises (RFC 7323 section 2.2: scaling
    /// holds only when both SYNs carried the option; each side's shift is its own, at most 14).
    /// Before the other side's SYN is seen, a side's own option is the most its shift can be.
    /// A SYN not seen, no option, or one that did not parse: the widest.
    fn shift(&self, sender: Direction) -> u32 {
        if let (Some(a), Some(b)) = (self.syn_scale[0], self.syn_scale[1]) {
            if a == ScaleOption::Absent || b == ScaleOption::Absent {
                return 0;
            }
        }
        match self.syn_scale[side(sender)] {
            Some(ScaleOption::Shift(n)) => u32::from(n.min(MAX_SHIFT)),
            _ => u32::from(MAX_SHIFT),
        }
    }

    /// RFC 5961 section 3.2 / 4.2, as the datapath states it: a FIN or RST sent in `direction`
    /// is acceptable when its sequence number lies from one below the receiver's last
    /// acknowledgment to that acknowledgment plus the receiver's scaled window. A receiver that
    /// never acknowledged anything offers nothing to check against: accepted.
    fn in_receiver_window(&self, direction: Direction, seq: u32) -> bool {
        let receiver = direction.reverse();
        let Some(seen) = self.acks[side(receiver)] else {
            return true;
        };
        let shift = if seen.unscaled {
            0
        } else {
            self.shift(receiver)
        };
        let window = u64::from(seen.window) << shift;
        let from = seen.ack.wrapping_sub(1);
        u64::from(seq.wrapping_sub(from)) <= window + 1
    }
}
