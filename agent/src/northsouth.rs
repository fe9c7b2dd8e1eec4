//! The agent's north-south duties beside the frontends: which devices carry
//! the TC programs, the node address of each (the SNAT source), the node
//! settings, the healthCheckNodePort servers, and the cluster's node
//! addresses (what a DSR option may name). Conntrack upkeep runs on its own
//! thread: `datapath::ct_gc`.

use std::{collections::BTreeSet, net::Ipv4Addr};

use agent_common::{Ct4Key, NodeConfig, ct_dir, maps as names, net::ip4_to_raw, node_flags};
use aya::maps::MapError;
use tracing::{info, warn};

use crate::{
    cli::LbMode,
    datapath::{Datapath, Maps, ifaces, tc},
    error::{Error, Result},
    model::Desired,
    server::healthcheck::HealthChecks,
};

/// SNAT source ports: the kernel programs' defaults, disjoint from the
/// kernel's ephemeral range (32768-60999) so SNATed flows never collide with
/// the node's own sockets.
pub use agent_common::{
    SNAT_PORT_MAX_DEFAULT as SNAT_PORT_MAX, SNAT_PORT_MIN_DEFAULT as SNAT_PORT_MIN,
};

pub struct NorthSouth {
    /// `--interfaces`; empty = the devices holding the node's addresses.
    configured: Vec<String>,
    attached: BTreeSet<String>,
    health_checks: HealthChecks,
    mode: LbMode,
    warned_unavailable: bool,
}

impl NorthSouth {
    pub fn new(configured: Vec<String>, mode: LbMode) -> Self {
        NorthSouth {
            configured,
            attached: BTreeSet::new(),
            health_checks: HealthChecks::default(),
            mode,
            warned_unavailable: false,
        }
    }

    /// Called after every sync of the frontends.
    pub async fn sync(&mut self, desired: &Desired, dp: &mut Datapath, maps: &mut Maps) {
        self.health_checks.sync(&desired.health_checks).await;
        if let Err(e) = self.sync_devices(&desired.node_ips, dp, maps) {
            warn!(error = %e, "north-south devices");
        }
    }

    fn sync_devices(
        &mut self,
        node_ips: &[Ipv4Addr],
        dp: &mut Datapath,
        maps: &mut Maps,
    ) -> anyhow::Result<()> {
        let all = ifaces::list()?;
        let wanted: Vec<ifaces::Interface> = if self.configured.is_empty() {
            ifaces::holding(&all, node_ips)
        } else {
            self.configured
                .iter()
                .filter_map(|name| {
                    let found = all.get(name).cloned();
                    if found.is_none() {
                        warn!(device = %name, "--interfaces: no such device with an IPv4 address");
                    }
                    found
                })
                .collect()
        };
        let names: BTreeSet<String> = wanted.iter().map(|i| i.name.clone()).collect();
        if names == self.attached {
            return Ok(());
        }
        if !tc::available(&dp.ebpf) {
            if !self.warned_unavailable && !names.is_empty() {
                warn!("this build has no north-south programs: devices left alone");
                self.warned_unavailable = true;
            }
            return Ok(());
        }
        let icmp = IcmpLimits::of_this_node();
        let cfg = NodeConfig {
            flags: if self.mode == LbMode::Dsr {
                node_flags::DSR
            } else {
                0
            },
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            icmp_rate: icmp.rate,
            icmp_burst: icmp.burst,
            icmp_source_interval_ms: icmp.source_interval_ms,
        };
        maps.node_config.set(0, &cfg, 0)?;
        for iface in &wanted {
            // The SNAT source: the node address on this device, else its first.
            let ip = iface
                .ipv4
                .iter()
                .find(|ip| node_ips.contains(ip))
                .unwrap_or(&iface.ipv4[0]);
            maps.node_addr
                .insert(&iface.index, &ip4_to_raw(ip.octets()), 0)?;
            tc::attach(&mut dp.ebpf, &dp.pins, iface)?;
        }
        tc::detach_others(&dp.pins, &names);
        info!(devices = ?names, "north-south programs on");
        self.attached = names;
        Ok(())
    }
}

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
/// DSR option may name a NodePort only on one of these. Call it after each
/// translation (`Desired::cluster_node_ips`). Returns (added, removed).
pub fn sync_cluster_nodes(maps: &mut Maps, want: &BTreeSet<Ipv4Addr>) -> Result<(usize, usize)> {
    let want: BTreeSet<u32> = want.iter().map(|ip| ip4_to_raw(ip.octets())).collect();
    let have: BTreeSet<u32> = maps.nodes.keys().filter_map(Result::ok).collect();
    let mut added = 0;
    for addr in want.difference(&have) {
        maps.nodes.insert(addr, &1u8, 0).map_err(|e| match e {
            MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Error::MapFull {
                    map: names::NODES_V4,
                    capacity: names::NODES_V4_MAX,
                    object: format!(
                        "node address {}",
                        Ipv4Addr::from(agent_common::net::ip4_from_raw(*addr))
                    ),
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
