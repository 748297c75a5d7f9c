//! Connection tracking: flows a rule allowed, keyed from the NIC's point of view so that a packet
//! and its reply share one entry.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use trove_isolate_common::{
    conntrack::{self as ct, flags, FlowKey, FlowValue},
    proto, Direction, Reason, Role,
};

use crate::{
    maps::CONNTRACK,
    packet::{Kind, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn key(role: Role, direction: Direction, pkt: &Packet) -> FlowKey {
    let (local, remote, local_port, remote_port) = match direction {
        Direction::Ingress => (pkt.dst, pkt.src, pkt.dst_port, pkt.src_port),
        Direction::Egress => (pkt.src, pkt.dst, pkt.src_port, pkt.dst_port),
    };
    FlowKey {
        role: role as u8,
        proto: pkt.proto,
        family: pkt.family,
        _pad: 0,
        local_port,
        remote_port,
        local,
        remote,
    }
}

#[inline(always)]
fn timeout(pkt: &Packet, value: &FlowValue) -> u64 {
    match pkt.proto {
        proto::TCP if value.flags & flags::CLOSING != 0 => ct::TCP_CLOSING_TIMEOUT_NS,
        proto::TCP => ct::TCP_TIMEOUT_NS,
        proto::UDP => ct::UDP_TIMEOUT_NS,
        _ => ct::ICMP_TIMEOUT_NS,
    }
}

/// Whether `key` is a live tracked flow; refreshes it (at most once a second) and notes TCP
/// closing. An expired entry counts as absent, so its next packet is judged as new.
#[inline(always)]
pub fn lookup(key: &FlowKey, pkt: &Packet) -> bool {
    let Some(value) = CONNTRACK.get_ptr_mut(key) else {
        return false;
    };
    let value = unsafe { &mut *value };
    let now = unsafe { bpf_ktime_get_ns() };
    let idle = now.saturating_sub(value.last_seen_ns);
    if idle > timeout(pkt, value) {
        return false;
    }
    if pkt.proto == proto::TCP {
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            value.flags |= flags::CLOSING;
        } else if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // The 5-tuple is being reused by a new connection.
            value.flags &= !flags::CLOSING;
        }
    }
    if idle > ct::REFRESH_NS {
        value.last_seen_ns = now;
    }
    true
}

/// Whether the flow an ICMP error quotes is tracked. The quoted packet crossed the NIC the other
/// way, so it is keyed in the opposite direction. No refresh: errors do not keep flows alive.
#[inline(always)]
pub fn related(role: Role, direction: Direction, quoted: &Packet) -> bool {
    let quoted_direction = match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    let key = key(role, quoted_direction, quoted);
    match CONNTRACK.get_ptr(key) {
        Some(value) => {
            let value = unsafe { &*value };
            let now = unsafe { bpf_ktime_get_ns() };
            now.saturating_sub(value.last_seen_ns) <= timeout(quoted, value)
        }
        None => false,
    }
}

/// Records a new flow a rule allowed.
#[inline(always)]
pub fn track(key: &FlowKey, direction: Direction, pkt: &Packet) -> Result<(), Reason> {
    let closing = pkt.kind == Kind::Stream
        && pkt.proto == proto::TCP
        && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let value = FlowValue {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        origin: direction as u8,
        flags: if closing { flags::CLOSING } else { 0 },
        _pad: [0; 6],
    };
    CONNTRACK
        .insert(key, value, 0)
        .map_err(|_| Reason::ConntrackFull)
}
