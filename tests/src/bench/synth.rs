//! The synthetic service sets the benchmarks program into each contender.
//!
//! One description ([`Svc`]) is rendered three ways: as Service/EndpointSlice manifests for
//! ferry, as kube-proxy's iptables rules and as kube-proxy's nftables rules
//! ([`super::kubeproxy`]), so every contender holds exactly the same services. A dual-stack
//! [`Svc`] ([`Svc::dual_stack`]) also has an IPv6 ClusterIP and IPv6 endpoints, the twins of
//! its IPv4 ones: ferry gets one dual-stack Service with an EndpointSlice per family, and
//! kube-proxy's rules are rendered once per family ([`Svc::view`]), as its two proxiers of a
//! dual-stack node write them.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};

use super::Family;
use crate::{
    lab::ipv6_twin,
    manifests::{Endpoint, EndpointSlice, Manifest, Service},
};

/// One ClusterIP service with one TCP port and its ready endpoints; IPv4, or dual-stack with
/// `ip6` and `endpoints6`.
#[derive(Clone, Debug)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The IPv6 ClusterIP of a dual-stack service ([`cluster_ip6`] of `ip`).
    pub ip6: Option<Ipv6Addr>,
    pub port: u16,
    pub port_name: String,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    /// The IPv6 endpoints of a dual-stack service: the twins of `endpoints`, in their order.
    pub endpoints6: Vec<Ipv6Addr>,
}

impl Svc {
    /// kube-proxy's ServicePortName string: `namespace/name:port`.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// The same service, dual-stack: its IPv6 ClusterIP and endpoints are the twins of the
    /// IPv4 ones (the lab's pods have exactly these IPv6 addresses).
    pub fn dual_stack(mut self) -> Svc {
        self.ip6 = Some(cluster_ip6(self.ip));
        self.endpoints6 = self.endpoints.iter().map(|ip| ipv6_twin(*ip)).collect();
        self
    }

    /// The service as one family's proxier sees it: that family's ClusterIP and endpoints
    /// (`None`: the service has no address of that family).
    pub fn view(&self, family: Family) -> Option<(IpAddr, Vec<IpAddr>)> {
        match family {
            Family::V4 => Some((
                self.ip.into(),
                self.endpoints.iter().map(|ip| (*ip).into()).collect(),
            )),
            Family::V6 => self.ip6.map(|ip6| {
                (
                    ip6.into(),
                    self.endpoints6.iter().map(|ip| (*ip).into()).collect(),
                )
            }),
        }
    }

    /// The Service: ClusterIP, or dual-stack (PreferDualStack, IPv4 first) with `ip6`.
    pub fn service(&self) -> Service {
        let ip = self.ip.to_string();
        let svc = match self.ip6 {
            Some(ip6) => {
                Service::dual_stack(&self.name, "PreferDualStack", &[&ip, &ip6.to_string()])
            }
            None => Service::cluster_ip(&self.name, &ip),
        };
        svc.namespace(&self.namespace).port_to(
            &self.port_name,
            i64::from(self.port),
            "TCP",
            self.target_port,
        )
    }

    pub fn slice(&self) -> EndpointSlice {
        EndpointSlice::new(&format!("{}-abc12", self.name), &self.name)
            .namespace(&self.namespace)
            .port(&self.port_name, self.target_port, "TCP")
            .endpoints(self.endpoints.iter().map(|ip| endpoint(*ip, *ip)))
    }

    /// The IPv6 EndpointSlice of a dual-stack service.
    pub fn slice6(&self) -> Option<EndpointSlice> {
        self.ip6?;
        Some(
            EndpointSlice::ipv6(&format!("{}-v6abc", self.name), &self.name)
                .namespace(&self.namespace)
                .port(&self.port_name, self.target_port, "TCP")
                .endpoints(
                    self.endpoints
                        .iter()
                        .zip(&self.endpoints6)
                        .map(|(v4, v6)| endpoint(*v6, *v4)),
                ),
        )
    }
}

/// A ready endpoint; `v4` (the address or its IPv4 twin) says whether it is a filler.
fn endpoint(ip: impl ToString, v4: Ipv4Addr) -> Endpoint {
    // Filler endpoints are other nodes' pods, as their addresses say: a node holds a few
    // hundred pods at most, not the cluster's 100,000.
    if is_filler_endpoint(v4) {
        Endpoint::ready(ip).node(FILLER_NODE)
    } else {
        Endpoint::ready(ip)
    }
}

/// The IPv6 ClusterIP twin of an IPv4 ClusterIP of 10.96.0.0/12: the same offset in
/// `fd00:96::/108` (20 bits each), so 10.96.0.10 is `fd00:96::a`, as in the lab's tests.
pub const fn cluster_ip6(v4: Ipv4Addr) -> Ipv6Addr {
    let offset = v4
        .to_bits()
        .wrapping_sub(Ipv4Addr::new(10, 96, 0, 0).to_bits())
        & 0xf_ffff;
    Ipv6Addr::new(
        0xfd00,
        0x96,
        0,
        0,
        0,
        0,
        (offset >> 16) as u16,
        (offset & 0xffff) as u16,
    )
}

/// The service every east-west contender is measured against.
pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Its IPv6 ClusterIP (`fd00:96::a`).
pub const TARGET_VIP6: Ipv6Addr = cluster_ip6(TARGET_VIP);
pub const TARGET_PORT: u16 = 80;
/// The one-endpoint target (its only endpoint the first backend), which ferry holds beside
/// the set: the east-west one-backend pair dials it.
pub const ONE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// Its IPv6 ClusterIP (`fd00:96::b`).
pub const ONE_VIP6: Ipv6Addr = cluster_ip6(ONE_VIP);
/// The backends' port.
pub const BACKEND_PORT: u16 = 8080;

/// The i-th filler ClusterIP: 10.96.1.0 onwards (10.96.0.0/24 is left to the target).
fn filler_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32)
}

/// The node the filler endpoints run on (not the agent's).
pub const FILLER_NODE: &str = "bench-other-node";

/// A filler endpoint's address (10.128.0.0/9).
fn is_filler_endpoint(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] >= 128
}

/// The j-th filler endpoint: pods of other nodes, 10.128.0.1 onwards (never dialled).
fn filler_endpoint(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + j as u32)
}

fn filler(i: usize, endpoints: usize, next_ep: &mut usize) -> Svc {
    let eps = (0..endpoints)
        .map(|_| {
            *next_ep += 1;
            filler_endpoint(*next_ep)
        })
        .collect();
    Svc {
        namespace: format!("ns-{}", i % 100),
        name: format!("svc-{i}"),
        ip: filler_ip(i),
        ip6: None,
        port: 80,
        port_name: "http".into(),
        target_port: 8080,
        endpoints: eps,
        endpoints6: Vec::new(),
    }
}

/// `n` services in all: the target (with `backends`) in the middle of the list, where a
/// service lands on average in kube-proxy's KUBE-SERVICES chain, and `n - 1` filler services
/// with 2 or 3 endpoints each.
pub fn eastwest_set(n: usize, backends: &[Ipv4Addr]) -> Vec<Svc> {
    let n = n.max(1);
    let mut next_ep = 0;
    let mut out: Vec<Svc> = (0..n - 1)
        .map(|i| filler(i, 2 + i % 2, &mut next_ep))
        .collect();
    let target = Svc {
        namespace: "bench".into(),
        name: "target".into(),
        ip: TARGET_VIP,
        ip6: None,
        port: TARGET_PORT,
        port_name: "http".into(),
        target_port: BACKEND_PORT,
        endpoints: backends.to_vec(),
        endpoints6: Vec::new(),
    };
    out.insert((n - 1) / 2, target);
    out
}

/// The dual-stack one-endpoint target ([`ONE_VIP`], [`ONE_VIP6`]) with `backend` (and its
/// IPv6 twin) as its only endpoint.
pub fn eastwest_one_target(backend: Ipv4Addr) -> Svc {
    Svc {
        namespace: "bench".into(),
        name: "target-one".into(),
        ip: ONE_VIP,
        ip6: None,
        port: TARGET_PORT,
        port_name: "http".into(),
        target_port: BACKEND_PORT,
        endpoints: vec![backend],
        endpoints6: Vec::new(),
    }
    .dual_stack()
}

/// [`eastwest_set`], every service dual-stack ([`Svc::dual_stack`]): the IPv6 target is
/// [`TARGET_VIP6`] with the backends' IPv6 twins.
pub fn eastwest_set_dual(n: usize, backends: &[Ipv4Addr]) -> Vec<Svc> {
    eastwest_set(n, backends)
        .into_iter()
        .map(Svc::dual_stack)
        .collect()
}

/// `n` services with `per` endpoints each (the control-plane set: 10,000 x 10 = 100,000).
pub fn control_set(n: usize, per: usize) -> Vec<Svc> {
    let mut next_ep = 0;
    (0..n).map(|i| filler(i, per, &mut next_ep)).collect()
}

/// How many services go into one manifest file. The agent re-reads every file when one
/// changes; a few hundred files keep its directory scan cheap.
pub const PER_FILE: usize = 250;

/// The file holding service `i`.
pub fn chunk_name(i: usize) -> String {
    format!("bench-{:05}.yaml", i / PER_FILE)
}

/// Renders the services `range` as one multi-document YAML file.
pub fn render_chunk(svcs: &[Svc]) -> String {
    let mut text = String::new();
    for s in svcs {
        let _ = write!(
            text,
            "---\n{}---\n{}",
            s.service().to_yaml(),
            s.slice().to_yaml()
        );
        if let Some(slice6) = s.slice6() {
            let _ = write!(text, "---\n{}", slice6.to_yaml());
        }
    }
    text
}

/// Replaces the `bench-*.yaml` files in `dir` with the set (written atomically, file by file).
pub fn write_manifests(dir: &Path, svcs: &[Svc]) -> Result<()> {
    for e in fs::read_dir(dir)
        .context("reading the manifests dir")?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("bench-") {
            fs::remove_file(e.path()).with_context(|| format!("removing {name}"))?;
        }
    }
    for (k, chunk) in svcs.chunks(PER_FILE).enumerate() {
        write_chunk(dir, &chunk_name(k * PER_FILE), chunk)?;
    }
    Ok(())
}

/// Writes one chunk file atomically (temporary name without `.yaml`, then rename).
pub fn write_chunk(dir: &Path, name: &str, svcs: &[Svc]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, render_chunk(svcs)).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {name}"))?;
    Ok(())
}

/// Total endpoints of a set (IPv4; a dual-stack service's IPv6 twins are not counted).
pub fn endpoint_count(svcs: &[Svc]) -> usize {
    svcs.iter().map(|s| s.endpoints.len()).sum()
}

/// The frontends ferry programs for a set: one per ClusterIP, so two per dual-stack service.
pub fn frontend_count(svcs: &[Svc]) -> usize {
    svcs.iter().map(|s| 1 + usize::from(s.ip6.is_some())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_sits_in_the_middle_and_sizes_add_up() {
        let be = [Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)];
        let set = eastwest_set(1000, &be);
        assert_eq!(set.len(), 1000);
        assert_eq!(set[499].ip, TARGET_VIP);
        assert_eq!(set.iter().filter(|s| s.ip == TARGET_VIP).count(), 1);
        assert_eq!(eastwest_set(1, &be).len(), 1);
        let cp = control_set(100, 10);
        assert_eq!(endpoint_count(&cp), 1000);
        let mut ips: Vec<_> = cp.iter().flat_map(|s| s.endpoints.clone()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 1000, "endpoints are distinct");
    }

    #[test]
    fn dual_stack_twins() {
        assert_eq!(TARGET_VIP6, "fd00:96::a".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ONE_VIP6, "fd00:96::b".parse::<Ipv6Addr>().unwrap());
        let one = eastwest_one_target(Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(
            one.endpoints6,
            vec![ipv6_twin(Ipv4Addr::new(10, 244, 0, 2))]
        );
        // Outside the fillers' 10.96.1.0 onwards and apart from the target.
        assert!(one.ip != TARGET_VIP && one.ip < filler_ip(0));
        assert_eq!(
            cluster_ip6(Ipv4Addr::new(10, 97, 2, 3)),
            "fd00:96::1:203".parse::<Ipv6Addr>().unwrap()
        );
        let be = [Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)];
        let set = eastwest_set_dual(101, &be);
        assert_eq!(frontend_count(&set), 202);
        let target = &set[50];
        assert_eq!(target.ip6, Some(TARGET_VIP6));
        let (ip, eps) = target.view(Family::V6).unwrap();
        assert_eq!(ip, IpAddr::V6(TARGET_VIP6));
        assert_eq!(
            eps,
            vec![
                "fd00:10:244::2".parse::<IpAddr>().unwrap(),
                "fd00:10:244::3".parse::<IpAddr>().unwrap()
            ]
        );
        let mut vips: Vec<_> = set.iter().filter_map(|s| s.ip6).collect();
        vips.sort();
        vips.dedup();
        assert_eq!(vips.len(), 101, "IPv6 ClusterIPs are distinct");
        assert!(eastwest_set(3, &be)[1].view(Family::V6).is_none());
        let yaml = render_chunk(std::slice::from_ref(target));
        assert!(yaml.contains("fd00:96::a"), "{yaml}");
        assert!(yaml.contains("addressType: IPv6"), "{yaml}");
        assert!(yaml.contains("fd00:10:244::3"), "{yaml}");
        let filler = render_chunk(&set[..1]);
        assert_eq!(filler.matches(FILLER_NODE).count(), 4, "{filler}");
    }
}
