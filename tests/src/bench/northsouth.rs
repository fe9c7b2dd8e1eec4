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
//!
//! The same over IPv6, on the same lab (dual-stack like every lab): the clients' and pods'
//! IPv6 twins, the service dual-stack with the load balancer IPs' twins
//! (`fd00:192:0:2::10` for ferry, `fd00:192:0:2::20` for iptables) and an IPv6 EndpointSlice,
//! node2 holding kube-proxy's IPv6 proxier's rules (`ip6tables-restore`, the same layout).
//! Rounds interleave the families as they interleave the contenders. ferry's IPv6 path is
//! measured only when its TC programs translate IPv6, which the object shows by carrying the
//! IPv6 conntrack map ([`CT_V6`]); until then the report says why that row is missing.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use agent_common::maps::CT_V6;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    Family,
    bpfstats::{self, ProgCost},
    env::in_lab_ns_ok,
    http_url, kubeproxy,
    load::{self, ClientPlace},
    rotated,
    synth::{Svc, cluster_ip6},
};
use crate::{
    AgentOpts, Cluster, Endpoint, EndpointSlice, Service,
    lab::{Pod, ipv6_twin, ipv6_twin_net},
    proc::{self, Placement, Proc},
};

const HTTP: u16 = 8080;
const IPERF: u16 = 5201;
const FERRY_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const IPT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// Their IPv6 twins (`fd00:192:0:2::10`, `fd00:192:0:2::20`).
const FERRY_VIP6: Ipv6Addr = ipv6_twin(FERRY_VIP);
const IPT_VIP6: Ipv6Addr = ipv6_twin(IPT_VIP);
/// The service's ClusterIPs (the IPv6 one `fd00:96::32`).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const CLUSTER_IP6: Ipv6Addr = cluster_ip6(CLUSTER_IP);

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
    /// ferry measured a second time each round with `ferry monitor` listening on node1
    /// (bench/monitor.rs), right before or after its run without, into [`Point::monitor`].
    #[serde(default)]
    pub monitor: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    #[serde(default)]
    pub family: Family,
    pub contender: Contender,
    pub gbits_per_sec: Vec<f64>,
    pub conns_per_sec: Vec<f64>,
    pub errors: u64,
    /// Runs that failed (killed after overrunning, or no result); left out of the medians.
    #[serde(default)]
    pub failed_runs: u64,
    /// ferry's runs with `ferry monitor` listening, in the same rounds (with `--monitor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorRuns>,
    /// With `--monitor`: node1's programs while ferry's short connections ran (monitor off),
    /// summed over the rounds, and the connections made meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgCost>,
    #[serde(default)]
    pub connections: u64,
}

/// ferry's measurements with the monitor listening, one per round (failed runs left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MonitorRuns {
    pub gbits_per_sec: Vec<f64>,
    pub conns_per_sec: Vec<f64>,
    pub errors: u64,
    pub failed_runs: u64,
    /// node1's programs while these short connections ran, and the connections made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgCost>,
    #[serde(default)]
    pub connections: u64,
}

/// A path of one family that was not measured, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unmeasured {
    pub family: Family,
    pub contender: Contender,
    pub why: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub config: Config,
    pub points: Vec<Point>,
    /// Paths left out (ferry over IPv6 before its TC programs translate IPv6).
    #[serde(default)]
    pub not_measured: Vec<Unmeasured>,
}

fn target(c: Contender, family: Family, web1: &Pod) -> IpAddr {
    match (c, family) {
        (Contender::Routing, Family::V4) => web1.ip.into(),
        (Contender::Routing, Family::V6) => web1.ip6.into(),
        (Contender::Ferry, Family::V4) => FERRY_VIP.into(),
        (Contender::Ferry, Family::V6) => FERRY_VIP6.into(),
        (Contender::Iptables, Family::V4) => IPT_VIP.into(),
        (Contender::Iptables, Family::V6) => IPT_VIP6.into(),
    }
}

/// The service ferry serves: LoadBalancer 192.0.2.10 and `fd00:192:0:2::10` (dual-stack),
/// externalTrafficPolicy Local, ports 80 (HTTP) and 5201 (iperf3) to web1.
fn ferry_service(web1: &Pod) -> (Service, EndpointSlice, EndpointSlice) {
    let svc = Service::load_balancer("web", &CLUSTER_IP.to_string())
        .cluster_ips(&[&CLUSTER_IP.to_string(), &CLUSTER_IP6.to_string()])
        .ip_family_policy("PreferDualStack")
        .namespace("bench")
        .port_to("http", 8080, "TCP", HTTP)
        .port_to("iperf", i64::from(IPERF), "TCP", IPERF)
        .lb_ingress(&FERRY_VIP.to_string())
        .lb_ingress(&FERRY_VIP6.to_string())
        .external_traffic_policy("Local");
    let slice = EndpointSlice::new("web-abc12", "web")
        .namespace("bench")
        .port("http", HTTP, "TCP")
        .port("iperf", IPERF, "TCP")
        .endpoint(Endpoint::ready(web1.ip).node("node1"));
    let slice6 = EndpointSlice::ipv6("web-v6abc", "web")
        .namespace("bench")
        .port("http", HTTP, "TCP")
        .port("iperf", IPERF, "TCP")
        .endpoint(Endpoint::ready(web1.ip6).node("node1"));
    (svc, slice, slice6)
}

/// kube-proxy's rules of `family` for the same service on node2 (its LB IP 192.0.2.20 or
/// `fd00:192:0:2::20`, web2): `iptables-restore` or `ip6tables-restore` input.
fn iptables_rules(web2: &Pod, family: Family) -> String {
    let svc = |port_name: &str, port: u16| Svc {
        namespace: "bench".into(),
        name: "web".into(),
        ip: CLUSTER_IP,
        ip6: Some(CLUSTER_IP6),
        port,
        port_name: port_name.into(),
        target_port: port,
        endpoints: vec![web2.ip],
        endpoints6: vec![web2.ip6],
    };
    let lb: IpAddr = match family {
        Family::V4 => IPT_VIP.into(),
        Family::V6 => IPT_VIP6.into(),
    };
    let http = kubeproxy::iptables_restore_lb_local(&svc("http", HTTP), lb);
    // Both ports: the second service port's chains are merged into the first's restore.
    let iperf = kubeproxy::iptables_restore_lb_local(&svc("iperf", IPERF), lb);
    merge_restores(&http, &iperf)
}

/// Whether ferry's TC programs on `node` translate IPv6: its agent pinned the IPv6 conntrack
/// map, which the eBPF object carries only with them.
fn ferry_tc_ipv6(cl: &Cluster, node: &str) -> bool {
    cl.node(node).pin_dir.join(CT_V6).exists()
}

/// Whether `url` answers `ok` from `place` within `tries` attempts 100 ms apart; the last
/// failure otherwise.
fn answers(place: &ClientPlace, url: &str, tries: usize) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..tries {
        let out = proc::output_placed(
            // -g: the brackets of an IPv6 URL are no glob.
            Command::new("curl").args(["-sS", "-g", "--max-time", "2", url]),
            &Placement {
                netns: Some(place.netns_path.clone()),
                cgroup: place.cgroup.clone(),
            },
            Duration::from_secs(5),
        )
        .map_err(|e| format!("{e:#}"))?;
        if out.status.success() && out.stdout == b"ok\n" {
            return Ok(());
        }
        last = format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
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
    super::env::tool("ip6tables-restore", "iptables")?;
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
    let (svc, slice, slice6) = ferry_service(&web1);
    cl.manifests().apply(&svc);
    cl.manifests().apply(&slice);
    cl.manifests().apply(&slice6);
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
    for (family, tool) in [
        (Family::V4, "iptables-restore"),
        (Family::V6, "ip6tables-restore"),
    ] {
        let rules = cl
            .tmp_dir()
            .join(format!("northsouth-{}.rules", family.label()));
        std::fs::write(&rules, iptables_rules(&web2, family))?;
        in_lab_ns_ok(
            &node2,
            tool,
            &[&rules.to_string_lossy()],
            Duration::from_secs(60),
        )?;
    }
    let ext = cl.ext("ext1");
    cl.route(&ext, &format!("{FERRY_VIP}/32"), "node1");
    cl.route(&ext, &format!("{IPT_VIP}/32"), "node2");
    cl.route(&ext, &format!("{FERRY_VIP6}/128"), "node1");
    cl.route(&ext, &format!("{IPT_VIP6}/128"), "node2");
    // The limit gets a client of its own. Sharing ext1 would make web1 see the
    // same client 4-tuples over two paths (ferry keeps the client address) with
    // two unrelated TCP timestamp clocks (Linux offsets them per destination),
    // so web1's TIME_WAIT sockets reject each path's reused ports under PAWS
    // and both lose a second per collision.
    let ext_direct = cl.ext("ext2");
    cl.route(&ext_direct, "10.244.1.0/24", "node1");
    cl.route(
        &ext_direct,
        &ipv6_twin_net(Ipv4Addr::new(10, 244, 1, 0)),
        "node1",
    );
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
    // Every IPv4 path answers before anything is measured (the agent keeps running: the
    // service's frontends must be programmed first).
    for c in Contender::ALL {
        let url = http_url(target(c, Family::V4, &web1), HTTP);
        if let Err(e) = answers(place_of(c), &url, 100) {
            bail!(
                "the {} path ({url}) does not answer ({e}); node1 log:\n{}",
                c.label(),
                super::eastwest::tail(&cl.agent_log("node1"), 4)
            );
        }
    }
    // Then IPv6's: programmed in the same sync as IPv4's, so a few tries are enough.
    // Plain routing and kube-proxy do not depend on ferry: their failure is the bench's.
    let mut not_measured = Vec::new();
    for c in Contender::ALL {
        let url = http_url(target(c, Family::V6, &web1), HTTP);
        let why = if c == Contender::Ferry && !ferry_tc_ipv6(&cl, "node1") {
            Some(format!(
                "ferry's TC programs do not translate IPv6 yet (the eBPF object carries no \
                 IPv6 conntrack map, {CT_V6})"
            ))
        } else {
            match answers(place_of(c), &url, 20) {
                Ok(()) => None,
                Err(e) if c == Contender::Ferry => Some(format!(
                    "the path ({url}) does not answer: {e}; node1 log: {}",
                    super::eastwest::tail(&cl.agent_log("node1"), 2)
                )),
                Err(e) => bail!(
                    "the {} path over IPv6 ({url}) does not answer: {e}",
                    c.label()
                ),
            }
        };
        if let Some(why) = why {
            eprintln!(
                "bench: north-south: {} over IPv6 not measured: {why}",
                c.label()
            );
            not_measured.push(Unmeasured {
                family: Family::V6,
                contender: c,
                why,
            });
        }
    }
    cl.stop_agent("node1");
    let measured = |family: Family, c: Contender| {
        !not_measured
            .iter()
            .any(|u: &Unmeasured| u.family == family && u.contender == c)
    };
    let mut points: Vec<Point> = Family::ALL
        .iter()
        .flat_map(|&family| Contender::ALL.iter().map(move |&c| (family, c)))
        .filter(|&(family, c)| measured(family, c))
        .map(|(family, contender)| Point {
            family,
            contender,
            gbits_per_sec: Vec::new(),
            conns_per_sec: Vec::new(),
            errors: 0,
            failed_runs: 0,
            monitor: (config.monitor && contender == Contender::Ferry).then(MonitorRuns::default),
            programs: Vec::new(),
            connections: 0,
        })
        .collect();
    let node1 = cl.node("node1");
    // With the monitor, what it costs the programs too (per connection, robust to the load).
    let _stats = config
        .monitor
        .then(bpfstats::RunStats::enable)
        .transpose()?;
    let snap = || {
        if config.monitor {
            bpfstats::snapshot(&node1.pin_dir)
        } else {
            bpfstats::Snapshot::default()
        }
    };
    for round in 0..config.rounds {
        for family in rotated(&Family::ALL, round) {
            for k in 0..Contender::ALL.len() {
                let c = Contender::ALL[(k + round) % Contender::ALL.len()];
                let Some(p) = points
                    .iter_mut()
                    .find(|p| p.family == family && p.contender == c)
                else {
                    continue;
                };
                let ip = target(c, family, &web1);
                let place = place_of(c);
                // With the monitor: ferry without it and with it, in turn first.
                let runs: &[bool] = match (&p.monitor, round % 2) {
                    (None, _) => &[false],
                    (Some(_), 0) => &[false, true],
                    (Some(_), _) => &[true, false],
                };
                for &with_monitor in runs {
                    let _monitor = if with_monitor {
                        // A monitor that does not start costs this run only.
                        match super::monitor::Monitor::start(&node1.netns_path, &node1.pin_dir) {
                            Ok(m) => Some(m),
                            Err(e) => {
                                eprintln!("bench: north-south: ferry monitor: {e:#}");
                                if let Some(m) = p.monitor.as_mut() {
                                    m.failed_runs += 1;
                                }
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let what = format!(
                        "{} {}{}",
                        family.label(),
                        c.label(),
                        if with_monitor { " +monitor" } else { "" }
                    );
                    let gbps = iperf(place, ip, config.secs)
                        .inspect_err(|e| {
                            eprintln!("bench: north-south: {what} iperf3 run failed: {e:#}")
                        })
                        .ok();
                    let url = http_url(ip, HTTP);
                    let s0 = snap();
                    let wrk = load::wrk(place, &url, config.secs, config.conns, true)
                        .inspect_err(|e| {
                            eprintln!("bench: north-south: {what} wrk run failed: {e:#}")
                        })
                        .ok();
                    let ran = if c == Contender::Ferry {
                        bpfstats::delta(&s0, &snap())
                    } else {
                        Vec::new()
                    };
                    let made = wrk.as_ref().map_or(0, |w| w.requests);
                    let failed = u64::from(gbps.is_none()) + u64::from(wrk.is_none());
                    let errors = wrk.as_ref().map_or(0, |w| w.errors);
                    let rate = wrk.map(|w| w.requests_per_sec);
                    match p.monitor.as_mut().filter(|_| with_monitor) {
                        Some(m) => {
                            m.gbits_per_sec.extend(gbps);
                            m.conns_per_sec.extend(rate);
                            m.errors += errors;
                            m.failed_runs += failed;
                            bpfstats::add(&mut m.programs, &ran);
                            m.connections += made;
                        }
                        None => {
                            p.gbits_per_sec.extend(gbps);
                            p.conns_per_sec.extend(rate);
                            p.errors += errors;
                            p.failed_runs += failed;
                            bpfstats::add(&mut p.programs, &ran);
                            p.connections += made;
                        }
                    }
                    eprintln!(
                        "bench: north-south round {}/{} {:<36} {:>6.2} Gbit/s {:>8.0} conn/s",
                        round + 1,
                        config.rounds,
                        what,
                        gbps.unwrap_or(f64::NAN),
                        rate.unwrap_or(f64::NAN)
                    );
                }
            }
        }
    }
    drop(servers);
    Ok(Results {
        config: config.clone(),
        points,
        not_measured,
    })
}

/// One iperf3 run (TCP, one stream) from the client: the receiver's bits/s, in Gbit/s.
fn iperf(place: &ClientPlace, ip: IpAddr, secs: f64) -> Result<f64> {
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
