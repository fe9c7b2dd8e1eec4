//! North-south settings the datapath's owner writes beside the frontends:
//! the ICMP budget of the port unreachables, the cluster's node addresses
//! (what a DSR option may name), and the flows `ferry conntrack` shows.
//! Conntrack upkeep runs on its own thread: `datapath::ct_gc`.

use std::{collections::BTreeSet, net::IpAddr};

use agent_common::{Ct4Key, Ct4Value, Ct6Key, Ct6Value, Ip6, ct_dir, maps as names};
use aya::maps::{HashMap, MapData, MapError};

use crate::{
    datapath::{Maps, codec},
    error::{Error, Result},
};

/// The budget of the port unreachables the datapath sends: the node's own
/// ICMP limits (its sysctls), so that ferry's REJECT is as limited as the
/// kernel's would be. A sysctl that cannot be read, or that is 0 (which the
/// kernel reads as "no limit"), gives the kernel's default: ferry always
/// limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpLimits {
    pub rate: u32,
    pub burst: u32,
    pub source_interval_ms: u32,
}

impl IcmpLimits {
    pub fn of_this_node() -> IcmpLimits {
        let read = |name: &str, default: u32| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        IcmpLimits {
            rate: read("icmp_msgs_per_sec", agent_common::ICMP_RATE_DEFAULT),
            burst: read("icmp_msgs_burst", agent_common::ICMP_BURST_DEFAULT),
            source_interval_ms: read(
                "icmp_ratelimit",
                agent_common::ICMP_SOURCE_INTERVAL_MS_DEFAULT,
            ),
        }
    }
}

/// Writes the cluster's node addresses (every Node's InternalIP and
/// ExternalIP) into `ferry_nodes4_v1` and `ferry_nodes6_v1`, as a diff
/// against what they hold: a DSR option may name a NodePort only on one of
/// these. Returns (added, removed).
pub fn sync_cluster_nodes(maps: &mut Maps, want: &BTreeSet<IpAddr>) -> Result<(usize, usize)> {
    let want4: BTreeSet<u32> = want
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(codec::ip_raw(*ip)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let want6: BTreeSet<Ip6> = want
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(ip) => Some(codec::ip6_raw(*ip)),
            IpAddr::V4(_) => None,
        })
        .collect();
    let (a4, r4) = sync_set(
        &mut maps.nodes,
        names::NODES_V4,
        names::NODES_V4_MAX,
        &want4,
        |k| codec::ip_of(*k).to_string(),
    )?;
    let (a6, r6) = sync_set(
        &mut maps.nodes6,
        names::NODES_V6,
        names::NODES_V6_MAX,
        &want6,
        |k| codec::ip6_of(*k).to_string(),
    )?;
    Ok((a4 + a6, r4 + r6))
}

/// Makes a set-like map (key -> 1) hold exactly `want`.
fn sync_set<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u8>,
    name: &'static str,
    capacity: u32,
    want: &BTreeSet<K>,
    show: impl Fn(&K) -> String,
) -> Result<(usize, usize)> {
    let have: BTreeSet<K> = map.keys().filter_map(Result::ok).collect();
    let mut added = 0;
    for addr in want.difference(&have) {
        map.insert(addr, &1u8, 0).map_err(|e| match e {
            MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Error::MapFull {
                    map: name,
                    capacity,
                    unit: "node addresses",
                    object: format!("node address {}", show(addr)),
                }
            }
            e => Error::map(name, e),
        })?;
        added += 1;
    }
    let mut removed = 0;
    for addr in have.difference(want) {
        match map.remove(addr) {
            Ok(()) | Err(MapError::KeyNotFound) => removed += 1,
            Err(e) => return Err(Error::map(name, e)),
        }
    }
    Ok((added, removed))
}

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

/// Conntrack entries for `ferry conntrack`, each family's, forward entries
/// first.
#[allow(clippy::type_complexity)]
pub fn flows(maps: &Maps) -> (Vec<(Ct4Key, Ct4Value)>, Vec<(Ct6Key, Ct6Value)>) {
    let mut v4: Vec<_> = maps.ct.iter().filter_map(Result::ok).collect();
    v4.sort_by_key(|(k, _)| (k.dir != ct_dir::FORWARD, *k));
    let mut v6: Vec<_> = maps.ct6.iter().filter_map(Result::ok).collect();
    v6.sort_by_key(|(k, _)| (k.dir != ct_dir::FORWARD, *k));
    (v4, v6)
}
