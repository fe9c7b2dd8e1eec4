//! Section 5, flood: north-south forwarding under a packet flood, in packets per second, on
//! the two-node lab of section 2 ([`crate::cluster`]).
//!
//! ```text
//!  ext1 (trafgen) ── segment ──┬── node1 (ferry's TC programs on eth0) ── web1 10.244.1.2
//!                              └── node2 (kube-proxy's iptables rules)  ── web2 10.244.2.2
//! ```
//! Debian's `trafgen` (netsniff-ng) writes raw UDP frames on ext1's eth0 at full speed, from
//! [`SOURCES`] source addresses of the benchmarking range 198.18.0.0/15 (RFC 2544) times
//! [`PORTS`] source ports ([`FLOWS`] distinct flows, each seen once every [`FLOWS`] frames), so
//! that every contender's flow state (ferry's conntrack map, netfilter's conntrack) holds
//! thousands of live flows. Each frame is 60 bytes (64 on a wire with its FCS), its checksums
//! correct. The frames carry their next hop's MAC, so ext1 needs no route:
//! - plain routing (the limit): to web1's pod IP through node1 (which pays ferry's TC "pass"
//!   cost there, as any non-service packet on a ferry node does);
//! - ferry (TC): to [`FERRY_VIP`], a LoadBalancer IP (externalTrafficPolicy Local) that
//!   `ferry_tc_in` on node1's eth0 translates to web1;
//! - kube-proxy iptables: to [`IPT_VIP`], the same service in kube-proxy's iptables layout
//!   (`KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*`, UDP) on node2, DNAT to web2;
//! - ferry (XDP) and ferry (TC) to a backend on node2: to [`REMOTE_VIP`], a LoadBalancer IP
//!   (externalTrafficPolicy Cluster) whose [`REMOTE_BACKENDS`] backends are on node2: node1
//!   translates (DNAT and SNAT to its own address) and sends the frames back out of its eth0
//!   to node2, which routes them to its pods. `ferry_xdp` does it in the veth driver when the
//!   agent ran with `--acceleration native` (a redirect out of the ingress device); without it
//!   `ferry_tc_in` does it and the stack forwards. XDP sends only out of the node's own
//!   north-south devices, not into pods behind a bridge (node1's local backend is TC's even
//!   with XDP), hence this path for the XDP/TC pair. Several backends because SNAT ports are
//!   per backend (61000..65535): one backend could not hold [`FLOWS`] SNATed flows.
//!   The XDP program is attached (agent with `--acceleration native`) for the XDP runs alone
//!   and detached again (agent with acceleration disabled) for the others, each time by a
//!   short agent run: the links stay pinned after the agent stops. The lab gives node1's
//!   peer on the segment (`v-node1`) GRO, as a veth needs for frames XDP sends to reach it
//!   (agent/src/datapath/xdp.rs); it is on for every contender.
//!
//! The count is exact and costs the path nothing extra: the backend's eth0 `rx_packets`
//! (netlink, `ip -s -j link`; for the node2 backends, node2's pod bridge `br0`'s `tx_packets`,
//! the frames node2 routed to its pods) over a timed window while the generator runs; the generator's
//! `tx_packets` over the same window is the offered load. Nothing listens on the port, so the
//! backend's answers are ICMP port-unreachable errors, rate-limited by the kernel (to at most
//! about one per source address and second) and never routed back: noise far below the flood.
//!
//! On veth every hop of a frame (the bridge, the node's forwarding and its TC or netfilter
//! work, the backend's receive) runs in the softirq of the CPU that sent it: trafgen runs one
//! process (`-P 1`), which it pins to CPU 0, so the whole path runs on CPU 0 and the other CPU
//! stays with the rest of the machine. The rate is thus that of generator plus path on one
//! CPU; the generator's share is the same for every contender, so the ratios understate the
//! differences between paths. trafgen runs at high priority (`-H`, nice -20, for the seconds
//! of a run), and is told to leave the machine's socket memory settings and IRQ affinities
//! alone (`--no-sock-mem --notouch-irq`). The frames never leave the lab's
//! namespaces, none of which is linked to the root namespace.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    env::{in_lab_ns, in_lab_ns_ok},
    kubeproxy,
    synth::Svc,
};
use crate::{
    AgentOpts, Cluster, Endpoint, EndpointSlice, Service,
    lab::Pod,
    proc::{self, Proc},
};

/// The service's UDP port (and its backends').
const PORT: u16 = 9000;
const FERRY_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
/// ferry's LoadBalancer IP on node1 whose backends are on node2 (the XDP/TC pair).
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 31);
const REMOTE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
/// Backends of [`REMOTE_VIP`] on node2: each holds at most 4,536 SNAT ports, so that
/// [`FLOWS`] spread by flow hash fill under half of their ports.
pub const REMOTE_BACKENDS: usize = 8;
const IPT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
/// Source addresses 198.18.0.1 ..= 198.18.0.SOURCES.
pub const SOURCES: u32 = 15;
/// Source ports 1024 ..= 1024 + PORTS - 1.
pub const PORTS: u32 = 1024;
/// Distinct flows: the address and port counters advance together, and their periods (15
/// and 1024) are coprime, so the pairs repeat only after their product.
pub const FLOWS: u32 = SOURCES * PORTS;
/// Ethernet 14 + IPv4 20 + UDP 8 + 18 bytes of payload: the 60-byte minimum frame.
pub const FRAME_BYTES: u32 = 60;
/// Frames of one probe of a path before it is measured.
const PROBE: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contender {
    Routing,
    /// Plain routing to a node2 pod's IP through node1 (node1 forwards, node2 routes to its
    /// pod): the limit of the path the XDP/TC pair takes.
    RoutingRemote,
    FerryTc,
    /// ferry's TC programs to [`REMOTE_VIP`] (backends on node2): the XDP contender's baseline.
    FerryTcRemote,
    /// ferry's XDP program (`--acceleration native`) to [`REMOTE_VIP`].
    FerryXdp,
    Iptables,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::Routing,
        Contender::RoutingRemote,
        Contender::FerryTc,
        Contender::FerryTcRemote,
        Contender::FerryXdp,
        Contender::Iptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Routing => "plain routing to the pod IP",
            Contender::RoutingRemote => "plain routing to a node2 pod IP",
            Contender::FerryTc => "ferry (TC)",
            Contender::FerryTcRemote => "ferry (TC), backends on node2",
            Contender::FerryXdp => "ferry (XDP), backends on node2",
            Contender::Iptables => "kube-proxy iptables",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub rounds: usize,
    /// The measured window of each run, seconds.
    pub secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub contender: Contender,
    /// Frames the backend received per second, one per round.
    pub pps: Vec<f64>,
    /// Frames the generator sent per second over the same windows.
    pub offered_pps: Vec<f64>,
    /// Runs that failed (the generator did not start or a counter could not be read).
    pub failed_runs: u64,
}

/// A contender left out, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unmeasured {
    pub contender: Contender,
    pub why: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub config: Config,
    pub flows: u32,
    pub frame_bytes: u32,
    pub points: Vec<Point>,
    pub not_measured: Vec<Unmeasured>,
}

/// The service ferry serves on node1: LoadBalancer [`FERRY_VIP`], externalTrafficPolicy
/// Local, UDP [`PORT`] to web1.
fn ferry_service(web1: &Pod) -> (Service, EndpointSlice) {
    let svc = Service::load_balancer("flood", &CLUSTER_IP.to_string())
        .namespace("bench")
        .port_to("flood", i64::from(PORT), "UDP", PORT)
        .lb_ingress(&FERRY_VIP.to_string())
        .external_traffic_policy("Local");
    let slice = EndpointSlice::new("flood-abc12", "flood")
        .namespace("bench")
        .port("flood", PORT, "UDP")
        .endpoint(Endpoint::ready(web1.ip).node("node1"));
    (svc, slice)
}

/// ferry's service to [`REMOTE_VIP`]: LoadBalancer, externalTrafficPolicy Cluster, UDP
/// [`PORT`] to `backends` (on node2).
fn remote_service(backends: &[Pod]) -> (Service, EndpointSlice) {
    let svc = Service::load_balancer("flood-remote", &REMOTE_CLUSTER_IP.to_string())
        .namespace("bench")
        .port_to("flood", i64::from(PORT), "UDP", PORT)
        .lb_ingress(&REMOTE_VIP.to_string());
    let mut slice = EndpointSlice::new("flood-remote-abc12", "flood-remote")
        .namespace("bench")
        .port("flood", PORT, "UDP");
    for b in backends {
        slice = slice.endpoint(Endpoint::ready(b.ip).node("node2"));
    }
    (svc, slice)
}

/// kube-proxy's iptables rules for the same service on node2 ([`IPT_VIP`], web2), UDP: the
/// bench's layouts render TCP service ports, whose rules differ from UDP's only in the
/// protocol matches (and in the chain names' hashes, which include the protocol; the names
/// do not change the path).
fn iptables_rules(web2: &Pod) -> String {
    let svc = Svc {
        namespace: "bench".into(),
        name: "flood".into(),
        ip: CLUSTER_IP,
        ip6: None,
        port: PORT,
        port_name: "flood".into(),
        target_port: PORT,
        endpoints: vec![web2.ip],
        endpoints6: Vec::new(),
    };
    kubeproxy::iptables_restore_lb_local(&svc, IPT_VIP.into())
        .replace("-m tcp -p tcp", "-m udp -p udp")
}

/// trafgen's packet configuration: UDP frames from `src_mac` to `dst_mac` (the next hop),
/// to `dst`:[`PORT`], from [`SOURCES`] addresses times [`PORTS`] ports.
fn trafgen_config(src_mac: &str, dst_mac: &str, dst: Ipv4Addr) -> String {
    format!(
        "{{ eth(da={dst_mac}, sa={src_mac}), \
         ipv4(saddr=198.18.0.1, daddr={dst}, ttl=64, saddr[3]=dinc(1, {SOURCES})), \
         udp(sp=dinc(1024, {}), dp={PORT}), fill(0x00, 18) }}\n",
        1024 + PORTS - 1
    )
}

/// The MAC address of `dev` in the lab namespace `ns`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let (out, _) = in_lab_ns(
        ns,
        "ip",
        &["-j", "link", "show", "dev", dev],
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`ip -j link show dev {dev}` in {ns}"))?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address of {dev} in {ns}"))
}

/// `dev`'s (rx_packets, tx_packets) in the lab namespace `ns`, and when they were read
/// (the midpoint of the read).
fn packets(ns: &str, dev: &str) -> Result<(u64, u64, Instant)> {
    let t0 = Instant::now();
    let (out, took) = in_lab_ns(
        ns,
        "ip",
        &["-j", "-s", "link", "show", "dev", dev],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "`ip -s link show dev {dev}` in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`ip -j -s link show dev {dev}` in {ns}"))?;
    let stats = &v[0]["stats64"];
    let rx = stats["rx"]["packets"].as_u64();
    let tx = stats["tx"]["packets"].as_u64();
    match (rx, tx) {
        (Some(rx), Some(tx)) => Ok((rx, tx, t0 + took / 2)),
        _ => bail!("no stats64 packet counters for {dev} in {ns}"),
    }
}

/// One contender's path: where its frames go and where they are counted.
struct Route {
    config: std::path::PathBuf,
    /// The namespace and device whose counter is the forwarded count: the backend's eth0
    /// (`rx_packets`), or node2's pod bridge (`tx_packets`).
    sink: String,
    sink_dev: &'static str,
}

impl Route {
    fn count(&self) -> Result<(u64, Instant)> {
        let (rx, tx, at) = packets(&self.sink, self.sink_dev)?;
        Ok((if self.sink_dev == "br0" { tx } else { rx }, at))
    }
}

struct Bench<'a> {
    cl: &'a Cluster,
    ext: Pod,
}

impl Bench<'_> {
    fn trafgen_args<'b>(&self, config: &'b str, extra: &[&'b str]) -> Vec<&'b str> {
        let mut args = vec![
            "-o",
            "eth0",
            "-i",
            config,
            "-P",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
            "-C",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Whether [`PROBE`] frames sent slowly reach the backend, within `deadline` (retried:
    /// ferry's service is programmed some time after its agent starts).
    fn probe(&self, path: &Route, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        let config = path.config.to_string_lossy().into_owned();
        let probe = PROBE.to_string();
        let mut last = String::new();
        while Instant::now() < end {
            let before = path.count().map_err(|e| format!("{e:#}"))?.0;
            let args = self.trafgen_args(&config, &["-n", &probe, "-b", "20000pps"]);
            let out = self
                .cl
                .output_timeout(&self.ext, "trafgen", &args, Duration::from_secs(20));
            if !out.status.success() {
                return Err(format!(
                    "trafgen failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            // The frames are on their way once trafgen exits; give them a moment to land.
            let landed = Instant::now() + Duration::from_secs(1);
            loop {
                let got = path.count().map_err(|e| format!("{e:#}"))?.0 - before;
                if got >= PROBE * 9 / 10 {
                    return Ok(());
                }
                if Instant::now() >= landed {
                    last = format!("{got} of {PROBE} probe frames reached the backend");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last)
    }

    /// Waits until the generator's veth has stopped sending (no frame for 200 ms), so that
    /// no run overlaps the next.
    fn quiet(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = packets(&self.ext.netns, "eth0")?.1;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = packets(&self.ext.netns, "eth0")?.1;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the generator's veth is still sending 10 s after trafgen was stopped");
            }
        }
    }

    /// One run at full speed: (forwarded, offered) frames per second over `secs`.
    fn flood(&self, path: &Route, secs: f64) -> Result<(f64, f64)> {
        let config = path.config.to_string_lossy().into_owned();
        // -H: nice -20 for the generator alone, so that the builds sharing the machine do
        // not starve the CPU that runs generator and path alike.
        let args = self.trafgen_args(&config, &["-H"]);
        let gen_ns = self.ext.netns.clone();
        let before = packets(&gen_ns, "eth0")?.1;
        let generator: Proc = self.cl.spawn(&self.ext, "trafgen", &args);
        // Running at full speed once it has sent a first burst (its ring is set up).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if packets(&gen_ns, "eth0")?.1 >= before + 10_000 {
                break;
            }
            if !generator.is_running() || Instant::now() >= deadline {
                stop(&generator);
                bail!("trafgen did not start sending (see its log in the lab directory)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (sink0, t0) = path.count()?;
        let (_, gen0, _) = packets(&gen_ns, "eth0")?;
        // The measured window.
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (sink1, t1) = path.count()?;
        let (_, gen1, _) = packets(&gen_ns, "eth0")?;
        let running = generator.is_running();
        stop(&generator);
        self.quiet()?;
        if !running {
            bail!("trafgen stopped during the run");
        }
        let dt = (t1 - t0).as_secs_f64();
        Ok((
            (sink1 - sink0) as f64 / dt,
            gen1.saturating_sub(gen0) as f64 / dt,
        ))
    }
}

/// Stops trafgen. Its parent forks the sending process and waits for it; SIGINT (Ctrl-C
/// sends it to the whole process group) stops both, but the parent alone passes it on to no
/// one, and both ignore SIGTERM. So its children get SIGINT first, then the parent; whatever
/// is still running 5 s later is killed.
fn stop(generator: &Proc) {
    let pid = generator.pid();
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &p in children.iter().chain([&pid]) {
        if let Ok(p) = i32::try_from(p) {
            // SAFETY: kill(2) on trafgen's processes: our child, unreaped, and its children,
            // which it reaps (so their pids stay theirs while it runs).
            unsafe { libc::kill(p, libc::SIGINT) };
        }
    }
    if generator.wait_exit(Duration::from_secs(5)).is_none() {
        for &p in &children {
            proc::terminate_pid(p, "trafgen", Duration::from_millis(100));
        }
        generator.terminate();
    }
}

/// The pin of ferry's native XDP link on node1's eth0.
fn xdp_pin(cl: &Cluster) -> std::path::PathBuf {
    cl.node("node1").pin_dir.join("ferry_link_xdpdrv_eth0")
}

/// Attaches ferry's XDP program to node1's eth0 (`on`) or detaches it, by a short run of
/// node1's agent with `--acceleration native` or without; Err says why XDP is unavailable.
fn set_xdp(cl: &Cluster, on: bool) -> Result<(), String> {
    let opts = if on {
        AgentOpts {
            extra_args: vec!["--acceleration".into(), "native".into()],
            ..AgentOpts::default()
        }
    } else {
        AgentOpts::default()
    };
    cl.start_agent("node1", &opts);
    let deadline = Instant::now() + Duration::from_secs(30);
    let res = loop {
        let attached = xdp_pin(cl).exists();
        if attached == on && cl.tc_attached("node1") {
            break Ok(());
        }
        let log = cl.agent_log("node1");
        if on && log.contains("refused native XDP") {
            break Err(format!(
                "node1's eth0 refused native XDP: {}",
                super::eastwest::tail(&log, 2)
            ));
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "XDP {} on node1 after 30 s; log: {}",
                if on { "not attached" } else { "still attached" },
                super::eastwest::tail(&log, 2)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The links stay pinned; the agent's own work would only be noise on the CPUs.
    cl.stop_agent("node1");
    res
}

/// node1's eth0 XDP redirects so far (`ethtool -S`: rx_queue_*_xdp_redirect, summed).
fn xdp_redirects(cl: &Cluster) -> Result<u64> {
    let (out, _) = in_lab_ns(
        &cl.node("node1").netns,
        "ethtool",
        &["-S", "eth0"],
        Duration::from_secs(10),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_redirect"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum())
}

pub fn run(config: &Config) -> Result<Results> {
    let cl = Cluster::try_new("bench-flood")?;
    let web1 = cl.add_pod_on("node1", "web1");
    let web2 = cl.add_pod_on("node2", "web2");
    let mut remote = vec![web2.clone()];
    for k in 3..=REMOTE_BACKENDS + 1 {
        remote.push(cl.add_pod_on("node2", &format!("web{k}")));
    }
    let (svc, slice) = ferry_service(&web1);
    cl.manifests().apply(&svc);
    cl.manifests().apply(&slice);
    let (svc, slice) = remote_service(&remote);
    cl.manifests().apply(&svc);
    cl.manifests().apply(&slice);
    // What a node whose eth0 is a veth needs for native XDP: NAPI on the peer, asked for
    // (GRO already on by default does not count: off, then on). On for every contender.
    for gro in ["off", "on"] {
        in_lab_ns_ok(
            cl.net_netns(),
            "ethtool",
            &["-K", "v-node1", "gro", gro],
            Duration::from_secs(10),
        )?;
    }
    let mut not_measured = Vec::new();
    cl.start_agent("node1", &AgentOpts::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cl.tc_attached("node1") {
        if Instant::now() >= deadline {
            bail!(
                "ferry's TC programs were not attached on node1; log:\n{}",
                super::eastwest::tail(&cl.agent_log("node1"), 4)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let node2 = cl.node("node2").netns.clone();
    let rules = cl.tmp_dir().join("flood-iptables.rules");
    std::fs::write(&rules, iptables_rules(&web2))?;
    in_lab_ns_ok(
        &node2,
        "iptables-restore",
        &[&rules.to_string_lossy()],
        Duration::from_secs(60),
    )?;
    let ext = cl.ext("ext1");
    let ext_mac = mac(&ext.netns, "eth0")?;
    let node1_mac = mac(&cl.node("node1").netns, "eth0")?;
    let node2_mac = mac(&node2, "eth0")?;
    let lab = Bench { cl: &cl, ext };
    let mut paths: Vec<(Contender, Route)> = Vec::new();
    // The TC contenders first (the agent running, XDP detached), XDP's last.
    for c in Contender::ALL {
        let (next_hop, dst, sink, sink_dev) = match c {
            Contender::Routing => (&node1_mac, web1.ip, &web1.netns, "eth0"),
            Contender::RoutingRemote => (&node1_mac, web2.ip, &node2, "br0"),
            Contender::FerryTc => (&node1_mac, FERRY_VIP, &web1.netns, "eth0"),
            Contender::FerryTcRemote | Contender::FerryXdp => {
                (&node1_mac, REMOTE_VIP, &node2, "br0")
            }
            Contender::Iptables => (&node2_mac, IPT_VIP, &web2.netns, "eth0"),
        };
        if c == Contender::FerryXdp {
            cl.stop_agent("node1");
            if let Err(why) = set_xdp(&cl, true) {
                eprintln!("bench: flood: {} not measured: {why}", c.label());
                not_measured.push(Unmeasured { contender: c, why });
                continue;
            }
        }
        let file = cl.tmp_dir().join(format!("flood-{c:?}.trafgen"));
        std::fs::write(&file, trafgen_config(&ext_mac, next_hop, dst))?;
        let path = Route {
            config: file,
            sink: sink.clone(),
            sink_dev,
        };
        // ferry's frontends are programmed shortly after its agent starts: a longer wait.
        let ferry = matches!(
            c,
            Contender::FerryTc | Contender::FerryTcRemote | Contender::FerryXdp
        );
        let wait = Duration::from_secs(if ferry { 30 } else { 10 });
        let redirects0 = if c == Contender::FerryXdp {
            xdp_redirects(&cl)?
        } else {
            0
        };
        let probed = lab.probe(&path, wait).and_then(|()| {
            if c != Contender::FerryXdp {
                return Ok(());
            }
            // The probe's frames must have been XDP's, not TC's.
            let n = xdp_redirects(&cl).map_err(|e| format!("{e:#}"))? - redirects0;
            if n >= PROBE * 9 / 10 {
                Ok(())
            } else {
                Err(format!(
                    "node1's eth0 redirected {n} of the {PROBE} probe frames in XDP"
                ))
            }
        });
        match probed {
            Ok(()) => paths.push((c, path)),
            Err(e) if ferry => {
                let why = format!(
                    "its path to {dst}:{PORT} does not forward: {e}; node1 log: {}",
                    super::eastwest::tail(&cl.agent_log("node1"), 2)
                );
                eprintln!("bench: flood: {} not measured: {why}", c.label());
                not_measured.push(Unmeasured { contender: c, why });
            }
            Err(e) => bail!(
                "the {} path to {dst}:{PORT} does not forward: {e}",
                c.label()
            ),
        }
    }
    cl.stop_agent("node1");
    let mut xdp_on = xdp_pin(&cl).exists();
    let mut points: Vec<Point> = paths
        .iter()
        .map(|(c, _)| Point {
            contender: *c,
            pps: Vec::new(),
            offered_pps: Vec::new(),
            failed_runs: 0,
        })
        .collect();
    for round in 0..config.rounds {
        for k in 0..paths.len() {
            let (c, path) = &paths[(k + round) % paths.len()];
            let p = points
                .iter_mut()
                .find(|p| p.contender == *c)
                .expect("a point per path");
            let want_xdp = *c == Contender::FerryXdp;
            if want_xdp != xdp_on {
                if let Err(e) = set_xdp(&cl, want_xdp) {
                    eprintln!("bench: flood: switching XDP for {}: {e}", c.label());
                    p.failed_runs += 1;
                    continue;
                }
                xdp_on = want_xdp;
            }
            match lab.flood(path, config.secs) {
                Ok((pps, offered)) => {
                    p.pps.push(pps);
                    p.offered_pps.push(offered);
                    eprintln!(
                        "bench: flood round {}/{} {:<32} {:>10.0} pps forwarded of {:>10.0} offered",
                        round + 1,
                        config.rounds,
                        c.label(),
                        pps,
                        offered
                    );
                }
                Err(e) => {
                    eprintln!("bench: flood: {} run failed: {e:#}", c.label());
                    p.failed_runs += 1;
                }
            }
        }
    }
    Ok(Results {
        config: config.clone(),
        flows: FLOWS,
        frame_bytes: FRAME_BYTES,
        points,
        not_measured,
    })
}

/// The section's bar chart, written next to benchmarks.md.
pub const PNG: &str = "bench-flood.png";

/// The chart's data (`.flood.dat`: contender, median, min, max) and gnuplot script; None
/// when no contender was measured.
pub fn plot(r: &Results) -> Option<(String, String)> {
    use std::fmt::Write as _;

    use super::stats::Summary;
    let mut data = String::from("# contender median min max (forwarded packets/s)\n");
    for p in &r.points {
        if let Some(s) = Summary::of(&p.pps) {
            let _ = writeln!(
                data,
                "\"{}\" {} {} {}",
                p.contender.label(),
                s.median,
                s.min,
                s.max
            );
        }
    }
    if data.lines().count() < 2 {
        return None;
    }
    let script = format!(
        "set terminal pngcairo size 900,480 font ',11'\nset output '{PNG}'\n\
         set title 'Flood: UDP frames forwarded north-south per second ({} flows)'\n\
         set ylabel 'packets / s (median, min-max)'\nset yrange [0:*]\nset grid ytics\n\
         set style fill solid 0.5\nset boxwidth 0.6\n\
         plot '.flood.dat' using 0:2:xtic(1) with boxes lc 1 notitle, \
         '' using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0 notitle\n",
        num_flows(r.flows)
    );
    Some((data, script))
}

fn num_flows(n: u32) -> String {
    super::report::num(f64::from(n))
}

/// The section of docs/benchmarks.md.
pub fn markdown(md: &mut String, r: &Results, png: Option<&str>) {
    use std::fmt::Write as _;

    use super::{
        report::{cell, num, ratio_cell},
        stats::{Summary, ratio},
    };
    let get = |c: Contender| {
        r.points
            .iter()
            .find(|p| p.contender == c)
            .and_then(|p| Summary::of(&p.pps))
    };
    let _ = writeln!(
        md,
        "On the two-node lab of section 2: `trafgen` (Debian's netsniff-ng) in the external \
         client's namespace writes UDP frames at full speed to a LoadBalancer service \
         (externalTrafficPolicy Local, one backend pod on the node, nothing listening on its \
         port): through node1, where ferry's TC programs translate them, or node2, where \
         kube-proxy's iptables rules do (its `KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*` layout, \
         UDP); the limit is plain routing to the pod IP through node1. ferry's XDP program \
         (`--acceleration native`) is measured against ferry's TC programs on the same path, \
         a LoadBalancer IP on node1 (externalTrafficPolicy Cluster) whose {} backends are on \
         node2: node1 translates (DNAT, SNAT) and sends the frames back out of its eth0, node2 \
         routes them to its pods, and the forwarded count is node2's pod bridge's \
         `tx_packets` (the limit of that path: plain routing to a node2 pod's IP through \
         node1); XDP sends only out of the node's own devices, not into pods behind \
         node1's bridge. XDP is attached for its runs alone (a short agent run with \
         `--acceleration native`, another without to detach it); node1's peer on the segment \
         has GRO on (for every contender), which a veth peer needs to receive what XDP \
         sends. {} flows ({} source \
         addresses of 198.18.0.0/15 times {} source ports, cycled), {}-byte frames ({} on a \
         wire), correct checksums, checksum offload off on every veth. *Forwarded*: frames \
         the backend's veth received per second (its `rx_packets` over the window, exact); \
         *offered*: frames the generator's veth sent in the same window. On veth every hop runs \
         in the softirq of the sending CPU: trafgen runs one process at high priority \
         (`-H`), pinned to CPU 0, so \
         generator and path share that CPU (the other is left to the rest of the machine) and \
         the ratios understate the paths' differences. {} rounds of {} s, the contenders \
         interleaved.\n\n\
         | contender | forwarded packets/s | offered packets/s | / plain routing on the same path | / ferry (TC) on the same path |\n\
         |---|---:|---:|---:|---:|",
        REMOTE_BACKENDS,
        num(f64::from(r.flows)),
        SOURCES,
        PORTS,
        r.frame_bytes,
        r.frame_bytes + 4,
        r.config.rounds,
        r.config.secs
    );
    let routing = get(Contender::Routing);
    let tc = get(Contender::FerryTc);
    let tc_remote = get(Contender::FerryTcRemote);
    let routing_remote = get(Contender::RoutingRemote);
    for c in Contender::ALL {
        if let Some(u) = r.not_measured.iter().find(|u| u.contender == c) {
            let _ = writeln!(
                md,
                "| {} | not measured: {} | – | – | – |",
                c.label(),
                u.why
            );
            continue;
        }
        let Some(p) = r.points.iter().find(|p| p.contender == c) else {
            continue;
        };
        let s = Summary::of(&p.pps);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            c.label(),
            cell(s),
            cell(Summary::of(&p.offered_pps)),
            ratio_cell(ratio(
                s,
                match c {
                    Contender::FerryXdp | Contender::FerryTcRemote | Contender::RoutingRemote =>
                        routing_remote,
                    _ => routing,
                }
            )),
            ratio_cell(ratio(
                s,
                match c {
                    Contender::FerryXdp | Contender::FerryTcRemote | Contender::RoutingRemote => {
                        tc_remote
                    }
                    _ => tc,
                }
            )),
        );
    }
    let xdp = get(Contender::FerryXdp);
    let target = match xdp_over_tc(r) {
        Some(x) => format!("{x:.2} ({})", if x >= 2.0 { "met" } else { "not met" }),
        None => "not measured yet".into(),
    };
    let _ = writeln!(
        md,
        "\nTarget: ferry (XDP) ≥ 2× ferry (TC) on the same path: {target}."
    );
    if let (Some(x), Some(t), Some(r)) = (xdp, tc_remote, routing_remote) {
        let ns = |pps: f64| 1e9 / pps;
        let _ = writeln!(
            md,
            "\nWhy not more on this lab: the generator's sends run the whole path on its CPU \
             (forwarded ≈ offered: the generator and the path share one CPU, so the rate is \
             1 / (its cost + the path's)). Per frame that is {:.0} ns through ferry (TC), \
             {:.0} ns through ferry (XDP) and {:.0} ns with plain routing on node1: ferry's TC \
             translation {}; the rest of the frame's cost (generator, segment bridge, node2's \
             forwarding, the pod's veth) is common to all, so no work saved on node1 alone can double the rate here. And on veth XDP does not run before an skb: the sender's \
             skb reaches node1's eth0 through its NAPI ring, is copied into a page when it has \
             less than 256 bytes of headroom (Linux's veth_convert_skb_to_xdp_buff), and after \
             the redirect the peer builds a new skb from the frame; what it saves is node1's IP forwarding and \
             TC programs, about what those copies cost. XDP's gain needs a NIC whose driver \
             runs it on the DMA'd buffer and a path whose other costs do not dominate.",
            ns(t.median),
            ns(x.median),
            ns(r.median),
            translation_cost(ns(t.median) - ns(r.median)),
        );
    }
    if let Some(png) = png {
        let _ = writeln!(md, "\n![Flood: packets per second forwarded]({png})");
    }
    let failed: Vec<String> = r
        .points
        .iter()
        .filter(|p| p.failed_runs > 0)
        .map(|p| format!("{} {}", p.contender.label(), p.failed_runs))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nRuns that failed (the generator did not start or stopped), left out of the \
             medians: {}.",
            failed.join(", ")
        );
    }
}

/// ferry XDP's forwarded packets/s over ferry TC's on the same path (backends on node2).
pub fn xdp_over_tc(r: &Results) -> Option<f64> {
    use super::stats::{Summary, ratio};
    let get = |c: Contender| {
        r.points
            .iter()
            .find(|p| p.contender == c)
            .and_then(|p| Summary::of(&p.pps))
    };
    ratio(get(Contender::FerryXdp), get(Contender::FerryTcRemote))
}

/// TC's cost over plain forwarding per frame, in words: a difference below zero is the noise
/// of rounds, not a saving.
fn translation_cost(extra_ns: f64) -> String {
    if extra_ns >= 0.0 {
        format!("costs {extra_ns:.0} ns more than plain forwarding, a small part")
    } else {
        format!(
            "costs no more than plain forwarding within the rounds' noise (it came out {:.0} ns \
             less)",
            -extra_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_match_udp_only() {
        let web2 = Pod {
            name: "web2".into(),
            ip: Ipv4Addr::new(10, 244, 2, 2),
            ip6: crate::lab::ipv6_twin(Ipv4Addr::new(10, 244, 2, 2)),
            netns: "fy000000-web2".into(),
            netns_path: "/run/netns/fy000000-web2".into(),
            cgroup: None,
        };
        let rules = iptables_rules(&web2);
        assert!(!rules.contains("-p tcp"), "{rules}");
        assert!(
            rules.contains("-m udp -p udp -d 192.0.2.40/32 --dport 9000")
                || rules.contains("-m udp -p udp -d 192.0.2.40 --dport 9000"),
            "{rules}"
        );
        assert!(
            rules.contains("-m udp -p udp -j DNAT --to-destination 10.244.2.2:9000"),
            "{rules}"
        );
    }

    #[test]
    fn trafgen_frames_are_minimal_udp_with_coprime_counters() {
        let cfg = trafgen_config("02:00:00:00:00:02", "02:00:00:00:00:01", FERRY_VIP);
        assert!(cfg.contains("daddr=192.0.2.30"), "{cfg}");
        assert!(cfg.contains("saddr[3]=dinc(1, 15)"), "{cfg}");
        assert!(cfg.contains("sp=dinc(1024, 2047)"), "{cfg}");
        assert_eq!(14 + 20 + 8 + 18, FRAME_BYTES);
        // Coprime periods: every (address, port) pair occurs before any repeats.
        let gcd = |mut a: u32, mut b: u32| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(SOURCES, PORTS), 1);
        assert_eq!(FLOWS, 15_360);
    }
}
