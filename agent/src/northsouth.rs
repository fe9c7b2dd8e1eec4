//! The agent's north-south duties beside the frontends: which devices carry
//! the TC programs, the node address of each (the SNAT source), the node
//! settings, the healthCheckNodePort servers, and conntrack garbage
//! collection.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use agent_common::{Ct4Key, Ct4Value, NodeConfig, ct_dir, net::ip4_to_raw, node_flags, proto};
use tracing::{info, warn};

use crate::{
    cli::LbMode,
    datapath::{Datapath, Maps, ifaces, tc},
    model::Desired,
    server::healthcheck::HealthChecks,
};

/// SNAT source ports: the kernel programs' defaults, disjoint from the
/// kernel's ephemeral range (32768-60999) so SNATed flows never collide with
/// the node's own sockets.
pub use agent_common::{
    SNAT_PORT_MAX_DEFAULT as SNAT_PORT_MAX, SNAT_PORT_MIN_DEFAULT as SNAT_PORT_MIN,
};

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
            dp.attach_tc(iface)?;
        }
        dp.detach_tc_except(&names);
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

/// The REPLY key of a flow, from its FORWARD entry: the translated packet's
/// addresses, reversed.
pub fn reply_key_of(k: &Ct4Key, v: &Ct4Value) -> Ct4Key {
    Ct4Key {
        saddr: v.nat_daddr,
        daddr: v.nat_saddr,
        sport: v.nat_dport,
        dport: v.nat_sport,
        proto: k.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    }
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
