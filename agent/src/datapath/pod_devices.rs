//! Which devices carry `ferry_tc_pod`: those the node routes its local endpoints through
//! (where a masqueraded flow's replies come in), and no other. A device that carries the
//! node programs needs none: `ferry_tc_in` translates those replies there.
//!
//! Kept in step with the endpoints at the grain of one address: an endpoint that appears costs
//! one route lookup (RTM_GETROUTE), one that goes costs none, a device is attached with its
//! first endpoint and detached with its last. The periodic device check looks again only at
//! the endpoints of devices that went away (a pod recreated on a new veth).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use tracing::{debug, info, warn};

use super::{ifaces, loader::Loaded, routes, tc};

#[derive(Default)]
pub struct PodDevices {
    /// Each local endpoint's device, when it is a pod device (None: a node device, the node
    /// itself, or no route).
    routes: HashMap<IpAddr, Option<u32>>,
    /// ifindex -> (name, endpoints routed through it).
    devices: BTreeMap<u32, (String, usize)>,
    /// Pins a previous agent left were compared with the wanted devices once.
    swept: bool,
}

impl PodDevices {
    /// Pins a previous agent left were compared with the wanted devices.
    pub fn swept(&self) -> bool {
        self.swept
    }

    /// Local endpoints `added` and `removed`: their devices gain or lose the program.
    pub fn apply(
        &mut self,
        loaded: &mut Loaded,
        node_devices: &BTreeSet<u32>,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) {
        let mut detached = false;
        for ip in removed {
            if let Some(Some(index)) = self.routes.remove(ip) {
                detached |= self.release(index);
            }
        }
        if !added.is_empty() {
            let mut resolver = match routes::Resolver::new() {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "pod devices: no netlink socket");
                    return;
                }
            };
            for &ip in added {
                let device = resolve(&mut resolver, ip, node_devices);
                if let Some(old) = self.routes.insert(ip, device).flatten() {
                    detached |= self.release(old);
                }
                if let Some(index) = device {
                    self.hold(loaded, index);
                }
            }
        }
        if detached || !self.swept {
            // The first time, pins a previous agent left on devices no longer wanted go too.
            self.swept = true;
            let keep: BTreeSet<String> = self.devices.values().map(|(n, _)| n.clone()).collect();
            loaded.detach_tc_except(tc::Role::Pod, &keep);
        }
    }

    /// The periodic check: endpoints whose device went away (or became a node device) are
    /// looked up again.
    pub fn recheck(&mut self, loaded: &mut Loaded, node_devices: &BTreeSet<u32>) {
        let stale: BTreeSet<u32> = self
            .devices
            .iter()
            .filter(|(index, (name, _))| {
                node_devices.contains(index) || ifaces::index_of(name) != Some(**index)
            })
            .map(|(index, _)| *index)
            .collect();
        if stale.is_empty() {
            return;
        }
        let again: Vec<IpAddr> = self
            .routes
            .iter()
            .filter(|(_, d)| d.is_some_and(|i| stale.contains(&i)))
            .map(|(ip, _)| *ip)
            .collect();
        debug!(
            devices = stale.len(),
            endpoints = again.len(),
            "pod devices changed: looking again"
        );
        self.apply(loaded, node_devices, &[], &again);
        self.apply(loaded, node_devices, &again, &[]);
    }

    fn hold(&mut self, loaded: &mut Loaded, index: u32) {
        if let Some((_, refs)) = self.devices.get_mut(&index) {
            *refs += 1;
            return;
        }
        let Some(name) = ifaces::name_of(index) else {
            debug!(index, "pod device gone meanwhile");
            return;
        };
        let iface = ifaces::Interface {
            name: name.clone(),
            index,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        };
        match loaded.attach_tc(&iface, tc::Role::Pod) {
            Ok(()) => {
                info!(device = %name, ifindex = index, "pod device");
                self.devices.insert(index, (name, 1));
            }
            Err(e) => warn!(device = %name, error = %e, "pod device: attaching"),
        }
    }

    /// One endpoint fewer on `index`; true when the device lost its last.
    fn release(&mut self, index: u32) -> bool {
        let Some((_, refs)) = self.devices.get_mut(&index) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return false;
        }
        if let Some((name, _)) = self.devices.remove(&index) {
            info!(device = %name, "no local endpoint behind it any more: pod device released");
        }
        true
    }
}

/// The pod device the node reaches `ip` through, if it is one.
fn resolve(resolver: &mut routes::Resolver, ip: IpAddr, node: &BTreeSet<u32>) -> Option<u32> {
    match resolver.get(ip) {
        Ok(routes::Route::Device(index)) if !node.contains(&index) => Some(index),
        // Through a node device, or the node's own address (a host-network endpoint,
        // which keeps its clients' address).
        Ok(routes::Route::Device(_) | routes::Route::Local) => None,
        Ok(routes::Route::None) => {
            warn!(endpoint = %ip, "local endpoint without a route: its masqueraded replies cannot be translated");
            None
        }
        Err(e) => {
            warn!(endpoint = %ip, error = %e, "route lookup of a local endpoint");
            None
        }
    }
}
