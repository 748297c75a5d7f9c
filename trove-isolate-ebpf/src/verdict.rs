//! The pipeline and its one exit. Stages return `Result<pass reason, drop reason>`; only
//! [`run`] turns that into a verdict, counts it and picks the TC action.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use trove_isolate_common::{action, Direction, Mode, Reason, Role, Verdict};

use crate::{conntrack, counters, maps::SETTINGS, packet::Parsed, parse, policy};

#[inline(always)]
pub fn run(ctx: &TcContext, role: Role, direction: Direction) -> i32 {
    let (verdict, reason) = match decide(ctx, role, direction) {
        Ok(reason) => (Verdict::Pass, reason),
        Err(reason) if audit(role) => (Verdict::Audit, reason),
        Err(reason) => (Verdict::Drop, reason),
    };
    counters::count(role, direction, verdict, reason, ctx.len());
    match verdict {
        Verdict::Pass => action::PASS,
        Verdict::Audit => {
            debug!(
                ctx,
                "audit role={} dir={} reason={}", role as u8, direction as u8, reason as u8
            );
            action::PASS
        }
        Verdict::Drop => {
            debug!(
                ctx,
                "drop role={} dir={} reason={}", role as u8, direction as u8, reason as u8
            );
            action::DROP
        }
    }
}

#[inline(always)]
fn decide(ctx: &TcContext, role: Role, direction: Direction) -> Result<Reason, Reason> {
    let pkt = match parse::parse(ctx)? {
        Parsed::Arp => return Ok(Reason::Arp),
        Parsed::NeighborDiscovery => return Ok(Reason::NeighborDiscovery),
        Parsed::Related(quoted) => {
            return match conntrack::related(role, direction, &quoted) {
                true => Ok(Reason::Related),
                false => Err(Reason::NotTracked),
            }
        }
        Parsed::Flow(pkt) => pkt,
    };
    let key = conntrack::key(role, direction, &pkt);
    if conntrack::lookup(&key, &pkt) {
        return Ok(Reason::Tracked);
    }
    if !pkt.opens_flow(direction) {
        return Err(Reason::NotTracked);
    }
    policy::check(role, direction, &pkt)?;
    conntrack::track(&key, direction, &pkt)?;
    Ok(Reason::Allowed)
}

/// Read only on the drop path, so passing packets never touch the settings map.
#[inline(always)]
fn audit(role: Role) -> bool {
    matches!(SETTINGS.get(role as u32), Some(s) if s.mode == Mode::Audit as u8)
}
