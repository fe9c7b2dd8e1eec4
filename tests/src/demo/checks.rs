//! The demo's clients: real programs (dig, getent, mariadb, redis-cli, curl) run in the
//! client pod or in the external client, each result one line of the report.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use serde_json::Value;

use super::{
    cluster::{Cluster, Svc},
    http_server::Answer,
    objects,
    pod_exec::{self, Side},
    servers::{DB_NAME, DB_PASSWORD, DB_USER},
    topology,
};
use crate::{
    lab::{Lab, Pod},
    services,
};

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
    fn svc(&self, namespace: &str, name: &str) -> &Svc {
        self.cluster
            .service(namespace, name)
            .unwrap_or_else(|| panic!("service {namespace}/{name} is not in the examples"))
    }

    /// Runs a client; Ok(stdout) if it exits 0, else Err(what it said).
    fn run(&self, side: Side, program: &str, args: &[&str]) -> Result<String, String> {
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
    fn pods_of(&self, svc: &Svc) -> BTreeSet<String> {
        self.cluster
            .backends_of(svc)
            .iter()
            .flat_map(|d| d.pod_names())
            .collect()
    }

    /// The agent log's last warning about the north-south programs, if any: why traffic from
    /// outside cannot work.
    fn north_south_hint(&self) -> String {
        let log = self.lab.agent_log();
        let said = log
            .lines()
            .filter(|l| l.contains("north-south") && (l.contains("WARN") || l.contains("ERROR")))
            .last()
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

/// A short name through the resolv.conf search path (`getent hosts gin`).
pub fn dns_search(cx: &Ctx, name: &str) -> Line {
    let svc = cx.svc("default", name);
    let what = format!("DNS        `{name}` through the pods' search path");
    match cx.run(Side::Pod, "getent", &["hosts", name]) {
        Ok(out) if out.split_whitespace().next() == Some(&svc.cluster_ip.to_string()) => {
            Line::ok(format!("{what} -> {} ({})", svc.cluster_ip, svc.fqdn()))
        }
        Ok(out) => Line::fail(format!("{what}: {:?}, want {}", out.trim(), svc.cluster_ip)),
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

/// `count` HTTP requests to a ClusterIP Service by name (one connection each): which pods
/// answered, and whether each saw the client pod's own address.
pub fn balance(cx: &Ctx, name: &str, count: usize) -> Line {
    let svc = cx.svc("default", name);
    let port = svc.ports[0].port;
    let url = if port == 80 {
        format!("http://{name}/")
    } else {
        format!("http://{name}:{port}/")
    };
    let what = format!(
        "ClusterIP  {name} {}:{port}, {count} requests to {url}",
        svc.cluster_ip
    );
    let mut args = vec!["-sS", "--max-time", "5"];
    args.extend(std::iter::repeat_n(url.as_str(), count));
    let (out, err) = match cx.run(Side::Pod, "curl", &args) {
        Ok(out) => (out, None),
        Err(e) => (String::new(), Some(e)),
    };
    let answers = Answer::parse_all(&out);
    let mut by_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &answers {
        *by_pod.entry(&a.pod).or_default() += 1;
    }
    let spread = by_pod
        .iter()
        .map(|(p, n)| format!("{p} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let want = cx.pods_of(svc);
    let answered: BTreeSet<String> = by_pod.keys().map(|p| p.to_string()).collect();
    let client_ip = cx.client.ip.to_string();
    let foreign: Vec<&str> = answers
        .iter()
        .map(Answer::client_ip)
        .filter(|ip| *ip != client_ip)
        .collect();
    if answers.len() == count && answered == want && foreign.is_empty() {
        Line::ok(format!(
            "{what} -> {spread} (each saw the client as {client_ip})"
        ))
    } else {
        let mut why = format!(
            "{}/{count} answered ({spread}); want every pod of {:?}",
            answers.len(),
            want
        );
        if !foreign.is_empty() {
            why.push_str(&format!("; the client was seen as {foreign:?}"));
        }
        if let Some(e) = err {
            why.push_str(&format!("; {e}"));
        }
        Line::fail(format!("{what}: {why}"))
    }
}

/// curl from the external client (outside the lab cgroup: only the node's TC programs can
/// carry it).
fn external_get(cx: &Ctx, url: &str, resolve: Option<&str>) -> Result<Answer, String> {
    let mut args = vec!["-sS", "--max-time", "3"];
    if let Some(r) = resolve {
        args.extend(["--resolve", r]);
    }
    args.push(url);
    let out = cx.run(Side::External, "curl", &args)?;
    Answer::parse(out.trim()).ok_or_else(|| format!("unexpected answer {:?}", out.trim()))
}

/// web-server's LoadBalancer IP from outside: the server must see the client's own address.
pub fn load_balancer(cx: &Ctx) -> Line {
    let svc = cx.svc("default", "web-server");
    let lb = svc.lb_ip.expect("web-server is a LoadBalancer");
    let port = svc.ports[0].port;
    let url = format!("http://{lb}:{port}/");
    let what = format!(
        "LB         web-server {lb}:{port} from the external client {}",
        topology::EXTERNAL_IP
    );
    match external_get(cx, &url, None) {
        Ok(a) if a.client_ip() == topology::EXTERNAL_IP.to_string() => Line::ok(format!(
            "{what}: {} saw the client as {}, its own address (externalTrafficPolicy Local)",
            a.pod,
            a.client_ip()
        )),
        Ok(a) => Line::fail(format!(
            "{what}: {} saw the client as {}, not {}: the source IP was not preserved",
            a.pod,
            a.client_ip(),
            topology::EXTERNAL_IP
        )),
        Err(e) => Line::fail(format!("{what}: {e}{}", cx.north_south_hint())),
    }
}

/// web-server's healthCheckNodePort on the node, as the cloud load balancer probes it.
pub fn health_check(cx: &Ctx) -> Line {
    let svc = cx.svc("default", "web-server");
    let port = svc.health_check_node_port.expect("eTP Local LoadBalancer");
    let url = format!("http://{}:{port}/", topology::NODE_IP);
    let what = format!("LB health  web-server's healthCheckNodePort {url}");
    let args = ["-sS", "--max-time", "3", "-w", "\n%{http_code}", &url];
    match cx.run(Side::External, "curl", &args) {
        Ok(out) => {
            let (body, code) = out.trim().rsplit_once('\n').unwrap_or(("", out.trim()));
            let local = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["localEndpoints"].as_u64());
            let want = cx.pods_of(svc).len() as u64;
            if code == "200" && local == Some(want) {
                Line::ok(format!(
                    "{what} -> 200, localEndpoints {want}: the load balancer sends traffic here"
                ))
            } else {
                Line::fail(format!(
                    "{what} -> {code} {body}: want 200 with localEndpoints {want}"
                ))
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}

/// A request through the ingress controller's LoadBalancer IP with the Ingress's host name:
/// it must reach a pod of `want_deployment` with path `want_path`.
pub fn ingress(cx: &Ctx, path: &str, want_deployment: &str, want_path: &str) -> Line {
    let nginx = cx.svc("ingress-nginx", "ingress-nginx-controller");
    let lb = nginx.lb_ip.expect("the controller is a LoadBalancer");
    let host = ingress_host(cx.cluster);
    let url = format!("http://{host}{path}");
    let what = format!("Ingress    {url} via {lb}");
    let check =
        |a: &Answer| a.pod.starts_with(&format!("{want_deployment}-")) && a.path == want_path;
    let resolve = format!("{host}:80:{lb}");
    match external_get(cx, &url, Some(&resolve)) {
        Ok(a) if check(&a) => Line::ok(format!(
            "{what} -> {} got {} (nginx {} proxied it; X-Forwarded-For {})",
            a.pod,
            a.path,
            a.client_ip(),
            a.forwarded_for
        )),
        Ok(a) => Line::fail(format!(
            "{what} -> {} got {}: want a {want_deployment} pod getting {want_path}",
            a.pod, a.path
        )),
        Err(e) => {
            // Tell apart the ingress itself from the way in.
            let inside = format!("{host}:80:{}", nginx.cluster_ip);
            let mut args = vec!["-sS", "--max-time", "3", "--resolve", &inside];
            args.push(&url);
            let through = match cx.run(Side::Pod, "curl", &args) {
                Ok(out) => match Answer::parse(out.trim()) {
                    Some(a) if check(&a) => format!("{} got {}: the ingress works", a.pod, a.path),
                    _ => format!("answered {:?}", out.trim()),
                },
                Err(e) => e,
            };
            Line::fail(format!(
                "{what}: {e}{}; from a pod through the controller's ClusterIP {}: {through}",
                cx.north_south_hint(),
                nginx.cluster_ip
            ))
        }
    }
}

/// The Ingress's first host.
pub fn ingress_host(cluster: &Cluster) -> String {
    cluster
        .ingresses
        .first()
        .and_then(|i| i["spec"]["rules"][0]["host"].as_str())
        .unwrap_or("gin-vue.test.com")
        .to_owned()
}

/// Every frontend the Services call for, with the backends their pods make:
/// (address, port, protocol, sorted "ip:port" backends).
pub fn expected_frontends(
    cluster: &Cluster,
    pods: &BTreeMap<String, Pod>,
) -> Vec<(Ipv4Addr, u16, String, Vec<String>)> {
    let mut out = Vec::new();
    for svc in &cluster.services {
        for p in &svc.ports {
            let mut backends: Vec<String> = cluster
                .backends_of(svc)
                .iter()
                .flat_map(|d| {
                    let port = objects::target_port(p, d).unwrap_or_default();
                    d.pod_names()
                        .into_iter()
                        .filter_map(move |n| Some(format!("{}:{port}", pods.get(&n)?.ip)))
                })
                .collect();
            backends.sort();
            out.push((svc.cluster_ip, p.port, p.protocol.clone(), backends.clone()));
            if let Some(lb) = svc.lb_ip {
                out.push((lb, p.port, p.protocol.clone(), backends.clone()));
            }
            if let Some(np) = p.node_port {
                out.push((topology::NODE_IP, np, p.protocol.clone(), backends));
            }
        }
    }
    out
}

/// True when `ferry services` holds every expected frontend with exactly its backends.
pub fn all_programmed(v: &Value, want: &[(Ipv4Addr, u16, String, Vec<String>)]) -> bool {
    want.iter().all(|(ip, port, proto, backends)| {
        let b: Vec<&str> = backends.iter().map(String::as_str).collect();
        services::active_is(v, &ip.to_string(), *port, proto, &b)
    })
}

/// What `ferry services` holds, checked against the Services.
pub fn ferry_services(cx: &Ctx) -> Line {
    let want = expected_frontends(cx.cluster, cx.pods);
    let what = "ferry      services";
    match cx.lab.try_services() {
        Ok(v) => {
            let missing: Vec<String> = want
                .iter()
                .filter(|(ip, port, proto, backends)| {
                    let b: Vec<&str> = backends.iter().map(String::as_str).collect();
                    !services::active_is(&v, &ip.to_string(), *port, proto, &b)
                })
                .map(|(ip, port, proto, _)| format!("{ip}:{port}/{proto}"))
                .collect();
            let lbs = cx
                .cluster
                .services
                .iter()
                .filter(|s| s.lb_ip.is_some())
                .count();
            if missing.is_empty() {
                Line::ok(format!(
                    "{what}: all {} frontends of the {} Services ({lbs} LoadBalancer) hold \
                     their pods as backends",
                    want.len(),
                    cx.cluster.services.len()
                ))
            } else {
                Line::fail(format!("{what}: missing or wrong: {}", missing.join(", ")))
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}
