//! Connection tracking: two tables per role.
//!
//! A flow a rule allowed starts in the **new** table (an LRU hash: small, short timeouts, a
//! flood of new flows evicts only other new flows) and is promoted to the **established** table
//! (a plain hash that never evicts) once it proves two-way: the completed TCP handshake, the
//! first reply of a picked-up TCP flow, or for UDP a reply and the guest still sending after
//! [`UDP_STREAM_NS`] (a query and its answer stay new). When the established table is full,
//! promotion fails and the flow is refused (`conntrack_full`) instead of evicting an
//! established one, as nf_conntrack's early drop spares assured entries. ICMP echo flows stay
//! in the new table. A TCP flow that closes goes back to the new table to finish (or never
//! leaves it, when it closes before it is proved), as does one the remote may have reset, so
//! the established table holds open flows only: connection churn cannot fill it.
//!
//! A flow is keyed from the protected NIC's point of view (local / remote), so a packet and its
//! reply find the same entry whichever direction they cross. The role leads the key as in the
//! policy map.
//!
//! Each table comes in two keyings ([`Keying`]): TCP over IPv4 (the database's and RabbitMQ's
//! traffic) has tables of its own keyed by the 12-byte [`FlowKey4`], every other flow (IPv6, UDP,
//! ICMP echo) tables keyed by the 24-byte [`WideKey`]. The kernel hashes (jhash) and compares the
//! whole key on every lookup, and jhash mixes 12 bytes at a time only while more than 12 remain:
//! a key of 12 bytes is hashed without a round of mixing, one of 24 with one round, one of 36
//! with two (BENCHMARKS.md, section 1), on the path every packet of an established flow takes.
//! An IPv6 flow is 36 bytes of addresses and ports, so its local address goes in the value
//! ([`WideValue`]), checked on every hit, and the key holds only a fold of it. Userspace sees
//! every flow as a [`FlowKey`] ([`FlowKey4::widen`], [`WideKey::widen`]).

use crate::{family, proto, Direction, Role};

/// Established flows per role and keying.
pub const EST_MAX_ENTRIES: u32 = 65_536;
/// Not-yet-established flows per role and keying.
pub const NEW_MAX_ENTRIES: u32 = 16_384;

/// An unanswered or half-open flow in the new table.
pub const NEW_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
/// Idle time after which an established TCP flow is forgotten.
pub const TCP_TIMEOUT_NS: u64 = 24 * 3600 * 1_000_000_000;
/// After FINs both ways or a reset: long enough for the closing handshake to finish.
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
pub const UDP_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
/// A UDP flow earns an established slot once the guest still sends on it this long after it
/// began, with a reply seen: a stream. A query and its answer (DNS, NTP) finish sooner and stay
/// in the new table, where they time out after [`NEW_TIMEOUT_NS`] or are evicted, so a process
/// that sends many queries from many ports churns the new table, never filling the established
/// one (nf_conntrack's UDP stream rule, with its 2 s).
pub const UDP_STREAM_NS: u64 = 2 * 1_000_000_000;
/// The flow tables keep time in ticks of 2^20 ns (about a millisecond) of the coarse clock, in
/// 32 bits ([`ticks`]): they wrap after 52 days, and a flow's timeouts are a day at most. (A
/// 64-bit stamp made an entry 40 bytes, which cost every connection a few per cent.)
pub const TICK_SHIFT: u32 = 20;
/// `last_seen` is refreshed at most this often, to keep per-packet writes rare.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// The coarse clock's `now_ns` in the flow tables' ticks ([`TICK_SHIFT`]).
#[inline(always)]
pub const fn ticks(now_ns: u64) -> u32 {
    (now_ns >> TICK_SHIFT) as u32
}

/// How far ahead of a reader's clock a stamp may be and still be taken as just made (about 73
/// minutes): another CPU may stamp a flow with a clock it read after this reader read its own
/// (a jiffy apart, or as long as the hypervisor stalls the reader's vCPU between its clock and
/// the entry), and the sweep reads entries the datapath stamps as it walks. Taken for a whole
/// wrap of the clock (52 days) old, such a flow would be expired, and removed, while live. The
/// longest timeout is a day, far inside the rest of the wrap.
pub const AHEAD_TICKS: u32 = 1 << 22;

/// Ticks from the stamp `then` to `now_ns`; 0 for a stamp at most [`AHEAD_TICKS`] ahead.
#[inline(always)]
pub const fn age(now_ns: u64, then: u32) -> u32 {
    let age = ticks(now_ns).wrapping_sub(then);
    if age > u32::MAX - AHEAD_TICKS {
        0
    } else {
        age
    }
}

/// Window scale assumed when a flow's handshake was not seen (picked up mid-flow): the largest
/// RFC 7323 allows, so that only the sequence check, never a legitimate packet, suffers.
pub const WSCALE_UNKNOWN: u8 = 0xff;
/// A SYN without the window scale option: neither side scales (RFC 7323 section 2.2).
pub const WSCALE_NONE: u8 = 0xfe;
pub const WSCALE_MAX: u8 = 14;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub role: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: u8,
    /// Network byte order. ICMP echo: the identifier in `local_port` and [`echo_marker`] of the
    /// request's direction in `remote_port`, so a request the other way is another flow.
    pub local_port: u16,
    pub remote_port: u16,
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of a packet crossing the NIC of `role` in `direction`, from the NIC's point of
    /// view. Ports as on the wire (network byte order).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn new(
        role: Role,
        direction: Direction,
        proto: u8,
        family: u8,
        src: [u8; 16],
        dst: [u8; 16],
        src_port: u16,
        dst_port: u16,
    ) -> FlowKey {
        let (local, remote, local_port, remote_port) = match direction {
            Direction::Ingress => (dst, src, dst_port, src_port),
            Direction::Egress => (src, dst, src_port, dst_port),
        };
        FlowKey {
            role: role as u8,
            proto,
            family,
            _pad: 0,
            local_port,
            remote_port,
            local,
            remote,
        }
    }

    /// Whether this is an ICMP echo flow (kept in the new table only).
    pub const fn is_echo(&self) -> bool {
        matches!(
            (self.proto, self.family),
            (proto::ICMP, family::V4) | (proto::ICMPV6, family::V6)
        )
    }
}

/// Which tables a flow lives in, by the key they use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keying {
    /// TCP over IPv4: [`FlowKey4`].
    Tcp4,
    /// Every other flow: [`WideKey`].
    Wide,
}

impl Keying {
    pub const ALL: [Keying; 2] = [Keying::Tcp4, Keying::Wide];

    /// The metric label value.
    pub const fn name(self) -> &'static str {
        match self {
            Keying::Tcp4 => "tcp4",
            Keying::Wide => "wide",
        }
    }

    /// The tables of a flow of `proto` over `family`.
    #[inline(always)]
    pub const fn of(family: u8, proto: u8) -> Keying {
        if family == family::V4 && proto == proto::TCP {
            Keying::Tcp4
        } else {
            Keying::Wide
        }
    }
}

/// The key of a TCP flow over IPv4: [`FlowKey`] without what its table already says (the role,
/// the family and the protocol) and with 4-byte addresses. Words, not byte arrays, so the
/// datapath builds it with a few stores; 12 bytes, so the kernel hashes it without a mixing round.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// The address bytes as on the wire, read as a native-endian word.
    pub local: u32,
    pub remote: u32,
    /// As in [`FlowKey`].
    pub local_port: u16,
    pub remote_port: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey4>() == 12);

impl FlowKey4 {
    /// The key of `key` if it is a TCP flow over IPv4 ([`Keying::Tcp4`]).
    pub fn narrow(key: &FlowKey) -> Option<FlowKey4> {
        if Keying::of(key.family, key.proto) != Keying::Tcp4 {
            return None;
        }
        let word = |a: &[u8; 16]| u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        Some(FlowKey4 {
            local: word(&key.local),
            remote: word(&key.remote),
            local_port: key.local_port,
            remote_port: key.remote_port,
        })
    }

    /// The same flow as a [`FlowKey`] of `role`'s table.
    pub fn widen(&self, role: Role) -> FlowKey {
        let sixteen = |a: u32| {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.to_ne_bytes());
            out
        };
        FlowKey {
            role: role as u8,
            proto: proto::TCP,
            family: family::V4,
            _pad: 0,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local: sixteen(self.local),
            remote: sixteen(self.remote),
        }
    }
}

/// The key of a flow of the wide tables (every flow but TCP over IPv4): the remote address and
/// both ports exactly, the family and protocol exactly, and the local address folded into the
/// rest of one word. The value holds the local address itself ([`WideValue::local`]), and a
/// lookup that finds another local address there has found another flow. Two flows share a key
/// only when one remote endpoint talks to two of the NIC's addresses whose folds are equal (see
/// [`fold`]); one of them is tracked at a time. 24 bytes: the kernel's hash mixes it once, where
/// the 40 bytes of a [`FlowKey`] take three rounds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WideKey {
    /// The address bytes as on the wire, read as native-endian words (IPv4: the first word).
    pub remote: [u32; 4],
    /// As in [`FlowKey`].
    pub local_port: u16,
    pub remote_port: u16,
    /// [`fold`] of the local address with [`class`] of the flow in its low byte.
    pub tag: u32,
}

const _: () = assert!(core::mem::size_of::<WideKey>() == 24);

/// A wide table's entry: the flow, and the local address its key only folds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WideValue {
    pub flow: FlowValue,
    /// As in [`WideKey::remote`].
    pub local: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<WideValue>() == 48);

/// An address's bytes as native-endian words, the form the datapath's keys hold.
#[inline(always)]
pub const fn words(a: &[u8; 16]) -> [u32; 4] {
    const fn w(a: &[u8; 16], i: usize) -> u32 {
        u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
    }
    [w(a, 0), w(a, 4), w(a, 8), w(a, 12)]
}

/// The inverse of [`words`].
#[inline(always)]
pub fn bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// A local address folded into a [`WideKey::tag`]: mixed (multiply and shift, word by word) so
/// that every bit of the address moves the top 24 bits, which are kept (the low byte is left for
/// [`class`]). Addresses a NIC has differ in structured ways (two prefixes, one interface
/// identifier; subnet N, host N), which a plain XOR of the words would fold alike. The daemon
/// warns when two of a NIC's addresses fold alike anyway (1 in 16,777,216 for a pair).
#[inline(always)]
pub const fn fold(local: &[u32; 4]) -> u32 {
    let mut h: u32 = 0;
    let mut i = 0;
    while i < 4 {
        h = (h ^ local[i]).wrapping_mul(0x9e37_79b1);
        h ^= h >> 16;
        i += 1;
    }
    h.wrapping_mul(0x85eb_ca6b) & !0xff
}

/// The protocol and family of a wide flow, in one byte: the protocol numbers in use are below
/// 128, so the family takes the top bit.
#[inline(always)]
pub const fn class(family: u8, proto: u8) -> u32 {
    (proto & 0x7f) as u32 | if family == family::V6 { 0x80 } else { 0 }
}

impl WideKey {
    /// The key of a flow whose local address is `local` (as [`words`]).
    #[inline(always)]
    pub const fn new(
        family: u8,
        proto: u8,
        local: &[u32; 4],
        remote: [u32; 4],
        local_port: u16,
        remote_port: u16,
    ) -> WideKey {
        WideKey {
            remote,
            local_port,
            remote_port,
            tag: fold(local) | class(family, proto),
        }
    }

    /// The key of `key` if it is not a TCP flow over IPv4 ([`Keying::Wide`]), and the local
    /// address its value holds.
    pub fn narrow(key: &FlowKey) -> Option<(WideKey, [u32; 4])> {
        if Keying::of(key.family, key.proto) != Keying::Wide {
            return None;
        }
        let local = words(&key.local);
        let wide = WideKey::new(
            key.family,
            key.proto,
            &local,
            words(&key.remote),
            key.local_port,
            key.remote_port,
        );
        Some((wide, local))
    }

    /// The flow of this key and `value` as a [`FlowKey`] of `role`'s table.
    pub fn widen(&self, role: Role, value: &WideValue) -> FlowKey {
        let class = (self.tag & 0xff) as u8;
        FlowKey {
            role: role as u8,
            proto: class & 0x7f,
            family: if class & 0x80 != 0 {
                family::V6
            } else {
                family::V4
            },
            _pad: 0,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local: bytes(&value.local),
            remote: bytes(&self.remote),
        }
    }
}

/// What an ICMP echo flow's key holds in `remote_port`: the direction its requests travel.
#[inline(always)]
pub const fn echo_marker(request_direction: Direction) -> u16 {
    (request_direction as u16 + 1).to_be()
}

/// `FlowValue::state`.
pub mod state {
    /// TCP: the opening SYN was seen.
    pub const SYN_SENT: u8 = 1;
    /// TCP: the SYN-ACK answered it; the opener's ACK completes the handshake.
    pub const SYN_ACKED: u8 = 2;
    /// UDP, ICMP echo, or TCP picked up mid-flow: waiting for the first reply.
    pub const UNREPLIED: u8 = 3;
    /// In the established table; in the new table once it closes ([`super::flags::CLOSING`]).
    pub const ESTABLISHED: u8 = 4;
    /// TCP opened by the remote: the remote acknowledged the SYN-ACK; the guest's first data
    /// after the handshake promotes it (a bare ACK proves no socket).
    pub const ACKED: u8 = 5;
    /// UDP: a reply was seen; promoted once it is a stream ([`super::UDP_STREAM_NS`]).
    pub const REPLIED: u8 = 6;
}

/// `FlowValue::flags` bits.
pub mod flags {
    /// The flow is closing (FINs both ways, or a reset): it finishes in the new table, with
    /// [`super::TCP_CLOSING_TIMEOUT_NS`] once it was established.
    pub const CLOSING: u8 = 1;
    /// `ack[Direction::Ingress]` / `ack[Direction::Egress]` hold a value.
    pub const ACK_SEEN: [u8; 2] = [2, 4];
    /// An in-window FIN was sent that way (indexed by `Direction`).
    pub const FIN_SEEN: [u8; 2] = [8, 16];
    /// `guest_end` holds a value.
    pub const GUEST_END: u8 = 32;
    /// The remote sent a reset inside the window that closes nothing by the exact rule: the
    /// guest's stack may take it all the same (Linux also takes one at its next expected
    /// sequence number, which runs ahead of the last acknowledgment it sent, at the right edge
    /// of its highest SACK block, and one below it after the remote's FIN), and then never sends
    /// on the tuple again. Such a flow gives its established slot back
    /// ([`super::FlowValue::releases_slot`]) until the guest acknowledges more than one past the
    /// highest such reset ([`super::FlowValue::reset_seq`]): a socket whose next expected
    /// sequence number is that far past a reset's never takes it.
    /// Any other packet the guest sends proves nothing: TC sees a batch of packets before the
    /// stack does, so the guest may still acknowledge the data in front of a reset it takes.
    pub const RESET_SEEN: u8 = 64;
    /// A remote's SYN started this handshake over a connection the guest was not done with and
    /// a remote's reset had demoted ([`RESET_SEEN`]; its `reset_seq` carried): a spoofed SYN
    /// the guest's stack discards, its socket living on. The guest's data on the handshake,
    /// with no SYN-ACK, picks the connection up once it acknowledges past that reset (a review
    /// found the connection left to lapse in the new table; a second, that without the reset's
    /// rule a client could have a socket's last segments promote it).
    pub const RESTARTED: u8 = 128;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// [`ticks`] of `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) at the last refresh.
    pub last_seen: u32,
    /// TCP, with [`flags::RESET_SEEN`]: the highest sequence number of the remote's resets the
    /// guest's stack may take.
    pub reset_seq: u32,
    /// [`crate::Direction`] of the packet that opened the flow.
    pub origin: u8,
    /// [`state`].
    pub state: u8,
    /// [`flags`].
    pub flags: u8,
    /// TCP: bit `1 << Direction` is set where `win` came with a SYN (a SYN-ACK), whose window is
    /// never scaled (RFC 7323): it is read as it is. (Was padding: an entry written before reads
    /// 0, every window scaled.)
    pub unscaled: u8,
    /// TCP window scale of the windows sent each way (indexed by `Direction`), or
    /// [`WSCALE_UNKNOWN`].
    pub wscale: [u8; 2],
    /// TCP: the bytes of data the guest's opening SYN carried (TCP Fast Open), at most 65,535. A
    /// server that refuses them acknowledges the SYN alone (RFC 7413, section 4.2), so the
    /// guest's handshake is answered by an acknowledgment from `guest_end - syn_data` to
    /// `guest_end`. (Was padding: an entry written before reads 0, the exact rule.)
    pub syn_data: u16,
    /// TCP: the highest acknowledgment number sent each way (indexed by `Direction`): the
    /// receiver's next expected sequence number as far as the wire shows.
    pub ack: [u32; 2],
    /// TCP: the (unscaled) window sent with that acknowledgment.
    pub win: [u16; 2],
    /// TCP: the sequence number just past the furthest the guest has sent (its data, SYN and
    /// FIN). The remote's acknowledgment is recorded only up to it: a blind sender cannot move
    /// it past what the guest sent (and so hold the guest's own FIN out of the window).
    /// UDP: when the flow began, in [`ticks`] (with [`flags::GUEST_END`] clear).
    pub guest_end: u32,
}

const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);

impl FlowValue {
    /// Whether the guest has finished with the flow: it sent its FIN, or the flow closed. Such a
    /// flow holds no established slot (it finishes in the new table, with the closing timeout):
    /// the slots left are the guest's open sockets, which the database's connection limit
    /// bounds, whatever the remote does (a client that never answers the guest's FIN included).
    #[inline(always)]
    pub const fn guest_done(&self) -> bool {
        self.flags & (flags::CLOSING | flags::FIN_SEEN[crate::Direction::Egress as usize]) != 0
    }

    /// Notes that a UDP flow begins at `now_ns` ([`FlowValue::guest_end`]).
    #[inline(always)]
    pub fn set_born(&mut self, now_ns: u64) {
        self.guest_end = ticks(now_ns);
    }

    /// Whether a UDP flow that began with [`FlowValue::set_born`] is [`UDP_STREAM_NS`] old at
    /// `now_ns`.
    #[inline(always)]
    pub fn old_enough_to_stream(&self, now_ns: u64) -> bool {
        age(now_ns, self.guest_end) >= ticks(UDP_STREAM_NS)
    }

    /// Whether the flow holds no established slot: the guest is done with it (it finishes in the
    /// new table, with the closing timeout), or the remote sent a reset the guest's stack may
    /// take ([`flags::RESET_SEEN`]: it waits in the new table, with its usual timeout, where the
    /// LRU may evict it if it is dead).
    #[inline(always)]
    pub const fn releases_slot(&self) -> bool {
        self.guest_done() || self.flags & flags::RESET_SEEN != 0
    }

    /// Idle time after which the flow is forgotten.
    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8) -> u64 {
        if self.state != state::ESTABLISHED {
            return NEW_TIMEOUT_NS;
        }
        match proto {
            proto::TCP if self.guest_done() => TCP_CLOSING_TIMEOUT_NS,
            proto::TCP => TCP_TIMEOUT_NS,
            _ => UDP_TIMEOUT_NS,
        }
    }

    #[inline(always)]
    pub const fn expired(&self, proto: u8, now_ns: u64) -> bool {
        age(now_ns, self.last_seen) > ticks(self.timeout_ns(proto))
    }

    /// Stamps the flow as seen at `now_ns`.
    #[inline(always)]
    pub fn stamp(&mut self, now_ns: u64) {
        self.last_seen = ticks(now_ns);
    }

    /// Whether the flow was last stamped more than [`REFRESH_NS`] before `now_ns`.
    #[inline(always)]
    pub const fn stale(&self, now_ns: u64) -> bool {
        age(now_ns, self.last_seen) > ticks(REFRESH_NS)
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WideKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WideValue {}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> FlowValue {
        FlowValue {
            last_seen: 0,
            reset_seq: 0,
            origin: 0,
            state: 0,
            flags: 0,
            unscaled: 0,
            wscale: [0; 2],
            syn_data: 0,
            ack: [0; 2],
            win: [0; 2],
            guest_end: 0,
        }
    }

    /// Flow time in 32-bit ticks: the timeouts hold to within a tick, across the ticks' wrap.
    #[test]
    fn flow_time_is_kept_in_ticks_and_wraps() {
        const S: u64 = 1_000_000_000;
        let mut v = FlowValue {
            state: state::ESTABLISHED,
            ..zeroed()
        };
        // Just before the ticks wrap, and 3 s into the day of the boot.
        for now in [((1u64 << 32) - 10) << TICK_SHIFT, 3 * S] {
            v.stamp(now);
            assert!(!v.expired(proto::UDP, now + UDP_TIMEOUT_NS - S));
            assert!(v.expired(proto::UDP, now + UDP_TIMEOUT_NS + S));
            assert!(!v.expired(proto::TCP, now + TCP_TIMEOUT_NS - S));
            assert!(v.expired(proto::TCP, now + TCP_TIMEOUT_NS + S));
            assert!(!v.stale(now + REFRESH_NS / 2) && v.stale(now + 2 * REFRESH_NS));
            // A stamp made with a clock read after the reader's: just made, not a wrap old.
            let before = now - 5 * (1 << TICK_SHIFT);
            assert!(!v.expired(proto::TCP, before) && !v.expired(proto::UDP, before));
            assert!(!v.stale(before));
            // An hour ahead (a reader's vCPU stalled) too; a day ahead is a wrap's worth old.
            assert!(!v.expired(proto::TCP, now.wrapping_sub(3600 * S)));
            assert!(v.expired(proto::UDP, now.wrapping_sub(86_400 * S)));
            v.set_born(now);
            assert!(!v.old_enough_to_stream(now + UDP_STREAM_NS - S / 10));
            assert!(v.old_enough_to_stream(now + UDP_STREAM_NS + S / 100));
            assert!(!v.old_enough_to_stream(before));
        }
    }

    #[test]
    fn a_tcp_over_ipv4_key_narrows_and_widens_to_the_same_flow() {
        let key = FlowKey::new(
            Role::Business,
            Direction::Ingress,
            proto::TCP,
            family::V4,
            [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            50000u16.to_be(),
            3306u16.to_be(),
        );
        let narrow = FlowKey4::narrow(&key).expect("an IPv4 key");
        assert_eq!(narrow.local.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(narrow.remote.to_ne_bytes(), [198, 51, 100, 7]);
        assert_eq!(narrow.widen(Role::Business), key);
        let mut v6 = key;
        v6.family = family::V6;
        assert_eq!(FlowKey4::narrow(&v6), None);
        let mut udp = key;
        udp.proto = proto::UDP;
        assert_eq!(FlowKey4::narrow(&udp), None);
    }

    #[test]
    fn a_wide_key_and_its_value_give_back_the_flow() {
        let v6 = FlowKey::new(
            Role::Management,
            Direction::Egress,
            proto::TCP,
            family::V6,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            40000u16.to_be(),
            5672u16.to_be(),
        );
        let udp4 = FlowKey::new(
            Role::Business,
            Direction::Ingress,
            proto::UDP,
            family::V4,
            [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            5353u16.to_be(),
            53u16.to_be(),
        );
        for key in [v6, udp4] {
            let (wide, local) = WideKey::narrow(&key).expect("a wide flow");
            let value = WideValue {
                flow: zeroed(),
                local,
            };
            let role = if key.role == Role::Business as u8 {
                Role::Business
            } else {
                Role::Management
            };
            assert_eq!(wide.widen(role, &value), key);
        }
        let tcp4 = FlowKey {
            family: family::V4,
            proto: proto::TCP,
            ..udp4
        };
        assert_eq!(WideKey::narrow(&tcp4), None);
    }

    #[test]
    fn the_family_and_protocol_are_part_of_a_wide_key() {
        // An IPv6 address may begin with an IPv4 address's bytes: the family still tells them apart.
        let remote = words(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let local = words(&[198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let key = |family, proto| WideKey::new(family, proto, &local, remote, 1, 2);
        let all = [
            key(family::V4, proto::UDP),
            key(family::V6, proto::UDP),
            key(family::V6, proto::TCP),
            key(family::V4, proto::ICMP),
            key(family::V6, proto::ICMPV6),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn an_interface_identifier_on_two_prefixes_folds_two_ways() {
        let iid = [0x02, 0x16, 0x3e, 0xff, 0xfe, 0x12, 0x34, 0x56];
        let mut link_local = [0u8; 16];
        link_local[..2].copy_from_slice(&[0xfe, 0x80]);
        link_local[8..].copy_from_slice(&iid);
        let mut global = [0u8; 16];
        global[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        global[8..].copy_from_slice(&iid);
        assert_ne!(fold(&words(&link_local)), fold(&words(&global)));
        // Subnet N, host N; prefixes apart in one byte; IPv4 addresses apart in the first byte.
        let at = |a: &str| words(&crate::family::key_addr(a.parse().unwrap()).1);
        let (v6, v4) = (at, at);
        for (a, b) in [
            (v6("2001:db8:0:1::1"), v6("2001:db8:0:2::2")),
            (v6("2001:db8:100::1"), v6("2001:db8:200::1")),
            (v6("2001:db8:1::1"), v6("2001:db8:1::5:0:4")),
            (v4("10.1.2.3"), v4("11.1.2.3")),
            (v4("192.0.2.1"), v4("193.0.2.1")),
        ] {
            assert_ne!(fold(&a), fold(&b));
        }
    }
}
