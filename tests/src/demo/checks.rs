//! The demo's clients: real programs run in the client pod or in the external client, each
//! result one line of the report. Here: DNS, MySQL and Redis through Service names; HTTP
//! through ClusterIPs, the load balancers and the ingress in [`super::http_checks`]; what
//! ferry programmed in [`super::programmed`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use super::{
    cluster::{Cluster, Svc},
    pod_exec::{self, Side},
    servers::{DB_NAME, DB_PASSWORD, DB_USER},
    topology,
};
use crate::lab::{Lab, Pod};

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Line {
    pub ok: bool,
    pub text: String,
}

impl Line {
    pub fn ok(text: impl Into<String>) -> Line {
        Line {
            ok: true,
            text: text.into(),
        }
    }

    pub fn fail(text: impl Into<String>) -> Line {
        Line {
            ok: false,
            text: text.into(),
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

/// What the checks need.
pub struct Ctx<'a> {
    pub lab: &'a Lab,
    pub cluster: &'a Cluster,
    pub pods: &'a BTreeMap<String, Pod>,
    pub client: &'a Pod,
    pub external: &'a Pod,
    pub resolv_conf: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn svc(&self, namespace: &str, name: &str) -> &Svc {
        self.cluster
            .service(namespace, name)
            .unwrap_or_else(|| panic!("service {namespace}/{name} is not in the examples"))
    }

    /// Runs a client; Ok(stdout) if it exits 0, else Err(what it said).
    pub(super) fn run(&self, side: Side, program: &str, args: &[&str]) -> Result<String, String> {
        let pod = match side {
            Side::Pod => self.client,
            Side::External => self.external,
        };
        let out = pod_exec::output(
            self.lab,
            pod,
            side,
            self.resolv_conf,
            program,
            args,
            TIMEOUT,
        )
        .map_err(|e| format!("{e:#}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let said = if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                stderr.trim()
            };
            Err(format!("{program} failed ({}): {said}", out.status))
        }
    }

    /// The pod names of the Deployments behind a Service.
    pub(super) fn pods_of(&self, svc: &Svc) -> BTreeSet<String> {
        self.cluster
            .backends_of(svc)
            .iter()
            .flat_map(|d| d.pod_names())
            .collect()
    }

    /// The agent log's last warning about the north-south programs, if any: why traffic from
    /// outside cannot work.
    pub(super) fn north_south_hint(&self) -> String {
        let log = self.lab.agent_log();
        let said = log
            .lines()
            .rfind(|l| l.contains("north-south") && (l.contains("WARN") || l.contains("ERROR")))
            .map(|l| {
                l.split_once("WARN")
                    .or_else(|| l.split_once("ERROR"))
                    .map_or(l, |(_, rest)| rest)
            });
        match said {
            Some(said) => format!(" [agent log: {}]", said.trim()),
            None => String::new(),
        }
    }
}

/// `dig @kube-dns <svc fqdn>` over UDP or TCP.
pub fn dns(cx: &Ctx, namespace: &str, name: &str, tcp: bool) -> Line {
    let svc = cx.svc(namespace, name);
    let fqdn = svc.fqdn();
    let server = format!("@{}", topology::KUBE_DNS_IP);
    let mut args = vec!["+short", "+time=2", "+tries=1", &server, &fqdn, "A"];
    if tcp {
        args.insert(0, "+tcp");
    }
    let how = if tcp { "TCP" } else { "UDP" };
    let what = format!("DNS        dig {server} {fqdn} ({how})");
    match cx.run(Side::Pod, "dig", &args) {
        Ok(out) if out.trim() == svc.cluster_ip.to_string() => {
            Line::ok(format!("{what} -> {}", svc.cluster_ip))
        }
        Ok(out) => Line::fail(format!(
            "{what}: answered {:?}, want {}",
            out.trim(),
            svc.cluster_ip
        )),
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}

/// A short name through the resolv.conf search path (`getent ahosts gin`): both of the
/// dual-stack Service's ClusterIPs (A and AAAA).
pub fn dns_search(cx: &Ctx, name: &str) -> Line {
    let svc = cx.svc("default", name);
    let what = format!("DNS        `{name}` through the pods' search path");
    let want = [svc.cluster_ip.to_string(), svc.cluster_ip6.to_string()];
    match cx.run(Side::Pod, "getent", &["ahosts", name]) {
        Ok(out) => {
            let got: std::collections::BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if want.iter().all(|w| got.contains(w.as_str())) {
                Line::ok(format!(
                    "{what} -> {} and {} ({})",
                    want[0],
                    want[1],
                    svc.fqdn()
                ))
            } else {
                Line::fail(format!("{what}: {got:?}, want {want:?}"))
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}

/// `SELECT 1` with the MariaDB client through mysql's Service name.
pub fn mysql(cx: &Ctx) -> Line {
    let svc = cx.svc("default", "mysql");
    let host = svc.fqdn();
    let what = format!("MySQL      SELECT 1 through {host}:3306");
    let args = [
        "--no-defaults",
        &format!("--host={host}"),
        "--port=3306",
        &format!("--user={DB_USER}"),
        &format!("--password={DB_PASSWORD}"),
        "--connect-timeout=5",
        "--batch",
        "--skip-column-names",
        "-e",
        "SELECT 1, SUBSTRING_INDEX(USER(), '@', -1)",
        DB_NAME,
    ];
    let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
    match cx.run(Side::Pod, "mariadb", &args) {
        Ok(out) => {
            let fields: Vec<&str> = out.split_whitespace().collect();
            match fields.as_slice() {
                ["1", seen] if *seen == cx.client.ip.to_string() => Line::ok(format!(
                    "{what} -> 1 (MariaDB saw the client as {seen}, its pod IP)"
                )),
                ["1", seen] => Line::fail(format!(
                    "{what} -> 1, but MariaDB saw the client as {seen}, not {}",
                    cx.client.ip
                )),
                _ => Line::fail(format!("{what}: unexpected output {:?}", out.trim())),
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}

/// SET then GET with redis-cli through the short name `redis`.
pub fn redis(cx: &Ctx) -> Line {
    let value = format!("hello-from-{}", cx.client.name);
    let what = "Redis      SET/GET through `redis`:6379";
    let cli = |args: &[&str]| {
        let mut all = vec!["-h", "redis", "-p", "6379"];
        all.extend_from_slice(args);
        cx.run(Side::Pod, "redis-cli", &all)
    };
    let set = cli(&["SET", "ferry-demo", &value]);
    let get = cli(&["GET", "ferry-demo"]);
    let info = cli(&["CLIENT", "INFO"]).unwrap_or_default();
    let seen = info
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))
        .and_then(|a| a.rsplit_once(':'))
        .map(|(ip, _)| ip.to_owned())
        .unwrap_or_else(|| "?".into());
    match (set, get) {
        (Ok(s), Ok(g)) if s.trim() == "OK" && g.trim() == value => Line::ok(format!(
            "{what} -> {value} (redis saw the client as {seen})"
        )),
        (Ok(s), Ok(g)) => Line::fail(format!(
            "{what}: SET said {:?}, GET said {:?} (want {value})",
            s.trim(),
            g.trim()
        )),
        (Err(e), _) | (_, Err(e)) => Line::fail(format!("{what}: {e}")),
    }
}
