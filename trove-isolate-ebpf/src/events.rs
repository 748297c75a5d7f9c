//! Sampled drop events: a per-CPU budget, then the packet's head into the ring buffer.
//!
//! Runs only for packets that are dropped (or would be, in audit mode), after they are counted;
//! nothing here can change a verdict.

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_ktime_get_coarse_ns, helpers::bpf_skb_load_bytes,
    programs::TcContext, EbpfContext as _,
};
use trove_isolate_common::{
    events::{DropEvent, HEAD, WINDOW_NS},
    settings::Settings,
    Direction, Reason, Role, Verdict,
};

use crate::maps::{DROP_EVENTS, EVENT_BUDGET};

/// `settings`: the role's, as the caller read them for the verdict.
#[inline(always)]
pub fn sample(
    ctx: &TcContext,
    settings: Option<&Settings>,
    role: Role,
    direction: Direction,
    verdict: Verdict,
    reason: Reason,
) {
    let limit = match settings {
        Some(s) if s.events_per_cpu_second > 0 => s.events_per_cpu_second as u64,
        _ => return,
    };
    // Per role: a flood on one NIC does not silence the other's events.
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(role as u32) else {
        return;
    };
    // Per-CPU slot: no other writer.
    let budget = unsafe { &mut *budget };
    // Coarse: a budget window is a second long; every sampled drop pays for the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(budget.window_ns) >= WINDOW_NS {
        budget.window_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= limit {
        budget.suppressed += 1;
        return;
    }
    let Some(mut entry) = DROP_EVENTS.reserve::<DropEvent>(0) else {
        budget.suppressed += 1;
        return;
    };
    budget.sent += 1;
    let event = entry.as_mut_ptr();
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let len = ctx.len();
    let wanted = if len >= HEAD as u32 { HEAD as u32 } else { len };
    // The same as `wanted` for 1..=HEAD, in a range every kernel's verifier can see is
    // [1, HEAD] (the helper takes no zero length; 6.1 loses a plain `> 0` check).
    let size = (wanted.wrapping_sub(1) & (HEAD as u32 - 1)) + 1;
    unsafe {
        (*event).ktime_ns = now;
        (*event).len = len;
        (*event).ifindex = (*skb).ifindex;
        (*event).role = role as u8;
        (*event).direction = direction as u8;
        (*event).verdict = verdict as u8;
        (*event).reason = reason as u8;
        (*event)._pad = [0; 2];
        let loaded = bpf_skb_load_bytes(
            skb as *const _,
            0,
            (*event).head.as_mut_ptr() as *mut _,
            size,
        ) == 0;
        (*event).captured = if loaded && wanted > 0 { size as u16 } else { 0 };
    }
    entry.submit(0);
}
