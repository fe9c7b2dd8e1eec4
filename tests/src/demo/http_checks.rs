//! HTTP through the Services: a ClusterIP's pods, web-server's load balancer (does the server
//! see the client's own address?), its health-check node port, and the ingress's routes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use serde_json::Value;

use super::{
    checks::{Ctx, Line},
    cluster::Cluster,
    http_server::Answer,
    pod_exec::Side,
    topology,
};

/// `count` HTTP requests to a ClusterIP Service by name (one connection each) over one
/// family (`curl -4` / `-6`: the name's A or AAAA record): which pods answered, and whether
/// each saw the client pod's own address of that family.
pub fn balance(cx: &Ctx, name: &str, count: usize, v6: bool) -> Line {
    let svc = cx.svc("default", name);
    let port = svc.ports[0].port;
    let url = if port == 80 {
        format!("http://{name}/")
    } else {
        format!("http://{name}:{port}/")
    };
    let (cluster_ip, family, flag): (IpAddr, _, _) = if v6 {
        (svc.cluster_ip6.into(), "IPv6", "-6")
    } else {
        (svc.cluster_ip.into(), "IPv4", "-4")
    };
    let what = format!(
        "ClusterIP  {name} {}, {count} requests to {url} over {family}",
        SocketAddr::new(cluster_ip, port)
    );
    let mut args = vec!["-sS", flag, "--max-time", "5"];
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
    let client_ip = if v6 {
        cx.client.ip6.to_string()
    } else {
        cx.client.ip.to_string()
    };
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

/// web-server's LoadBalancer IP of one family from outside: the server must see the client's
/// own address.
pub fn load_balancer(cx: &Ctx, v6: bool) -> Line {
    let svc = cx.svc("default", "web-server");
    let (lb, client): (IpAddr, IpAddr) = if v6 {
        (
            svc.lb_ip6.expect("web-server is a LoadBalancer").into(),
            cx.external.ip6.into(),
        )
    } else {
        (
            svc.lb_ip.expect("web-server is a LoadBalancer").into(),
            cx.external.ip.into(),
        )
    };
    let port = svc.ports[0].port;
    let target = SocketAddr::new(lb, port);
    let url = format!("http://{target}/");
    let what = format!("LB         web-server {target} from the external client {client}");
    match external_get(cx, &url, None) {
        Ok(a) if a.client_ip() == client.to_string() => Line::ok(format!(
            "{what}: {} saw the client as {}, its own address (externalTrafficPolicy Local)",
            a.pod,
            a.client_ip()
        )),
        Ok(a) => Line::fail(format!(
            "{what}: {} saw the client as {}, not {client}: the source IP was not preserved",
            a.pod,
            a.client_ip(),
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
