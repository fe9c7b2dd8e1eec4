//! The one owner of the kernel: the loaded programs and their links, the
//! maps, the frontends of every Service with their status
//! ([`ServiceTable`]), the node's devices and addresses, and the garbage
//! collection of sockets. Nothing else in the agent writes to the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use agent_common::{NodeConfig, maps as names, node_flags, svc_flags};
use tracing::{debug, info, warn};

use super::{
    LinkReport, LoadOptions, Maps, codec, ifaces,
    loader::Loaded,
    pod_devices::PodDevices,
    programmer::{Capacities, Programmer},
    service_table::{FrontendStatus, FullSync, ServiceFrontends, ServiceTable, SyncOutcome},
    tc,
};
use crate::{
    cli::LbMode,
    control::Dataplane,
    error::{Error, Result},
    model::{BackendAddr, Frontend, FrontendKey, ServiceName},
    northsouth::{IcmpLimits, sync_cluster_nodes},
};

/// What the node's devices need: where the TC programs go, and the SNAT
/// source address on each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's addresses (its Node object's InternalIP/ExternalIP),
    /// both families.
    pub node_ips: Vec<IpAddr>,
    /// Every node's addresses, both families.
    pub cluster_node_ips: BTreeSet<IpAddr>,
}

/// A device the TC programs are on: its index and the SNAT source of each
/// family (None: the device has no address of that family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attached {
    index: u32,
    snat4: Option<Ipv4Addr>,
    snat6: Option<Ipv6Addr>,
}

/// The agent's north-south settings.
#[derive(Clone, Debug)]
pub struct NorthSouth {
    /// `--interfaces`; empty = the devices holding the node's addresses.
    pub interfaces: Vec<String>,
    /// `--lb-mode`.
    pub mode: LbMode,
    /// `--external-cluster-ip`.
    pub external_cluster_ip: bool,
    /// `--acceleration`.
    pub acceleration: crate::cli::Acceleration,
    /// `--socket-lb-host-netns-only`.
    pub socket_lb_host_netns_only: bool,
}

pub struct Datapath {
    loaded: Loaded,
    table: ServiceTable<Maps>,
    ns: NorthSouth,
    /// Device name -> its index and the SNAT addresses written for it.
    attached: BTreeMap<String, Attached>,
    /// The devices carrying `ferry_tc_pod`.
    pod_devices: PodDevices,
    /// The node's devices were chosen once: pod devices are chosen after.
    node_synced: bool,
    /// The object carries the TC programs (known at load, asked per change).
    tc_available: bool,
    warned_unavailable: bool,
    /// The agent's (the host's) netns cookie, for `--socket-lb-host-netns-only`.
    netns_cookie: u64,
}

impl Datapath {
    /// Loads the programs (adopting a previous agent's pins) and takes over
    /// what the maps hold.
    pub fn load(opts: &LoadOptions, caps: Capacities, ns: NorthSouth) -> Result<Datapath> {
        let (loaded, maps) = Loaded::load(opts)?;
        let tc_available = tc::available(&loaded.ebpf);
        let netns_cookie = if ns.socket_lb_host_netns_only {
            super::netns_cookie::own().map_err(|e| Error::Io {
                context: "--socket-lb-host-netns-only: the agent's netns cookie (SO_NETNS_COOKIE, Linux 5.14)".into(),
                source: e,
            })?
        } else {
            0
        };
        let table = ServiceTable::new(Programmer::adopt_with(maps, caps));
        Ok(Datapath {
            loaded,
            table,
            ns,
            attached: BTreeMap::new(),
            pod_devices: PodDevices::default(),
            node_synced: false,
            tc_available,
            warned_unavailable: false,
            netns_cookie,
        })
    }

    pub fn table(&self) -> &ServiceTable<Maps> {
        &self.table
    }

    pub fn maps(&self) -> &Maps {
        self.table.programmer().maps()
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        self.table.programmer_mut().maps_mut()
    }

    pub fn status(&self, now: Instant) -> Vec<FrontendStatus> {
        self.table.status(now)
    }

    pub fn retry_due(&mut self, now: Instant) -> SyncOutcome {
        let needs = self.table.failures().any(|(_, f)| needs_guard(&f.frontend));
        self.guard_before(needs);
        let out = self.table.retry_due(now);
        self.after_change(&out);
        out
    }

    pub fn retry_from<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a FrontendKey>,
        now: Instant,
    ) {
        self.table.retry_from(keys, now)
    }

    pub fn next_retry(&self) -> Option<Instant> {
        self.table.next_retry()
    }

    /// Attaches the egress guard before a frontend that needs it is
    /// written (`needs`): a socket the hooks mark must never find it
    /// absent. A failure is logged; the frontends are written all the same
    /// (the link check retries the guard every period).
    fn guard_before(&mut self, needs: bool) {
        if needs && let Err(e) = self.loaded.set_guard(true) {
            warn!(error = %e, "the egress guard could not be attached");
        }
    }

    /// Attaches the egress guard while a frontend in the kernel, or one
    /// waiting for a retry, needs it, and detaches it once none does.
    fn settle_guard(&mut self) {
        let wanted = self
            .table
            .programmer()
            .any_flagged(svc_flags::DROP_NO_LOCAL | svc_flags::SOURCE_RANGES)
            || self.table.failures().any(|(_, f)| needs_guard(&f.frontend));
        if let Err(e) = self.loaded.set_guard(wanted) {
            warn!(error = %e, wanted, "the egress guard could not be changed");
        }
    }

    /// Whether the egress guard is attached (for tests and `/metrics`).
    pub fn guard_attached(&self) -> bool {
        self.loaded.guard_attached()
    }

    /// What follows a change of the frontends: connected UDP sockets on
    /// backends that left are destroyed, and a new local endpoint's device
    /// gets `ferry_tc_pod` before its first masqueraded flow needs it.
    fn after_change(&mut self, out: &SyncOutcome) {
        self.destroy_udp_sockets(&out.gone_udp);
        if self.node_synced {
            self.sync_pod_devices(false);
        }
    }

    /// The local endpoints that came and went since the last call, on the
    /// devices the node reaches them through (pod_devices.rs); `recheck`:
    /// also the endpoints of devices that went away (the periodic check).
    fn sync_pod_devices(&mut self, recheck: bool) {
        if !self.tc_available {
            return;
        }
        let (added, removed) = self.table.programmer_mut().take_local_ip_changes();
        if added.is_empty() && removed.is_empty() && self.pod_devices.swept() && !recheck {
            return;
        }
        let node_devices: BTreeSet<u32> = self.attached.values().map(|a| a.index).collect();
        self.pod_devices
            .apply(&mut self.loaded, &node_devices, &added, &removed);
        if recheck {
            self.pod_devices.recheck(&mut self.loaded, &node_devices);
        }
    }

    /// Connected UDP sockets still on a backend that left every service get
    /// destroyed, so their applications reconnect (cilium#12859).
    fn destroy_udp_sockets(&mut self, gone: &[BackendAddr]) {
        if gone.is_empty() {
            return;
        }
        if let Some(gc) = &mut self.loaded.sock_gc {
            gc.run(&mut self.loaded.ebpf, gone);
        }
    }

    /// Brings the node's devices and settings in line: the TC programs on
    /// the devices holding the node's addresses (or `--interfaces`), and the
    /// SNAT source address of each, rewritten when it changes.
    pub fn sync_node(&mut self, node: &NodeSettings) -> Result<(), anyhow::Error> {
        let all = ifaces::list()?;
        let wanted: Vec<ifaces::Interface> = if self.ns.interfaces.is_empty() {
            ifaces::holding(&all, &node.node_ips)
        } else {
            self.ns
                .interfaces
                .iter()
                .filter_map(|name| {
                    let found = all.get(name).cloned();
                    if found.is_none() {
                        warn!(device = %name, "--interfaces: no such device with an address");
                    }
                    found
                })
                .collect()
        };
        if !self.tc_available {
            if !self.warned_unavailable && !wanted.is_empty() {
                warn!("this build has no north-south programs: devices left alone");
                self.warned_unavailable = true;
            }
            return Ok(());
        }
        let icmp = IcmpLimits::of_this_node();
        let cfg = NodeConfig {
            flags: if self.ns.mode == LbMode::Dsr {
                node_flags::DSR
            } else {
                0
            } | if self.ns.external_cluster_ip {
                node_flags::EXTERNAL_CLUSTER_IP
            } else {
                0
            } | if self.ns.socket_lb_host_netns_only {
                node_flags::SOCK_HOSTNS_ONLY
            } else {
                0
            },
            snat_port_min: agent_common::SNAT_PORT_MIN_DEFAULT,
            snat_port_max: agent_common::SNAT_PORT_MAX_DEFAULT,
            icmp_rate: icmp.rate,
            icmp_burst: icmp.burst,
            icmp_source_interval_ms: icmp.source_interval_ms,
            _pad: 0,
            netns_cookie: self.netns_cookie,
        };
        // Written only when it differs: a restart over the same node writes nothing.
        if self.maps_mut().node_config.get(&0, 0).ok() != Some(cfg) {
            self.maps_mut().node_config.set(0, &cfg, 0)?;
        }
        let (added, removed) = sync_cluster_nodes(self.maps_mut(), &node.cluster_node_ips)?;
        if added + removed > 0 {
            debug!(
                added,
                removed, "cluster node addresses (what DSR options may name)"
            );
        }
        let mut now = BTreeMap::new();
        for iface in &wanted {
            let v4 = |ip: IpAddr| match ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            };
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(ip) => Some(ip),
                IpAddr::V4(_) => None,
            };
            let entry = Attached {
                index: iface.index,
                snat4: iface
                    .snat_source(Ipv4Addr::UNSPECIFIED.into(), &node.node_ips)
                    .and_then(v4),
                snat6: iface
                    .snat_source(Ipv6Addr::UNSPECIFIED.into(), &node.node_ips)
                    .and_then(v6),
            };
            let prev = self.attached.get(&iface.name).copied();
            if prev != Some(entry) {
                self.write_snat_sources(&entry)?;
            }
            if prev.map(|p| p.index) != Some(iface.index) {
                self.loaded.attach_tc(iface, tc::Role::Node)?;
                // After TC: what XDP passes must find TC there.
                self.loaded.attach_xdp(iface, self.ns.acceleration)?;
            }
            if prev != Some(entry) {
                info!(
                    device = %iface.name,
                    ifindex = iface.index,
                    snat = ?entry.snat4,
                    snat6 = ?entry.snat6,
                    "north-south device"
                );
            }
            now.insert(iface.name.clone(), entry);
        }
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(name, _)| !now.contains_key(*name))
            .map(|(_, a)| a.index)
            .collect();
        if !self.node_synced || !gone.is_empty() || self.attached.len() != now.len() {
            // The first sync too: a previous agent's XDP links in another mode
            // (or with acceleration since disabled) go.
            let names: BTreeSet<String> = now.keys().cloned().collect();
            self.loaded.detach_xdp_except(self.ns.acceleration, &names);
        }
        if !gone.is_empty() || self.attached.len() != now.len() {
            let names: BTreeSet<String> = now.keys().cloned().collect();
            self.loaded.detach_tc_except(tc::Role::Node, &names);
            for index in gone {
                let _ = self.maps_mut().node_addr.remove(&index);
                let _ = self.maps_mut().node_addr6.remove(&index);
            }
        }
        self.attached = now;
        self.node_synced = true;
        self.sync_pod_devices(true);
        Ok(())
    }

    /// Writes a device's SNAT sources (each only when it differs from what
    /// the map holds: a restart over the same node writes nothing).
    fn write_snat_sources(&mut self, a: &Attached) -> Result<()> {
        let maps = self.maps_mut();
        match a.snat4.map(codec::ip_raw) {
            Some(raw) if maps.node_addr.get(&a.index, 0).ok() != Some(raw) => maps
                .node_addr
                .insert(&a.index, &raw, 0)
                .map_err(|e| Error::map(names::NODE_ADDR_V4, e))?,
            Some(_) => {}
            None => {
                let _ = maps.node_addr.remove(&a.index);
            }
        }
        match a.snat6.map(codec::ip6_raw) {
            Some(raw) if maps.node_addr6.get(&a.index, 0).ok() != Some(raw) => maps
                .node_addr6
                .insert(&a.index, &raw, 0)
                .map_err(|e| Error::map(names::NODE_ADDR_V6, e))?,
            Some(_) => {}
            None => {
                let _ = maps.node_addr6.remove(&a.index);
            }
        }
        Ok(())
    }

    /// What this kernel and object let the datapath do, for `ferry_feature_enabled`.
    pub fn features(&self) -> [(&'static str, bool); 2] {
        [
            ("north_south", self.tc_available),
            ("udp_socket_destroy", self.loaded.sock_gc.is_some()),
        ]
    }

    /// Checks that every link of ferry's is attached, runs ferry's program
    /// and is pinned; repairs what another process changed.
    pub fn verify_links(&mut self) -> LinkReport {
        self.settle_guard();
        self.loaded.verify_links()
    }

    /// The devices carrying the TC programs.
    pub fn devices(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }
}

impl Dataplane for Datapath {
    fn sync_services(
        &mut self,
        batch: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) -> SyncOutcome {
        self.guard_before(batch_needs_guard(&batch));
        let out = self.table.sync(batch, now);
        self.after_change(&out);
        out
    }

    fn full_begin(&mut self) -> FullSync {
        self.table.full_begin()
    }

    fn full_chunk(
        &mut self,
        full: &mut FullSync,
        chunk: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) {
        self.guard_before(batch_needs_guard(&chunk));
        self.table.full_chunk(full, chunk, now)
    }

    fn full_end(&mut self, full: FullSync) -> SyncOutcome {
        let out = self.table.full_end(full);
        self.after_change(&out);
        // A predecessor's guard goes once no Service needs it.
        self.settle_guard();
        out
    }
}

/// A frontend whose sockets the egress guard must check: kube-proxy drops
/// its traffic (a Local policy without a local endpoint) or checks its
/// sources (loadBalancerSourceRanges).
fn needs_guard(f: &Frontend) -> bool {
    f.drop_no_local || !f.source_ranges.is_empty()
}

fn batch_needs_guard(batch: &[(ServiceName, ServiceFrontends)]) -> bool {
    batch
        .iter()
        .any(|(_, frontends)| frontends.values().any(needs_guard))
}
