//! North-south conntrack: idle-flow collection (the LRU only evicts under
//! pressure) and the flows `ferry conntrack` shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use agent_common::{Ct4Key, Ct4Value, ct_dir, proto};

use crate::datapath::{Maps, codec::reply_key_of};

/// Conntrack idle timeouts (kube-proxy relies on the kernel's, which are
/// 5 days for established TCP; Cilium's 6 h is the saner bound for a map).
pub const CT_TCP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
pub const CT_TCP_CLOSING_TIMEOUT: Duration = Duration::from_secs(10);
pub const CT_UDP_TIMEOUT: Duration = Duration::from_secs(120);
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Seconds of CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// Deletes flows idle past their timeout (the LRU only evicts under
/// pressure); returns (entries removed, entries left). A flow's two entries
/// are judged and deleted together: freeing one alone could hand its SNAT
/// port to a second flow while the first still uses it.
pub fn gc_conntrack(maps: &mut Maps) -> (usize, usize) {
    let entries: BTreeMap<Ct4Key, Ct4Value> = maps.ct.iter().filter_map(Result::ok).collect();
    let stale = stale_flows(&entries, monotonic_seconds());
    for k in &stale {
        let _ = maps.ct.remove(k);
    }
    (stale.len(), entries.len() - stale.len())
}

/// The entries of flows idle past their timeout at `now`.
pub fn stale_flows(entries: &BTreeMap<Ct4Key, Ct4Value>, now: u32) -> Vec<Ct4Key> {
    let idle_past_timeout = |proto_nr: u8, last_seen: u32, tcp_flags: u8| {
        let idle = Duration::from_secs(u64::from(now.saturating_sub(last_seen)));
        let timeout = match proto_nr {
            proto::TCP if tcp_flags & (TCP_FIN | TCP_RST) != 0 => CT_TCP_CLOSING_TIMEOUT,
            proto::TCP => CT_TCP_TIMEOUT,
            _ => CT_UDP_TIMEOUT,
        };
        idle > timeout
    };
    let mut stale = Vec::new();
    let mut paired = BTreeSet::new();
    for (k, v) in entries.iter().filter(|(k, _)| k.dir == ct_dir::FORWARD) {
        let reply_key = reply_key_of(k, v);
        paired.insert(reply_key);
        let reply = entries.get(&reply_key);
        let last_seen = reply.map_or(v.last_seen, |r| r.last_seen.max(v.last_seen));
        let flags = reply.map_or(v.tcp_flags, |r| r.tcp_flags | v.tcp_flags);
        if idle_past_timeout(k.proto, last_seen, flags) {
            stale.push(*k);
            if reply.is_some() {
                stale.push(reply_key);
            }
        }
    }
    // A reply entry whose forward entry the LRU evicted: alone, by its own age.
    for (k, v) in entries
        .iter()
        .filter(|(k, _)| k.dir == ct_dir::REPLY && !paired.contains(k))
    {
        if idle_past_timeout(k.proto, v.last_seen, v.tcp_flags) {
            stale.push(*k);
        }
    }
    stale
}

/// Conntrack entries for `ferry conntrack`, forward entries with their reply.
pub fn flows(maps: &Maps) -> Vec<(Ct4Key, agent_common::Ct4Value)> {
    let mut v: Vec<_> = maps.ct.iter().filter_map(Result::ok).collect();
    v.sort_by_key(|(k, _)| (k.dir != ct_dir::FORWARD, *k));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16, proto_nr: u8) -> (Ct4Key, Ct4Value) {
        let k = Ct4Key {
            saddr: 1,
            daddr: 2,
            sport,
            dport: 80,
            proto: proto_nr,
            ..Default::default()
        };
        let v = Ct4Value {
            nat_saddr: 3,
            nat_daddr: 4,
            nat_sport: 61_000,
            nat_dport: 8080,
            ..Default::default()
        };
        (k, v)
    }

    #[test]
    fn a_flow_is_kept_while_either_direction_is_alive_and_goes_as_a_unit() {
        let now = 10_000;
        let (fk, mut fv) = flow(1234, proto::UDP);
        let rk = reply_key_of(&fk, &fv);
        // Forward idle for long, reply recent: the flow lives (its SNAT port too).
        fv.last_seen = now - 1_000;
        let rv = Ct4Value {
            last_seen: now - 5,
            ..Default::default()
        };
        let mut entries = BTreeMap::from([(fk, fv), (rk, rv)]);
        assert!(stale_flows(&entries, now).is_empty());
        // Both idle past the UDP timeout: both go together.
        entries.get_mut(&rk).unwrap().last_seen = now - 1_000;
        assert_eq!(stale_flows(&entries, now), vec![fk, rk]);
    }

    #[test]
    fn closing_tcp_flows_expire_fast_established_ones_do_not() {
        let now = 100_000;
        let (fk, mut fv) = flow(1, proto::TCP);
        fv.last_seen = now - 600;
        let entries = BTreeMap::from([(fk, fv)]);
        assert!(stale_flows(&entries, now).is_empty(), "established: 6 h");
        fv.tcp_flags = TCP_FIN;
        let entries = BTreeMap::from([(fk, fv)]);
        assert_eq!(stale_flows(&entries, now), vec![fk]);
    }
}
