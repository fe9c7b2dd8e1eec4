//! The agent's north-south duties beside the frontends: which devices carry
//! the TC programs, the node address of each (the SNAT source), the node
//! settings, the healthCheckNodePort servers, and conntrack garbage
//! collection.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use agent_common::{Ct4Key, NodeConfig, ct_dir, net::ip4_to_raw, node_flags, proto};
use tracing::{info, warn};

use crate::{
    cli::LbMode,
    datapath::{Datapath, Maps, ifaces, tc},
    model::Desired,
    server::healthcheck::HealthChecks,
};

/// SNAT source ports, disjoint from the kernel's default ephemeral range
/// (32768-60999) so SNATed flows never collide with the node's own sockets.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Conntrack idle timeouts (kube-proxy relies on the kernel's, which are
/// 5 days for established TCP; Cilium's 6 h is the saner bound for a map).
pub const CT_TCP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
pub const CT_TCP_CLOSING_TIMEOUT: Duration = Duration::from_secs(10);
pub const CT_UDP_TIMEOUT: Duration = Duration::from_secs(120);
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

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
        let cfg = NodeConfig {
            flags: if self.mode == LbMode::Dsr {
                node_flags::DSR
            } else {
                0
            },
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
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

/// Deletes conntrack entries idle past their timeout (the LRU only evicts
/// under pressure); returns how many went.
pub fn gc_conntrack(maps: &mut Maps) -> usize {
    let now = monotonic_seconds();
    let stale: Vec<Ct4Key> = maps
        .ct
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| {
            let idle = Duration::from_secs(u64::from(now.saturating_sub(v.last_seen)));
            let timeout = match k.proto {
                proto::TCP if v.tcp_flags & (TCP_FIN | TCP_RST) != 0 => CT_TCP_CLOSING_TIMEOUT,
                proto::TCP => CT_TCP_TIMEOUT,
                _ => CT_UDP_TIMEOUT,
            };
            idle > timeout
        })
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        let _ = maps.ct.remove(k);
    }
    stale.len()
}

/// Conntrack entries for `ferry conntrack`, forward entries with their reply.
pub fn flows(maps: &Maps) -> Vec<(Ct4Key, agent_common::Ct4Value)> {
    let mut v: Vec<_> = maps.ct.iter().filter_map(Result::ok).collect();
    v.sort_by_key(|(k, _)| (k.dir != ct_dir::FORWARD, *k));
    v
}

/// Counts for metrics.
pub fn conntrack_size(maps: &Maps) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for (k, _) in maps.ct.iter().filter_map(Result::ok) {
        *m.entry(if k.dir == ct_dir::FORWARD {
            "forward"
        } else {
            "reply"
        })
        .or_default() += 1;
    }
    m
}
