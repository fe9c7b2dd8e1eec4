//! The budget of the port unreachables ferry sends (icmp.rs), as the kernel
//! limits its own ICMP errors: a node-wide token bucket (`icmp_msgs_per_sec`,
//! `icmp_msgs_burst`) and one per destination (`icmp_ratelimit`, with the
//! kernel's burst of 6). Without it, every spoofed datagram to a service
//! without endpoints would be answered, at the victim's address.
//!
//! Both families share the node-wide bucket (`ferry_icmpg_v1`); the sources'
//! buckets are per family (`ferry_icmps_v1`, `ferry_icmps6_v1`).
//!
//! Each bucket is a GCRA state, one u64: the theoretical arrival time (TAT,
//! ns of CLOCK_MONOTONIC) of the next message. A message at `now` fits when
//! `max(TAT, now) - now <= (burst - 1) * interval`, and then moves TAT one
//! interval on. The node-wide state is shared by every CPU and updated with
//! a compare-and-swap (a CPU that keeps losing the race after a few tries
//! sends nothing); a source's state is updated plainly (two CPUs racing
//! on one source may both send: one message more, as in the kernel).

use agent_common::{
    ICMP_BURST_DEFAULT, ICMP_RATE_DEFAULT, ICMP_SOURCE_BURST, ICMP_SOURCE_INTERVAL_MS_DEFAULT,
    NodeConfig, drop::DropReason,
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated as h, maps::LruHashMap};

use crate::{atomic::cmpxchg, maps::ICMP_GLOBAL};

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;
/// Compare-and-swap attempts on the node-wide state before giving up (a
/// message lost to contention is one more the flood does not get).
const CAS_TRIES: u32 = 4;

/// May a port unreachable go to `dst` now (whose budget is in `sources`,
/// its family's map)? Consumes from both budgets when it may; otherwise says
/// which budget ran out.
#[inline(always)]
pub fn allow<K>(sources: &LruHashMap<K, u64>, dst: &K, cfg: &NodeConfig) -> Result<(), DropReason> {
    let now = unsafe { h::bpf_ktime_get_ns() };
    let src_interval = u64::from(or_default(
        cfg.icmp_source_interval_ms,
        ICMP_SOURCE_INTERVAL_MS_DEFAULT,
    )) * NS_PER_MS;
    let src_slack = u64::from(ICMP_SOURCE_BURST - 1) * src_interval;
    // The source's budget is only looked at here: it is consumed once the
    // node's budget said yes, as the kernel consumes its global credit last.
    let src_state = sources.get_ptr_mut(dst);
    let src_tat = match src_state {
        // SAFETY: a live map value.
        Some(p) => unsafe { *p },
        None => 0,
    };
    let src_next = match fits(src_tat, now, src_interval, src_slack) {
        Some(next) => next,
        None => return Err(DropReason::RejectLimitedSource),
    };

    let rate = u64::from(or_default(cfg.icmp_rate, ICMP_RATE_DEFAULT));
    let burst = u64::from(or_default(cfg.icmp_burst, ICMP_BURST_DEFAULT));
    let interval = NS_PER_SEC / rate.max(1);
    let slack = (burst - 1) * interval;
    let Some(global) = ICMP_GLOBAL.get_ptr_mut(0) else {
        return Err(DropReason::RejectLimited);
    };
    let mut taken = false;
    // SAFETY: a live, 8-aligned map value.
    let mut tat = unsafe { core::ptr::read_volatile(global) };
    for _ in 0..CAS_TRIES {
        let Some(next) = fits(tat, now, interval, slack) else {
            return Err(DropReason::RejectLimited);
        };
        // SAFETY: as above.
        let seen = unsafe { cmpxchg(global, tat, next) };
        if seen == tat {
            taken = true;
            break;
        }
        tat = seen;
    }
    if !taken {
        return Err(DropReason::RejectLimited);
    }

    match src_state {
        // SAFETY: as above.
        Some(p) => unsafe { *p = src_next },
        None => {
            // A full LRU recycles its oldest source: that one starts afresh.
            let _ = sources.insert(dst, &src_next, BPF_NOEXIST as u64);
        }
    }
    Ok(())
}

/// GCRA: the state after a message at `now`, or None when it does not fit.
#[inline(always)]
fn fits(tat: u64, now: u64, interval: u64, slack: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    (start - now <= slack).then_some(start + interval)
}

#[inline(always)]
fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}
