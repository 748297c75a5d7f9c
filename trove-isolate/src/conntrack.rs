//! The daemon's side of connection tracking: revoking flows a new policy no longer allows, and
//! sweeping expired established flows (that table never evicts, so its expired entries would
//! otherwise hold their slots until a packet of the same flow came by).

use std::net::IpAddr;

use trove_isolate_common::{
    conntrack::{age, ticks, FlowKey, FlowValue, Keying, REFRESH_NS},
    family, Direction, Role,
};

use crate::{
    datapath::{Datapath, Table},
    model,
    policy::Policy,
};

/// The remote address of a flow key.
pub fn remote_ip(key: &FlowKey) -> IpAddr {
    family::ip(key.family, &key.remote)
}

pub fn local_ip(key: &FlowKey) -> IpAddr {
    family::ip(key.family, &key.local)
}

/// Whether `policy` would let the flow's opening packet through: the reference model's rule
/// lookup, for the direction the flow was opened in and the destination port of that packet.
pub fn allowed_by(policy: &Policy, key: &FlowKey, value: &FlowValue) -> bool {
    let (Some(role), Some(origin)) = (Role::from_u8(key.role), Direction::from_u8(value.origin))
    else {
        return false;
    };
    let port = u16::from_be(match origin {
        Direction::Ingress => key.local_port,
        Direction::Egress => key.remote_port,
    });
    model::policy_allows(policy, role, origin, key.proto, remote_ip(key), port)
}

/// Removes every tracked flow (both tables, both roles) that `policy` does not allow. Run after
/// the new policy is in the map, so no flow it refuses can start again. Flows move between the
/// tables while they are walked (promoted to the established table, or back to the new one when
/// they close or a remote's reset demotes them), and a flow in one table while the other is
/// walked is missed: so both tables are walked in turns, twice (a flow that moves once is
/// caught), and again while a turn still meets a flow to revoke, up to [`REVOKE_ROUNDS`] (a
/// remote that moves its connection back and forth to dodge the walk is missed by every turn
/// only by chance, about a quarter per table; a review found it dodged two turns often).
pub fn revoke(datapath: &mut Datapath, policy: &Policy) -> anyhow::Result<usize> {
    let mut removed = 0;
    for round in 0..REVOKE_ROUNDS {
        let mut met = 0;
        for table in Table::ALL {
            for role in Role::ALL {
                let stale: Vec<FlowKey> = datapath
                    .flows(role, table)?
                    .into_iter()
                    .filter(|(k, v)| !allowed_by(policy, k, v))
                    .map(|(k, _)| k)
                    .collect();
                met += stale.len();
                removed +=
                    datapath.remove_flows(role, table, &stale, |k, v| !allowed_by(policy, k, v))?;
            }
        }
        if round >= 1 && met == 0 {
            break;
        }
    }
    Ok(removed)
}

/// The most turns of [`revoke`] over both tables.
pub const REVOKE_ROUNDS: usize = 8;

/// What a sweep found: live flows per table, and per IP family in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub live: Vec<Live>,
    pub expired_removed: usize,
}

/// The live flows of one IP family in one of a role's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub role: Role,
    pub table: Table,
    pub keying: Keying,
    pub family: u8,
    pub flows: usize,
}

/// Deletes expired flows from both tables of both roles (and established entries that hold no
/// slot, [`FlowValue::releases_slot`]) and counts the live ones.
pub fn sweep(datapath: &mut Datapath) -> anyhow::Result<Occupancy> {
    let mut occupancy = Occupancy::default();
    for role in Role::ALL {
        for table in Table::ALL {
            // Also an established entry that should hold no slot: the datapath moves such a
            // flow to the new table at once, but leaves it where that move failed (another
            // CPU's flow under the key for an instant), for its next packet to try again, and
            // a connection the remote reset may never send one.
            // Such an entry idle for a while only: the sweep reads and removes it in two calls,
            // and the guest's ACK past a reset may clear `RESET_SEEN` between them.
            let gone = |now: u64, k: &FlowKey, v: &FlowValue| {
                v.expired(k.proto, now)
                    || (table == Table::Established
                        && v.releases_slot()
                        && age(now, v.last_seen) > ticks(2 * REFRESH_NS))
            };
            let flows = datapath.flows(role, table)?;
            // The clock read after the entries: one stamped after it would look a whole wrap
            // of the clock old, expired, and a live flow the datapath refreshed during the walk
            // would be removed.
            let now = monotonic_ns()?;
            let (expired, live): (Vec<_>, Vec<_>) =
                flows.into_iter().partition(|(k, v)| gone(now, k, v));
            let expired: Vec<FlowKey> = expired.into_iter().map(|(k, _)| k).collect();
            // Read again before each removal, with the clock read again after it: a SYN may
            // have opened a flow under an expired one's key meanwhile, or a packet refreshed it.
            occupancy.expired_removed += datapath.remove_flows(role, table, &expired, |k, v| {
                monotonic_ns().is_ok_and(|now| gone(now, k, v))
            })?;
            // Each table's count, so an alert can follow it; by family within (TCP over IPv4
            // only in its own tables).
            for keying in Keying::ALL {
                for fam in family::ALL {
                    if keying == Keying::Tcp4 && fam != family::V4 {
                        continue;
                    }
                    let flows = live
                        .iter()
                        .filter(|(k, _)| k.family == fam && Keying::of(k.family, k.proto) == keying)
                        .count();
                    occupancy.live.push(Live {
                        role,
                        table,
                        keying,
                        family: fam,
                        flows,
                    });
                }
            }
        }
    }
    Ok(occupancy)
}

/// The flow tables' clock, CLOCK_MONOTONIC_COARSE in ns: the programs read it with
/// `bpf_ktime_get_coarse_ns`, or off jiffies (`crate::clock`).
pub fn monotonic_ns() -> anyhow::Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}
