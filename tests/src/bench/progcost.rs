//! Section 3, program cost: ferry's TC programs run with BPF_PROG_TEST_RUN on hand-built
//! frames, timed by the kernel.
//!
//! A test run with `repeat` > 1 runs the program again and again on the *same* skb, and ferry's
//! programs rewrite it (DNAT on the first run): every later run would see an already translated
//! packet and take the "not ferry's" path. So each path is run `samples` times with
//! `repeat` = 1 on a fresh copy of its frame, and the kernel's `duration` (ns) of each run is
//! kept. That duration includes the test-run timer's own cost: each run is followed by a run
//! of an empty classifier (`r0 = -1; exit`) on the same frame, whose median over the same runs
//! is subtracted.
//!
//! This VM runs slowed for stretches of seconds (everything at once, the empty program too:
//! 48 -> 75 ns, the paths 1.6-1.7 x), between one chunk of runs and the next of the same
//! loaded program on the same conntrack element (found with the `probe` diagnostics below;
//! neither the JIT image's address nor the maps' memory decides it). A run then, minus a
//! baseline taken at normal speed, made the "slow mode" of earlier reports. The runs are
//! therefore taken in chunks ([`CHUNK`] pairs); a chunk whose empty program runs more than
//! [`SLOWED`] x its lowest chunk median is left out of the figures and reported apart.
//!
//! - miss: a TCP SYN to a LoadBalancer IP, the flow's two conntrack entries removed by key after
//!   each run, so that every run is a new flow (service lookup, backend choice, two conntrack
//!   inserts, DNAT). Timed on a conntrack map that has been used, as a node's is: right after
//!   the map is created, its LRU lists have never moved an element and the same program, on the
//!   same frame, costs ~355 ns instead of ~220 (measured for TC and XDP alike: each program's
//!   miss timed in the other's place took the other's figure). So the map first takes
//!   `samples` new flows back to back and is emptied, and that first row, and a short one
//!   on the map as loaded, are reported too:
//!   - "new flows back to back": a fresh 5-tuple per run and nothing undone, so every flow's
//!     entries land in elements and buckets not touched lately (cold memory: what a burst of
//!     new connections costs);
//!   - "miss on the map as loaded": the miss before the map was used.
//!
//!   The bench first emptied the map by walking it before each run; that walk reads all 262,144
//!   buckets (4 MiB) and leaves the caches cold, which a new flow among other traffic does not
//!   meet (about half of the figure it gave was the walk's): the "miss after a walk" row keeps
//!   that method's figure, with a tenth of the samples, for comparison;
//! - hit: the same flow's next client segment (conntrack lookup, DNAT);
//! - reply: the backend's segment leaving the node (conntrack lookup, reverse NAT);
//! - pass: a packet to an address that is no frontend (what every other packet costs);
//! - the per-packet ClusterIP path (pod_lb.rs) on a pod's device: `ferry_tc_pod`'s pass (a
//!   pod's packet to no ClusterIP: what every pod packet through a pod device costs), miss
//!   and hit (a pod's SYN and next segment to a ClusterIP), and `ferry_tc_pod_out`'s reply
//!   (reverse NAT) and pass (a packet to a pod of no pod flow).
//!
//! `ferry_xdp` (`--acceleration`) beside them, on the same frames with XDP test runs: miss and
//! hit (translated and redirected to the FIB's next hop: a veth `d0` in the measuring namespace,
//! made a north-south device, with a resolved gateway towards the pod) and pass, minus an empty
//! XDP program (`r0 = XDP_PASS; exit`) timed the same way. XDP's figures include its next hop
//! (its next-hop cache, or the FIB when the cache has none) and the TTL/MAC rewrite, which TC's
//! miss/hit of this eTP Local flow (handed to the stack) do not. So both programs are also timed
//! on the same work, a flow to a remote backend (eTP Cluster: DNAT, SNAT to the node's address,
//! TTL and MACs from the FIB, redirected to the next hop): the "remote miss" and "remote hit"
//! rows of `ferry_tc_in` and `ferry_xdp` compare like with like.
//!
//! IPv6 (rows of family IPv6, named as their IPv4 twins): the same LoadBalancer flow on IPv6
//! frames and the IPv6 maps, built by the table tests' builders (`progtest::frames`, the
//! fixture, the IPv6 address plan `NET6`): `ferry_tc_in`'s new flows back to back (which also
//! use the IPv6 conntrack map before its miss is timed, as above), miss and hit,
//! `ferry_tc_out`'s reply, and `ferry_xdp`'s miss and hit (redirected to the next hop over
//! IPv6). Each is checked once, outside the timed runs, to translate its frame byte for byte.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use agent_common::{
    Backend4, Ct4Key, Ct6Key, RevNat4, Svc4Key, SvcValue, backend_flags, ct_dir, maps as m,
    net::{ip4_to_raw, port_to_raw},
    scope, svc_flags,
};
use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, MapData};
use serde::{Deserialize, Serialize};

use ferry::datapath::codec::CtKey;

use super::{Family, stats::percentile};
use crate::progtest::{
    self, IPPROTO_TCP, ProgTest, TCP_ACK, TCP_SYN,
    fixture::{Fixture, ct_key, key4, key6},
    frames,
    net::{NET6, sa},
    next_hop,
};

const TC_IN: &str = "ferry_tc_in";
const TC_OUT: &str = "ferry_tc_out";
const XDP: &str = "ferry_xdp";
/// The XDP action of a redirect (XDP_REDIRECT) and of "not mine" (XDP_PASS).
const XDP_REDIRECT: i32 = 4;
const XDP_PASS: i32 = 2;
const TC_POD: &str = "ferry_tc_pod";
const TC_POD_OUT: &str = "ferry_tc_pod_out";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathCost {
    pub path: String,
    pub program: String,
    /// The frames' and maps' address family (IPv4 in reports from before IPv6 rows).
    #[serde(default)]
    pub family: Family,
    /// Median and p99 of the kernel's per-run duration, minus the empty program's median.
    pub median_ns: f64,
    pub p99_ns: f64,
    /// The raw median, before the subtraction.
    pub raw_median_ns: f64,
    pub verdict: i32,
    /// The lowest and highest of the rounds' medians (baseline subtracted), when the section
    /// ran several rounds (`median_ns` is then the median of the rounds' medians).
    #[serde(default)]
    pub round_range_ns: Option<(f64, f64)>,
    /// Each round's median (baseline subtracted), in the order run.
    #[serde(default)]
    pub rounds_ns: Vec<f64>,
    /// Chunks of [`CHUNK`] runs, and how many of them ran while the VM was slowed (its empty
    /// program's median above [`SLOWED`] x its lowest): those are left out of the figures above.
    #[serde(default)]
    pub chunks: usize,
    #[serde(default)]
    pub slowed_chunks: usize,
    /// The figure over the slowed chunks alone (None: none was).
    #[serde(default)]
    pub slowed_ns: Option<f64>,
    /// The empty program's median in the chunks the figure is from (what it has subtracted).
    #[serde(default)]
    pub empty_ns: f64,
}

/// Round medians this far apart or more (at the widest gap between them, sorted) are two
/// modes (the slowed VM put rounds ~100 ns apart before the chunks left it out; one mode's
/// rounds lie within ~10 ns of each other).
pub const MODE_GAP_NS: f64 = 30.0;

/// A path's rounds split in two modes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Modes {
    /// The median of the lower mode's rounds, and how many there were.
    pub low_ns: f64,
    pub low: usize,
    pub high_ns: f64,
    pub high: usize,
}

/// The two modes of `rounds` (each round's median), split at the widest gap between the
/// sorted figures when it is at least [`MODE_GAP_NS`]; None when they form one.
pub fn modes(rounds: &[f64]) -> Option<Modes> {
    let mut v: Vec<f64> = rounds.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let (at, gap) = v
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1] - w[0]))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if gap < MODE_GAP_NS {
        return None;
    }
    let median = |s: &[f64]| s[s.len() / 2];
    Some(Modes {
        low_ns: median(&v[..at]),
        low: at,
        high_ns: median(&v[at..]),
        high: v.len() - at,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub samples: usize,
    /// Rounds, each on programs and maps loaded afresh (1 in reports from before rounds).
    #[serde(default = "one")]
    pub rounds: usize,
    pub baseline_ns: f64,
    pub paths: Vec<PathCost>,
    /// The pass path (which leaves the packet as it is, so `repeat` is valid for it) timed with
    /// a large `repeat`: the kernel's average, a check of the subtraction above.
    pub pass_repeat: u32,
    pub pass_repeat_ns: f64,
    /// Each program's size after the verifier: (name, eBPF instructions, JITed bytes).
    pub sizes: Vec<(String, u32, u32)>,
    /// The empty XDP program's median (what `ferry_xdp`'s paths have subtracted); NaN when
    /// the object has no XDP program.
    #[serde(default)]
    pub xdp_baseline_ns: f64,
}

impl Results {
    /// The first row of `program` over `family` whose path starts with `prefix`.
    pub fn find(&self, prefix: &str, program: &str, family: Family) -> Option<&PathCost> {
        self.paths
            .iter()
            .find(|c| c.family == family && c.program == program && c.path.starts_with(prefix))
    }

    /// Whether any row is over `family`.
    pub fn has(&self, family: Family) -> bool {
        self.paths.iter().any(|c| c.family == family)
    }
}

/// The eBPF object measured: this build's, or the file `FERRY_BENCH_EBPF` names (another
/// build's object timed by this method: a before/after of a datapath change in one run).
fn object() -> &'static [u8] {
    static OBJECT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    match std::env::var_os("FERRY_BENCH_EBPF") {
        Some(path) => OBJECT.get_or_init(|| {
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("FERRY_BENCH_EBPF {}: {e}", path.display()))
        }),
        None => ferry::datapath::loader::ebpf_object(),
    }
}

/// Whether this build's eBPF object has the TC programs.
pub fn available() -> bool {
    let obj = object();
    let has = |name: &str| obj.windows(name.len()).any(|w| w == name.as_bytes());
    has(TC_IN) && has(TC_OUT)
}

fn one() -> usize {
    1
}

/// `rounds` measurements of `samples` runs per path, each on programs and maps loaded afresh
/// (a check that no load's placement decides the figure: see [`modes`]).
pub fn run(samples: usize, rounds: usize) -> Result<Results> {
    if !available() {
        bail!("this build's eBPF object has no {TC_IN}/{TC_OUT}");
    }
    let mut all = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        progtest::isolated(move || {
            let _ = tx.send(measure(samples).map_err(|e| format!("{e:#}")));
        });
        all.push(
            rx.recv()
                .context("the measuring thread ended without a result")?
                .map_err(anyhow::Error::msg)?,
        );
    }
    Ok(combine(all))
}

/// The median over the rounds of each figure (the first round's paths and sizes).
fn combine(all: Vec<Results>) -> Results {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let over = |f: &dyn Fn(&Results) -> f64| median(all.iter().map(f).collect());
    let mut out = all[0].clone();
    out.rounds = all.len();
    if all.len() == 1 {
        return out;
    }
    out.baseline_ns = over(&|r| r.baseline_ns);
    out.xdp_baseline_ns = over(&|r| r.xdp_baseline_ns);
    out.pass_repeat_ns = over(&|r| r.pass_repeat_ns);
    for (i, p) in out.paths.iter_mut().enumerate() {
        // The rounds with a chunk at normal speed for this path (a round slowed throughout
        // has its slowed figure only: left out, unless every round was).
        let some_normal = all
            .iter()
            .filter_map(|r| r.paths.get(i))
            .any(|c| c.slowed_chunks < c.chunks);
        let path = |f: fn(&PathCost) -> f64| -> Vec<f64> {
            all.iter()
                .filter_map(|r| r.paths.get(i))
                .filter(|c| !some_normal || c.slowed_chunks < c.chunks)
                .map(f)
                .collect()
        };
        let every = all
            .iter()
            .filter_map(|r| r.paths.get(i))
            .map(|c| c.median_ns)
            .collect::<Vec<_>>();
        let lo = every.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = every.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        p.median_ns = median(path(|c| c.median_ns));
        p.p99_ns = median(path(|c| c.p99_ns));
        p.raw_median_ns = median(path(|c| c.raw_median_ns));
        p.round_range_ns = Some((lo, hi));
        p.rounds_ns = every;
        p.empty_ns = median(path(|c| c.empty_ns));
        p.chunks = all
            .iter()
            .filter_map(|r| r.paths.get(i))
            .map(|c| c.chunks)
            .sum();
        p.slowed_chunks = all
            .iter()
            .filter_map(|r| r.paths.get(i))
            .map(|c| c.slowed_chunks)
            .sum();
        let slowed: Vec<f64> = all
            .iter()
            .filter_map(|r| r.paths.get(i)?.slowed_ns)
            .collect();
        p.slowed_ns = (!slowed.is_empty()).then(|| median(slowed));
    }
    out
}

const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LB_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const REV: u16 = 7;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REV_CIP: u16 = 8;
/// The LoadBalancer port whose one backend is remote ([`REMOTE_POD`], eTP Cluster: SNAT).
const REMOTE_PORT: u16 = 81;
const REV_REMOTE: u16 = 9;
/// A pod of another node, reached through the gateway of [`xdp_next_hop`].
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 77);
/// TC_ACT_REDIRECT: what `ferry_tc_in` returns for a packet it sent to the next hop.
const TC_REDIRECT: i32 = 7;
/// The pod that calls the ClusterIP.
const POD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);

fn raw(ip: Ipv4Addr) -> u32 {
    ip4_to_raw(ip.octets())
}

/// A client's (`inbound`) or a backend's TCP segment `src` -> `dst` of either family, built by
/// the table tests' builders (seq 1000, ack 2000 with ACK; a pure ACK carries a request).
fn frame(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    flags: u8,
    inbound: bool,
) -> Vec<u8> {
    let packet = frames::tcp_packet(src.into(), dst.into(), flags, payload(flags));
    if inbound {
        frames::inbound(packet)
    } else {
        frames::outbound(packet)
    }
}

/// What a segment of [`frame`] carries: a request in a pure ACK, nothing else.
fn payload(flags: u8) -> &'static [u8] {
    if flags == TCP_ACK {
        b"GET / HTTP/1.1\r\n\r\n"
    } else {
        b""
    }
}

/// One run of `fd` on `input` (outside the timed runs): its verdict must be `want` and the
/// frame it leaves `out`, byte for byte (a check that the IPv6 rows time the translation).
fn check6(fd: i32, input: &[u8], want: i32, out: &[u8], what: &str) -> Result<()> {
    let r = progtest::test_run(fd, input, 0)?;
    if r.verdict() != want {
        bail!("{what}: verdict {}, want {want}", r.verdict());
    }
    if r.data != out {
        bail!(
            "{what}: not translated as expected:\n{}",
            frames::hex_diff(&r.data, out)
        );
    }
    Ok(())
}

/// Rows timed over both families (the IPv6 row of each has the IPv4 row's name).
const TC_MISS: &str = "miss (new flow: lookup, choice, conntrack insert, DNAT)";
const TC_HIT: &str = "hit (tracked flow: conntrack lookup, DNAT)";
const TC_REPLY: &str = "reply (conntrack lookup, reverse NAT)";
const BACK_TO_BACK: &str =
    "new flows back to back (a fresh 5-tuple per run, nothing undone: cold conntrack memory)";
const XDP_MISS: &str = "miss (new flow: lookup, choice, conntrack insert, DNAT, FIB, redirect)";
const XDP_HIT: &str = "hit (tracked flow: conntrack lookup, DNAT, FIB, redirect)";

/// The rows both programs are timed on (like for like): a flow to a remote backend.
const REMOTE_MISS: &str = "remote miss (new flow to a remote backend: lookup, choice, conntrack insert, DNAT+SNAT, \
     next hop, redirect)";
const REMOTE_HIT: &str = "remote hit (tracked flow to a remote backend: conntrack lookup, DNAT+SNAT, next hop, \
     redirect)";

/// Runs of one path, each followed by a run of the empty program on the same frame: pair
/// `i` of `path` and `empty` ran back to back.
struct Timed {
    path: Vec<f64>,
    empty: Vec<f64>,
}

/// Pairs a chunk, the unit of [`slowed`]: the VM's speed changes over seconds, not runs.
pub const CHUNK: usize = 500;

/// A chunk whose empty program's median is this much above the round's lowest chunk median
/// ran while the VM was slowed (its empty program 48 -> 75 ns, the paths 1.6-1.7 x).
pub const SLOWED: f64 = 1.25;

/// `n` runs of `fd` on `frame`, each followed by `after` (undoing what the run made) and a
/// run of the empty program `empty_fd`; `before` runs before each. The last verdict.
fn timed(
    n: usize,
    fd: i32,
    empty_fd: i32,
    frame: &[u8],
    before: impl FnMut() -> Result<()>,
    after: impl FnMut() -> Result<()>,
) -> Result<(Timed, i32)> {
    timed_over(std::iter::repeat_n(frame, n), fd, empty_fd, before, after)
}

/// [`timed`] with a frame of its own per run, nothing undone between runs: `frames[i]` is a
/// new flow whatever ran before.
fn timed_frames(fd: i32, empty_fd: i32, frames: &[Vec<u8>]) -> Result<(Timed, i32)> {
    let none = || Ok(());
    timed_over(frames.iter().map(Vec::as_slice), fd, empty_fd, none, none)
}

/// The runs of [`timed`] over `frames`, one run (and one of the empty program) per frame.
fn timed_over<'a>(
    frames: impl ExactSizeIterator<Item = &'a [u8]>,
    fd: i32,
    empty_fd: i32,
    mut before: impl FnMut() -> Result<()>,
    mut after: impl FnMut() -> Result<()>,
) -> Result<(Timed, i32)> {
    let n = frames.len();
    let mut t = Timed {
        path: Vec::with_capacity(n),
        empty: Vec::with_capacity(n),
    };
    let mut verdict = 0;
    for frame in frames {
        before()?;
        let (v, d) = run_once(fd, frame)?;
        verdict = v;
        after()?;
        t.path.push(d);
        t.empty.push(run_once(empty_fd, frame)?.1);
    }
    Ok((t, verdict))
}

/// The client of the `i`th of [`new_flow_frames`]' flows: 198.51.101.1 and up (IPv4) or
/// 2001:db8:101::1 and up (IPv6), ports from 1024; distinct for every `i`.
fn new_flow_client(i: usize, family: Family) -> SocketAddr {
    let port = 1024 + (i % 60_000) as u16;
    let ip: IpAddr = match family {
        Family::V4 => Ipv4Addr::new(198, 51, (101 + i / 60_000) as u8, (i % 250) as u8 + 1).into(),
        Family::V6 => Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x101,
            0,
            0,
            0,
            (i / 60_000) as u16,
            (i % 250) as u16 + 1,
        )
        .into(),
    };
    sa(ip, port)
}

/// `n` SYNs of distinct flows to `vip` (its family's [`new_flow_client`]s).
fn new_flow_frames(n: usize, vip: SocketAddr) -> Vec<Vec<u8>> {
    let family = Family::of(vip.ip());
    (0..n)
        .map(|i| frame(new_flow_client(i, family), vip, TCP_SYN, true))
        .collect()
}

/// The lowest chunk median of the empty program over `all`: its time at the VM's normal speed.
fn normal_empty(all: &[&Timed]) -> f64 {
    all.iter()
        .flat_map(|t| t.empty.chunks(CHUNK))
        .filter_map(|c| percentile(c, 50.0))
        .fold(f64::INFINITY, f64::min)
}

/// A path's cost from its runs: the median over the chunks at normal speed (the empty
/// program's chunk median within [`SLOWED`] of `normal`) of the path's runs minus the median
/// of the empty program's runs in the same chunks; the slowed chunks' figure beside it. A path
/// with no chunk at normal speed is figured over all its chunks (`slowed_chunks` == `chunks`
/// says so).
fn cost_of(
    path: &str,
    program: &str,
    family: Family,
    t: &Timed,
    normal: f64,
    verdict: i32,
) -> PathCost {
    let mut fast = (Vec::new(), Vec::new());
    let mut slow = (Vec::new(), Vec::new());
    let (mut chunks, mut slowed_chunks) = (0, 0);
    for (p, e) in t.path.chunks(CHUNK).zip(t.empty.chunks(CHUNK)) {
        chunks += 1;
        let into = if percentile(e, 50.0).unwrap_or(f64::NAN) <= normal * SLOWED {
            &mut fast
        } else {
            slowed_chunks += 1;
            &mut slow
        };
        into.0.extend_from_slice(p);
        into.1.extend_from_slice(e);
    }
    let slowed_ns = (!slow.0.is_empty()).then(|| {
        (percentile(&slow.0, 50.0).unwrap_or(f64::NAN) - percentile(&slow.1, 50.0).unwrap_or(0.0))
            .max(0.0)
    });
    let (p, e) = if fast.0.is_empty() { &slow } else { &fast };
    let base = percentile(e, 50.0).unwrap_or(0.0);
    let raw_median = percentile(p, 50.0).unwrap_or(f64::NAN);
    PathCost {
        path: path.to_owned(),
        program: program.to_owned(),
        family,
        median_ns: (raw_median - base).max(0.0),
        p99_ns: (percentile(p, 99.0).unwrap_or(f64::NAN) - base).max(0.0),
        raw_median_ns: raw_median,
        verdict,
        round_range_ns: None,
        rounds_ns: Vec::new(),
        chunks,
        slowed_chunks,
        slowed_ns,
        empty_ns: base,
    }
}

fn measure(samples: usize) -> Result<Results> {
    let has_xdp = {
        let obj = object();
        obj.windows(XDP.len()).any(|w| w == XDP.as_bytes())
    };
    let programs: &[&str] = if has_xdp {
        &[TC_IN, TC_OUT, TC_POD, TC_POD_OUT, XDP]
    } else {
        &[TC_IN, TC_OUT, TC_POD, TC_POD_OUT]
    };
    let t = ProgTest::load(object(), programs)?;
    // IPv6 rows when the object has the IPv6 maps (an older one, FERRY_BENCH_EBPF, may not).
    let has_v6 = [m::CT_V6, m::SERVICES_V6, m::BACKENDS_V6, m::NODE_ADDR_V6]
        .iter()
        .all(|name| t.ebpf.map(name).is_some());
    let mut t = if has_v6 { program_maps6(t) } else { t };
    program_maps(&mut t)?;
    // The route to the pods (the remote rows' next hop, TC's and XDP's).
    xdp_next_hop(&mut t, has_v6)?;
    let empty = empty_program(PROG_TYPE_SCHED_CLS, -1)?;
    let empty_fd = empty.as_raw_fd();
    let vip = SocketAddrV4::new(LB_VIP, 80);
    let pod = SocketAddrV4::new(POD, 8080);
    let client = SocketAddrV4::new(CLIENT, 40000);
    let syn = frame(client, vip, TCP_SYN, true);
    let ack = frame(client, vip, TCP_ACK, true);
    let reply = frame(pod, client, TCP_ACK, false);
    let other = frame(
        client,
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 80),
        TCP_ACK,
        true,
    );
    let remote_vip = SocketAddrV4::new(LB_VIP, REMOTE_PORT);
    let remote_syn = frame(client, remote_vip, TCP_SYN, true);
    let remote_ack = frame(client, remote_vip, TCP_ACK, true);
    let remote_key = forward_key(client, remote_vip);
    // The same LoadBalancer flow over IPv6 (the table tests' IPv6 address plan).
    let vip6 = sa(NET6.lb_vip, 80);
    let pod6 = sa(NET6.local_pod, 8080);
    let client6 = sa(NET6.client, 40000);
    let syn6 = frame(client6, vip6, TCP_SYN, true);
    let ack6 = frame(client6, vip6, TCP_ACK, true);
    let reply6 = frame(pod6, client6, TCP_ACK, false);
    let syn6_key = forward_key6(client6, vip6);

    let fd = |name: &str| -> Result<i32> {
        let p = t.ebpf.program(name).context("program")?;
        Ok(p.fd()?.as_fd().as_raw_fd())
    };
    let (fd_in, fd_out) = (fd(TC_IN)?, fd(TC_OUT)?);
    let fd_xdp = if has_xdp { fd(XDP)? } else { -1 };
    let (fd_pod, fd_pod_out) = (fd(TC_POD)?, fd(TC_POD_OUT)?);
    let mut sizes = Vec::new();
    for &name in programs {
        let p = t.ebpf.program(name).context("program")?;
        let info = p.info()?;
        sizes.push((
            name.to_owned(),
            info.size_translated().unwrap_or(0) / 8,
            info.size_jitted(),
        ));
    }

    // (path, program, runs, verdict), figured once all ran (the normal speed is the round's).
    let mut runs: Vec<(&str, &str, Timed, i32)> = Vec::new();
    let none = || Ok(());

    // miss: the flow's entries removed by key after every run (forget_flow), so that each run
    // is a new flow; the run's own caches as a new flow among other traffic finds them. First on
    // the map as loaded (a short row), then on the map once used (module doc).
    clear_ct(&mut t)?;
    let syn_key = forward_key(client, vip);
    let t = std::cell::RefCell::new(t);
    let forget = |k: &Ct4Key| forget_flow(&mut t.borrow_mut(), k);
    let (loaded, verdict) = timed(samples.div_ceil(5), fd_in, empty_fd, &syn, none, || {
        forget(&syn_key)
    })?;
    if verdict != 0 {
        bail!("the SYN to the LoadBalancer IP was not translated (verdict {verdict})");
    }
    runs.push((
        "miss on the map as loaded (its LRU lists never used)",
        TC_IN,
        loaded,
        verdict,
    ));
    let burst = new_flow_frames(samples, vip.into());
    let (back_to_back, verdict) = timed_frames(fd_in, empty_fd, &burst)?;
    if verdict != 0 {
        bail!("a SYN of a new flow was not translated (verdict {verdict})");
    }
    runs.push((BACK_TO_BACK, TC_IN, back_to_back, verdict));
    clear_ct(&mut t.borrow_mut())?;
    let (miss, verdict) = timed(samples, fd_in, empty_fd, &syn, none, || forget(&syn_key))?;
    runs.push((TC_MISS, TC_IN, miss, verdict));
    // The bench's first method, for comparison: the map emptied by walking it before every
    // run (fewer samples: each walk reads 4 MiB).
    let (walked, verdict) = timed(
        samples.div_ceil(10),
        fd_in,
        empty_fd,
        &syn,
        || clear_ct(&mut t.borrow_mut()),
        none,
    )?;
    runs.push((
        "miss after a walk of the whole conntrack map (caches flushed; the first method)",
        TC_IN,
        walked,
        verdict,
    ));

    // The flow stays tracked from here on.
    clear_ct(&mut t.borrow_mut())?;
    run_once(fd_in, &syn)?;
    let (hit, verdict) = timed(samples, fd_in, empty_fd, &ack, none, none)?;
    runs.push((TC_HIT, TC_IN, hit, verdict));
    let (rep, verdict) = timed(samples, fd_out, empty_fd, &reply, none, none)?;
    runs.push((TC_REPLY, TC_OUT, rep, verdict));
    let (pass, verdict) = timed(samples, fd_in, empty_fd, &other, none, none)?;
    runs.push((
        "pass (no frontend: parse and one lookup)",
        TC_IN,
        pass,
        verdict,
    ));
    // The same work as XDP's forwarded paths: a flow to a remote backend.
    let (ds, v) = timed(samples, fd_in, empty_fd, &remote_syn, none, || {
        forget(&remote_key)
    })?;
    if v != TC_REDIRECT {
        bail!("the SYN to the remote backend was not sent to the next hop (verdict {v})");
    }
    runs.push((REMOTE_MISS, TC_IN, ds, v));
    run_once(fd_in, &remote_syn)?;
    let (ds, v) = timed(samples, fd_in, empty_fd, &remote_ack, none, none)?;
    if v != TC_REDIRECT {
        bail!("the remote flow's segment was not sent to the next hop (verdict {v})");
    }
    runs.push((REMOTE_HIT, TC_IN, ds, v));
    // The per-packet ClusterIP path.
    let pod_client = SocketAddrV4::new(POD_CLIENT, 40000);
    let cip = SocketAddrV4::new(CLUSTER_IP, 80);
    let pod_syn = frame(pod_client, cip, TCP_SYN, true);
    let pod_ack = frame(pod_client, cip, TCP_ACK, true);
    let pod_reply = frame(pod, pod_client, TCP_ACK, false);
    let pod_other = frame(
        pod_client,
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 80),
        TCP_ACK,
        true,
    );
    let to_pod_other = frame(
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 80),
        pod_client,
        TCP_ACK,
        false,
    );
    let (ds, v) = timed(samples, fd_pod, empty_fd, &pod_other, none, none)?;
    runs.push(("pod pass (a pod's packet to no ClusterIP)", TC_POD, ds, v));
    let pod_key = forward_key(pod_client, cip);
    let (ds, v) = timed(samples, fd_pod, empty_fd, &pod_syn, none, || {
        forget(&pod_key)
    })?;
    if v != 0 {
        bail!("the pod's SYN to the ClusterIP was not translated (verdict {v})");
    }
    runs.push(("pod miss (a pod's new flow to a ClusterIP)", TC_POD, ds, v));
    // The flow stays tracked from here on.
    run_once(fd_pod, &pod_syn)?;
    let (ds, v) = timed(samples, fd_pod, empty_fd, &pod_ack, none, none)?;
    runs.push(("pod hit (a pod's tracked flow)", TC_POD, ds, v));
    let (ds, v) = timed(samples, fd_pod_out, empty_fd, &pod_reply, none, none)?;
    runs.push(("pod reply (reverse NAT to the pod)", TC_POD_OUT, ds, v));
    let (ds, v) = timed(samples, fd_pod_out, empty_fd, &to_pod_other, none, none)?;
    runs.push((
        "pod out pass (a packet to a pod of no pod flow)",
        TC_POD_OUT,
        ds,
        v,
    ));

    // IPv6: the LoadBalancer flow's miss, hit and reply on IPv6 frames and the IPv6 maps. The
    // IPv6 conntrack map is used first, as the IPv4 one was (new flows back to back, then
    // emptied), so that the miss is timed on a used map.
    let mut runs6: Vec<(&str, &str, Timed, i32)> = Vec::new();
    if has_v6 {
        let burst6 = new_flow_frames(samples, vip6);
        let (ds, v) = timed_frames(fd_in, empty_fd, &burst6)?;
        if v != 0 {
            bail!("an IPv6 SYN of a new flow was not translated (verdict {v})");
        }
        runs6.push((BACK_TO_BACK, TC_IN, ds, v));
        clear::<Ct6Key>(&mut t.borrow_mut())?;
        let (ds, v) = timed(samples, fd_in, empty_fd, &syn6, none, || {
            forget_flow(&mut t.borrow_mut(), &syn6_key)
        })?;
        if v != 0 {
            bail!("the IPv6 SYN to the LoadBalancer IP was not translated (verdict {v})");
        }
        runs6.push((TC_MISS, TC_IN, ds, v));
        // The flow stays tracked from here on.
        clear::<Ct6Key>(&mut t.borrow_mut())?;
        let dnat = |flags| frame(client6, pod6, flags, true);
        check6(fd_in, &syn6, 0, &dnat(TCP_SYN), "the IPv6 SYN")?;
        check6(
            fd_in,
            &ack6,
            0,
            &dnat(TCP_ACK),
            "the IPv6 flow's next segment",
        )?;
        let (ds, v) = timed(samples, fd_in, empty_fd, &ack6, none, none)?;
        runs6.push((TC_HIT, TC_IN, ds, v));
        let rev = frame(vip6, client6, TCP_ACK, false);
        check6(fd_out, &reply6, 0, &rev, "the IPv6 backend's reply")?;
        let (ds, v) = timed(samples, fd_out, empty_fd, &reply6, none, none)?;
        runs6.push((TC_REPLY, TC_OUT, ds, v));
    }

    let normal = normal_empty(&runs.iter().chain(&runs6).map(|r| &r.2).collect::<Vec<_>>());
    let figure = |family: Family| {
        move |(path, program, t, v): &(&str, &str, Timed, i32)| {
            cost_of(path, program, family, t, normal, *v)
        }
    };
    let mut paths: Vec<PathCost> = runs
        .iter()
        .map(figure(Family::V4))
        .chain(runs6.iter().map(figure(Family::V6)))
        .collect();
    let base = {
        let mut e: Vec<f64> = paths.iter().map(|p| p.empty_ns).collect();
        e.sort_by(f64::total_cmp);
        e[e.len() / 2]
    };

    let mut xdp_base = f64::NAN;
    if has_xdp {
        let empty = empty_program(PROG_TYPE_XDP, XDP_PASS)?;
        let empty_fd = empty.as_raw_fd();
        clear_ct(&mut t.borrow_mut())?;
        let run_path = |frame: &[u8], forget: Option<&Ct4Key>, want: i32| -> Result<Timed> {
            let (ds, v) = timed(samples, fd_xdp, empty_fd, frame, none, || match forget {
                Some(k) => forget_flow(&mut t.borrow_mut(), k),
                None => Ok(()),
            })?;
            if v != want {
                bail!("{XDP}: verdict {v}, want {want}");
            }
            Ok(ds)
        };
        let miss = run_path(&syn, Some(&syn_key), XDP_REDIRECT)?;
        let (back_to_back, v) = timed_frames(fd_xdp, empty_fd, &burst)?;
        if v != XDP_REDIRECT {
            bail!("{XDP}: a SYN of a new flow got verdict {v}, want {XDP_REDIRECT}");
        }
        clear_ct(&mut t.borrow_mut())?;
        // The flow stays tracked from here on.
        run_once(fd_xdp, &syn)?;
        let hit = run_path(&ack, None, XDP_REDIRECT)?;
        let pass = run_path(&other, None, XDP_PASS)?;
        let remote_miss = run_path(&remote_syn, Some(&remote_key), XDP_REDIRECT)?;
        run_once(fd_xdp, &remote_syn)?;
        let remote_hit = run_path(&remote_ack, None, XDP_REDIRECT)?;
        // IPv6: the LoadBalancer flow's miss and hit (its conntrack map used by TC's rows).
        let mut xdp6 = Vec::new();
        if has_v6 {
            clear::<Ct6Key>(&mut t.borrow_mut())?;
            let (ds, v) = timed(samples, fd_xdp, empty_fd, &syn6, none, || {
                forget_flow(&mut t.borrow_mut(), &syn6_key)
            })?;
            if v != XDP_REDIRECT {
                bail!("{XDP}: the IPv6 SYN got verdict {v}, want {XDP_REDIRECT}");
            }
            xdp6.push((XDP_MISS, ds, v));
            clear::<Ct6Key>(&mut t.borrow_mut())?;
            // The flow stays tracked from here on.
            let routed =
                |flags| frames::routed(frames::tcp_packet(client6, pod6, flags, payload(flags)));
            check6(
                fd_xdp,
                &syn6,
                XDP_REDIRECT,
                &routed(TCP_SYN),
                "XDP's IPv6 SYN",
            )?;
            check6(
                fd_xdp,
                &ack6,
                XDP_REDIRECT,
                &routed(TCP_ACK),
                "XDP's IPv6 next segment",
            )?;
            let (ds, v) = timed(samples, fd_xdp, empty_fd, &ack6, none, none)?;
            xdp6.push((XDP_HIT, ds, v));
        }
        let xdp = [
            (XDP_MISS, miss, XDP_REDIRECT),
            (XDP_HIT, hit, XDP_REDIRECT),
            ("pass (no frontend: parse and lookups)", pass, XDP_PASS),
            (BACK_TO_BACK, back_to_back, XDP_REDIRECT),
            (REMOTE_MISS, remote_miss, XDP_REDIRECT),
            (REMOTE_HIT, remote_hit, XDP_REDIRECT),
        ];
        let normal = normal_empty(&xdp.iter().chain(&xdp6).map(|r| &r.1).collect::<Vec<_>>());
        let figure = |family: Family| {
            move |(path, t, v): &(&str, Timed, i32)| cost_of(path, XDP, family, t, normal, *v)
        };
        let costs: Vec<PathCost> = xdp
            .iter()
            .map(figure(Family::V4))
            .chain(xdp6.iter().map(figure(Family::V6)))
            .collect();
        let mut e: Vec<f64> = costs.iter().map(|p| p.empty_ns).collect();
        e.sort_by(f64::total_cmp);
        xdp_base = e[e.len() / 2];
        paths.extend(costs);
    }
    let pass_repeat = 1_000_000;
    let (_, pass_repeat_ns) = run_repeat(fd_in, &other, pass_repeat)?;

    Ok(Results {
        samples,
        rounds: 1,
        baseline_ns: base,
        paths,
        pass_repeat,
        pass_repeat_ns,
        sizes,
        xdp_baseline_ns: xdp_base,
    })
}

/// The measuring namespace's route to the pods (XDP's forwarded rows, and both programs'
/// remote rows): a veth `d0` (its peer up; the table tests' MAC, [`frames::routed`]'s source)
/// with a resolved gateway 100.64.0.2 towards 10.244.0.0/24, forwarding on, and `d0` made one
/// of the node's north-south devices (an address in the node address map), which XDP sends
/// to. With `v6`, the same over IPv6: gateway fd00:64::2 towards [`NET6`]'s local pod's /64.
fn xdp_next_hop(t: &mut ProgTest, v6: bool) -> Result<()> {
    next_hop::device(None)?;
    next_hop::routes(progtest::net::Family::V4, &["10.244.0.0/24"])?;
    // SAFETY: a NUL-terminated name.
    let d0 = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
    if d0 == 0 {
        bail!("no device d0");
    }
    hash::<u32, u32>(t, m::NODE_ADDR_V4)?.insert(&d0, &raw(NODE), 0)?;
    if v6 {
        // NET6.local_pod's /64.
        next_hop::routes(progtest::net::Family::V6, &["fd00:244::/64"])?;
        let node = progtest::net::raw6(NET6.node);
        hash::<u32, agent_common::Ip6>(t, m::NODE_ADDR_V6)?.insert(&d0, &node, 0)?;
    }
    Ok(())
}

/// The IPv6 twin of [`program_maps`]' LoadBalancer frontend, built by the table tests'
/// fixture: [`NET6`]'s LoadBalancer IP port 80 (eTP Local) with one local backend, port 8080;
/// this node's IPv6 address on the test device.
fn program_maps6(t: ProgTest) -> ProgTest {
    let mut f = Fixture { t };
    f.node_addr(1, NET6.node);
    f.backend(1, sa(NET6.local_pod, 8080), IPPROTO_TCP, true);
    f.frontend(
        sa(NET6.lb_vip, 80),
        IPPROTO_TCP,
        scope::EXTERNAL,
        svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
        REV,
        &[1],
    );
    f.t
}

fn hash<'a, K: aya::Pod, V: aya::Pod>(
    t: &'a mut ProgTest,
    name: &str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    let map = t
        .ebpf
        .map_mut(name)
        .with_context(|| format!("no map {name}"))?;
    Ok(HashMap::try_from(map)?)
}

/// A LoadBalancer frontend 192.0.2.10:80 with one local backend 10.244.0.5:8080, as the agent
/// writes it; this node's address on the test device (the namespace's loopback, ifindex 1).
fn program_maps(t: &mut ProgTest) -> Result<()> {
    hash::<u32, u32>(t, m::NODE_ADDR_V4)?.insert(&1, &raw(NODE), 0)?;
    let backend = Backend4 {
        addr: raw(POD),
        port: port_to_raw(8080),
        proto: IPPROTO_TCP,
        state: 0,
        flags: backend_flags::LOCAL,
        _pad: [0; 3],
    };
    let remote = Backend4 {
        addr: raw(REMOTE_POD),
        flags: 0,
        ..backend
    };
    hash::<u32, Backend4>(t, m::BACKENDS_V4)?.insert(&1, &backend, 0)?;
    hash::<u32, Backend4>(t, m::BACKENDS_V4)?.insert(&2, &remote, 0)?;
    // The backend array the agent writes with it (the hit path's check; an object of
    // before it has none: FERRY_BENCH_EBPF).
    if let Some(map) = t.ebpf.map_mut(m::BACKEND_LIVE_V4) {
        let mut live = aya::maps::Array::<&mut MapData, Backend4>::try_from(map)?;
        live.set(1, &backend, 0)?;
        live.set(2, &remote, 0)?;
    }
    let lb_key = |port: u16, slot: u16| Svc4Key {
        addr: raw(LB_VIP),
        port: port_to_raw(port),
        slot,
        proto: IPPROTO_TCP,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    let key = |slot: u16| lb_key(80, slot);
    let mut svc = hash::<Svc4Key, SvcValue>(t, m::SERVICES_V4)?;
    svc.insert(
        &key(0),
        &SvcValue {
            backend_id: 0,
            count: 1,
            rev_nat_id: REV,
            flags: svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            _pad: 0,
            affinity_timeout: 10_800,
        },
        0,
    )?;
    svc.insert(
        &key(1),
        &SvcValue {
            backend_id: 1,
            ..SvcValue::default()
        },
        0,
    )?;
    // 192.0.2.10:81, eTP Cluster, with the remote backend (SNAT to the node's address).
    svc.insert(
        &lb_key(REMOTE_PORT, 0),
        &SvcValue {
            backend_id: 0,
            count: 1,
            rev_nat_id: REV_REMOTE,
            flags: svc_flags::LOAD_BALANCER,
            _pad: 0,
            affinity_timeout: 0,
        },
        0,
    )?;
    svc.insert(
        &lb_key(REMOTE_PORT, 1),
        &SvcValue {
            backend_id: 2,
            ..SvcValue::default()
        },
        0,
    )?;
    // A ClusterIP 10.96.0.10:80 with the same backend, and its marker (port 0, protocol 0).
    let cip = |port: u16, proto: u8, slot: u16| Svc4Key {
        addr: raw(CLUSTER_IP),
        port: port_to_raw(port),
        slot,
        proto,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    let head = |count: u16, rev_nat_id: u16| SvcValue {
        backend_id: 0,
        count,
        rev_nat_id,
        flags: svc_flags::CLUSTER_IP,
        _pad: 0,
        affinity_timeout: 0,
    };
    svc.insert(&cip(80, IPPROTO_TCP, 0), &head(1, REV_CIP), 0)?;
    svc.insert(
        &cip(80, IPPROTO_TCP, 1),
        &SvcValue {
            backend_id: 1,
            ..SvcValue::default()
        },
        0,
    )?;
    svc.insert(&cip(0, 0, 0), &head(0, 0), 0)?;
    hash::<u16, RevNat4>(t, m::REV_NAT_V4)?.insert(
        &REV,
        &RevNat4 {
            addr: raw(LB_VIP),
            port: port_to_raw(80),
            _pad: 0,
        },
        0,
    )?;
    hash::<u16, RevNat4>(t, m::REV_NAT_V4)?.insert(
        &REV_REMOTE,
        &RevNat4 {
            addr: raw(LB_VIP),
            port: port_to_raw(REMOTE_PORT),
            _pad: 0,
        },
        0,
    )?;
    Ok(())
}

/// Empties the conntrack map by walking it, as the bench first did before every miss. The walk
/// reads every bucket of the 262,144-entry map (4 MiB), which evicts the program, the stack and
/// the service maps from the caches: a miss timed after it is mostly that eviction. Used once,
/// before the paths, and for the labelled comparison row.
fn clear_ct(t: &mut ProgTest) -> Result<()> {
    clear::<Ct4Key>(t)
}

/// [`clear_ct`] of the conntrack map of `K`'s family.
fn clear<K: CtKey>(t: &mut ProgTest) -> Result<()> {
    let mut ct = hash::<K, K::Value>(t, K::MAP)?;
    let keys: Vec<K> = ct.keys().collect::<Result<_, _>>()?;
    for k in keys {
        ct.remove(&k)?;
    }
    Ok(())
}

/// A client's TCP flow built by [`frame`] (`src` -> `dst`), as its FORWARD entry's key.
fn forward_flow(src: SocketAddr, dst: SocketAddr) -> progtest::fixture::Ct {
    ct_key(src, dst, IPPROTO_TCP, ct_dir::FORWARD)
}

/// The FORWARD conntrack key of a client's TCP frame built by [`frame`] (`src` -> `dst`).
fn forward_key(src: SocketAddrV4, dst: SocketAddrV4) -> Ct4Key {
    key4(&forward_flow(src.into(), dst.into()))
}

/// [`forward_key`] over IPv6.
fn forward_key6(src: SocketAddr, dst: SocketAddr) -> Ct6Key {
    key6(&forward_flow(src, dst))
}

/// Forgets the flow a miss just made, by key: its FORWARD entry `fwd` (which must be there:
/// else the run was no new flow) and the REPLY entry it names, so that the next run of the
/// same frame is a miss again. O(1), unlike [`clear_ct`]: the next run meets the caches a
/// new flow among other traffic meets, not ones flushed by a walk of the whole map.
fn forget_flow<K: CtKey>(t: &mut ProgTest, fwd: &K) -> Result<()> {
    let mut ct = hash::<K, K::Value>(t, K::MAP)?;
    let v = ct
        .get(fwd, 0)
        .context("the miss made no FORWARD conntrack entry (it was no new flow)")?;
    ct.remove(&fwd.reply_key(&v))
        .context("the miss made no REPLY conntrack entry")?;
    ct.remove(fwd)?;
    Ok(())
}

/// One BPF_PROG_TEST_RUN (`repeat` 1): the verdict and the kernel's duration in ns.
fn run_once(prog_fd: i32, frame: &[u8]) -> Result<(i32, f64)> {
    run_repeat(prog_fd, frame, 1)
}

/// BPF_PROG_TEST_RUN with `repeat` runs on one skb: the last verdict and the kernel's average
/// duration per run, in ns.
fn run_repeat(prog_fd: i32, frame: &[u8], repeat: u32) -> Result<(i32, f64)> {
    let r = crate::progtest::test_run_repeat(prog_fd, frame, 0, repeat)?;
    Ok((r.verdict(), f64::from(r.duration_ns)))
}

const PROG_TYPE_SCHED_CLS: u32 = 3;
const PROG_TYPE_XDP: u32 = 6;

/// An empty program of `prog_type`: `r0 = ret; exit` (a classifier's -1 is TC_ACT_UNSPEC, an
/// XDP program's 2 XDP_PASS).
fn empty_program(prog_type: u32, ret: i32) -> Result<OwnedFd> {
    let [a, b, c, d] = ret.to_le_bytes();
    // mov64 r0, imm (opcode 0xb7, dst r0); exit (0x95).
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, a, b, c, d]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    crate::progtest::load_raw(prog_type, 0, "bench_empty", &insns)
        .context("loading the empty program")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(hit: f64, chunks: usize, slowed_chunks: usize) -> Results {
        Results {
            samples: 1,
            rounds: 1,
            baseline_ns: 48.0,
            paths: vec![PathCost {
                path: "hit".into(),
                program: TC_IN.into(),
                family: Family::V4,
                median_ns: hit,
                p99_ns: hit,
                raw_median_ns: hit + 48.0,
                verdict: 0,
                round_range_ns: None,
                rounds_ns: Vec::new(),
                chunks,
                slowed_chunks,
                slowed_ns: (slowed_chunks > 0).then_some(130.0),
                empty_ns: 48.0,
            }],
            pass_repeat: 1,
            pass_repeat_ns: 0.0,
            sizes: Vec::new(),
            xdp_baseline_ns: f64::NAN,
        }
    }

    #[test]
    fn a_round_slowed_throughout_is_left_out_of_the_figure_but_not_the_range() {
        let all = vec![
            round(63.0, 100, 3),
            round(132.0, 100, 100),
            round(62.0, 100, 0),
            round(68.0, 100, 10),
        ];
        let c = combine(all);
        let p = &c.paths[0];
        assert_eq!(p.median_ns, 63.0);
        assert_eq!(p.round_range_ns, Some((62.0, 132.0)));
        assert_eq!(p.rounds_ns, vec![63.0, 132.0, 62.0, 68.0]);
        assert_eq!((p.chunks, p.slowed_chunks), (400, 113));
        // Every round slowed: the slowed figure is all there is.
        let c = combine(vec![
            round(130.0, 10, 10),
            round(140.0, 10, 10),
            round(120.0, 10, 10),
        ]);
        assert_eq!(c.paths[0].median_ns, 130.0);
    }

    #[test]
    fn the_ipv4_frames_are_the_bytes_the_bench_built_before_ipv6() {
        use crate::progtest::{ETH_P_IP, IpOpts, ethernet, ipv4, tcp};
        let (peer, node) = ([0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]);
        let client = SocketAddrV4::new(CLIENT, 40000);
        let vip = SocketAddrV4::new(LB_VIP, 80);
        let get = b"GET / HTTP/1.1\r\n\r\n";
        let syn = ipv4(
            IpOpts::default(),
            CLIENT,
            LB_VIP,
            IPPROTO_TCP,
            &tcp(client, vip, 1000, 0, TCP_SYN, b""),
        );
        assert_eq!(
            frame(client, vip, TCP_SYN, true),
            ethernet(node, peer, ETH_P_IP, &syn)
        );
        let reply = ipv4(
            IpOpts::default(),
            LB_VIP,
            CLIENT,
            IPPROTO_TCP,
            &tcp(vip, client, 1000, 2000, TCP_ACK, get),
        );
        assert_eq!(
            frame(vip, client, TCP_ACK, false),
            ethernet(peer, node, ETH_P_IP, &reply)
        );
        // Its key: what the bench built by hand.
        assert_eq!(
            forward_key(client, vip),
            Ct4Key {
                saddr: raw(CLIENT),
                daddr: raw(LB_VIP),
                sport: port_to_raw(40000),
                dport: port_to_raw(80),
                proto: IPPROTO_TCP,
                dir: ct_dir::FORWARD,
                _pad: [0; 2],
            }
        );
    }

    #[test]
    fn new_flow_clients_are_distinct_and_of_the_vips_family() {
        for family in Family::ALL {
            let mut seen = std::collections::HashSet::new();
            for i in 0..130_000 {
                let c = new_flow_client(i, family);
                assert_eq!(Family::of(c.ip()), family);
                assert!(seen.insert(c), "{c} twice");
            }
        }
        // IPv4's first clients, as before the IPv6 rows.
        assert_eq!(
            new_flow_client(0, Family::V4),
            "198.51.101.1:1024".parse().unwrap()
        );
        assert_eq!(
            new_flow_client(60_001, Family::V4),
            "198.51.102.2:1025".parse().unwrap()
        );
        assert_eq!(
            new_flow_client(1, Family::V6),
            "[2001:db8:101::2]:1025".parse().unwrap()
        );
        let frames = new_flow_frames(3, sa(NET6.lb_vip, 80));
        assert_eq!(
            frames[2],
            frame(
                new_flow_client(2, Family::V6),
                sa(NET6.lb_vip, 80),
                TCP_SYN,
                true
            )
        );
    }

    #[test]
    fn a_report_from_before_ipv6_reads_its_rows_as_ipv4() {
        let old = r#"{"path": "hit (tracked flow: conntrack lookup, DNAT)", "program": "ferry_tc_in",
            "median_ns": 52.0, "p99_ns": 60.0, "raw_median_ns": 100.0, "verdict": 0}"#;
        let p: PathCost = serde_json::from_str(old).unwrap();
        assert_eq!(p.family, Family::V4);
        let mut v6 = p.clone();
        v6.family = Family::V6;
        let json = serde_json::to_string(&v6).unwrap();
        assert_eq!(
            serde_json::from_str::<PathCost>(&json).unwrap().family,
            Family::V6
        );
    }

    #[test]
    fn rows_are_found_by_family() {
        let mut r = round(52.0, 10, 0);
        assert!(r.has(Family::V4) && !r.has(Family::V6));
        let mut v6 = r.paths[0].clone();
        v6.family = Family::V6;
        v6.median_ns = 58.0;
        r.paths.push(v6);
        assert!(r.has(Family::V6));
        assert_eq!(r.find("hit", TC_IN, Family::V4).unwrap().median_ns, 52.0);
        assert_eq!(r.find("hit", TC_IN, Family::V6).unwrap().median_ns, 58.0);
        assert!(r.find("hit", TC_OUT, Family::V6).is_none());
        assert!(r.find("miss", TC_IN, Family::V4).is_none());
    }

    #[test]
    fn modes_split_at_the_widest_gap_of_at_least_the_threshold() {
        assert_eq!(
            modes(&[74.0, 150.0, 72.0, 75.0, 73.0]),
            Some(Modes {
                low_ns: 74.0,
                low: 4,
                high_ns: 150.0,
                high: 1,
            })
        );
        assert_eq!(
            modes(&[168.0, 65.0, 170.0, 179.0, 160.0]),
            Some(Modes {
                low_ns: 65.0,
                low: 1,
                high_ns: 170.0,
                high: 4,
            })
        );
        // One mode: the rounds within the threshold of each other.
        assert_eq!(modes(&[70.0, 80.0, 95.0, 72.0]), None);
        assert_eq!(modes(&[70.0]), None);
        assert_eq!(modes(&[]), None);
    }
}
