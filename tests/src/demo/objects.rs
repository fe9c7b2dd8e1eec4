//! Writing the cluster's objects where the agent reads them (the lab's manifests directory):
//! the completed Services, one EndpointSlice per Service and Deployment with the demo's pods,
//! and the Node with the node's device address as InternalIP.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    cluster::{Cluster, Deployment, SvcPort, Target},
    topology,
};
use crate::{
    lab::{Lab, NODE_NAME, Pod, ipv6_twin},
    manifests::{Endpoint, EndpointSlice},
};

/// Counts of what was written.
#[derive(Debug, Default)]
pub struct Written {
    pub services: usize,
    pub slices: usize,
}

pub fn write_all(lab: &Lab, cluster: &Cluster, pods: &BTreeMap<String, Pod>) -> Result<Written> {
    let m = lab.manifests();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME},
        "status": {"addresses": [
            {"type": "InternalIP", "address": topology::NODE_IP.to_string()},
            {"type": "InternalIP", "address": ipv6_twin(topology::NODE_IP).to_string()},
            {"type": "Hostname", "address": NODE_NAME},
        ]},
    });
    m.write_raw(
        &format!("node-{NODE_NAME}.yaml"),
        &serde_yaml::to_string(&node)?,
    );
    let mut written = Written::default();
    for svc in &cluster.services {
        for deployment in cluster.backends_of(svc) {
            // One slice per family, as the EndpointSlice controller writes for a dual-stack
            // Service.
            for v6 in [false, true] {
                let slice = slice(&svc.name, &svc.ports, deployment, pods, v6)
                    .with_context(|| format!("EndpointSlice of {}/{}", svc.namespace, svc.name))?
                    .namespace(&svc.namespace);
                m.apply(&slice);
                written.slices += 1;
            }
        }
        let file = format!("service-{}-{}.yaml", svc.namespace, svc.name);
        m.write_raw(&file, &serde_yaml::to_string(&svc.object)?);
        written.services += 1;
    }
    Ok(written)
}

/// The slice of `deployment`'s pods for a service, of one family: its ports resolved against
/// the Deployment's container ports (a named targetPort), every pod ready on this node.
fn slice(
    service: &str,
    ports: &[SvcPort],
    deployment: &Deployment,
    pods: &BTreeMap<String, Pod>,
    v6: bool,
) -> Result<EndpointSlice> {
    let mut slice = if v6 {
        EndpointSlice::ipv6(&format!("{service}-{}-v6", deployment.name), service)
    } else {
        EndpointSlice::new(&format!("{service}-{}", deployment.name), service)
    };
    for p in ports {
        slice = slice.port(&p.name, target_port(p, deployment)?, &p.protocol);
    }
    for name in deployment.pod_names() {
        let pod = pods
            .get(&name)
            .with_context(|| format!("pod {name} was not created"))?;
        slice = slice.endpoint(if v6 {
            Endpoint::ready(pod.ip6)
        } else {
            Endpoint::ready(pod.ip)
        });
    }
    Ok(slice)
}

/// The backend port of a service port on a deployment's pods.
pub fn target_port(p: &SvcPort, deployment: &Deployment) -> Result<u16> {
    match &p.target {
        Target::Number(n) => Ok(*n),
        Target::Name(name) => deployment
            .ports
            .iter()
            .find(|c| &c.name == name && c.protocol == p.protocol)
            .map(|c| c.port)
            .with_context(|| format!("no container port named {name} in {}", deployment.name)),
    }
}
