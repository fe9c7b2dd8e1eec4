//! The demo's cluster objects.
//!
//! The Services, Deployments and the Ingress are the gin-vue-admin example manifests
//! (`deploy/examples/gin-vue-admin/`, compiled in), plus the two system components every
//! cluster brings ([`SYSTEM_YAML`]: the cluster DNS behind kube-dns and ingress-nginx's
//! controller). The demo then adds what the control plane would: ClusterIPs, node ports and a
//! health-check node port, the load balancer's IPs in the Service status, one pod per replica,
//! the EndpointSlices of those pods and the Node object.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::topology;

/// The example manifests, as a user applies them (`kubectl apply -f deploy/examples/...`).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "mysql.yaml",
        include_str!("../../../deploy/examples/gin-vue-admin/mysql.yaml"),
    ),
    (
        "redis.yaml",
        include_str!("../../../deploy/examples/gin-vue-admin/redis.yaml"),
    ),
    (
        "web-server.yaml",
        include_str!("../../../deploy/examples/gin-vue-admin/web-server.yaml"),
    ),
    (
        "frontend-backend-separate-ingress.yaml",
        include_str!(
            "../../../deploy/examples/gin-vue-admin/frontend-backend-separate-ingress.yaml"
        ),
    ),
];

/// What a cluster runs besides the application: the DNS behind the kube-dns Service (dnsmasq
/// in the demo, CoreDNS in a real cluster) and ingress-nginx's controller behind its own
/// LoadBalancer Service (as its chart installs it, with externalTrafficPolicy Local so that
/// the controller sees the clients' addresses).
pub const SYSTEM_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  type: ClusterIP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      containers:
        - name: dns
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
  labels: {app.kubernetes.io/name: ingress-nginx}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app.kubernetes.io/name: ingress-nginx}
  ports:
    - {name: http, port: 80, protocol: TCP, targetPort: http}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: ingress-nginx}}
  template:
    metadata: {labels: {app.kubernetes.io/name: ingress-nginx}}
    spec:
      containers:
        - name: controller
          ports:
            - {name: http, containerPort: 80, protocol: TCP}
"#;

/// A service's targetPort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct SvcPort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub target: Target,
    pub node_port: Option<u16>,
}

/// A Service, completed as the control plane would.
#[derive(Clone, Debug)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// The IPv6 ClusterIP: every demo Service is dual-stack (PreferDualStack, IPv4 first).
    pub cluster_ip6: Ipv6Addr,
    pub lb_ip: Option<Ipv4Addr>,
    pub lb_ip6: Option<Ipv6Addr>,
    pub etp_local: bool,
    pub health_check_node_port: Option<u16>,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<SvcPort>,
    /// The object written for the agent.
    pub object: Value,
}

impl Svc {
    /// `<name>.<namespace>.svc.cluster.local`
    pub fn fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name,
            self.namespace,
            topology::CLUSTER_DOMAIN
        )
    }
}

/// A container port of a Deployment's pods.
#[derive(Clone, Debug)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
}

impl Deployment {
    /// The demo's pod names: `<deployment>-1`, `<deployment>-2`...
    pub fn pod_names(&self) -> Vec<String> {
        (1..=self.replicas)
            .map(|i| format!("{}-{i}", self.name))
            .collect()
    }
}

/// Every object of the demo's cluster.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Svc>,
    pub deployments: Vec<Deployment>,
    pub ingresses: Vec<Value>,
}

impl Cluster {
    /// The examples plus the system components, completed.
    pub fn load() -> Result<Cluster> {
        let mut cluster = Cluster::default();
        for (file, text) in EXAMPLES {
            cluster.add_yaml(text).context(*file)?;
        }
        cluster
            .add_yaml(SYSTEM_YAML)
            .context("the system objects")?;
        Ok(cluster)
    }

    fn add_yaml(&mut self, text: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let doc = Value::deserialize(doc)?;
            match doc["kind"].as_str() {
                Some("Service") => self.services.push(complete_service(doc)?),
                Some("Deployment") => self.deployments.push(deployment(&doc)?),
                Some("Ingress") => self.ingresses.push(doc),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Svc> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.name == name)
    }

    /// The Deployments whose pods a Service selects.
    pub fn backends_of(&self, svc: &Svc) -> Vec<&Deployment> {
        if svc.selector.is_empty() {
            return Vec::new();
        }
        self.deployments
            .iter()
            .filter(|d| d.namespace == svc.namespace)
            .filter(|d| svc.selector.iter().all(|(k, v)| d.labels.get(k) == Some(v)))
            .collect()
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn namespace_name(doc: &Value) -> Result<(String, String)> {
    let name = doc["metadata"]["name"]
        .as_str()
        .context("metadata.name is missing")?;
    let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    Ok((namespace.to_owned(), name.to_owned()))
}

fn deployment(doc: &Value) -> Result<Deployment> {
    let (namespace, name) = namespace_name(doc)?;
    let spec = &doc["spec"];
    let mut ports = Vec::new();
    for c in spec["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            ports.push(ContainerPort {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                port: p["containerPort"]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .with_context(|| format!("deployment {name}: containerPort"))?,
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            });
        }
    }
    Ok(Deployment {
        replicas: spec["replicas"].as_u64().unwrap_or(1) as u32,
        labels: string_map(&spec["template"]["metadata"]["labels"]),
        ports,
        namespace,
        name,
    })
}

/// Fills in what the API server and the cloud's load balancer controller would: the
/// ClusterIP, node ports, the health-check node port (LoadBalancer with
/// externalTrafficPolicy Local) and status.loadBalancer.ingress.
fn complete_service(mut doc: Value) -> Result<Svc> {
    let (namespace, name) = namespace_name(&doc)?;
    let alloc = topology::allocation(&namespace, &name).with_context(|| {
        format!("service {namespace}/{name} has no address in the demo's allocation table")
    })?;
    doc["metadata"]["namespace"] = json!(namespace);
    let spec = &mut doc["spec"];
    let type_ = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    let lb = type_ == "LoadBalancer";
    if lb != alloc.lb_ip.is_some() {
        bail!("service {namespace}/{name}: type {type_} does not match the allocation table");
    }
    spec["clusterIP"] = json!(alloc.cluster_ip.to_string());
    spec["clusterIPs"] = json!([
        alloc.cluster_ip.to_string(),
        alloc.cluster_ip6().to_string()
    ]);
    spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
    spec["ipFamilyPolicy"] = json!("PreferDualStack");
    let etp_local = spec["externalTrafficPolicy"].as_str() == Some("Local");
    let mut ports = Vec::new();
    let mut node_ports = alloc.node_ports.iter();
    for p in spec["ports"].as_array_mut().into_iter().flatten() {
        let port = p["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .with_context(|| format!("service {name}: port"))?;
        let target = match &p["targetPort"] {
            Value::Null => Target::Number(port),
            Value::String(s) => Target::Name(s.clone()),
            v => Target::Number(
                v.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .with_context(|| format!("service {name}: targetPort"))?,
            ),
        };
        let node_port = if lb {
            let np = *node_ports
                .next()
                .with_context(|| format!("service {name}: no node port left"))?;
            p["nodePort"] = json!(np);
            Some(np)
        } else {
            None
        };
        ports.push(SvcPort {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            protocol: p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            port,
            target,
            node_port,
        });
    }
    let health_check_node_port = (lb && etp_local).then_some(alloc.health_check_node_port);
    if let Some(hc) = health_check_node_port {
        spec["healthCheckNodePort"] = json!(hc);
    }
    let selector = string_map(&spec["selector"]);
    if let (Some(ip), Some(ip6)) = (alloc.lb_ip, alloc.lb_ip6()) {
        doc["status"] = json!({"loadBalancer": {"ingress": [
            {"ip": ip.to_string()},
            {"ip": ip6.to_string()},
        ]}});
    }
    Ok(Svc {
        namespace,
        name,
        cluster_ip: alloc.cluster_ip,
        cluster_ip6: alloc.cluster_ip6(),
        lb_ip: alloc.lb_ip,
        lb_ip6: alloc.lb_ip6(),
        etp_local,
        health_check_node_port,
        selector,
        ports,
        object: doc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_load_and_complete() {
        let c = Cluster::load().unwrap();
        let web = c.service("default", "web-server").unwrap();
        assert!(web.etp_local);
        assert_eq!(web.lb_ip, Some(topology::WEB_SERVER_LB_IP));
        assert!(web.health_check_node_port.is_some());
        assert_eq!(
            web.object["status"]["loadBalancer"]["ingress"][0]["ip"],
            topology::WEB_SERVER_LB_IP.to_string()
        );
        let gin = c.service("default", "gin").unwrap();
        let pods: Vec<String> = c
            .backends_of(gin)
            .iter()
            .flat_map(|d| d.pod_names())
            .collect();
        assert_eq!(pods, ["gin-1", "gin-2"]);
        let dns = c.service("kube-system", "kube-dns").unwrap();
        assert_eq!(dns.cluster_ip, topology::KUBE_DNS_IP);
        assert_eq!(dns.ports.len(), 2);
        assert_eq!(c.ingresses.len(), 1);
        let nginx = c
            .service("ingress-nginx", "ingress-nginx-controller")
            .unwrap();
        assert_eq!(nginx.ports[0].target, Target::Name("http".into()));
    }
}
