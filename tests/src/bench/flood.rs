//! Section 5, flood: north-south forwarding under a packet flood, in packets per second, on
//! the two-node lab of section 2 ([`crate::cluster`]).
//!
//! ```text
//!  CPU 0: generator ─► v-node1 ═ring═► node1's eth0 (ferry's TC or XDP) ── web1 10.244.1.2
//!         (segment's  ─► v-node2 ═ring═► node2's eth0 (kube-proxy iptables) ── web2 10.244.2.2
//!          namespace)         CPU 1: everything from the ring on
//! ```
//! The generator is the kernel's own XDP traffic generator ([`super::xdpgen`]): BPF_PROG_RUN
//! of an XDP program in live-frames mode, on a thread in the segment's namespace pinned to
//! [`GENERATOR_CPU`]; where the kernel refuses live frames (probed once, the report says which
//! mode ran and why), the same program runs as the native XDP of a veth pair of the
//! generator's own in that namespace, fed by the same thread through an AF_PACKET socket (relay
//! mode: its NAPI runs on the generator's CPU). Either way the program sends each frame it
//! writes [`xdpgen::FANOUT`] times (a broadcast redirect over a devmap whose entries all hold
//! the same device: fan-out, in [`super::xdpgen`]) to the forwarding node's peer on the
//! segment (`v-node1`, or `v-node2` for the iptables contender), whose `ndo_xdp_xmit` puts the
//! frames in the node's eth0 receive ring as a NIC driver's receive would: pages with XDP
//! headroom, no skb, in bursts (up to 16 an `ndo_xdp_xmit`, one wake-up of the node's NAPI a
//! burst). With `--acceleration native` ferry's XDP program runs on that frame itself;
//! without, veth builds an skb around it (GRO on) and the stack and TC run, as after a NIC
//! driver. The frames are UDP from [`SOURCES`] source addresses of the benchmarking range
//! 198.18.0.0/15 (RFC 2544) times [`PORTS`] source ports ([`FLOWS`] distinct flows, each seen
//! as a run of [`xdpgen::FANOUT`] identical frames once every [`FLOWS`] × FANOUT frames), so
//! that every contender's flow state (ferry's conntrack map, netfilter's conntrack) holds
//! thousands of live flows and sees FANOUT back-to-back packets of a flow on each visit, the
//! same for every contender (plain routing, ferry TC, ferry XDP, kube-proxy iptables); veth's
//! GRO merges none of the identical frames (no UDP GRO forwarding), so each is forwarded and
//! counted on its own. Each is 60 bytes (64 on a wire with its FCS) from ext1's MAC address to
//! the node's, its checksums correct. The paths:
//! - plain routing (the limit): to web1's pod IP through node1 (which pays ferry's TC "pass"
//!   cost there, as any non-service packet on a ferry node does);
//! - ferry (TC): to [`FERRY_VIP`], a LoadBalancer IP (externalTrafficPolicy Local) that
//!   `ferry_tc_in` on node1's eth0 translates to web1;
//! - kube-proxy iptables: to [`IPT_VIP`], the same service in kube-proxy's iptables layout
//!   (`KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*`, UDP) on node2, DNAT to web2;
//! - ferry (XDP) and ferry (TC) to backends on node2: to [`REMOTE_VIP`], a LoadBalancer IP
//!   (externalTrafficPolicy Cluster) whose [`REMOTE_BACKENDS`] backends are on node2: node1
//!   translates (DNAT and SNAT to its own address) and sends the frames back out of its eth0
//!   towards node2. `ferry_xdp` does it in the veth driver when the agent ran with
//!   `--acceleration native` (a redirect out of the ingress device); without it `ferry_tc_in`
//!   does it and the stack forwards. XDP sends only out of the node's own north-south
//!   devices, not into pods behind a bridge (node1's local backend is TC's even with XDP),
//!   hence this path for the XDP/TC pair; its limit is plain routing to a node2 pod's IP
//!   through node1. Several backends because SNAT ports are per backend (61000..65535): one
//!   backend could not hold [`FLOWS`] SNATed flows. The XDP program is attached (agent with
//!   `--acceleration native`) for the XDP runs alone and detached again (agent with
//!   acceleration disabled) for the others, each time by a short agent run: the links stay
//!   pinned after the agent stops.
//!
//! What is measured is the forwarding node's capacity, so the generator and the forwarding
//! node get a CPU each ([`GENERATOR_CPU`], [`FORWARDING_CPU`]), the same for every contender:
//! - the generator's thread runs on CPU 0 at nice [`NAPI_NICE`]; its whole work (the
//!   program, the redirect, the hand-over into the ring; in relay mode also the socket's sends
//!   and the relay veth's NAPI, which runs in CPU 0's softirq) is there;
//! - the forwarding nodes' eth0 (node1's, node2's) have NAPI (GRO on) and threaded NAPI: each
//!   receives in a kernel thread `napi/eth0-ID` ([`super::napi`]), pinned to CPU 1 at the
//!   generator's priority. A frame crosses CPUs through that device's ring (256 frames): when
//!   CPU 1 cannot keep up the ring is full and the segment's veth refuses the frame (its
//!   `xdp_xmit_errors`, reported as dropped at the entry). Everything after runs on CPU 1: the
//!   node's receive, XDP or TC, forwarding, and the sink (the devices after the node have
//!   unthreaded NAPI or none, so their receive runs in CPU 1's softirq).
//! - The sink counts and drops the forwarded frames at the first device they reach: the
//!   backend pod's eth0 for node1's and node2's local backends, and node1's peer on the
//!   segment (`v-node1`, NAPI with GRO on) for the frames node1 sends back out towards node2's
//!   pods. So no pod's receive and no second node's forwarding is counted in the forwarding
//!   CPU's work, and the count is exact. It is as cheap as each form of frame allows: what TC
//!   and the stack forward arrives as an skb, which [`super::sinkdrop`]'s tc ingress filter
//!   drops (after veth's GRO and the device's receive); what ferry's XDP program sends arrives
//!   at `v-node1` as an XDP frame, which an XDP program there ([`xdpgen::XdpSink`], attached
//!   for the XDP runs alone) drops before any skb is made (veth's `xdp_drops`). The XDP
//!   path's sink is thus cheaper, as a NIC's transmit of an XDP frame is cheaper than of an
//!   skb; the report says so.
//!
//! Offered: what the generator handed to the entry veth over the same window (frames put in
//! the node's ring plus frames refused because it was full: the veth's `xdp_xmit` and
//! `xdp_xmit_errors`, which count every copy). The contender forwards less
//! than offered when CPU 1 is the bottleneck; if one does not, the report says the generator
//! was the limit. The frames never leave the lab's namespaces, none of which is linked to the
//! root namespace: the generator refuses to run in any other.
//!
//! What the fan-out changed (relay mode, the 2-CPU VM shared with other work that left the NAPI
//! threads ~40% of CPU 1, two runs of 5 rounds each way, interleaved, medians): with one frame
//! sent per frame written the generator offered 0.28–0.52 million frames/s, ferry (XDP)
//! forwarded 92–93% of its offer (0.26–0.30 million; generator-limited), XDP/TC by packets/s was
//! 0.65–0.94 and CPU 1's time per frame was ferry (XDP) 1,330–1,395 ns, ferry (TC) 1,036–1,046
//! ns (TC/XDP 0.74–0.79: woken per frame, XDP's NAPI thread spent more per frame than TC's).
//! With 32 copies the generator offered 2.0–2.2 million frames/s to ferry (XDP) and 3.1–3.9
//! million to the others, every contender forwarded under 53% of its offer (CPU 1 the limit),
//! ferry (XDP) 1.08–1.15 million frames/s against ferry (TC)'s 0.52–0.55 million (XDP/TC 2.09
//! and 2.10), at ferry (XDP) 364–366 ns a frame against ferry (TC)'s 795–804 ns (TC/XDP 2.18 and
//! 2.19); in a round where its NAPI thread had 81% of CPU 1, ferry (XDP) forwarded 2.37 of 4.52
//! million frames/s. Every contender forwarded what its node took into the ring one for one
//! (forwarded / (offered - dropped at the entry): medians 99.6–100.4%, single rounds 97–102%,
//! as with one copy, the counters being read at slightly different moments): no copy merged.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use super::xdpgen::{FLOWS, FRAME_BYTES, PORTS, SOURCES};
use super::{
    env::{in_lab_ns, in_lab_ns_ok},
    kubeproxy, napi, sinkdrop,
    synth::Svc,
    xdpgen,
};
use crate::{AgentOpts, Cluster, Endpoint, EndpointSlice, Service, lab::Pod};

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
/// Frames of one probe of a path before it is measured (sent: the generator writes
/// `PROBE / FANOUT` of them, [`xdpgen::FANOUT`] copies each).
const PROBE: u64 = 1024;
const _: () = assert!(PROBE.is_multiple_of(xdpgen::FANOUT as u64));
/// The CPU of the generator (its thread pins itself there).
pub const GENERATOR_CPU: usize = 0;
/// The CPU of the forwarding nodes' receive (their eth0's NAPI threads) and all that follows.
pub const FORWARDING_CPU: usize = 1;
/// The nice value of the generator's thread and of the NAPI threads, so that the machine's
/// other work weighs on both CPUs' work alike.
const NAPI_NICE: i32 = -20;
/// Retries of a run whose generator stopped.
const RETRIES: usize = 2;
/// A contender that forwards at least this share of what was offered did not saturate the
/// forwarding CPU: the generator was the limit.
pub const SATURATED_BELOW: f64 = 0.95;

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
    /// Frames per second dropped at the forwarding node's entry (its eth0's NAPI ring full:
    /// the forwarding CPU behind), over the same windows.
    #[serde(default)]
    pub entry_drops_pps: Vec<f64>,
    /// The share of [`FORWARDING_CPU`] the forwarding nodes' NAPI threads used (their CPU time
    /// over the window, the softirqs they ran included), over the same windows.
    #[serde(default)]
    pub napi_cpu: Vec<f64>,
    /// ferry (XDP) alone: frames per second node1's eth0 redirected in XDP over the same
    /// windows (`ethtool -S`), to check that XDP, not TC, forwarded them.
    #[serde(default)]
    pub xdp_redirect_pps: Vec<f64>,
    /// Relay mode: frames per second the generator's own veth refused (its ring full) before
    /// the program ran, over the same windows, each counted [`Results::fanout`] times (the
    /// copies it would have made: not offered to the path); empty in live mode.
    #[serde(default)]
    pub relay_refused_pps: Vec<f64>,
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
    /// Where the generator and the forwarding ran; None in reports from before the split
    /// (generator and path on one CPU).
    #[serde(default)]
    pub cpus: Option<Cpus>,
    /// How the generator's frames reached its program: live frames, or the relay where the
    /// kernel refused them (and how). Reports from before the relay ran live frames.
    #[serde(default)]
    pub generator: xdpgen::Mode,
    /// Copies the generator sent of each frame it wrote ([`xdpgen::FANOUT`]); 1 in reports
    /// from before the broadcast.
    #[serde(default = "one")]
    pub fanout: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cpus {
    pub generator: usize,
    pub forwarding: usize,
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

/// The MAC address of `dev` in the lab namespace `ns`.
fn mac(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let (out, _) = in_lab_ns(
        ns,
        "ip",
        &["-j", "link", "show", "dev", dev],
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`ip -j link show dev {dev}` in {ns}"))?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address of {dev} in {ns}"))?;
    parse_mac(text).with_context(|| format!("{dev}'s address {text:?} in {ns}"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `ethtool -S dev` in the lab namespace `ns`: each counter by name, and when it was read
/// (the read's midpoint).
fn ethtool_stats(ns: &str, dev: &str) -> Result<(BTreeMap<String, u64>, Instant)> {
    let t0 = Instant::now();
    let (out, took) = in_lab_ns(ns, "ethtool", &["-S", dev], Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "`ethtool -S {dev}` in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stats = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse::<u64>().ok()?)))
        .collect();
    Ok((stats, t0 + took / 2))
}

/// The sum of the counters of `stats` named `rx_queue_*_NAME` (or `tx_queue_*_NAME`).
fn queue_sum(stats: &BTreeMap<String, u64>, dir: &str, name: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(dir)
                .and_then(|k| k.strip_prefix("_queue_"))
                .and_then(|k| k.split_once('_'))
                .is_some_and(|(q, n)| q.parse::<u32>().is_ok() && n == name)
        })
        .map(|(_, v)| v)
        .sum()
}

/// What the generator handed to a veth for its peer (the forwarding node's eth0): frames its
/// `ndo_xdp_xmit` put in the peer's ring and frames it refused (ring full), so far.
struct Xmit {
    sent: u64,
    refused: u64,
    at: Instant,
}

fn xmit(ns: &str, dev: &str) -> Result<Xmit> {
    let (stats, at) = ethtool_stats(ns, dev)?;
    if !stats.contains_key("tx_queue_0_xdp_xmit") {
        bail!("`ethtool -S {dev}` in {ns} has no tx_queue_0_xdp_xmit (not a veth?)");
    }
    Ok(Xmit {
        sent: queue_sum(&stats, "tx", "xdp_xmit"),
        refused: queue_sum(&stats, "tx", "xdp_xmit_errors"),
        at,
    })
}

/// `dev`'s `tx_packets` in the lab namespace `ns` (netlink, `ip -s -j link`). A veth counts
/// there what its peer's NAPI took off the peer's ring, XDP frames included.
fn tx_packets(ns: &str, dev: &str) -> Result<u64> {
    let (out, _) = in_lab_ns(
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
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .with_context(|| format!("no stats64 tx counters for {dev} in {ns}"))
}

/// Where a path's forwarded frames are counted.
enum Sink {
    /// [`super::sinkdrop`]'s tc filter on a device: its drops.
    Tc { ns: String, dev: &'static str },
    /// [`xdpgen::XdpSink`] on a veth: its XDP drops (`ethtool -S`, `rx_queue_*_xdp_drops`).
    Xdp { ns: String, dev: &'static str },
}

/// One contender's path: what its frames are, where they enter the forwarding node and
/// where they are counted.
struct Route {
    flow: xdpgen::Flow,
    sink: Sink,
    /// The forwarding node's eth0's peer on the segment: the generator redirects the frames
    /// to it, and its `ndo_xdp_xmit` puts them in the forwarding node's ring (or refuses them
    /// when the ring is full).
    entry: &'static str,
    /// Whether XDP forwards it (its redirects are counted).
    xdp: bool,
}

impl Route {
    fn count(&self) -> Result<(u64, Instant)> {
        match &self.sink {
            Sink::Tc { ns, dev } => sinkdrop::dropped(ns, dev),
            Sink::Xdp { ns, dev } => {
                let (stats, at) = ethtool_stats(ns, dev)?;
                Ok((queue_sum(&stats, "rx", "xdp_drops"), at))
            }
        }
    }

    fn sink_dev(&self) -> &str {
        match &self.sink {
            Sink::Tc { dev, .. } | Sink::Xdp { dev, .. } => dev,
        }
    }
}

/// One run's figures, per second over its window.
struct Run {
    forwarded: f64,
    offered: f64,
    entry_drops: f64,
    /// Share of the forwarding CPU used by the NAPI threads.
    napi_cpu: f64,
    xdp_redirects: Option<f64>,
    /// Relay mode: frames per second the relay's veth refused.
    relay_refused: Option<f64>,
}

struct Bench<'a> {
    cl: &'a Cluster,
    /// The forwarding nodes' NAPI threads, pinned to [`FORWARDING_CPU`].
    napi: Vec<napi::Thread>,
}

impl Bench<'_> {
    /// Where the generator runs for `path`: on [`GENERATOR_CPU`] in the segment's namespace,
    /// sending through the path's entry.
    fn placement(&self, path: &Route) -> xdpgen::Placement {
        xdpgen::Placement {
            ns: self.cl.net_netns().to_owned(),
            dev: path.entry.to_owned(),
            cpu: GENERATOR_CPU,
            nice: NAPI_NICE,
        }
    }

    /// Whether [`PROBE`] frames sent slowly reach the sink (which drops them), within
    /// `deadline` (retried: ferry's service is programmed some time after its agent starts).
    fn probe(&self, path: &Route, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        let mut last = String::new();
        while Instant::now() < end {
            let before = path.count().map_err(|e| format!("{e:#}"))?.0;
            // 64 frames every 5 ms (12,800 frames/s): far below what any path forwards, and
            // each burst a quarter of the node's ring.
            let fanout = xdpgen::FANOUT;
            xdpgen::send_slowly(
                &self.placement(path),
                path.flow,
                PROBE as u32 / fanout,
                (64 / fanout).max(1),
                Duration::from_millis(5),
            )
            .map_err(|e| format!("the generator failed: {e:#}"))?;
            // Sent once the call returns; give the frames a moment to land.
            let landed = Instant::now() + Duration::from_secs(1);
            loop {
                let got = path.count().map_err(|e| format!("{e:#}"))?.0 - before;
                if got >= PROBE * 9 / 10 {
                    return Ok(());
                }
                if Instant::now() >= landed {
                    last = format!(
                        "{got} of {PROBE} probe frames reached the sink on {}",
                        path.sink_dev()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last)
    }

    /// Waits until the forwarding node has taken every frame off its ring (the entry's
    /// `tx_packets`, which counts what the peer's NAPI consumed, still for 200 ms), so that no
    /// run overlaps the next.
    fn quiet(&self, path: &Route) -> Result<()> {
        let net = self.cl.net_netns();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = tx_packets(net, path.entry)?;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = tx_packets(net, path.entry)?;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}'s peer is still receiving 10 s after the generator stopped",
                    path.entry
                );
            }
        }
    }

    /// The NAPI threads' CPU time so far, seconds; fails unless each is still there and on
    /// [`FORWARDING_CPU`] alone.
    fn napi_secs(&self) -> Result<f64> {
        let mut total = 0.0;
        for t in &self.napi {
            let cpus = t.cpus()?;
            if cpus != [FORWARDING_CPU] {
                bail!(
                    "{}'s NAPI thread runs on CPUs {cpus:?}, not {FORWARDING_CPU} alone",
                    t.what
                );
            }
            total += t.cpu_secs()?;
        }
        Ok(total)
    }

    /// One run at full speed over `secs`.
    fn flood(&self, path: &Route, secs: f64) -> Result<Run> {
        let net = self.cl.net_netns();
        self.napi_secs()?;
        let before = xmit(net, path.entry)?;
        let generator = xdpgen::Generator::start(&self.placement(path), path.flow)?;
        // Running at full speed once it has sent a first burst.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = xmit(net, path.entry)?;
            if now.sent + now.refused >= before.sent + before.refused + 10_000 {
                break;
            }
            if !generator.is_running() || Instant::now() >= deadline {
                let why = generator
                    .stop()
                    .err()
                    .map_or("nothing".into(), |e| format!("{e:#}"));
                bail!(
                    "the generator did not start sending through {} (it said: {why})",
                    path.entry
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The counters are read by short commands that the generator's and the NAPI threads'
        // priority would otherwise hold up, blurring when each read happened.
        let _nice = Nice::raise(NAPI_NICE);
        let (sink0, t0) = path.count()?;
        let gen0 = xmit(net, path.entry)?;
        let made0 = generator.frames()?;
        let refused0 = generator.relay_refused();
        let napi0 = self.napi_secs()?;
        let xdp0 = if path.xdp {
            Some(xdp_redirects(self.cl)?)
        } else {
            None
        };
        // The measured window.
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (sink1, t1) = path.count()?;
        let gen1 = xmit(net, path.entry)?;
        let made1 = generator.frames()?;
        let refused1 = generator.relay_refused();
        let napi1 = self.napi_secs()?;
        let xdp1 = if path.xdp {
            Some(xdp_redirects(self.cl)?)
        } else {
            None
        };
        let running = generator.is_running();
        let relay = matches!(generator.mode(), xdpgen::Mode::Relay { .. });
        let fanout = generator.fanout();
        let stopped = generator.stop();
        self.quiet(path)?;
        if !running {
            bail!(
                "the generator stopped during the run: {}",
                stopped
                    .err()
                    .map_or("no error".into(), |e| format!("{e:#}"))
            );
        }
        let dt = (t1 - t0).as_secs_f64();
        let per_sec = |a: u64, b: u64, dt: f64| b.saturating_sub(a) as f64 / dt;
        let handed = (gen1.sent + gen1.refused).saturating_sub(gen0.sent + gen0.refused);
        // Each frame the program wrote, sent `fanout` times.
        let made = made1.saturating_sub(made0) * u64::from(fanout);
        // Frames the program redirected that never reached the veth (a redirect error) would
        // be offered by no one: the counts must roughly agree (the reads are not simultaneous,
        // and a loaded machine spreads them).
        if (handed as f64) < made as f64 * 0.5 {
            bail!(
                "the generator sent {made} frames in the window but {} took only {handed}",
                path.entry
            );
        }
        let gen_dt = (gen1.at - gen0.at).as_secs_f64();
        Ok(Run {
            forwarded: per_sec(sink0, sink1, dt),
            offered: handed as f64 / gen_dt,
            entry_drops: per_sec(gen0.refused, gen1.refused, gen_dt),
            napi_cpu: (napi1 - napi0) / dt,
            xdp_redirects: xdp0.zip(xdp1).map(|(a, b)| per_sec(a, b, dt)),
            // In frames that would have been sent: each refused frame, `fanout` copies.
            relay_refused: relay.then(|| per_sec(refused0, refused1, gen_dt) * f64::from(fanout)),
        })
    }
}

/// The calling thread's nice value (inherited by the commands it starts), raised until dropped.
struct Nice(Option<i32>);

impl Nice {
    fn raise(nice: i32) -> Nice {
        // SAFETY: getpriority/setpriority(2) on the calling thread (who = 0).
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let ok = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0;
        Nice(ok.then_some(before))
    }
}

impl Drop for Nice {
    fn drop(&mut self) {
        if let Some(before) = self.0 {
            // SAFETY: as in `raise`.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, before) };
        }
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

/// Attaches ferry's XDP program and the XDP sink on `v-node1` (`on`) or detaches both: the
/// frames XDP sends back out of node1 reach `v-node1` as XDP frames, which the XDP sink drops
/// before any skb is made; TC's arrive as skbs, which the tc sink drops.
fn switch_xdp(
    cl: &Cluster,
    on: bool,
    sink: &mut Option<xdpgen::XdpSink>,
    node2_pods: (Ipv4Addr, u8),
) -> Result<(), String> {
    if !on {
        *sink = None;
    }
    set_xdp(cl, on)?;
    if on && sink.is_none() {
        *sink = Some(
            xdpgen::XdpSink::attach(cl.net_netns(), "v-node1", PORT, node2_pods)
                .map_err(|e| format!("{e:#}"))?,
        );
    }
    Ok(())
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
    let node2 = cl.node("node2").netns.clone();
    let generator = xdpgen::mode_in(cl.net_netns()).context("probing the generator's mode")?;
    eprintln!("bench: flood: generator: {}", generator.describe());
    let napi = split_cpus(&cl)?;
    // The sinks: each path's first device after its forwarding node.
    sinkdrop::install(&web1.netns, "eth0", PORT, None)?;
    sinkdrop::install(&web2.netns, "eth0", PORT, None)?;
    let node2_pods = (Ipv4Addr::from(u32::from(web2.ip) & !0xff), 24);
    sinkdrop::install(cl.net_netns(), "v-node1", PORT, Some(node2_pods))?;
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
    let rules = cl.tmp_dir().join("flood-iptables.rules");
    std::fs::write(&rules, iptables_rules(&web2))?;
    in_lab_ns_ok(
        &node2,
        "iptables-restore",
        &[&rules.to_string_lossy()],
        Duration::from_secs(60),
    )?;
    // The frames come from ext1's address on the segment (as if ext1 sent them) to the
    // forwarding node's eth0.
    let ext_mac = mac(&cl.ext("ext1").netns, "eth0")?;
    let node1_mac = mac(&cl.node("node1").netns, "eth0")?;
    let node2_mac = mac(&node2, "eth0")?;
    let lab = Bench { cl: &cl, napi };
    let mut paths: Vec<(Contender, Route)> = Vec::new();
    // Attached with ferry's XDP program (see `switch_xdp`).
    let mut xdp_sink: Option<xdpgen::XdpSink> = None;
    // The TC contenders first (the agent running, XDP detached), XDP's last.
    for c in Contender::ALL {
        let net = cl.net_netns().to_owned();
        let tc = |ns: &str, dev| Sink::Tc {
            ns: ns.to_owned(),
            dev,
        };
        let (next_hop, dst, sink, entry) = match c {
            Contender::Routing => (node1_mac, web1.ip, tc(&web1.netns, "eth0"), "v-node1"),
            Contender::RoutingRemote => (node1_mac, web2.ip, tc(&net, "v-node1"), "v-node1"),
            Contender::FerryTc => (node1_mac, FERRY_VIP, tc(&web1.netns, "eth0"), "v-node1"),
            Contender::FerryTcRemote => (node1_mac, REMOTE_VIP, tc(&net, "v-node1"), "v-node1"),
            Contender::FerryXdp => (
                node1_mac,
                REMOTE_VIP,
                Sink::Xdp {
                    ns: net,
                    dev: "v-node1",
                },
                "v-node1",
            ),
            Contender::Iptables => (node2_mac, IPT_VIP, tc(&web2.netns, "eth0"), "v-node2"),
        };
        if c == Contender::FerryXdp {
            cl.stop_agent("node1");
            if let Err(why) = switch_xdp(&cl, true, &mut xdp_sink, node2_pods) {
                eprintln!("bench: flood: {} not measured: {why}", c.label());
                not_measured.push(Unmeasured { contender: c, why });
                continue;
            }
        }
        let path = Route {
            flow: xdpgen::Flow {
                dst_mac: next_hop,
                src_mac: ext_mac,
                dst,
                port: PORT,
            },
            sink,
            entry,
            xdp: c == Contender::FerryXdp,
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
    let mut xdp_on = xdp_pin(&cl).exists() && xdp_sink.is_some();
    let mut points: Vec<Point> = paths
        .iter()
        .map(|(c, _)| Point {
            contender: *c,
            pps: Vec::new(),
            offered_pps: Vec::new(),
            entry_drops_pps: Vec::new(),
            napi_cpu: Vec::new(),
            xdp_redirect_pps: Vec::new(),
            relay_refused_pps: Vec::new(),
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
                if let Err(e) = switch_xdp(&cl, want_xdp, &mut xdp_sink, node2_pods) {
                    eprintln!("bench: flood: switching XDP for {}: {e}", c.label());
                    p.failed_runs += 1;
                    continue;
                }
                xdp_on = want_xdp;
            }
            // A generator that stopped (its BPF_PROG_RUN or its relay failed) is the generator's failure,
            // not the path's: the run is retried.
            let mut result = lab.flood(path, config.secs);
            for _ in 0..RETRIES {
                match &result {
                    Err(e) if format!("{e:#}").contains("the generator stopped") => {
                        eprintln!("bench: flood: {} run failed, retried: {e:#}", c.label());
                        p.failed_runs += 1;
                        result = lab.flood(path, config.secs);
                    }
                    _ => break,
                }
            }
            match result {
                Ok(run) => {
                    p.pps.push(run.forwarded);
                    p.offered_pps.push(run.offered);
                    p.entry_drops_pps.push(run.entry_drops);
                    p.napi_cpu.push(run.napi_cpu);
                    if let Some(x) = run.xdp_redirects {
                        p.xdp_redirect_pps.push(x);
                        eprintln!("bench: flood: node1's eth0 redirected {x:.0} pps in XDP");
                    }
                    if let Some(x) = run.relay_refused {
                        p.relay_refused_pps.push(x);
                        if x > 0.0 {
                            eprintln!(
                                "bench: flood: the generator's relay veth refused {x:.0} pps \
                                 (its ring full)"
                            );
                        }
                    }
                    eprintln!(
                        "bench: flood round {}/{} {:<32} {:>9.0} pps forwarded of {:>9.0} offered \
                         ({:>9.0} dropped at the entry; NAPI threads {:>3.0}% of CPU \
                         {FORWARDING_CPU})",
                        round + 1,
                        config.rounds,
                        c.label(),
                        run.forwarded,
                        run.offered,
                        run.entry_drops,
                        run.napi_cpu * 100.0,
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
        cpus: Some(Cpus {
            generator: GENERATOR_CPU,
            forwarding: FORWARDING_CPU,
        }),
        generator,
        fanout: xdpgen::FANOUT,
    })
}

/// Gives the generator and the forwarding nodes a CPU each (see the module's comment): NAPI on
/// the generator's peer on the segment (unthreaded: it runs on the generator's CPU) and on
/// node1's peer (where XDP sends, and the remote paths' sink); NAPI, threaded, on both
/// nodes' eth0, their threads pinned to [`FORWARDING_CPU`]. Returns the threads.
fn split_cpus(cl: &Cluster) -> Result<Vec<napi::Thread>> {
    // SAFETY: sysconf(3) has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online < 2 {
        bail!(
            "the flood needs 2 CPUs (one for the generator, one for forwarding); {online} online"
        );
    }
    let net = cl.net_netns();
    napi::gro_on(net, "v-node1")?;
    let mut threads = Vec::new();
    for node in ["node1", "node2"] {
        let ns = &cl.node(node).netns;
        napi::gro_on(ns, "eth0")?;
        let t = napi::threaded(ns, "eth0", &format!("{node}'s eth0"))?;
        t.pin(FORWARDING_CPU, NAPI_NICE)?;
        eprintln!(
            "bench: flood: {}'s NAPI thread {} ({}) pinned to CPU {FORWARDING_CPU}, nice {NAPI_NICE}",
            t.what, t.pid, t.comm
        );
        threads.push(t);
    }
    Ok(threads)
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
    let point = |c: Contender| r.points.iter().find(|p| p.contender == c);
    let get = |c: Contender| point(c).and_then(|p| Summary::of(&p.pps));
    let relay = matches!(r.generator, xdpgen::Mode::Relay { .. });
    let split = match &r.cpus {
        Some(cpus) => format!(
            "The generator and the forwarding node get a CPU each, the same for every contender. \
             CPU {g}: the generator's thread (high priority) and its whole work, the program, \
             the redirect and the hand-over into the forwarding node's ring{relay_work}. CPU {f}: everything \
             from the forwarding node's eth0 on: node1's and node2's eth0 have threaded NAPI, \
             their `napi/eth0-*` kernel threads pinned to CPU {f} at the generator's priority, so \
             the node's receive, XDP or TC or netfilter, forwarding and the sink run there; a \
             frame crosses CPUs through that eth0's 256-frame ring, and when CPU {f} falls \
             behind the ring is full and the segment's veth refuses the frame at the entry. The \
             sink counts and drops the forwarded frames at the first device they reach: the \
             backend pod's eth0 for node1's and node2's local backends, node1's peer on the \
             segment for the frames node1 sends back out towards node2's pods, so no pod's \
             receive and no second node's forwarding is in CPU {f}'s work. It is as cheap as \
             each form of frame allows: what TC and the stack forward arrives as an skb, dropped \
             by a tc ingress filter (classic BPF, direct action) after veth's GRO and the \
             device's receive; what ferry's XDP program sends back out arrives at node1's peer \
             as an XDP frame, dropped there by an XDP program (attached for the XDP runs alone) \
             before any skb is made. So the XDP path's sink costs CPU {f} less than the TC \
             path's, as a NIC's transmit of an XDP frame costs less than of an skb.",
            g = cpus.generator,
            f = cpus.forwarding,
            relay_work = if relay {
                " (in relay mode also the socket's sends and the relay veth's NAPI poll, which \
                 runs in that CPU's softirq)"
            } else {
                ""
            },
        ),
        None => "Measured before the CPU split: generator and path shared one CPU, so the \
                 ratios understate the paths' differences."
            .into(),
    };
    let generator = if relay {
        "an XDP program in the segment's namespace (run as the native XDP of a veth pair of the \
         generator's own, fed through an AF_PACKET socket, since this kernel refused \
         BPF_PROG_RUN's live frames: relay mode, below)"
    } else {
        "the kernel's XDP traffic generator (BPF_PROG_RUN of an XDP program in live-frames mode, \
         as xdp-tools' xdp-trafficgen does) in the segment's namespace"
    };
    let sends = if r.fanout > 1 {
        format!(
            "sends each UDP frame it writes {k} times in a row (a broadcast redirect over a \
             devmap whose {k} entries all hold the same device), at full speed, to the \
             forwarding node's peer veth, which puts them in the node's eth0 receive ring as a \
             NIC driver does, in bursts of up to 16 (pages with XDP headroom, no skb: ferry's \
             XDP program runs on the frame itself, the stack gets an skb built around it)",
            k = r.fanout
        )
    } else {
        "redirects UDP frames at full speed to the forwarding node's peer veth, which puts them \
         in the node's eth0 receive ring as a NIC driver does (pages with XDP headroom, no skb: \
         ferry's XDP program runs on the frame itself, the stack gets an skb built around it)"
            .into()
    };
    let runs = if r.fanout > 1 {
        format!(
            ", each flow's frames in runs of {k} identical frames (so every contender's \
             conntrack sees {k} back-to-back packets of a flow on each visit; GRO merges none of \
             them: each is forwarded and counted on its own)",
            k = r.fanout
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "On the two-node lab of section 2: {generator} {sends}, to a LoadBalancer service \
         (externalTrafficPolicy Local, one backend pod on the node): through node1, where \
         ferry's TC programs translate them, or node2, where kube-proxy's iptables rules do \
         (its `KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*` layout, UDP); the limit is plain \
         routing to the pod IP through node1. ferry's XDP program (`--acceleration native`) is \
         measured against ferry's TC programs on the same path, a LoadBalancer IP on node1 \
         (externalTrafficPolicy Cluster) whose {} backends are on node2: node1 translates \
         (DNAT, SNAT) and sends the frames back out of its eth0 towards node2 (the limit of \
         that path: plain routing to a node2 pod's IP through node1); XDP sends only out of the \
         node's own devices, not into pods behind node1's bridge. XDP is attached for its runs \
         alone (a short agent run with `--acceleration native`, another without to detach it). \
         {} flows ({} source addresses of 198.18.0.0/15 times {} source ports, cycled){runs}, \
         {}-byte frames ({} on a wire), correct checksums, checksum offload off on every veth.\n\n\
         {split}\n\n\
         {}\n\n\
         *Forwarded*: frames the sink dropped per second (its count over the window, exact); \
         *offered*: frames the generator handed to the entry veth in the same window (taken \
         into the forwarding node's ring or refused; copies included); *dropped at the entry*: frames refused \
         because that ring was full; *NAPI CPU*: the share of \
         CPU {} the forwarding nodes' NAPI threads used (the softirqs they ran included). {} \
         rounds of {} s, the contenders interleaved.\n\n\
         | contender | forwarded packets/s | offered packets/s | forwarded / offered | dropped at the entry, packets/s | NAPI CPU | / plain routing on the same path | / ferry (TC) on the same path |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        REMOTE_BACKENDS,
        num(f64::from(r.flows)),
        SOURCES,
        PORTS,
        r.frame_bytes,
        r.frame_bytes + 4,
        generator_mode(r),
        r.cpus.as_ref().map_or(FORWARDING_CPU, |c| c.forwarding),
        r.config.rounds,
        r.config.secs
    );
    let routing = get(Contender::Routing);
    let tc = get(Contender::FerryTc);
    let tc_remote = get(Contender::FerryTcRemote);
    let routing_remote = get(Contender::RoutingRemote);
    let remote = |c: Contender| {
        matches!(
            c,
            Contender::FerryXdp | Contender::FerryTcRemote | Contender::RoutingRemote
        )
    };
    for c in Contender::ALL {
        if let Some(u) = r.not_measured.iter().find(|u| u.contender == c) {
            let _ = writeln!(
                md,
                "| {} | not measured: {} | – | – | – | – | – | – |",
                c.label(),
                u.why
            );
            continue;
        }
        let Some(p) = point(c) else {
            continue;
        };
        let s = Summary::of(&p.pps);
        let pct =
            |x: Option<Summary>| x.map_or("–".into(), |x| format!("{:.0}%", x.median * 100.0));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            cell(s),
            cell(Summary::of(&p.offered_pps)),
            ratio_cell(delivered(p).map(|d| d.median)),
            cell(Summary::of(&p.entry_drops_pps)),
            pct(Summary::of(&p.napi_cpu)),
            ratio_cell(ratio(s, if remote(c) { routing_remote } else { routing })),
            ratio_cell(ratio(s, if remote(c) { tc_remote } else { tc })),
        );
    }
    let target = match xdp_over_tc(r) {
        Some(x) => format!("{x:.2} ({})", if x >= 2.0 { "met" } else { "not met" }),
        None => "not measured yet".into(),
    };
    let _ = writeln!(
        md,
        "\nTarget: ferry (XDP) ≥ 2× ferry (TC) on the same path: {target}. Other ratios of \
         the medians: ferry (TC) / plain routing {} (local backend), {} (backends on node2); \
         kube-proxy iptables / plain routing {}.",
        ratio_cell(ratio(tc, routing)),
        ratio_cell(ratio(tc_remote, routing_remote)),
        ratio_cell(ratio(get(Contender::Iptables), routing)),
    );
    if r.cpus.is_some() {
        bottleneck(md, r);
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
            "\nRuns that failed (the generator did not start or stopped, or a NAPI thread was \
             not where it should be), left out of the medians (a run whose generator stopped is \
             retried up to {RETRIES} times): {}.",
            failed.join(", ")
        );
    }
}

/// The report's paragraph on the generator's mode: which ran, and for the relay why and what
/// its veth refused.
fn generator_mode(r: &Results) -> String {
    use super::{report::num, stats::Summary};
    let g = r.cpus.as_ref().map_or(GENERATOR_CPU, |c| c.generator);
    match &r.generator {
        xdpgen::Mode::Live => "Generator: live frames (BPF_PROG_RUN with \
                               `BPF_F_TEST_XDP_LIVE_FRAMES`)."
            .into(),
        xdpgen::Mode::Relay { refused } => {
            let refusals: Vec<String> = r
                .points
                .iter()
                .filter_map(|p| {
                    let s = Summary::of(&p.relay_refused_pps)?;
                    (s.max > 0.0).then(|| {
                        format!(
                            "{} {} packets/s (median; at most {})",
                            p.contender.label(),
                            num(s.median),
                            num(s.max)
                        )
                    })
                })
                .collect();
            let measured = r.points.iter().any(|p| !p.relay_refused_pps.is_empty());
            let refusals = match (measured, refusals.is_empty()) {
                (false, _) => String::new(),
                (true, true) => {
                    " Its veth refused no frame in any run (its ring never full).".into()
                }
                (true, false) => format!(
                    " Its veth refused frames (its ring full) before the program ran, which \
                     were not offered{}: {}.",
                    if r.fanout > 1 {
                        format!(" (counted as the {} copies each would have made)", r.fanout)
                    } else {
                        String::new()
                    },
                    refusals.join(", ")
                ),
            };
            let handover = if r.fanout > 1 {
                format!(
                    "Each frame the program writes is sent {k} times: its redirect is a \
                     broadcast over a devmap whose {k} entries all hold the forwarding node's \
                     peer, which copies the frame (a page and a copy each, on CPU {g}) and hands \
                     the copies over 16 to an `ndo_xdp_xmit`, one wake-up of the node's NAPI \
                     thread per poll of the relay veth. Without it the relay handed the frames \
                     over one at a time, woke the node's NAPI thread for each, and offered so \
                     few that ferry (XDP) forwarded all it was offered.",
                    k = r.fanout
                )
            } else {
                "And it hands the frames over one at a time rather than 64 to a flush: the \
                 faster a path drains the node's ring, the more often the generator must wake \
                 the node's NAPI thread, so it offers least to the fastest path (ferry (XDP)), \
                 whose packets/s are then a floor and whose time per frame a ceiling (a NAPI \
                 thread that polls a near-empty ring spends more per frame) of what it does \
                 under a full ring."
                    .into()
            };
            format!(
                "Generator: relay mode, because this kernel refused live frames ({refused}). The \
                 generator's thread sends the frame's template through an AF_PACKET socket \
                 (PACKET_QDISC_BYPASS, sendmmsg) into a veth pair of its own in the segment's \
                 namespace, whose native XDP runs the same program: it writes the whole frame, \
                 counts it and redirects it to the forwarding node's peer veth, whose \
                 `ndo_xdp_xmit` puts it in the node's eth0 ring as in live mode (an XDP frame in a \
                 page with headroom, no skb). The relay veth's NAPI poll runs in CPU {g}'s \
                 softirq, so the generator's whole work stays on CPU {g}; it costs more per frame \
                 than live frames (a socket send, an skb copied into a page), so the generator \
                 offers fewer frames per second than in live mode. {handover}{refusals}"
            )
        }
    }
}

/// Forwarded over offered, round by round (median and range).
fn delivered(p: &Point) -> Option<super::stats::Summary> {
    let per_round: Vec<f64> = p
        .pps
        .iter()
        .zip(&p.offered_pps)
        .filter(|(_, o)| **o > 0.0)
        .map(|(f, o)| f / o)
        .collect();
    super::stats::Summary::of(&per_round)
}

/// CPU time on the forwarding CPU per forwarded frame, ns, round by round.
fn ns_per_frame(p: &Point) -> Option<super::stats::Summary> {
    let per_round: Vec<f64> = p
        .pps
        .iter()
        .zip(&p.napi_cpu)
        .filter(|(f, _)| **f > 0.0)
        .map(|(f, cpu)| cpu * 1e9 / f)
        .collect();
    super::stats::Summary::of(&per_round)
}

/// Whether the forwarding CPU was the bottleneck (every contender forwarded less than
/// [`SATURATED_BELOW`] of what was offered) or the generator was, for whom, with the figures;
/// and the forwarding CPU's time per frame.
fn bottleneck(md: &mut String, r: &Results) {
    use std::fmt::Write as _;

    use super::report::num;
    let f = r.cpus.as_ref().map_or(FORWARDING_CPU, |c| c.forwarding);
    let mut limited = Vec::new();
    // The highest median and the highest round of forwarded / offered over the contenders.
    let mut highest: Option<(f64, f64)> = None;
    for p in &r.points {
        let Some(d) = delivered(p) else { continue };
        highest = Some(highest.map_or((d.median, d.max), |(m, x)| (m.max(d.median), x.max(d.max))));
        if d.median >= SATURATED_BELOW {
            limited.push(format!(
                "{} (forwarded {:.0}% of what was offered, median of the rounds; {} of {} \
                 packets/s)",
                p.contender.label(),
                d.median * 100.0,
                num(super::stats::Summary::of(&p.pps).map_or(0.0, |s| s.median)),
                num(super::stats::Summary::of(&p.offered_pps).map_or(0.0, |s| s.median)),
            ));
        }
    }
    match highest {
        None => {}
        Some((median, max)) if limited.is_empty() => {
            let _ = writeln!(
                md,
                "\nThe forwarding CPU was the bottleneck: every contender forwarded less than \
                 offered (at most {:.0}% in the median of its rounds, {:.0}% in its best round), \
                 the rest dropped at the forwarding node's entry ring.",
                median * 100.0,
                max * 100.0
            );
        }
        Some(_) => {
            let _ = writeln!(
                md,
                "\nThe generator was the limit for {}: one generator CPU could not offer more \
                 than CPU {f} forwarded there, so that rate is a floor and its ratios understate \
                 its lead.",
                limited.join("; ")
            );
        }
    }
    // The threads' share of CPU {f}: what the machine's other work left them.
    let shares: Vec<f64> = r
        .points
        .iter()
        .filter_map(|p| super::stats::Summary::of(&p.napi_cpu).map(|s| s.median))
        .collect();
    if let Some(top) = shares.iter().copied().reduce(f64::max)
        && top < 0.5
    {
        let _ = writeln!(
            md,
            "\nThe NAPI threads ran at most {:.0}% of CPU {f} (median of the rounds) although \
             their rings were full: the rest of CPU {f} went to other work (the machine's other \
             tenants, and any receive work the kernel deferred to ksoftirqd, which the NAPI CPU \
             and the time per frame do not count), so the packets/s above are what the threads \
             were given, not CPU {f}'s capacity; the time per frame below is the comparison \
             that does not depend on it.",
            top * 100.0
        );
    }
    let costs: Vec<String> = Contender::ALL
        .iter()
        .filter_map(|&c| {
            let p = r.points.iter().find(|p| p.contender == c)?;
            let s = ns_per_frame(p)?;
            Some(format!("{} {} ns", c.label(), num(s.median)))
        })
        .collect();
    if !costs.is_empty() {
        let _ = writeln!(
            md,
            "\nCPU {f}'s time per forwarded frame (the NAPI threads' CPU time over the frames \
             forwarded, median of the rounds; it does not depend on how much of CPU {f} the \
             machine's other work left to the threads): {}.",
            costs.join(", ")
        );
    }
    if let Some(p) = r.points.iter().find(|p| p.contender == Contender::FerryXdp)
        && let (Some(x), Some(f)) = (
            super::stats::Summary::of(&p.xdp_redirect_pps),
            super::stats::Summary::of(&p.pps),
        )
    {
        let _ = writeln!(
            md,
            "\nferry (XDP): node1's eth0 redirected {} packets/s in XDP (median; `ethtool -S`), \
             for {} forwarded: {}.",
            num(x.median),
            num(f.median),
            if x.median >= f.median * 0.9 {
                "XDP, not TC, forwarded them"
            } else {
                "part of them took TC's path"
            }
        );
    }
    if r.points.iter().any(|p| p.contender == Contender::FerryXdp) {
        let _ = writeln!(
            md,
            "\nThe generator's frames reach node1's eth0 as XDP frames in pages with headroom \
             (no skb, no copy: what a NIC driver's receive hands to XDP); ferry's XDP program \
             translates them there and redirects them out of eth0, and node1's peer drops them \
             as XDP frames. Without XDP the same frames get an skb at eth0 and go through the \
             stack, TC and forwarding, and arrive at the sink as skbs."
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

/// What decides the XDP-over-TC target when XDP's packets/s do not measure its capacity: the
/// share of what was offered that ferry (XDP) forwarded (median of the rounds), and the
/// forwarding CPU's time per frame, ferry (TC) over ferry (XDP) (the capacity ratio, which
/// does not depend on how much the generator offered).
pub struct XdpLimit {
    pub delivered: f64,
    pub tc_over_xdp_ns: Option<f64>,
}

/// Some when ferry (XDP) forwarded at least [`SATURATED_BELOW`] of what it was offered: the
/// generator, not the forwarding, set its packets/s.
pub fn xdp_generator_limited(r: &Results) -> Option<XdpLimit> {
    let point = |c: Contender| r.points.iter().find(|p| p.contender == c);
    let xdp = point(Contender::FerryXdp)?;
    let delivered = delivered(xdp)?.median;
    if delivered < SATURATED_BELOW {
        return None;
    }
    let ns = |c| point(c).and_then(ns_per_frame).map(|s| s.median);
    let tc_over_xdp_ns = match (ns(Contender::FerryTcRemote), ns(Contender::FerryXdp)) {
        (Some(tc), Some(x)) if x > 0.0 => Some(tc / x),
        _ => None,
    };
    Some(XdpLimit {
        delivered,
        tc_over_xdp_ns,
    })
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

    fn results(forwarded: f64, offered: f64) -> Results {
        let point = |c, k: f64| Point {
            contender: c,
            pps: vec![forwarded * k; 3],
            offered_pps: vec![offered; 3],
            entry_drops_pps: vec![offered - forwarded * k; 3],
            napi_cpu: vec![0.9; 3],
            xdp_redirect_pps: if c == Contender::FerryXdp {
                vec![forwarded * k; 3]
            } else {
                Vec::new()
            },
            relay_refused_pps: Vec::new(),
            failed_runs: 0,
        };
        Results {
            config: Config {
                rounds: 3,
                secs: 3.0,
            },
            flows: FLOWS,
            frame_bytes: FRAME_BYTES,
            points: vec![
                point(Contender::RoutingRemote, 1.0),
                point(Contender::FerryTcRemote, 0.5),
                point(Contender::FerryXdp, 1.0),
            ],
            not_measured: Vec::new(),
            cpus: Some(Cpus {
                generator: GENERATOR_CPU,
                forwarding: FORWARDING_CPU,
            }),
            generator: xdpgen::Mode::Live,
            fanout: xdpgen::FANOUT,
        }
    }

    /// XDP's packets/s decide its target only when its path, not the generator, was the limit.
    #[test]
    fn xdp_is_generator_limited_when_it_forwards_what_it_is_offered() {
        // results(): XDP forwards `forwarded` of `offered`, TC half as many, at the same NAPI
        // CPU (0.9).
        let r = results(600_000.0, 600_000.0);
        let l = xdp_generator_limited(&r).expect("XDP forwarded all it was offered");
        assert!((l.delivered - 1.0).abs() < 1e-9);
        // TC: 0.9 s of CPU over 300,000 frames, XDP over 600,000: twice the time per frame.
        assert!((l.tc_over_xdp_ns.unwrap() - 2.0).abs() < 1e-9);
        let r = results(300_000.0, 600_000.0);
        assert!(xdp_generator_limited(&r).is_none(), "XDP's ring was full");
    }

    /// The report says which generator ran; for the relay, why (the kernel's refusal) and what
    /// its veth refused; a report from before the relay (no `generator`) ran live frames.
    #[test]
    fn report_says_which_generator_ran() {
        let r = results(300_000.0, 600_000.0);
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(
            md.contains("the kernel's XDP traffic generator (BPF_PROG_RUN"),
            "{md}"
        );
        assert!(md.contains("Generator: live frames"), "{md}");
        assert!(!md.contains("relay"), "{md}");

        let mut r = results(300_000.0, 600_000.0);
        r.generator = xdpgen::Mode::Relay {
            refused: "BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: Operation not permitted \
                      (os error 1)"
                .into(),
        };
        for p in &mut r.points {
            p.relay_refused_pps = vec![0.0; 3];
        }
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(
            md.contains(
                "Generator: relay mode, because this kernel refused live frames (BPF_PROG_RUN \
                 with BPF_F_TEST_XDP_LIVE_FRAMES: Operation not permitted (os error 1))"
            ),
            "{md}"
        );
        assert!(
            md.contains("since this kernel refused BPF_PROG_RUN's live frames"),
            "{md}"
        );
        assert!(!md.contains("in live-frames mode, as xdp-tools"), "{md}");
        assert!(md.contains("Its veth refused no frame in any run"), "{md}");
        assert!(
            md.contains("the relay veth's NAPI poll, which runs"),
            "{md}"
        );
        // The fan-out: each frame sent FANOUT times, in runs of identical frames.
        let k = xdpgen::FANOUT;
        assert!(
            md.contains(&format!(
                "sends each UDP frame it writes {k} times in a row"
            )),
            "{md}"
        );
        assert!(
            md.contains(&format!(
                "each flow's frames in runs of {k} identical frames (so every contender's \
                 conntrack sees {k} back-to-back packets"
            )),
            "{md}"
        );
        assert!(
            md.contains(&format!("Each frame the program writes is sent {k} times")),
            "{md}"
        );
        assert!(
            !md.contains("hands the frames over one at a time rather"),
            "{md}"
        );
        r.points[2].relay_refused_pps = vec![0.0, 1_500.0, 2_000.0];
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(
            md.contains(&format!(
                "before the program ran, which were not offered (counted as the {k} copies each \
                 would have made): ferry (XDP), backends on node2 1,500 packets/s (median; at \
                 most 2,000)."
            )),
            "{md}"
        );
        // Before the fan-out: one frame sent per frame written, handed over one at a time.
        r.fanout = 1;
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(md.contains("redirects UDP frames at full speed"), "{md}");
        assert!(
            md.contains("hands the frames over one at a time rather"),
            "{md}"
        );
        assert!(!md.contains("identical frames"), "{md}");

        // Older JSON: no `generator`, no `relay_refused_pps`, no `fanout`.
        let mut v = serde_json::to_value(results(1.0, 2.0)).unwrap();
        v.as_object_mut().unwrap().remove("generator");
        v.as_object_mut().unwrap().remove("fanout");
        for p in v["points"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("relay_refused_pps");
        }
        let old: Results = serde_json::from_value(v).unwrap();
        assert_eq!(old.generator, xdpgen::Mode::Live);
        assert_eq!(
            old.fanout, 1,
            "reports from before the fan-out sent each frame once"
        );
        let relay = serde_json::to_value(xdpgen::Mode::Relay {
            refused: "x".into(),
        })
        .unwrap();
        assert_eq!(relay, serde_json::json!({"relay": {"refused": "x"}}));
    }

    #[test]
    fn report_says_which_cpu_was_the_bottleneck() {
        let r = results(300_000.0, 600_000.0);
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(md.contains("The forwarding CPU was the bottleneck"), "{md}");
        assert!(
            md.contains("at most 50% in the median of its rounds"),
            "{md}"
        );
        assert!(md.contains("2.00 (met)"), "{md}");
        // 0.9 of a CPU over 300,000 frames/s: 3,000 ns a frame (6,000 for TC at half the rate).
        assert!(
            md.contains("ferry (XDP), backends on node2 3,000 ns"),
            "{md}"
        );
        assert!(
            md.contains("ferry (TC), backends on node2 6,000 ns"),
            "{md}"
        );
        assert!(
            md.contains("| 0.50 | 300,000 (300,000–300,000) | 90% |"),
            "{md}"
        );
        assert!(
            md.contains("redirected 300,000 packets/s in XDP (median; `ethtool -S`), for 300,000"),
            "{md}"
        );

        let r = results(590_000.0, 600_000.0);
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(md.contains("The generator was the limit for"), "{md}");
        assert!(
            md.contains("ferry (XDP), backends on node2 (forwarded 98%"),
            "{md}"
        );
        assert!(md.contains("590,000 of 600,000 packets/s"), "{md}");
        assert!(
            !md.contains("ferry (TC), backends on node2 (forwarded"),
            "{md}"
        );

        // Threads given under half of the forwarding CPU: the report says the packets/s are
        // what they were given.
        assert!(!md.contains("The NAPI threads ran at most"), "{md}");
        let mut r = results(300_000.0, 600_000.0);
        for p in &mut r.points {
            p.napi_cpu = vec![0.3; 3];
        }
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(
            md.contains("The NAPI threads ran at most 30% of CPU 1"),
            "{md}"
        );

        // A report from before the split says so and draws no conclusion on the bottleneck.
        let mut r = results(300_000.0, 600_000.0);
        r.cpus = None;
        let mut md = String::new();
        markdown(&mut md, &r, None);
        assert!(md.contains("Measured before the CPU split"), "{md}");
        assert!(!md.contains("bottleneck"), "{md}");
    }

    #[test]
    fn flood_frames_are_minimal_udp_with_coprime_counters() {
        // The frames of a path as the generator's program writes them (its arithmetic is
        // tested in xdpgen against frames built from scratch, and run in the kernel there).
        let flow = xdpgen::Flow {
            dst_mac: parse_mac("02:00:00:00:00:01").unwrap(),
            src_mac: parse_mac("02:00:00:00:00:02").unwrap(),
            dst: FERRY_VIP,
            port: PORT,
        };
        let sources: std::collections::BTreeSet<_> =
            (0..u64::from(FLOWS)).map(xdpgen::source).collect();
        assert_eq!(sources.len(), FLOWS as usize);
        let gcd = |mut a: u32, mut b: u32| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(SOURCES, PORTS), 1);
        assert_eq!(FLOWS, 15_360);
        for n in [0u64, 14, 1023, 15_359] {
            let f = xdpgen::frame(&flow, n);
            assert_eq!(f.len(), FRAME_BYTES as usize);
            crate::progtest::assert_checksums(&f);
            let p = crate::progtest::parse_ipv4(&f);
            assert_eq!((p.dst, p.proto), (FERRY_VIP, crate::progtest::IPPROTO_UDP));
            assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 1]);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), PORT);
            assert_eq!(
                (p.src, u16::from_be_bytes([f[34], f[35]])),
                (*xdpgen::source(n).ip(), xdpgen::source(n).port())
            );
        }
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    }

    #[test]
    fn ethtool_queue_counters_sum() {
        let stats: BTreeMap<String, u64> = [
            ("tx_queue_0_xdp_xmit", 5),
            ("tx_queue_1_xdp_xmit", 7),
            ("tx_queue_0_xdp_xmit_errors", 3),
            ("rx_queue_0_xdp_drops", 11),
            ("peer_ifindex", 9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(queue_sum(&stats, "tx", "xdp_xmit"), 12);
        assert_eq!(queue_sum(&stats, "tx", "xdp_xmit_errors"), 3);
        assert_eq!(queue_sum(&stats, "rx", "xdp_drops"), 11);
        assert_eq!(queue_sum(&stats, "rx", "xdp_xmit"), 0);
    }
}
