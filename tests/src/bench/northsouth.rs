//! Section 2, north-south: an external client to a LoadBalancer IP through a node, on the
//! two-node lab ([`crate::cluster`]).
//!
//! ```text
//!  ext1 (172.18.0.100) ── segment ──┬── node1 (ferry's TC programs on eth0) ── web1 10.244.1.2
//!                                   └── node2 (kube-proxy's iptables rules)  ── web2 10.244.2.2
//! ```
//! - routing (the limit): ext2 (a client of its own, see `run`) to web1's pod IP, routed
//!   through node1;
//! - ferry: ext1 to 192.0.2.10 (a LoadBalancer IP, externalTrafficPolicy Local) routed to
//!   node1, where `ferry_tc_in` DNATs it to web1 and `ferry_tc_out` reverses the replies;
//! - iptables: ext1 to 192.0.2.20, the same service as kube-proxy's iptables mode writes it
//!   (`KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*`), routed to node2, which DNATs it to web2.
//!
//! node2 runs no agent, so its path has no TC program; node1 has no netfilter rules, so its
//! paths have no conntrack. The plain-routing path crosses node1's eth0 and so pays ferry's
//! TC "pass" cost (section 3), as any non-service packet on a ferry node does.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    env::in_lab_ns_ok,
    kubeproxy,
    load::{self, ClientPlace},
    synth::Svc,
};
use crate::{
    AgentOpts, Cluster, Endpoint, EndpointSlice, Service,
    lab::Pod,
    proc::{self, Placement, Proc},
};

const HTTP: u16 = 8080;
const IPERF: u16 = 5201;
const FERRY_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const IPT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contender {
    Routing,
    Ferry,
    Iptables,
}

impl Contender {
    pub const ALL: [Contender; 3] = [Contender::Routing, Contender::Ferry, Contender::Iptables];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Routing => "plain routing to the pod IP",
            Contender::Ferry => "ferry (TC)",
            Contender::Iptables => "kube-proxy iptables",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub rounds: usize,
    pub secs: f64,
    pub conns: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub contender: Contender,
    pub gbits_per_sec: Vec<f64>,
    pub conns_per_sec: Vec<f64>,
    pub errors: u64,
    /// Runs that failed (killed after overrunning, or no result); left out of the medians.
    #[serde(default)]
    pub failed_runs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub config: Config,
    pub points: Vec<Point>,
}

fn target(c: Contender, web1: &Pod) -> Ipv4Addr {
    match c {
        Contender::Routing => web1.ip,
        Contender::Ferry => FERRY_VIP,
        Contender::Iptables => IPT_VIP,
    }
}

/// The service ferry serves: LoadBalancer 192.0.2.10, externalTrafficPolicy Local, ports 80
/// (HTTP) and 5201 (iperf3) to web1.
fn ferry_service(web1: &Pod) -> (Service, EndpointSlice) {
    let svc = Service::load_balancer("web", "10.96.0.50")
        .namespace("bench")
        .port_to("http", 8080, "TCP", HTTP)
        .port_to("iperf", i64::from(IPERF), "TCP", IPERF)
        .lb_ingress(&FERRY_VIP.to_string())
        .external_traffic_policy("Local");
    let slice = EndpointSlice::new("web-abc12", "web")
        .namespace("bench")
        .port("http", HTTP, "TCP")
        .port("iperf", IPERF, "TCP")
        .endpoint(Endpoint::ready(web1.ip).node("node1"));
    (svc, slice)
}

/// kube-proxy's iptables rules for the same service on node2 (its LB IP 192.0.2.20, web2).
fn iptables_rules(web2: &Pod) -> String {
    let svc = |port_name: &str, port: u16| Svc {
        namespace: "bench".into(),
        name: "web".into(),
        ip: Ipv4Addr::new(10, 96, 0, 50),
        port,
        port_name: port_name.into(),
        target_port: port,
        endpoints: vec![web2.ip],
    };
    let http = kubeproxy::iptables_restore_lb_local(&svc("http", HTTP), IPT_VIP);
    // Both ports: the second service port's chains are merged into the first's restore.
    let iperf = kubeproxy::iptables_restore_lb_local(&svc("iperf", IPERF), IPT_VIP);
    merge_restores(&http, &iperf)
}

/// Merges two single-service restores: the second one's nat chain declarations and rules
/// are added to the first's (the base rules once).
fn merge_restores(a: &str, b: &str) -> String {
    let nat_b = b.split("*nat\n").nth(1).unwrap_or("");
    let decls: String = nat_b
        .lines()
        .filter(|l| {
            l.starts_with(":KUBE-SVC-")
                || l.starts_with(":KUBE-SEP-")
                || l.starts_with(":KUBE-EXT-")
                || l.starts_with(":KUBE-SVL-")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let rules: String = nat_b
        .lines()
        .filter(|l| {
            l.starts_with("-A KUBE-SVC-")
                || l.starts_with("-A KUBE-SEP-")
                || l.starts_with("-A KUBE-EXT-")
                || l.starts_with("-A KUBE-SVL-")
                || (l.starts_with("-A KUBE-SERVICES") && !l.contains("nodeports;"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let a = a.replacen(
        ":KUBE-MARK-MASQ - [0:0]\n",
        &format!(":KUBE-MARK-MASQ - [0:0]\n{decls}"),
        1,
    );
    let marker = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports;";
    let at = a.rfind(marker).unwrap_or(a.len());
    format!("{}{rules}{}", &a[..at], &a[at..])
}

pub fn run(config: &Config) -> Result<Results> {
    super::env::tool("iperf3", "iperf3")?;
    let cl = Cluster::try_new("bench-northsouth")?;
    let bench = std::env::current_exe()?;
    let web1 = cl.add_pod_on("node1", "web1");
    let web2 = cl.add_pod_on("node2", "web2");
    let mut servers: Vec<Proc> = Vec::new();
    for pod in [&web1, &web2] {
        let s = cl.spawn(
            pod,
            &bench,
            &["serve", "--port", &HTTP.to_string(), "--lifetime", "7200"],
        );
        if s.wait_line(Duration::from_secs(10), |l| l == "ready")
            .is_none()
        {
            bail!("the HTTP server in {} did not start", pod.name);
        }
        servers.push(s);
        servers.push(cl.spawn(pod, "iperf3", &["-s", "-p", &IPERF.to_string()]));
    }
    let (svc, slice) = ferry_service(&web1);
    cl.manifests().apply(&svc);
    cl.manifests().apply(&slice);
    cl.start_agent("node1", &AgentOpts::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cl.tc_attached("node1") {
        if std::time::Instant::now() >= deadline {
            bail!(
                "ferry's TC programs were not attached on node1; log:\n{}",
                super::eastwest::tail(&cl.agent_log("node1"), 4)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let node2 = cl.node("node2").netns.clone();
    let rules = cl.tmp_dir().join("northsouth-iptables.rules");
    std::fs::write(&rules, iptables_rules(&web2))?;
    in_lab_ns_ok(
        &node2,
        "iptables-restore",
        &[&rules.to_string_lossy()],
        Duration::from_secs(60),
    )?;
    let ext = cl.ext("ext1");
    cl.route(&ext, &format!("{FERRY_VIP}/32"), "node1");
    cl.route(&ext, &format!("{IPT_VIP}/32"), "node2");
    // The limit gets a client of its own. Sharing ext1 would make web1 see the
    // same client 4-tuples over two paths (ferry keeps the client address) with
    // two unrelated TCP timestamp clocks (Linux offsets them per destination),
    // so web1's TIME_WAIT sockets reject each path's reused ports under PAWS
    // and both lose a second per collision.
    let ext_direct = cl.ext("ext2");
    cl.route(&ext_direct, "10.244.1.0/24", "node1");
    let shared = ClientPlace {
        netns_path: ext.netns_path.clone(),
        cgroup: ext.cgroup.clone(),
    };
    let direct = ClientPlace {
        netns_path: ext_direct.netns_path.clone(),
        cgroup: ext_direct.cgroup.clone(),
    };
    let place_of = |c: Contender| {
        if c == Contender::Routing {
            &direct
        } else {
            &shared
        }
    };
    // Every path answers before anything is measured (the agent keeps running: the service's
    // frontends must be programmed first).
    for c in Contender::ALL {
        let place = place_of(c);
        let url = format!("http://{}:{HTTP}/", target(c, &web1));
        let mut ok = false;
        for _ in 0..100 {
            let out = proc::output_placed(
                Command::new("curl").args(["-sS", "--max-time", "2", &url]),
                &Placement {
                    netns: Some(place.netns_path.clone()),
                    cgroup: place.cgroup.clone(),
                },
                Duration::from_secs(5),
            )?;
            if out.status.success() && out.stdout == b"ok\n" {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ok {
            bail!(
                "the {} path ({url}) does not answer; node1 log:\n{}",
                c.label(),
                super::eastwest::tail(&cl.agent_log("node1"), 4)
            );
        }
    }
    cl.stop_agent("node1");
    let mut points: Vec<Point> = Contender::ALL
        .iter()
        .map(|&c| Point {
            contender: c,
            gbits_per_sec: Vec::new(),
            conns_per_sec: Vec::new(),
            errors: 0,
            failed_runs: 0,
        })
        .collect();
    for round in 0..config.rounds {
        for k in 0..Contender::ALL.len() {
            let i = (k + round) % Contender::ALL.len();
            let c = Contender::ALL[i];
            let ip = target(c, &web1);
            let p = &mut points[i];
            let place = place_of(c);
            let gbps = match iperf(place, ip, config.secs) {
                Ok(g) => {
                    p.gbits_per_sec.push(g);
                    g
                }
                Err(e) => {
                    eprintln!("bench: north-south: {} iperf3 run failed: {e:#}", c.label());
                    p.failed_runs += 1;
                    f64::NAN
                }
            };
            let url = format!("http://{ip}:{HTTP}/");
            let rate = match load::wrk(place, &url, config.secs, config.conns, true) {
                Ok(w) => {
                    p.conns_per_sec.push(w.requests_per_sec);
                    p.errors += w.errors;
                    w.requests_per_sec
                }
                Err(e) => {
                    eprintln!("bench: north-south: {} wrk run failed: {e:#}", c.label());
                    p.failed_runs += 1;
                    f64::NAN
                }
            };
            let w = (gbps, rate);
            eprintln!(
                "bench: north-south round {}/{} {:<28} {:>6.2} Gbit/s {:>8.0} conn/s",
                round + 1,
                config.rounds,
                c.label(),
                w.0,
                w.1
            );
        }
    }
    drop(servers);
    Ok(Results {
        config: config.clone(),
        points,
    })
}

/// One iperf3 run (TCP, one stream) from the client: the receiver's bits/s, in Gbit/s.
fn iperf(place: &ClientPlace, ip: Ipv4Addr, secs: f64) -> Result<f64> {
    let t = format!("{}", secs.max(1.0).round() as u64);
    let out = proc::output_placed(
        Command::new("iperf3").args([
            "-c",
            &ip.to_string(),
            "-p",
            &IPERF.to_string(),
            "-t",
            &t,
            "-J",
        ]),
        &Placement {
            netns: Some(place.netns_path.clone()),
            cgroup: place.cgroup.clone(),
        },
        Duration::from_secs_f64(secs + 20.0),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 to {ip}: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3's output")
}
