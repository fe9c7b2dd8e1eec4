//! The demo's ingress controller: nginx configured from the Ingress object the way
//! ingress-nginx configures its own nginx.
//!
//! With `rewrite-target` (or `use-regex`) the paths are case-insensitive regular expressions,
//! longest first; the matched request is rewritten (`/v1/(.*)` with target `/$1`: `/v1/x`
//! becomes `/x`) and proxied. One difference: ingress-nginx sends requests straight to the
//! endpoints it reads from the API, while this nginx proxies to the Service's DNS name,
//! resolved at request time through the cluster DNS, so that ferry picks the pod. For the same
//! reason the `affinity: cookie` annotation is only noted here: ingress-nginx implements it by
//! pinning a chosen endpoint in a cookie (INGRESSCOOKIE), which needs that endpoint list.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::topology::CLUSTER_DOMAIN;

const ANNOTATION: &str = "nginx.ingress.kubernetes.io/";

/// One path of an Ingress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: String,
    pub path: String,
    pub service: String,
    pub port: u16,
}

/// An Ingress reduced to what the controller needs.
#[derive(Clone, Debug)]
pub struct Ingress {
    pub namespace: String,
    pub name: String,
    pub rewrite_target: Option<String>,
    pub regex: bool,
    /// `affinity: cookie` with its cookie path, if set.
    pub cookie_affinity: Option<String>,
    pub routes: Vec<Route>,
}

impl Ingress {
    pub fn parse(obj: &Value) -> Result<Ingress> {
        let meta = &obj["metadata"];
        let annotation = |key: &str| {
            meta["annotations"][format!("{ANNOTATION}{key}")]
                .as_str()
                .map(str::to_owned)
        };
        let rewrite_target = annotation("rewrite-target");
        let regex = rewrite_target.is_some() || annotation("use-regex").as_deref() == Some("true");
        let cookie_affinity = (annotation("affinity").as_deref() == Some("cookie"))
            .then(|| annotation("session-cookie-path").unwrap_or_else(|| "/".into()));
        let mut routes = Vec::new();
        for rule in obj["spec"]["rules"].as_array().into_iter().flatten() {
            let host = rule["host"].as_str().unwrap_or("_").to_owned();
            for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                let backend = &p["backend"]["service"];
                routes.push(Route {
                    host: host.clone(),
                    path: p["path"].as_str().unwrap_or("/").to_owned(),
                    service: backend["name"]
                        .as_str()
                        .context("backend.service.name")?
                        .to_owned(),
                    port: backend["port"]["number"]
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .context("backend.service.port.number (named ports: not in the demo)")?,
                });
            }
        }
        if routes.is_empty() {
            bail!("the Ingress has no paths");
        }
        Ok(Ingress {
            namespace: meta["namespace"].as_str().unwrap_or("default").to_owned(),
            name: meta["name"].as_str().unwrap_or_default().to_owned(),
            rewrite_target,
            regex,
            cookie_affinity,
            routes,
        })
    }

    /// The hosts of its rules, in order, without repeats.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for r in &self.routes {
            if !hosts.contains(&r.host) {
                hosts.push(r.host.clone());
            }
        }
        hosts
    }
}

/// nginx.conf for the controller pod: listening on `listen`:80, resolving Service names
/// through `resolver`, every file under `dir`.
pub fn nginx_conf(ing: &Ingress, listen: Ipv4Addr, resolver: Ipv4Addr, dir: &Path) -> String {
    let d = dir.display();
    let mut c = format!(
        "# Written by ferry-demo from Ingress {ns}/{name}, as ingress-nginx would configure nginx.
worker_processes 1;
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format demo '$remote_addr \"$host\" \"$request\" $status upstream=$upstream_addr';
    access_log {d}/access.log demo;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # Service names are resolved per request through the cluster DNS (kube-dns).
    resolver {resolver} valid=10s ipv6=off;
    resolver_timeout 2s;
    server {{
        listen {listen}:80 default_server;
        location / {{ return 404 \"default backend - 404\\n\"; }}
    }}
",
        ns = ing.namespace,
        name = ing.name,
    );
    if let Some(path) = &ing.cookie_affinity {
        let _ = writeln!(
            c,
            "    # affinity: cookie (session-cookie-path {path}) is ingress-nginx's own endpoint \
             choice, not reproduced: see ferry's tests/src/demo/ingress.rs."
        );
    }
    for host in ing.hosts() {
        let _ = writeln!(
            c,
            "    server {{\n        listen {listen}:80;\n        server_name {host};"
        );
        let mut routes: Vec<&Route> = ing.routes.iter().filter(|r| r.host == host).collect();
        // ingress-nginx orders locations by path length, longest first.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        for r in routes {
            location(&mut c, ing, r);
        }
        c.push_str("    }\n");
    }
    c.push_str("}\n");
    c
}

fn location(c: &mut String, ing: &Ingress, r: &Route) {
    let upstream = format!("{}.{}.svc.{CLUSTER_DOMAIN}", r.service, ing.namespace);
    let head = if ing.regex {
        format!("location ~* \"^{}\"", r.path)
    } else {
        format!("location {}", r.path)
    };
    let _ = writeln!(c, "        {head} {{");
    let _ = writeln!(c, "            set $service_name \"{upstream}\";");
    if let Some(target) = &ing.rewrite_target {
        let _ = writeln!(c, "            rewrite \"(?i){}\" {target} break;", r.path);
    }
    let _ = writeln!(
        c,
        "            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_pass http://$service_name:{port};
        }}",
        port = r.port
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::cluster::Cluster;

    #[test]
    fn the_example_ingress_becomes_regex_locations_longest_first() {
        let cluster = Cluster::load().unwrap();
        let ing = Ingress::parse(&cluster.ingresses[0]).unwrap();
        assert_eq!(ing.rewrite_target.as_deref(), Some("/$1"));
        assert_eq!(ing.cookie_affinity.as_deref(), Some("/"));
        assert_eq!(ing.hosts(), ["gin-vue.test.com"]);
        let conf = nginx_conf(
            &ing,
            Ipv4Addr::new(10, 244, 0, 9),
            Ipv4Addr::new(10, 96, 0, 10),
            Path::new("/x"),
        );
        let v1 = conf.find("location ~* \"^/v1/(.*)\"").unwrap();
        let all = conf.find("location ~* \"^/(.*)\"").unwrap();
        assert!(v1 < all, "{conf}");
        assert!(conf.contains("rewrite \"(?i)/v1/(.*)\" /$1 break;"));
        assert!(conf.contains("proxy_pass http://$service_name:8888;"));
        assert!(conf.contains("\"gin.default.svc.cluster.local\""));
        assert!(conf.contains("resolver 10.96.0.10 "));
    }
}
