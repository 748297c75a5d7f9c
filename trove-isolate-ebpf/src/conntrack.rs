//! Connection tracking: a flow starts in the role's new table and is promoted to its
//! established table once it proves two-way (see `trove_isolate_common::conntrack`).
//!
//! [`judge`] answers for a packet whose flow is tracked; [`Answer::UNTRACKED`] means "no live
//! flow: judge it as new". Every function works on one keying's tables ([`Tables`]), through the packet's [`Flow`]
//! (its key, and how an entry is known to be its own). TCP flows carry each direction's highest
//! acknowledgment and window, so that a FIN or RST can be held to the receiver's window (RFC
//! 5961): a blind reset cannot close a flow.

use aya_ebpf::programs::TcContext;
use trove_isolate_common::{
    conntrack::{
        flags, state, ticks, FlowKey4, FlowValue, WideKey, WideValue, WSCALE_MAX, WSCALE_NONE,
        WSCALE_UNKNOWN,
    },
    Direction, Reason,
};

use aya_ebpf::maps::{HashMap, LruHashMap};
use trove_isolate_common::flow_table::Bucket4;

use crate::{
    clock::now,
    flow_table::{Insert, Store, Table, EBUSY, EEXIST},
    maps::FlowTables,
    packet::{Kind, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    parse,
};

/// A packet's flow in its keying's tables: the key, and how an entry under it is known to be
/// this flow's.
pub trait Flow {
    type Key: Copy + PartialEq + 'static;
    type Entry: Copy + 'static;
    /// Its tables.
    type New: Store<Self::Key, Self::Entry>;
    type Est: Store<Self::Key, Self::Entry>;
    fn key(&self) -> &Self::Key;
    /// The flow state in `entry`, if the entry is this flow's.
    fn state<'a>(&self, entry: &'a mut Self::Entry) -> Option<&'a mut FlowValue>;
    /// The entry that holds `flow` for this flow.
    fn entry(&self, flow: FlowValue) -> Self::Entry;
}

/// The tables a [`Flow`] lives in.
pub type Tables<F> = FlowTables<<F as Flow>::New, <F as Flow>::Est>;

/// TCP over IPv4: the key is the whole tuple.
impl Flow for FlowKey4 {
    type Key = FlowKey4;
    type Entry = FlowValue;
    type New = Table<Bucket4>;
    type Est = Table<Bucket4>;

    #[inline(always)]
    fn key(&self) -> &FlowKey4 {
        self
    }

    #[inline(always)]
    fn state<'a>(&self, entry: &'a mut FlowValue) -> Option<&'a mut FlowValue> {
        Some(entry)
    }

    #[inline(always)]
    fn entry(&self, flow: FlowValue) -> FlowValue {
        flow
    }
}

/// Every other flow: the key folds the local address, which the entry holds whole.
pub struct Wide {
    pub key: WideKey,
    pub local: [u32; 4],
}

impl Flow for Wide {
    type Key = WideKey;
    type Entry = WideValue;
    type New = &'static LruHashMap<WideKey, WideValue>;
    type Est = &'static HashMap<WideKey, WideValue>;

    #[inline(always)]
    fn key(&self) -> &WideKey {
        &self.key
    }

    #[inline(always)]
    fn state<'a>(&self, entry: &'a mut WideValue) -> Option<&'a mut FlowValue> {
        // Another local address under the same fold is another flow.
        if entry.local == self.local {
            Some(&mut entry.flow)
        } else {
            None
        }
    }

    #[inline(always)]
    fn entry(&self, flow: FlowValue) -> WideValue {
        WideValue {
            flow,
            local: self.local,
        }
    }
}

/// What the flow tables say of a packet: its verdict if its flow is tracked.
///
/// Not an `Option<Result<Reason, Reason>>`: a `None` leaves the verdict's bytes undefined, and
/// LLVM may load them from the stack before it tests for `None`. Linux 5.15's verifier refuses
/// that read of a slot nothing wrote ("invalid read from stack"), so every field is written on
/// every path.
#[derive(Clone, Copy)]
pub struct Answer {
    pub tracked: bool,
    pub verdict: Result<Reason, Reason>,
}

impl Answer {
    /// No live flow: the packet is judged as new.
    pub const UNTRACKED: Answer = Answer {
        tracked: false,
        verdict: Err(Reason::NotTracked),
    };

    #[inline(always)]
    fn tracked(verdict: Result<Reason, Reason>) -> Answer {
        Answer {
            tracked: true,
            verdict,
        }
    }
}

/// The verdict for `pkt` if its flow is tracked ([`Answer::UNTRACKED`] if it has no live flow).
#[inline(always)]
pub fn judge<F: Flow>(
    ctx: &TcContext,
    t: &Tables<F>,
    flow: &F,
    direction: Direction,
    pkt: &Packet,
) -> Answer {
    let key = flow.key();
    // The clock only once a table answers: an unsolicited packet never reads it.
    if let Some(entry) = t.est.get_inline(key) {
        let entry = unsafe { &mut *entry };
        if let Some(value) = flow.state(entry) {
            let now = now();
            if !value.expired(pkt.proto, now) {
                let verdict = established(value, direction, pkt, now);
                if value.releases_slot() {
                    // The guest is done with it (its FIN sent, or closed), or the remote may
                    // have reset it (`RESET_SEEN`): it finishes in the new table (the remote's
                    // last data and FIN, the last ACK, a retransmitted FIN), where a flood may
                    // evict it. An established slot is held only by a connection the guest
                    // holds open: churn (a client that connects and disconnects at any rate,
                    // by FIN or by reset, or never answers the guest's FIN) cannot fill the
                    // table that never evicts. If the new table refuses, the flow stays, and
                    // its next packet tries again.
                    move_flow(&t.new, &t.est, key, entry, now);
                }
                return Answer::tracked(verdict);
            }
            t.est.remove(key);
        }
    }
    let Some(entry) = t.new.get_ptr_mut(key) else {
        return Answer::UNTRACKED;
    };
    let Some(value) = flow.state(unsafe { &mut *entry }) else {
        return Answer::UNTRACKED;
    };
    let now = now();
    if value.expired(pkt.proto, now) {
        return Answer::UNTRACKED;
    }
    if value.state == state::ESTABLISHED || value.guest_done() {
        // A flow the guest is done with (moved here from the established table, or done before
        // it was proved),
        // or one a remote's reset moved here: held to the windows as an established one is.
        let verdict = established(value, direction, pkt, now);
        if value.state == state::ESTABLISHED && !value.releases_slot() {
            // Moved here by a reset the guest has since shown it does not take (it acknowledged
            // more than one past the reset): back to the established table, or, where that
            // refuses (full, or another flow under the key), on from here.
            move_flow(&t.est, &t.new, key, unsafe { &*entry }, now);
        }
        return Answer::tracked(verdict);
    }
    Answer::tracked(embryonic(ctx, t, flow, value, direction, pkt, now))
}

/// Puts a flow's entry in `to`, then takes it out of `from`: entry first, so that a packet on
/// another CPU finds the flow in one table or the other. Never over an entry in `to` (a SYN
/// that started the tuple over meanwhile, or another flow under the key).
#[inline(always)]
fn move_flow<K, V: Copy>(
    to: &impl Store<K, V>,
    from: &impl Store<K, V>,
    key: &K,
    entry: &V,
    now: u64,
) {
    if to.insert(key, *entry, Insert::New, now).is_ok() {
        from.remove(key);
    }
}

/// Whether `key` is a live flow in either table (for ICMP errors: no refresh, errors do not keep
/// flows alive).
#[inline(always)]
pub fn tracked<F: Flow>(t: &Tables<F>, flow: &F, proto: u8) -> bool {
    let now = now();
    let live = |entry: Option<*mut F::Entry>| match entry {
        Some(entry) => {
            matches!(flow.state(unsafe { &mut *entry }), Some(v) if !v.expired(proto, now))
        }
        None => false,
    };
    live(t.est.get_ptr_mut(flow.key())) || live(t.new.get_ptr_mut(flow.key()))
}

/// A bare SYN a rule allowed, on its tuple's flow if it has a live one: passes (a
/// retransmission, or the other side's SYN of a simultaneous open) and changes nothing but the
/// flow's age (and a remote's handshake's window scale: [`remote_syn_again`]).
/// [`Answer::UNTRACKED`]: no live flow, or one the SYN starts over (a closing established flow,
/// a pickup nothing has answered, or a handshake the guest opened and never acknowledged when
/// the guest's SYN starts another sequence: removed or overwritten): the SYN opens a flow.
///
/// The new table first, where a retransmitted SYN finds its handshake, so it makes one lookup,
/// not a miss and a lookup. A flow is in one table or the other (in both only for the instant
/// of a move between them), so the order changes no verdict: a SYN that finds no live flow in
/// the new table still meets the established one, and removes a closing or expired flow there
/// before it opens its own.
///
/// A remote's SYN that starts over a connection a remote's reset demoted leaves the reset in
/// `carry` for the handshake it opens ([`flags::RESTARTED`]).
#[inline(always)]
pub fn reopen<F: Flow>(
    t: &Tables<F>,
    flow: &F,
    direction: Direction,
    pkt: &Packet,
    now: u64,
    carry: &mut Carry,
) -> Answer {
    let key = flow.key();
    if let Some(entry) = t.new.get_ptr_mut(key) {
        if let Some(value) = flow.state(unsafe { &mut *entry }) {
            if direction == Direction::Ingress
                && value.state == state::ESTABLISHED
                && value.flags & flags::RESET_SEEN != 0
                && !value.guest_done()
                && !value.expired(pkt.proto, now)
            {
                carry.reset = true;
                carry.reset_seq = value.reset_seq;
            }
            // An unanswered pickup (perhaps a bare ACK posing as one) is no connection to keep,
            // nor is one the guest is done with: the SYN starts the tuple over rather than
            // inherit its acknowledgment.
            if !(value.expired(pkt.proto, now)
                || value.state == state::UNREPLIED
                || value.releases_slot()
                || new_connection(value, direction, pkt))
            {
                remote_syn_again(value, direction);
                refresh(value, now);
                return Answer::tracked(Ok(Reason::Tracked));
            }
        }
    }
    let Some(entry) = t.est.get_ptr_mut(key) else {
        return Answer::UNTRACKED;
    };
    let Some(value) = flow.state(unsafe { &mut *entry }) else {
        return Answer::UNTRACKED;
    };
    if value.expired(pkt.proto, now) || value.releases_slot() {
        t.est.remove(key);
        return Answer::UNTRACKED;
    }
    refresh(value, now);
    Answer::tracked(Ok(Reason::Tracked))
}

/// What a SYN that starts a tuple over carries from the flow it replaces ([`reopen`]).
#[derive(Clone, Copy)]
pub struct Carry {
    /// The flow was a connection a remote's reset demoted: the highest such reset.
    pub reset: bool,
    pub reset_seq: u32,
}

impl Carry {
    pub const NONE: Carry = Carry {
        reset: false,
        reset_seq: 0,
    };
}

/// A remote's SYN again on the handshake it opened: the guest's stack may have taken this one
/// and discarded the first (a bad checksum), and each SYN carries its own window scale option,
/// so the remote's shift is no longer known: the widest (its windows hold the guest's FIN and
/// RST; the remote's are held to the guest's windows, which its SYN-ACK settles). Its options
/// are not read: a retransmission costs no walk of them.
#[inline(always)]
fn remote_syn_again(value: &mut FlowValue, direction: Direction) {
    let remote = Direction::Ingress as usize & 1;
    if direction == Direction::Ingress
        && value.state == state::SYN_SENT
        && value.origin == Direction::Ingress as u8
        && value.wscale[remote] != WSCALE_UNKNOWN
    {
        value.wscale[remote] = WSCALE_UNKNOWN;
    }
}

/// Whether the guest's SYN opens another connection than the handshake it opened on the tuple
/// and never acknowledged: it starts at another sequence number than that handshake's SYN (a
/// retransmission starts at the same one, without the data a Fast Open SYN carried). Such a
/// handshake is one the guest gave up (a client bound to its port connects again; a SYN-ACK
/// it reset), and the server's SYN-ACK will answer the new SYN's numbers.
#[inline(always)]
fn new_connection(value: &FlowValue, direction: Direction, pkt: &Packet) -> bool {
    direction == Direction::Egress
        && (value.state == state::SYN_SENT || value.state == state::SYN_ACKED)
        && value.origin == Direction::Egress as u8
        && value.flags & flags::GUEST_END != 0
        && pkt.seq != value.guest_end.wrapping_sub(1 + value.syn_data as u32)
}

/// Stamps a flow as seen, at most once per `REFRESH_NS` (a write dirties the entry's cache
/// line for every CPU).
#[inline(always)]
fn refresh(value: &mut FlowValue, now: u64) {
    if value.stale(now) {
        value.stamp(now);
    }
}

/// A packet of an established flow (never a bare SYN: those take [`reopen`]).
///
/// A FIN or RST must fall in the receiver's window (else `OutOfWindow`). What closes the flow
/// is held to what a blind sender cannot forge: FINs seen both ways, an RST from the guest, or
/// an RST from the remote at exactly the sequence number the guest acknowledged last (RFC 5961's
/// rule for accepting a reset). An in-window RST from the remote that is not exact passes and
/// closes nothing, but the flow gives its established slot back until the guest acknowledges
/// more than one past it ([`flags::RESET_SEEN`]): Linux takes more resets than the exact one,
/// and then never sends again. A UDP flow is refreshed by the guest's datagrams only.
#[inline(always)]
fn established(
    value: &mut FlowValue,
    direction: Direction,
    pkt: &Packet,
    now: u64,
) -> Result<Reason, Reason> {
    if pkt.kind == Kind::Tcp {
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            if !in_window(value, direction, pkt) {
                return Err(Reason::OutOfWindow);
            }
            if closes(value, direction, pkt) {
                value.flags |= flags::CLOSING;
                value.stamp(now);
            } else if pkt.tcp_flags & TCP_RST != 0 {
                // The remote's (the guest's always closes): its stack may take it.
                note_reset(value, pkt.seq);
            }
        }
        record_ack(value, direction, pkt);
        if direction == Direction::Egress
            && value.flags & flags::RESET_SEEN != 0
            && acks_past_reset(value, pkt)
        {
            value.flags &= !flags::RESET_SEEN;
        }
    }
    // A UDP flow lives while the guest sends on it: a remote alone keeps no slot.
    if pkt.kind != Kind::Udp || direction == Direction::Egress {
        refresh(value, now);
    }
    Ok(Reason::Tracked)
}

/// Notes a remote's reset the guest's stack may take ([`flags::RESET_SEEN`]): the highest.
#[inline(always)]
fn note_reset(value: &mut FlowValue, seq: u32) {
    if value.flags & flags::RESET_SEEN == 0 || (seq.wrapping_sub(value.reset_seq) as i32) > 0 {
        value.reset_seq = seq;
    }
    value.flags |= flags::RESET_SEEN;
}

/// Whether the guest's packet acknowledges more than one past every reset noted: its stack's
/// next expected sequence number is beyond them, so it takes none (Linux takes one at that
/// number, at the edge of a SACK block, which lies beyond it, or one below it once it has the
/// remote's FIN: hence the one more, whether or not this flow saw that FIN, which a pickup or a
/// segment starting below the window carries past it unnoted). An acknowledgment at or just
/// past a reset proves nothing: the stack may acknowledge the data in front of a reset after
/// TC has seen both, then take the reset.
#[inline(always)]
fn acks_past_reset(value: &FlowValue, pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK
        && (pkt.ack.wrapping_sub(value.reset_seq) as i32) > 1
}

/// Whether an in-window FIN or RST closes the flow (see [`established`]).
#[inline(always)]
fn closes(value: &mut FlowValue, direction: Direction, pkt: &Packet) -> bool {
    let d = direction as usize & 1;
    if pkt.tcp_flags & TCP_RST != 0 {
        if direction == Direction::Egress {
            return true;
        }
        let guest = Direction::Egress as usize;
        return value.flags & flags::ACK_SEEN[guest] == 0 || pkt.seq == value.ack[guest];
    }
    fin_closes(value, d)
}

/// Notes a FIN sent that way (`d`: `Direction` as index); whether FINs have now gone both ways.
#[inline(always)]
fn fin_closes(value: &mut FlowValue, d: usize) -> bool {
    value.flags |= flags::FIN_SEEN[d];
    value.flags & flags::FIN_SEEN[d ^ 1] != 0
}

/// A packet of a flow in the new table: the handshake moves on, and the packet that proves the
/// flow two-way promotes it. For TCP the proof comes from the guest's own stack, which a remote
/// sender cannot fake: the guest's ACK of the SYN-ACK when it opened the flow, its first data
/// after the handshake when the remote did (a remote's ACK the guest discards, bad checksum and
/// all, earns nothing), or for a flow picked up mid-way, the other side's first ACK: the
/// guest's with data for one picked up coming in, the remote's of all the guest has sent for
/// one picked up going out. A UDP flow is promoted by the guest's datagram once it has had a
/// reply and is `UDP_STREAM_NS` old (a stream).
#[inline(always)]
fn embryonic<F: Flow>(
    ctx: &TcContext,
    t: &Tables<F>,
    flow: &F,
    value: &mut FlowValue,
    direction: Direction,
    pkt: &Packet,
    now: u64,
) -> Result<Reason, Reason> {
    let reply = direction as u8 != value.origin;
    // A query or a ping lives while the side that opened it sends: a remote answering alone
    // keeps no port of the guest open to it (a later socket on it would take its datagrams).
    if pkt.kind == Kind::Tcp || !reply {
        refresh(value, now);
    }
    match pkt.kind {
        Kind::Tcp => {
            let f = pkt.tcp_flags;
            record_ack(value, direction, pkt);
            // A connection can close before it is proved (a server that greets and hangs up
            // at once sends its FIN before the ACK that would promote it): once the guest has
            // sent its FIN it finishes here, and is never promoted. A FIN counts only inside a
            // window its receiver has acknowledged, so a blind one marks nothing.
            if f & TCP_FIN != 0
                && acked(value, direction.reverse())
                && in_window(value, direction, pkt)
                && fin_closes(value, direction as usize & 1)
            {
                value.flags |= flags::CLOSING;
            }
            let from_guest = direction == Direction::Egress;
            let syn_ack = f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
            let plain_ack =
                f & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && f & TCP_ACK != 0 && !value.guest_done();
            // The remote's SYN-ACK must acknowledge the guest's SYN: a blind one would set the
            // window scales the flow's FIN and RST are held to.
            if value.state == state::SYN_SENT
                && reply
                && syn_ack
                && (from_guest || acks_syn(value, pkt))
            {
                value.state = state::SYN_ACKED;
                // Read only here: an unsolicited SYN-ACK never walks its options.
                settle_wscale(value, direction, parse::window_scale(ctx, pkt));
            } else if plain_ack {
                match value.state {
                    state::SYN_ACKED if !reply && from_guest => {
                        return promote(t, flow, value, now, Full::Forget)
                    }
                    // Only an ACK of all the guest sent (its SYN-ACK) proves the remote saw
                    // it: a blind one would have the guest's next bare ACK, which it also
                    // sends to a stray SYN, promote a handshake it never completed.
                    state::SYN_ACKED if !reply && acks_all_sent(value, pkt) => {
                        value.state = state::ACKED
                    }
                    // The guest's data: a bare ACK proves no socket, since the handshake's
                    // request socket answers an ACK it discards (one outside its window) with a
                    // bare ACK too, and keeps none (a review found it: three packets a slot,
                    // for a day).
                    state::ACKED if from_guest && pkt.payload_len > 0 => {
                        return promote(t, flow, value, now, Full::Forget)
                    }
                    // A pickup's reply. From the guest (the flow was picked up coming in), with
                    // data, since a socket in TIME_WAIT answers a stray ACK with a bare one.
                    // From the remote (picked up going out), acknowledging all the guest has
                    // sent, which a spoofed sender never saw (a review found it: a socket in
                    // TIME_WAIT answers the spoofed ACK, and any second one promoted that).
                    state::UNREPLIED
                        if reply
                            && if from_guest {
                                pkt.payload_len > 0
                            } else {
                                acks_all_sent_or_probe(value, pkt)
                            } =>
                    {
                        return promote(t, flow, value, now, Full::Forget)
                    }
                    // The guest's data, past the reset, on a handshake a remote's SYN started
                    // over a connection ([`flags::RESTARTED`]) and the guest never answered: its
                    // socket lives. Picked up, as above; the SYN's window scale was never agreed
                    // to: the widest. A full table leaves it here, to try again with the
                    // guest's next data: the connection goes on.
                    state::SYN_SENT
                        if reply
                            && from_guest
                            && pkt.payload_len > 0
                            && value.flags & flags::RESTARTED != 0
                            && acks_past_reset(value, pkt) =>
                    {
                        value.wscale[Direction::Ingress as usize & 1] = WSCALE_UNKNOWN;
                        return promote(t, flow, value, now, Full::Stay);
                    }
                    _ => {}
                }
            }
            Ok(Reason::Tracked)
        }
        // A query and its answer stay here; a flow still exchanging datagrams once it is old
        // enough is a stream, and earns an established slot.
        Kind::Udp => {
            if reply && value.state == state::UNREPLIED {
                value.state = state::REPLIED;
            }
            // The guest's datagram: a remote alone cannot make a stream of a query the guest
            // is done with.
            if value.state == state::REPLIED
                && direction == Direction::Egress
                && value.old_enough_to_stream(now)
            {
                return promote(t, flow, value, now, Full::Stay);
            }
            Ok(Reason::Tracked)
        }
        // Echo flows live in the new table: the key already fixes which way requests go.
        _ => Ok(Reason::Tracked),
    }
}

/// What [`promote`] does with a flow the full established table refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Full {
    /// Forgets it, refusing the packet: its next packets are unsolicited (a TCP handshake).
    Forget,
    /// Leaves it in the new table, where it goes on (a UDP stream, which worked there).
    Stay,
}

/// Moves a flow to the established table. A full table refuses it ([`Full`]). Never over an
/// entry there: the same flow, promoted by another CPU first, or another flow under the same
/// key (a wide key's local address folding alike), which keeps its slot while this one stays
/// in the new table.
#[inline(always)]
fn promote<F: Flow>(
    t: &Tables<F>,
    flow: &F,
    value: &FlowValue,
    now: u64,
    if_full: Full,
) -> Result<Reason, Reason> {
    let mut est = *value;
    est.state = state::ESTABLISHED;
    est.stamp(now);
    let full = match t.est.insert(flow.key(), flow.entry(est), Insert::New, now) {
        Ok(()) => false,
        Err(EEXIST) => {
            let ours = match t.est.get_ptr_mut(flow.key()) {
                Some(entry) => flow.state(unsafe { &mut *entry }).is_some(),
                None => false,
            };
            if !ours {
                return Ok(Reason::Tracked);
            }
            false
        }
        // Another CPU writing in the key's buckets (maybe promoting this very flow): the flow
        // stays in the new table, and its next packet tries again.
        Err(EBUSY) => return Ok(Reason::Tracked),
        Err(_) if if_full == Full::Stay => return Ok(Reason::Tracked),
        Err(_) => true,
    };
    t.new.remove(flow.key());
    if full {
        Err(Reason::ConntrackFull)
    } else {
        Ok(Reason::Tracked)
    }
}

/// Starts tracking a new flow a rule allowed (`carry`: what a SYN brings from the flow it
/// started over).
#[inline(always)]
pub fn track<F: Flow>(
    ctx: &TcContext,
    t: &Tables<F>,
    flow: &F,
    direction: Direction,
    pkt: &Packet,
    now: u64,
    carry: Carry,
) -> Result<(), Reason> {
    let mut value = FlowValue {
        last_seen: ticks(now),
        reset_seq: 0,
        origin: direction as u8,
        state: state::UNREPLIED,
        flags: 0,
        unscaled: 0,
        wscale: [WSCALE_UNKNOWN; 2],
        syn_data: 0,
        ack: [0; 2],
        win: [0; 2],
        guest_end: 0,
    };
    if pkt.kind == Kind::Tcp {
        if pkt.tcp_flags & TCP_SYN != 0 {
            value.state = state::SYN_SENT;
            if carry.reset {
                value.flags |= flags::RESTARTED;
                value.reset_seq = carry.reset_seq;
            }
            // Read only now: a refused SYN never walks its options.
            value.wscale[direction as usize & 1] = parse::window_scale(ctx, pkt);
            // The guest's own: what the remote's SYN-ACK answers. (Coming in it would be
            // unused, and the clamp's branch alone nearly doubled the states Linux 6.1's
            // verifier followed through the ingress programs.) Fewer, never more, when it does
            // not fit: a SYN-ACK must acknowledge the SYN.
            if direction == Direction::Egress {
                value.syn_data = if pkt.payload_len > u16::MAX as u32 {
                    u16::MAX
                } else {
                    pkt.payload_len as u16
                };
            }
        }
        record_ack(&mut value, direction, pkt);
    } else {
        value.set_born(now);
    }
    // An LRU insert always finds room: at worst it evicts the least recent new flow.
    t.new
        .insert(flow.key(), flow.entry(value), Insert::Any, now)
        .map_err(|_| Reason::ConntrackFull)
}

/// Notes the acknowledgment and window a TCP packet carries when they move forward (an older,
/// reordered ACK never winds the window back), and how far the guest's own segments reach. The
/// remote's acknowledgment is noted only up to what the guest sent: a forged one beyond it
/// would push the window past the guest's own FIN. Writes only on change.
#[inline(always)]
fn record_ack(value: &mut FlowValue, direction: Direction, pkt: &Packet) {
    // The guest's SYN-ACK starts its side of the connection: its numbers replace what an earlier
    // connection on the tuple left (a socket in TIME_WAIT answers the new SYN with a bare ACK of
    // its old numbers), which the client's ACK of the SYN-ACK would never match.
    let restart =
        direction == Direction::Egress && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    // Not from a reset: the guest answers a stray segment on a tuple it has no socket for with a
    // reset at that segment's acknowledgment, which its sender chose.
    if direction == Direction::Egress && pkt.tcp_flags & TCP_RST == 0 {
        let f = pkt.tcp_flags;
        let end = pkt
            .seq
            .wrapping_add(pkt.payload_len)
            .wrapping_add((f & TCP_SYN != 0) as u32)
            .wrapping_add((f & TCP_FIN != 0) as u32);
        if value.flags & flags::GUEST_END == 0 || restart {
            value.flags |= flags::GUEST_END;
            value.guest_end = end;
        } else if (end.wrapping_sub(value.guest_end) as i32) > 0 {
            value.guest_end = end;
        }
    }
    if pkt.tcp_flags & TCP_ACK == 0 {
        return;
    }
    let d = direction as usize & 1;
    // Nothing from the remote is noted before the guest has sent something to hold it to.
    if direction == Direction::Ingress
        && (value.flags & flags::GUEST_END == 0
            || (pkt.ack.wrapping_sub(value.guest_end) as i32) > 0)
    {
        return;
    }
    // A SYN's window is never scaled (RFC 7323): noted as it is, and read so.
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    // The remote's SYN-ACK answering the guest's SYN starts the remote's side, as the guest's
    // own starts the guest's: what was noted before it (a stale or blind ACK) was read at a
    // scale this SYN-ACK is about to settle otherwise, so no edge of it is kept (a review found
    // it: kept in the wrong units, the edge moved left).
    let answers = direction == Direction::Ingress
        && syn
        && value.state == state::SYN_SENT
        && value.origin == Direction::Egress as u8
        && acks_syn(value, pkt);
    let mut noted = (pkt.window, syn);
    if value.flags & flags::ACK_SEEN[d] == 0 || restart || answers {
        value.flags |= flags::ACK_SEEN[d];
    } else {
        let ahead = pkt.ack.wrapping_sub(value.ack[d]) as i32;
        if ahead < 0 || (ahead == 0 && value.win[d] == pkt.window && unscaled(value, d) == syn) {
            return;
        }
        noted = kept_window(value, d, pkt, syn);
        // The edge kept as it was: nothing to write (a write dirties the entry for every CPU).
        if ahead == 0 && noted == (value.win[d], unscaled(value, d)) {
            return;
        }
    }
    value.ack[d] = pkt.ack;
    value.win[d] = noted.0;
    if noted.1 {
        value.unscaled |= 1 << d;
    } else {
        value.unscaled &= !(1 << d);
    }
}

/// Whether the window noted for `d` (`Direction` as index) came with a SYN: never scaled.
#[inline(always)]
fn unscaled(value: &FlowValue, d: usize) -> bool {
    value.unscaled & (1 << d) != 0
}

/// The window scale shift of the windows sent in `d` (`Direction` as index): the most a side
/// may ask for where none is settled (unknown, or no option yet).
#[inline(always)]
fn scale(value: &FlowValue, d: usize) -> u32 {
    let mut shift = value.wscale[d];
    if shift > WSCALE_MAX {
        shift = WSCALE_MAX;
    }
    shift as u32
}

/// The shift the window noted for `d` is read with: none for a SYN's own.
#[inline(always)]
fn window_shift(value: &FlowValue, d: usize) -> u32 {
    if unscaled(value, d) {
        0
    } else {
        scale(value, d)
    }
}

/// The window to note with an acknowledgment that moved on (`d`: its direction as index): the
/// right edge (acknowledgment plus scaled window) never moves left. TC cannot tell a segment the
/// receiver's stack takes from one it discards (a bad checksum, a sequence number outside its
/// window), and such a segment may carry any window: one that shrank the edge would leave the
/// other side's FIN, sent inside the edge its stack knows, outside the window it is held to
/// (dropped with every retransmission, and the flow kept its slot a day: a review found it).
///
/// Returns the window to note and whether it is a SYN's (unscaled): the packet's own when its
/// edge reaches as far, else what is left of the old one past the new acknowledgment, in the
/// old one's terms. A SYN-ACK's window, which is not scaled, is so never read as scaled, nor
/// kept as the edge of a scaled one (a review found it: 65,160 read as 65,160 << 7).
#[inline(always)]
fn kept_window(value: &FlowValue, d: usize, pkt: &Packet, syn: bool) -> (u16, bool) {
    let old_shift = window_shift(value, d);
    let new_shift = if syn { 0 } else { scale(value, d) };
    // Both edges as offsets from the old acknowledgment, which the new one is at or past (by
    // less than 2^31): no sum wraps (a window is at most 2^30).
    let old_edge = (value.win[d] as u32) << old_shift;
    let moved = pkt.ack.wrapping_sub(value.ack[d]);
    let new_edge = moved + ((pkt.window as u32) << new_shift);
    if new_edge >= old_edge {
        return (pkt.window, syn);
    }
    // What is left of the old window past the new acknowledgment, rounded up: at most the old
    // window, so it fits the 16 bits it came from.
    let left = (old_edge - moved + (1u32 << old_shift) - 1) >> old_shift;
    (left as u16, unscaled(value, d))
}

/// The SYN-ACK answering the opener's SYN fixes both directions' window scale: each side's own
/// option if both sent one, none if either did not (RFC 7323).
#[inline(always)]
fn settle_wscale(value: &mut FlowValue, reply: Direction, reply_wscale: u8) {
    let r = reply as usize & 1;
    let o = r ^ 1;
    let opener = value.wscale[o];
    if opener == WSCALE_NONE || reply_wscale == WSCALE_NONE {
        value.wscale = [0, 0];
    } else {
        value.wscale[r] = reply_wscale;
    }
}

/// Whether a remote's SYN-ACK acknowledges the guest's SYN: all the guest sent, or less by
/// at most the data its SYN carried, which a Fast Open server may refuse (RFC 7413; Linux then
/// acknowledges the SYN alone, and the guest sends the data again). A blind sender must still
/// guess one of `syn_data + 1` numbers.
#[inline(always)]
fn acks_syn(value: &FlowValue, pkt: &Packet) -> bool {
    value.flags & flags::GUEST_END != 0
        && value.guest_end.wrapping_sub(pkt.ack) <= value.syn_data as u32
}

/// Whether a remote's ACK acknowledges exactly as far as the guest has sent.
#[inline(always)]
fn acks_all_sent(value: &FlowValue, pkt: &Packet) -> bool {
    value.flags & flags::GUEST_END != 0 && pkt.ack == value.guest_end
}

/// [`acks_all_sent`], or one past it: a keepalive or window probe is sent at one below the next
/// sequence number (Linux's `tcp_xmit_probe_skb`), and answered at the next, so an idle
/// connection picked up by its probe is promoted by the answer (a review found it). A blind
/// sender must still hit one of two numbers.
#[inline(always)]
fn acks_all_sent_or_probe(value: &FlowValue, pkt: &Packet) -> bool {
    value.flags & flags::GUEST_END != 0 && pkt.ack.wrapping_sub(value.guest_end) <= 1
}

/// Whether `side` has sent an acknowledgment this flow recorded.
#[inline(always)]
fn acked(value: &FlowValue, side: Direction) -> bool {
    value.flags & flags::ACK_SEEN[side as usize & 1] != 0
}

/// Whether a FIN or RST sent in `direction` falls inside the receiver's window: from one below
/// the receiver's last acknowledgment (a retransmitted FIN) to that plus its window.
#[inline(always)]
fn in_window(value: &FlowValue, direction: Direction, pkt: &Packet) -> bool {
    if !acked(value, direction.reverse()) {
        // The receiver never acknowledged anything we saw: nothing to hold the packet to.
        return true;
    }
    let receiver = direction.reverse() as usize & 1;
    let window = (value.win[receiver] as u32) << window_shift(value, receiver);
    let offset = pkt.seq.wrapping_sub(value.ack[receiver]).wrapping_add(1);
    offset <= window.saturating_add(1)
}
