//! Connection tracking: two tables per role.
//!
//! A flow a rule allowed starts in the **new** table (an LRU hash: small, short timeouts, a
//! flood of new flows evicts only other new flows) and is promoted to the **established** table
//! (a plain hash that never evicts) once it proves two-way: the completed TCP handshake, or the
//! first reply of a UDP or picked-up TCP flow. When the established table is full, promotion
//! fails and the flow is refused (`conntrack_full`) instead of evicting an established one, as
//! nf_conntrack's early drop spares assured entries. ICMP echo flows stay in the new table. A
//! TCP flow that closes goes back to the new table to finish (or never leaves it, when it closes
//! before it is proved), so the established table holds open flows only: connection churn
//! cannot fill it.
//!
//! A flow is keyed from the protected NIC's point of view (local / remote), so a packet and its
//! reply find the same entry whichever direction they cross. The role leads the key as in the
//! policy map.
//!
//! Each table comes in two keyings ([`Keying`]): TCP over IPv4 (the database's and RabbitMQ's
//! traffic) has tables of its own keyed by the 12-byte [`FlowKey4`], every other flow (IPv6, UDP,
//! ICMP echo) tables keyed by the 40-byte [`FlowKey`]. The kernel hashes (jhash) and compares the
//! whole key on every lookup, and jhash mixes 12 bytes at a time only while more than 12 remain:
//! a key of 12 bytes is hashed without a round of mixing, which makes its lookup cost less than
//! half of a 16-byte key's (BENCHMARKS.md, section 1), on the path every packet of an established
//! flow takes. Userspace sees every flow as a [`FlowKey`] ([`FlowKey4::widen`]).

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
/// `last_seen` is refreshed at most this often, to keep per-packet writes rare.
pub const REFRESH_NS: u64 = 1_000_000_000;

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
    /// Every other flow: [`FlowKey`].
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// TCP opened by the remote: the remote acknowledged the SYN-ACK; the guest's first segment
    /// after the handshake promotes it.
    pub const ACKED: u8 = 5;
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
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last refresh.
    pub last_seen_ns: u64,
    /// [`crate::Direction`] of the packet that opened the flow.
    pub origin: u8,
    /// [`state`].
    pub state: u8,
    /// [`flags`].
    pub flags: u8,
    pub _pad: u8,
    /// TCP window scale of the windows sent each way (indexed by `Direction`), or
    /// [`WSCALE_UNKNOWN`].
    pub wscale: [u8; 2],
    pub _pad2: [u8; 2],
    /// TCP: the highest acknowledgment number sent each way (indexed by `Direction`): the
    /// receiver's next expected sequence number as far as the wire shows.
    pub ack: [u32; 2],
    /// TCP: the (unscaled) window sent with that acknowledgment.
    pub win: [u16; 2],
    /// TCP: the sequence number just past the furthest the guest has sent (its data, SYN and
    /// FIN). The remote's acknowledgment is recorded only up to it: a blind sender cannot move
    /// it past what the guest sent (and so hold the guest's own FIN out of the window).
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
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto)
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowValue {}

#[cfg(test)]
mod tests {
    use super::*;

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
}
