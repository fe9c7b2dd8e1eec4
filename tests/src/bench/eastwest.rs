//! Section 1, east-west: a client pod to a ClusterIP service with two backends, with N services
//! programmed, through four contenders that share the servers and the shape of the path.
//!
//! ```text
//!  client ns (10.246.i.2) --veth-- router ns i --veth-- node ns (br0 10.244.0.1) --veth-- be1, be2
//! ```
//! Each contender has its own client and "router" namespace (the client's node as far as
//! its rules go): the kube-proxy contenders' rules and conntrack live in their router only,
//! so no contender pays for another's rules. Every path has the same hops.
//! - direct: wrk to a backend's pod IP (the limit: no translation at all);
//! - ferry: wrk to the ClusterIP from the lab cgroup, where ferry's connect4 hook rewrites it;
//! - iptables / nftables: wrk to the ClusterIP; the router's kube-proxy rules DNAT it.
//!
//! The same over IPv6: every address above has its IPv6 twin ([`ipv6_twin`]: client
//! `fd00:10:246:i::2`, router `fd00:10:250:i::2`, backends `fd00:10:244::N`), routed like
//! IPv4, and the services are dual-stack ([`synth::eastwest_set_dual`]): ferry holds them as
//! dual-stack Services with an EndpointSlice per family (its connect6 hook rewrites
//! [`TARGET_VIP6`]), the kube-proxy routers hold both of kube-proxy's proxiers' rules
//! (`iptables-restore` and `ip6tables-restore`; tables `ip kube-proxy` and `ip6 kube-proxy`).
//! A family's packets never meet the other family's rules or maps, so one programming per N
//! serves both, and the rounds interleave the families as they interleave the contenders.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    Family,
    bpfstats::{self, ProgCost},
    env::{http_get_in, in_lab_ns_ok, metric},
    http_url, kubeproxy,
    load::{self, ClientPlace, CpuTicks, WrkResult},
    rotated, shortconn,
    synth::{self, BACKEND_PORT, ONE_VIP, ONE_VIP6, TARGET_PORT, TARGET_VIP, TARGET_VIP6},
};
use crate::{
    AgentOpts, Lab, cleanup,
    lab::{IPV6_USABLE_DEADLINE, Pod, ipv6_twin},
    netns,
    proc::{self, Placement, Proc},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contender {
    Direct,
    Ferry,
    Iptables,
    Nftables,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::Direct,
        Contender::Ferry,
        Contender::Iptables,
        Contender::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Direct => "direct pod IP",
            Contender::Ferry => "ferry",
            Contender::Iptables => "kube-proxy iptables",
            Contender::Nftables => "kube-proxy nftables",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Contender::Direct => "dir",
            Contender::Ferry => "fry",
            Contender::Iptables => "ipt",
            Contender::Nftables => "nft",
        }
    }

    fn index(self) -> u8 {
        self as u8
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub sizes: Vec<usize>,
    /// The sizes measured over IPv6 as well (the services are dual-stack at every size).
    #[serde(default)]
    pub ipv6_sizes: Vec<usize>,
    pub rounds: usize,
    pub secs: f64,
    pub conns: u32,
    /// ferry measured a second time each round with `ferry monitor` listening (bench/monitor.rs),
    /// right before or after its run without (the order alternating), into [`Point::monitor`].
    #[serde(default)]
    pub monitor: bool,
    /// Per-program run counts and run time (bench/bpfstats.rs) around every run, into
    /// [`Point::programs`].
    #[serde(default)]
    pub bpf_stats: bool,
    /// The CPU the load tool and both servers are pinned to (`taskset -c`), so that a
    /// connection's whole cost (client, hooks, softirq, server) is paid on one core, as a busy
    /// node pays it; None: unpinned (older reports).
    #[serde(default)]
    pub pin_cpu: Option<usize>,
    /// wrk's threads for every contender (0 or 1: one). With two, direct gives each thread one
    /// backend ([`direct_script`]), so its connections are spread over both servers as the
    /// Service's are; with one it dials one backend a round (older reports).
    #[serde(default)]
    pub threads: u32,
    /// Each round is a pair: direct's and ferry's short connections run back to back, the
    /// order alternating round by round (with the monitor, ferry's run with it sits right
    /// beside ferry's without: direct, ferry, ferry + monitor, then reversed), so that the
    /// ratio of the two runs of a round is free of what drifts over seconds; the kube-proxy
    /// contenders' short runs follow. False in older reports (every contender in turn).
    #[serde(default)]
    pub paired: bool,
    /// The kept-alive (latency) runs in every `kept_every`-th round only (0 or 1: every one).
    #[serde(default)]
    pub kept_every: usize,
    /// Each round also pairs direct and ferry over one backend ([`Point::one`]): direct's
    /// threads both dial the first backend, ferry a Service whose only endpoint it is
    /// ([`synth::ONE_VIP`]). With two backends, ferry spreads each wrk thread's connections
    /// over both servers while direct gives each thread its own; on one CPU that spreading
    /// costs by itself (measured: ~3 % of a connection), and the one-backend pair leaves it
    /// out: what remains is what ferry's hooks and translation cost. False in older reports.
    #[serde(default)]
    pub one_backend: bool,
    /// Each round also pairs direct and ferry over both backends with a client that dials a
    /// random backend per connection ([`shortconn`]): direct's pod IPs spread as ferry's
    /// Service spreads, which wrk cannot do (its threads keep one address each). False in
    /// older reports.
    #[serde(default)]
    pub spread: bool,
}

impl Config {
    fn kept_round(&self, round: usize) -> bool {
        round.is_multiple_of(self.kept_every.max(1))
    }
}

/// All rounds of one contender at one N over one family.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub n: usize,
    #[serde(default)]
    pub family: Family,
    pub contender: Contender,
    pub conns_per_sec: Vec<f64>,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub errors: u64,
    /// ferry's runs with `ferry monitor` listening, in the same rounds (with `--monitor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Runs>,
    /// The lab's programs while this contender's short connections ran (`--bpf-stats`), summed
    /// over the rounds, and the connections made meanwhile: from a run of their own in every
    /// round with kept-alive runs ([`Config::kept_round`]), the only short runs with the
    /// statistics on (see [`run_once`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgCost>,
    #[serde(default)]
    pub connections: u64,
    /// The same while its kept-alive connection ran, and the requests it made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs_kept: Vec<ProgCost>,
    #[serde(default)]
    pub requests_kept: u64,
    /// The pinned CPU's ticks during each short run, one per entry of `conns_per_sec`
    /// (with `pin_cpu`): how much of it the hypervisor stole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<CpuTicks>,
    /// CPU time per connection of each short run (µs: wrk's and both servers' time on CPU,
    /// over the connections made), one per entry of `conns_per_sec`: the cost of a
    /// connection, which does not depend on how much of the CPU other tenants left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_us_per_conn: Vec<f64>,
    /// Direct's and ferry's short runs over one backend, in the same rounds
    /// ([`Config::one_backend`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one: Option<Runs>,
    /// Direct's and ferry's short runs spread per connection, in the same rounds
    /// ([`Config::spread`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Runs>,
}

impl Point {
    /// One round's short connections spread per connection.
    fn push_spread(&mut self, m: &Run) {
        if let Some(r) = self.spread.as_mut() {
            r.push_short(m);
        }
    }

    /// One round's short connections over one backend.
    fn push_one(&mut self, m: &Run) {
        if let Some(r) = self.one.as_mut() {
            r.push_short(m);
        }
    }

    /// One round's short connections (ferry's with the monitor listening apart).
    fn push_short(&mut self, m: &Run, with_monitor: bool) {
        if let Some(r) = self.monitor.as_mut().filter(|_| with_monitor) {
            r.push_short(m);
            return;
        }
        self.conns_per_sec.push(m.wrk.requests_per_sec);
        self.cpu.push(m.cpu);
        self.cpu_us_per_conn.push(m.cpu_us_per_conn());
        self.errors += m.wrk.errors;
    }

    /// A short run with the programs' statistics on: their cost per connection only.
    fn push_stats(&mut self, m: &Run) {
        self.errors += m.wrk.errors;
        bpfstats::add(&mut self.programs, &m.programs);
        self.connections += m.wrk.requests;
    }

    /// One round's kept-alive connection.
    fn push_kept(&mut self, m: &Run, with_monitor: bool) {
        let (p50, p99) = (&m.wrk.p50_us, &m.wrk.p99_us);
        if let Some(r) = self.monitor.as_mut().filter(|_| with_monitor) {
            r.p50_us.extend(p50);
            r.p99_us.extend(p99);
            r.errors += m.wrk.errors;
            return;
        }
        self.p50_us.extend(p50);
        self.p99_us.extend(p99);
        self.errors += m.wrk.errors;
        bpfstats::add(&mut self.programs_kept, &m.programs);
        self.requests_kept += m.wrk.requests;
    }
}

/// One contender's measurements of a kind, one per round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Runs {
    pub conns_per_sec: Vec<f64>,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub errors: u64,
    /// Runs left out because the monitor did not start (NaN in `conns_per_sec`, which keeps
    /// it aligned with ferry's runs without the monitor, round by round).
    #[serde(default)]
    pub failed_runs: u64,
    /// As [`Point::cpu`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<CpuTicks>,
    /// As [`Point::cpu_us_per_conn`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_us_per_conn: Vec<f64>,
}

impl Runs {
    /// One round's short connections.
    fn push_short(&mut self, m: &Run) {
        self.conns_per_sec.push(m.wrk.requests_per_sec);
        self.cpu.push(m.cpu);
        self.cpu_us_per_conn.push(m.cpu_us_per_conn());
        self.errors += m.wrk.errors;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub config: Config,
    pub points: Vec<Point>,
    /// Time to program each N into each contender (seconds, both families), for the notes.
    pub program_secs: Vec<(usize, Contender, f64)>,
}

struct Client {
    contender: Contender,
    router: String,
    /// The router's address towards the node (kube-proxy's node IP, IPv4; IPv6 is its twin).
    router_ip: Ipv4Addr,
    place: ClientPlace,
}

/// The lab of this section: backends, servers, one router and client per contender.
struct Topo {
    clients: Vec<Client>,
    backends: Vec<Pod>,
    servers: Vec<Proc>,
}

fn build(lab: &Lab, bench: &Path, pin_cpu: Option<usize>) -> Result<Topo> {
    let node = lab.node_netns().to_owned();
    netns::run(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    netns::sysctl(&node, &["net.ipv6.conf.all.forwarding=1"])?;
    let backends = vec![lab.add_pod("be1"), lab.add_pod("be2")];
    for pod in &backends {
        if pod.ip6 != ipv6_twin(pod.ip) {
            bail!(
                "{}'s IPv6 address {} is not the twin of {}, which the dual-stack set expects",
                pod.name,
                pod.ip6,
                pod.ip
            );
        }
    }
    let mut servers = Vec::new();
    let bench = bench.to_string_lossy();
    let port = BACKEND_PORT.to_string();
    let serve = [
        bench.as_ref(),
        "serve",
        "--port",
        &port,
        "--lifetime",
        "7200",
    ];
    for pod in &backends {
        // taskset execs the server: the pinning covers every thread it makes.
        let s = match pin_cpu {
            Some(cpu) => {
                let cpu = cpu.to_string();
                let args: Vec<&str> = ["-c", cpu.as_str()].into_iter().chain(serve).collect();
                lab.spawn(pod, "taskset", &args)
            }
            None => lab.spawn(pod, serve[0], &serve[1..]),
        };
        if s.wait_line(Duration::from_secs(10), |l| l == "ready")
            .is_none()
        {
            bail!(
                "the server in {} did not start: {}",
                pod.name,
                lab.logs_of(&pod.name)
            );
        }
        servers.push(s);
    }
    let prefix = cleanup::Record::netns_prefix(lab.id());
    let mut clients = Vec::new();
    for c in Contender::ALL {
        let i = c.index();
        let router = format!("{prefix}r{}", c.short());
        let client = format!("{prefix}c{}", c.short());
        cleanup::update(lab.id(), |r| {
            r.netns.push(router.clone());
            r.netns.push(client.clone());
        });
        netns::add(&router)?;
        netns::add(&client)?;
        netns::enable_ipv6(&router)?;
        netns::enable_ipv6(&client)?;
        let (link_node, link_router) = (Ipv4Addr::new(10, 250, i, 1), Ipv4Addr::new(10, 250, i, 2));
        let (gw, client_ip) = (Ipv4Addr::new(10, 246, i, 1), Ipv4Addr::new(10, 246, i, 2));
        let client_net = Ipv4Addr::new(10, 246, i, 0);
        // Each address with its IPv6 twin: a /24 is a /64.
        let both = |ns: &str, ip: Ipv4Addr, dev: &str| -> Result<()> {
            netns::ip(ns, &["addr", "add", &format!("{ip}/24"), "dev", dev])?;
            netns::add_ipv6(ns, dev, &format!("{}/64", ipv6_twin(ip)))
        };
        let rt = format!("rt{i}");
        // Links are born inside lab namespaces and moved between lab namespaces only.
        netns::ip(
            &node,
            &[
                "link", "add", &rt, "type", "veth", "peer", "name", "up0", "netns", &router,
            ],
        )?;
        both(&node, link_node, &rt)?;
        netns::ip(&node, &["link", "set", &rt, "up"])?;
        netns::ip(
            &node,
            &[
                "route",
                "add",
                &format!("{client_net}/24"),
                "via",
                &link_router.to_string(),
            ],
        )?;
        netns::ip(
            &node,
            &[
                "-6",
                "route",
                "add",
                &format!("{}/64", ipv6_twin(client_net)),
                "via",
                &ipv6_twin(link_router).to_string(),
                "dev",
                &rt,
            ],
        )?;
        netns::ip(&router, &["link", "set", "lo", "up"])?;
        both(&router, link_router, "up0")?;
        netns::ip(&router, &["link", "set", "up0", "up"])?;
        netns::ip(
            &router,
            &["route", "add", "default", "via", &link_node.to_string()],
        )?;
        netns::ip(
            &router,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ipv6_twin(link_node).to_string(),
                "dev",
                "up0",
            ],
        )?;
        netns::ip(
            &router,
            &[
                "link", "add", "dn0", "type", "veth", "peer", "name", "eth0", "netns", &client,
            ],
        )?;
        both(&router, gw, "dn0")?;
        netns::ip(&router, &["link", "set", "dn0", "up"])?;
        netns::run(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        netns::sysctl(&router, &["net.ipv6.conf.all.forwarding=1"])?;
        netns::ip(&client, &["link", "set", "lo", "up"])?;
        both(&client, client_ip, "eth0")?;
        netns::ip(&client, &["link", "set", "eth0", "up"])?;
        netns::ip(
            &client,
            &["route", "add", "default", "via", &gw.to_string()],
        )?;
        netns::ip(
            &client,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ipv6_twin(gw).to_string(),
                "dev",
                "eth0",
            ],
        )?;
        netns::run(
            &client,
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        )?;
        for (ns, dev) in [
            (&node, rt.as_str()),
            (&router, "up0"),
            (&router, "dn0"),
            (&client, "eth0"),
        ] {
            netns::wait_ipv6_usable(ns, dev, IPV6_USABLE_DEADLINE)?;
        }
        let place = ClientPlace {
            netns_path: netns::path(&client),
            // Only ferry's client is in the lab cgroup: the others must not pay for (or be
            // translated by) ferry's socket hooks.
            cgroup: (c == Contender::Ferry).then(|| lab.cgroup().to_owned()),
        };
        clients.push(Client {
            contender: c,
            router,
            router_ip: link_router,
            place,
        });
    }
    Ok(Topo {
        clients,
        backends,
        servers,
    })
}

/// The target URL of direct's or ferry's one-backend runs over `family`: the first backend,
/// or the Service whose only endpoint it is.
fn url_one(c: Contender, family: Family, backends: &[Pod]) -> String {
    match (c, family) {
        (Contender::Direct, _) => url(c, family, &backends[0]),
        (_, Family::V4) => http_url(ONE_VIP.into(), TARGET_PORT),
        (_, Family::V6) => http_url(ONE_VIP6.into(), TARGET_PORT),
    }
}

/// The addresses of direct's or ferry's spread runs over `family`: both backends' pod IPs, or
/// the ClusterIP.
fn spread_targets(c: Contender, family: Family, backends: &[Pod]) -> Vec<SocketAddr> {
    match (c, family) {
        (Contender::Direct, Family::V4) => backends
            .iter()
            .map(|b| SocketAddr::new(b.ip.into(), BACKEND_PORT))
            .collect(),
        (Contender::Direct, Family::V6) => backends
            .iter()
            .map(|b| SocketAddr::new(b.ip6.into(), BACKEND_PORT))
            .collect(),
        (_, Family::V4) => vec![SocketAddr::new(TARGET_VIP.into(), TARGET_PORT)],
        (_, Family::V6) => vec![SocketAddr::new(TARGET_VIP6.into(), TARGET_PORT)],
    }
}

/// The target URL of a contender over `family` (`backend`: the one direct dials).
fn url(c: Contender, family: Family, backend: &Pod) -> String {
    let (direct, vip): (IpAddr, IpAddr) = match family {
        Family::V4 => (backend.ip.into(), TARGET_VIP.into()),
        Family::V6 => (backend.ip6.into(), TARGET_VIP6.into()),
    };
    match c {
        Contender::Direct => http_url(direct, BACKEND_PORT),
        _ => http_url(vip, TARGET_PORT),
    }
}

/// Programs the set into ferry (through the agent, then stopped: the datapath stays) and into
/// the two kube-proxy routers (each family's rules, as kube-proxy's two proxiers write them).
/// `ferry_extra`: what ferry holds beside the set (the one-endpoint target).
fn program(
    lab: &Lab,
    topo: &Topo,
    set: &[synth::Svc],
    ferry_extra: &[synth::Svc],
    out: &mut Results,
) -> Result<()> {
    let n = set.len();
    let restore = |router: &str, program: &str, file: &Path, text: String| -> Result<()> {
        std::fs::write(file, text)?;
        in_lab_ns_ok(
            router,
            program,
            &[&file.to_string_lossy()],
            Duration::from_secs(600),
        )?;
        std::fs::remove_file(file)?;
        Ok(())
    };
    let tmp = lab.tmp_dir();
    for c in &topo.clients {
        let start = Instant::now();
        match c.contender {
            Contender::Direct => continue,
            Contender::Ferry => {
                let ferry_set: Vec<synth::Svc> = set.iter().chain(ferry_extra).cloned().collect();
                synth::write_manifests(lab.manifests().dir(), &ferry_set)?;
                lab.start_agent(&AgentOpts {
                    ready_timeout: Duration::from_secs(180),
                    ..AgentOpts::default()
                });
                wait_frontends(
                    lab,
                    synth::frontend_count(&ferry_set),
                    Duration::from_secs(180),
                )?;
                lab.stop_agent();
            }
            Contender::Iptables => {
                let file = tmp.join(format!("iptables-{n}.rules"));
                restore(
                    &c.router,
                    "iptables-restore",
                    &file,
                    kubeproxy::iptables_restore(set),
                )?;
                let file = tmp.join(format!("ip6tables-{n}.rules"));
                restore(
                    &c.router,
                    "ip6tables-restore",
                    &file,
                    kubeproxy::ip6tables_restore(set),
                )?;
            }
            Contender::Nftables => {
                for family in Family::ALL {
                    let file = tmp.join(format!("nftables-{n}-{}.nft", family.label()));
                    let node_ip = family.addr(c.router_ip).to_string();
                    let text = kubeproxy::nft_family(set, family, &node_ip);
                    std::fs::write(&file, text)?;
                    in_lab_ns_ok(
                        &c.router,
                        "nft",
                        &["-f", &file.to_string_lossy()],
                        Duration::from_secs(600),
                    )?;
                    std::fs::remove_file(&file)?;
                }
            }
        }
        out.program_secs
            .push((n, c.contender, start.elapsed().as_secs_f64()));
    }
    Ok(())
}

/// Waits until the agent's /metrics reports `n` frontends programmed.
pub fn wait_frontends(lab: &Lab, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let body = http_get_in(&lab.node_netns_path(), 10249, "/metrics").unwrap_or_default();
        if metric(&body, "ferry_frontends_programmed") == Some(n as f64) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "ferry did not program {n} frontends within {timeout:?} (metrics: {:?}); agent log:\n{}",
                metric(&body, "ferry_frontends_programmed"),
                tail(&lab.agent_log(), 30)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Checks that every contender's path answers over each family (one request with curl)
/// before anything is measured.
fn check_paths(topo: &Topo, families: &[Family], one_backend: bool) -> Result<()> {
    for &family in families {
        let one = topo
            .clients
            .iter()
            .filter(|c| one_backend && matches!(c.contender, Contender::Direct | Contender::Ferry))
            .map(|c| (c, url_one(c.contender, family, &topo.backends)));
        let paths = topo
            .clients
            .iter()
            .map(|c| (c, url(c.contender, family, &topo.backends[0])));
        for (c, target) in paths.chain(one) {
            let placement = Placement {
                netns: Some(c.place.netns_path.clone()),
                cgroup: c.place.cgroup.clone(),
            };
            let out = proc::output_placed(
                // -g: the brackets of an IPv6 URL are no glob.
                Command::new("curl").args(["-sS", "-g", "--max-time", "5", &target]),
                &placement,
                Duration::from_secs(10),
            )?;
            if !out.status.success() || out.stdout != b"ok\n" {
                bail!(
                    "the {} path over {} ({target}) does not work: {} {}",
                    c.contender.label(),
                    family.label(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

pub fn run(lab: &Lab, config: &Config) -> Result<Results> {
    let bench = std::env::current_exe()?;
    let topo = build(lab, &bench, config.pin_cpu)?;
    let mut out = Results {
        config: config.clone(),
        points: Vec::new(),
        program_secs: Vec::new(),
    };
    let backend_ips: Vec<Ipv4Addr> = topo.backends.iter().map(|p| p.ip).collect();
    // Direct's scripts per family: its threads over both backends, then over the first only
    // (the one-backend pair).
    let script_files = |backends: &[Pod], tag: &str| -> Result<Vec<std::path::PathBuf>> {
        Family::ALL
            .iter()
            .map(|&family| {
                let file = lab
                    .tmp_dir()
                    .join(format!("direct{tag}-{}.lua", family.label()));
                std::fs::write(&file, direct_script(backends, family))?;
                Ok(file)
            })
            .collect()
    };
    let scripts = Scripts {
        both: script_files(&topo.backends, "")?,
        one: script_files(&topo.backends[..1], "-one")?,
    };
    for &n in &config.sizes {
        eprintln!("bench: east-west: programming {n} dual-stack services into each contender…");
        let set = synth::eastwest_set_dual(n, &backend_ips);
        let extra: Vec<synth::Svc> = config
            .one_backend
            .then(|| synth::eastwest_one_target(backend_ips[0]))
            .into_iter()
            .collect();
        program(lab, &topo, &set, &extra, &mut out)?;
        let families: &[Family] = if config.ipv6_sizes.contains(&n) {
            &Family::ALL
        } else {
            &[Family::V4]
        };
        check_paths(&topo, families, config.one_backend)?;
        let mut points: Vec<Point> = families
            .iter()
            .flat_map(|&family| {
                Contender::ALL.iter().map(move |&c| Point {
                    n,
                    family,
                    contender: c,
                    conns_per_sec: Vec::new(),
                    p50_us: Vec::new(),
                    p99_us: Vec::new(),
                    errors: 0,
                    monitor: (config.monitor && c == Contender::Ferry).then(Runs::default),
                    programs: Vec::new(),
                    connections: 0,
                    programs_kept: Vec::new(),
                    requests_kept: 0,
                    cpu: Vec::new(),
                    cpu_us_per_conn: Vec::new(),
                    one: (config.one_backend && matches!(c, Contender::Direct | Contender::Ferry))
                        .then(Runs::default),
                    spread: (config.spread && matches!(c, Contender::Direct | Contender::Ferry))
                        .then(Runs::default),
                })
            })
            .collect();
        let start = Instant::now();
        for round in 0..config.rounds {
            // Families as the contenders: A B, then B A, ...: neither always runs first.
            for family in rotated(families, round) {
                measure_round(lab, &topo, config, &mut points, family, round, &scripts)?;
            }
        }
        eprintln!(
            "bench: east-west N={n}: {} rounds measured in {:.0} s",
            config.rounds,
            start.elapsed().as_secs_f64()
        );
        out.points.extend(points);
    }
    Ok(out)
}

/// Direct's wrk scripts, one per family (indexed by `Family as usize`).
struct Scripts {
    /// Each thread one of both backends.
    both: Vec<std::path::PathBuf>,
    /// Every thread the first backend.
    one: Vec<std::path::PathBuf>,
}

/// A step of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A contender's short connections.
    Short(Contender),
    /// Direct's or ferry's short connections over one backend.
    One(Contender),
    /// Direct's or ferry's short connections over both backends, each connection to a random
    /// one ([`shortconn`]: direct dials the pod IPs, ferry the ClusterIP).
    Spread(Contender),
    /// ferry's short connections with the monitor listening (and its kept-alive run, if this
    /// round has them, on the side away from ferry's run without).
    Monitor,
}

/// A round's short runs: the pair first (direct and ferry back to back, ferry + monitor beside
/// ferry), the one-backend pair (`one`), then the kube-proxy contenders, every order reversed
/// in odd rounds.
fn steps(round: usize, monitor: bool, one: bool, spread: bool) -> Vec<Step> {
    let odd = round % 2 == 1;
    let mut steps = vec![
        Step::Short(Contender::Direct),
        Step::Short(Contender::Ferry),
    ];
    if monitor {
        steps.push(Step::Monitor);
    }
    if odd {
        steps.reverse();
    }
    if one {
        let mut pair = [Step::One(Contender::Direct), Step::One(Contender::Ferry)];
        if odd {
            pair.reverse();
        }
        steps.extend(pair);
    }
    if spread {
        let mut pair = [
            Step::Spread(Contender::Direct),
            Step::Spread(Contender::Ferry),
        ];
        if odd {
            pair.reverse();
        }
        steps.extend(pair);
    }
    let mut kube = [Contender::Iptables, Contender::Nftables];
    if odd {
        kube.reverse();
    }
    steps.extend(kube.map(Step::Short));
    steps
}

/// One round over one family: the pair (direct and ferry back to back, ferry + monitor
/// beside ferry), the kube-proxy contenders' short runs, then the kept-alive runs.
fn measure_round(
    lab: &Lab,
    topo: &Topo,
    config: &Config,
    points: &mut [Point],
    family: Family,
    round: usize,
    scripts: &Scripts,
) -> Result<()> {
    let odd = round % 2 == 1;
    let servers: Vec<u32> = topo.servers.iter().map(Proc::pid).collect();
    let n = points.first().map_or(0, |p| p.n);
    let kept = config.kept_round(round);
    let client = |c: Contender| topo.clients.iter().find(|x| x.contender == c);
    // Direct alternates between the two backends, as the service does.
    let backend = &topo.backends[round % topo.backends.len()];
    let script = |c: Contender, set: &[std::path::PathBuf]| {
        (c == Contender::Direct && config.threads > 1).then(|| set[family as usize].clone())
    };
    let steps = steps(round, config.monitor, config.one_backend, config.spread);
    let log = |what: &str, m: &Run| {
        eprintln!(
            "bench: east-west {} N={} round {}/{} {what:<36} {:>9.0} conn/s  p50 {:>7.1} us  steal {:>4.1} %",
            family.label(),
            n,
            round + 1,
            config.rounds,
            m.wrk.requests_per_sec,
            m.wrk.p50_us.unwrap_or(f64::NAN),
            m.cpu.steal_share() * 100.0,
        );
    };
    let point = |points: &mut [Point], c: Contender| -> Option<usize> {
        points
            .iter()
            .position(|p| p.family == family && p.contender == c)
    };
    for step in steps {
        match step {
            Step::Short(c) | Step::One(c) => {
                let (Some(cl), Some(i)) = (client(c), point(points, c)) else {
                    continue;
                };
                let one = matches!(step, Step::One(_));
                let (target, set) = if one {
                    (url_one(c, family, &topo.backends), &scripts.one)
                } else {
                    (url(c, family, backend), &scripts.both)
                };
                let load = Load::Wrk {
                    target: &target,
                    script: script(c, set),
                    close: true,
                };
                let m = run_once(lab, &servers, cl, config, load, false)?;
                if one {
                    log(&format!("{} short, one backend", c.label()), &m);
                    points[i].push_one(&m);
                } else {
                    log(&format!("{} short", c.label()), &m);
                    points[i].push_short(&m, false);
                }
            }
            Step::Spread(c) => {
                let (Some(cl), Some(i)) = (client(c), point(points, c)) else {
                    continue;
                };
                let targets = spread_targets(c, family, &topo.backends);
                let m = run_once(lab, &servers, cl, config, Load::Spread(&targets), false)?;
                log(&format!("{} short, spread", c.label()), &m);
                points[i].push_spread(&m);
            }
            Step::Monitor => {
                let (Some(cl), Some(i)) =
                    (client(Contender::Ferry), point(points, Contender::Ferry))
                else {
                    continue;
                };
                // A monitor that does not start costs this run only: the section's other
                // measurements stand (said in the report); NaN keeps the pairs aligned.
                let _monitor =
                    match super::monitor::Monitor::start(&lab.node_netns_path(), &lab.pin_dir()) {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!("bench: east-west: ferry monitor: {e:#}");
                            if let Some(r) = points[i].monitor.as_mut() {
                                r.failed_runs += 1;
                                r.conns_per_sec.push(f64::NAN);
                                r.cpu.push(CpuTicks::default());
                                r.cpu_us_per_conn.push(f64::NAN);
                            }
                            continue;
                        }
                    };
                let target = url(Contender::Ferry, family, backend);
                // The kept-alive run away from the pair: after the short run when ferry's
                // run without came before it, else before.
                let kept_run = |points: &mut [Point]| -> Result<()> {
                    if kept {
                        let load = Load::Wrk {
                            target: &target,
                            script: None,
                            close: false,
                        };
                        let m = run_once(lab, &servers, cl, config, load, true)?;
                        log("ferry +monitor kept-alive", &m);
                        points[i].push_kept(&m, true);
                    }
                    Ok(())
                };
                if odd {
                    kept_run(points)?;
                }
                let load = Load::Wrk {
                    target: &target,
                    script: None,
                    close: true,
                };
                let m = run_once(lab, &servers, cl, config, load, false)?;
                log("ferry +monitor short", &m);
                points[i].push_short(&m, true);
                if !odd {
                    kept_run(points)?;
                }
            }
        }
    }
    if kept {
        let n = Contender::ALL.len();
        for k in 0..n {
            let c = Contender::ALL[(k + round / config.kept_every.max(1)) % n];
            let (Some(cl), Some(i)) = (client(c), point(points, c)) else {
                continue;
            };
            let target = url(c, family, backend);
            if config.bpf_stats {
                let load = Load::Wrk {
                    target: &target,
                    script: script(c, &scripts.both),
                    close: true,
                };
                let m = run_once(lab, &servers, cl, config, load, true)?;
                log(&format!("{} short, statistics on", c.label()), &m);
                points[i].push_stats(&m);
            }
            let load = Load::Wrk {
                target: &target,
                script: None,
                close: false,
            };
            let m = run_once(lab, &servers, cl, config, load, true)?;
            log(&format!("{} kept-alive", c.label()), &m);
            points[i].push_kept(&m, false);
        }
    }
    Ok(())
}

/// One wrk run of a contender, with what the lab's programs and the pinned CPU did meanwhile.
struct Run {
    wrk: WrkResult,
    programs: Vec<ProgCost>,
    cpu: CpuTicks,
    /// wrk's and the servers' time on CPU during the run.
    cpu_ns: u64,
}

impl Run {
    fn cpu_us_per_conn(&self) -> f64 {
        if self.cpu_ns == 0 || self.wrk.requests == 0 {
            return f64::NAN;
        }
        self.cpu_ns as f64 / 1e3 / self.wrk.requests as f64
    }
}

/// What a run's client does.
enum Load<'a> {
    /// wrk: short connections (`close`: `config.conns` of them, `script` for direct's threads)
    /// or one kept-alive connection (one thread, one backend).
    Wrk {
        target: &'a str,
        script: Option<std::path::PathBuf>,
        close: bool,
    },
    /// [`shortconn`]: `config.conns` short connections over `config.threads` threads, each
    /// to a random one of these addresses.
    Spread(&'a [SocketAddr]),
}

/// One run of a contender's client; with `--bpf-stats` and `stats`, the programs' statistics
/// on meanwhile. They are off in the runs whose connections/s are compared: with them on,
/// each program run pays two clock reads (~20-40 ns), four per connection for ferry's client
/// against two for direct's.
fn run_once(
    lab: &Lab,
    servers: &[u32],
    c: &Client,
    config: &Config,
    load: Load,
    stats: bool,
) -> Result<Run> {
    let pins = lab.pin_dir();
    let stats = config.bpf_stats && stats;
    let _on = stats.then(bpfstats::RunStats::enable).transpose()?;
    let snap = || {
        if stats {
            bpfstats::snapshot(&pins)
        } else {
            bpfstats::Snapshot::default()
        }
    };
    let cpu = || config.pin_cpu.map(CpuTicks::now).unwrap_or_default();
    let used = || -> u64 {
        load::children_cpu_ns()
            + servers
                .iter()
                .map(|&pid| load::process_cpu_ns(pid))
                .sum::<u64>()
    };
    let s0 = snap();
    let c0 = cpu();
    let u0 = used();
    let wrk = match load {
        Load::Wrk {
            target,
            script,
            close: true,
        } => {
            let opts = load::WrkOpts {
                cpu: config.pin_cpu,
                threads: config.threads,
                script,
            };
            load::wrk_on(&c.place, &opts, target, config.secs, config.conns, true)?
        }
        Load::Wrk { target, .. } => {
            let opts = load::WrkOpts {
                cpu: config.pin_cpu,
                ..Default::default()
            };
            load::wrk_on(&c.place, &opts, target, config.secs, 1, false)?
        }
        Load::Spread(targets) => shortconn::run_on(
            &c.place,
            config.pin_cpu,
            targets,
            config.conns,
            config.threads.max(1),
            config.secs,
        )?,
    };
    let u1 = used();
    let c1 = cpu();
    let s1 = snap();
    Ok(Run {
        wrk,
        programs: bpfstats::delta(&s0, &s1),
        cpu: c1.since(c0),
        cpu_ns: u1.saturating_sub(u0),
    })
}

/// The wrk script of the direct contender: each thread dials one backend, in turn (`setup`
/// runs once per thread), so that with two threads both servers take half the connections, as
/// behind the Service, instead of one server taking them all.
fn direct_script(backends: &[Pod], family: Family) -> String {
    let hosts: Vec<String> = backends
        .iter()
        .map(|b| {
            let ip: IpAddr = match family {
                Family::V4 => b.ip.into(),
                Family::V6 => b.ip6.into(),
            };
            format!("\"{ip}\"")
        })
        .collect();
    format!(
        "local hosts = {{ {} }}\nlocal n = 0\nfunction setup(thread)\n  local host = hosts[n % #hosts + 1]\n  n = n + 1\n  thread.addr = wrk.lookup(host, \"{BACKEND_PORT}\")[1]\nend\n",
        hosts.join(", ")
    )
}

/// The lab namespace of the iptables router (for the control-plane section's restore timing).
pub fn scratch_ns(lab: &Lab, name: &str) -> Result<String> {
    let ns = format!("{}{name}", cleanup::Record::netns_prefix(lab.id()));
    cleanup::update(lab.id(), |r| r.netns.push(ns.clone()));
    netns::add(&ns)?;
    netns::ip(&ns, &["link", "set", "lo", "up"])?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_pair_direct_and_ferry_back_to_back_in_alternating_order() {
        use Contender::*;
        use Step::*;
        assert_eq!(
            steps(0, false, false, false),
            [
                Short(Direct),
                Short(Ferry),
                Short(Iptables),
                Short(Nftables)
            ]
        );
        assert_eq!(
            steps(1, false, false, false),
            [
                Short(Ferry),
                Short(Direct),
                Short(Nftables),
                Short(Iptables)
            ]
        );
        // With the monitor, ferry's run with it sits beside ferry's without.
        assert_eq!(
            steps(2, true, false, false),
            [
                Short(Direct),
                Short(Ferry),
                Monitor,
                Short(Iptables),
                Short(Nftables)
            ]
        );
        assert_eq!(
            steps(3, true, false, false),
            [
                Monitor,
                Short(Ferry),
                Short(Direct),
                Short(Nftables),
                Short(Iptables)
            ]
        );
        // The one-backend pair follows the pair, its order alternating too.
        assert_eq!(
            steps(0, false, true, false),
            [
                Short(Direct),
                Short(Ferry),
                One(Direct),
                One(Ferry),
                Short(Iptables),
                Short(Nftables)
            ]
        );
        assert_eq!(
            steps(1, true, true, false),
            [
                Monitor,
                Short(Ferry),
                Short(Direct),
                One(Ferry),
                One(Direct),
                Short(Nftables),
                Short(Iptables)
            ]
        );
        // The spread pair follows the one-backend pair.
        assert_eq!(
            steps(1, false, true, true),
            [
                Short(Ferry),
                Short(Direct),
                One(Ferry),
                One(Direct),
                Spread(Ferry),
                Spread(Direct),
                Short(Nftables),
                Short(Iptables)
            ]
        );
    }
}
