//! The synthetic service sets the benchmarks program into each contender.
//!
//! One description ([`Svc`]) is rendered three ways: as Service/EndpointSlice manifests for
//! ferry, as kube-proxy's iptables rules and as kube-proxy's nftables rules
//! ([`super::kubeproxy`]), so every contender holds exactly the same services.

use std::{fmt::Write as _, fs, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};

use crate::manifests::{Endpoint, EndpointSlice, Manifest, Service};

/// One ClusterIP service with one TCP port and its ready endpoints.
#[derive(Clone, Debug)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub port_name: String,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Svc {
    /// kube-proxy's ServicePortName string: `namespace/name:port`.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    pub fn service(&self) -> Service {
        Service::cluster_ip(&self.name, &self.ip.to_string())
            .namespace(&self.namespace)
            .port_to(
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
            .endpoints(self.endpoints.iter().map(|ip| {
                // Filler endpoints are other nodes' pods, as their addresses say: a node
                // holds a few hundred pods at most, not the cluster's 100,000.
                if is_filler_endpoint(*ip) {
                    Endpoint::ready(ip).node(FILLER_NODE)
                } else {
                    Endpoint::ready(ip)
                }
            }))
    }
}

/// The service every east-west contender is measured against.
pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const TARGET_PORT: u16 = 80;
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
        port: 80,
        port_name: "http".into(),
        target_port: 8080,
        endpoints: eps,
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
        port: TARGET_PORT,
        port_name: "http".into(),
        target_port: BACKEND_PORT,
        endpoints: backends.to_vec(),
    };
    out.insert((n - 1) / 2, target);
    out
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

/// Total endpoints of a set.
pub fn endpoint_count(svcs: &[Svc]) -> usize {
    svcs.iter().map(|s| s.endpoints.len()).sum()
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
}
