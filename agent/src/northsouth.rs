//! North-south settings the datapath's owner writes beside the frontends:
//! the ICMP budget of the port unreachables, the cluster's node addresses
//! (what a DSR option may name), and the flows `ferry conntrack` shows.
//! Conntrack upkeep runs on its own thread: `datapath::ct_gc`.

use std::{collections::BTreeSet, net::Ipv4Addr};

use agent_common::{Ct4Key, ct_dir, maps as names};
use aya::maps::MapError;

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
/// ExternalIP) into `ferry_nodes4_v1`, as a diff against what it holds: a
/// DSR option may name a NodePort only on one of these. Returns (added,
/// removed).
pub fn sync_cluster_nodes(maps: &mut Maps, want: &BTreeSet<Ipv4Addr>) -> Result<(usize, usize)> {
    let want: BTreeSet<u32> = want.iter().map(|ip| codec::ip_raw(*ip)).collect();
    let have: BTreeSet<u32> = maps.nodes.keys().filter_map(Result::ok).collect();
    let mut added = 0;
    for addr in want.difference(&have) {
        maps.nodes.insert(addr, &1u8, 0).map_err(|e| match e {
            MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Error::MapFull {
                    map: names::NODES_V4,
                    capacity: names::NODES_V4_MAX,
                    unit: "node addresses",
                    object: format!("node address {}", codec::ip_of(*addr)),
                }
            }
            e => Error::map(names::NODES_V4, e),
        })?;
        added += 1;
    }
    let mut removed = 0;
    for addr in have.difference(&want) {
        match maps.nodes.remove(addr) {
            Ok(()) | Err(MapError::KeyNotFound) => removed += 1,
            Err(e) => return Err(Error::map(names::NODES_V4, e)),
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

/// Conntrack entries for `ferry conntrack`, forward entries with their reply.
pub fn flows(maps: &Maps) -> Vec<(Ct4Key, agent_common::Ct4Value)> {
    let mut v: Vec<_> = maps.ct.iter().filter_map(Result::ok).collect();
    v.sort_by_key(|(k, _)| (k.dir != ct_dir::FORWARD, *k));
    v
}
