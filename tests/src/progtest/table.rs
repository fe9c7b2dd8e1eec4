//! Packet tests as data: a [`Scenario`] is a map fixture and a list of [`Row`]s run in order
//! on the same maps (a flow's SYN, then its SYN-ACK, ...); a row is one packet through one
//! program with everything expected of it: the verdict, the frame out (or "unchanged"), the
//! counters that moved, the conntrack entries after. Adding a case is adding a row.
//!
//! A scenario names the families it holds for ([`Family`]): the frames of both are built by the
//! same builders ([`super::frames`]) from the family's address plan ([`Net`]). It names the
//! program sets it holds for too ([`Target`]). Rows of [`Hook::Xdp`] run `ferry_xdp` and differ
//! in what it cannot see or say: no skb, so no checksum state (rows with [`Csum::Complete`] do
//! not apply) and no `skb->csum` to keep right; verdicts mapped by [`Verdict::xdp`] (a FIB
//! redirect, also back out of the ingress device, is XDP_REDIRECT: `ferry_xdp` never returns
//! XDP_TX; "hand it to the stack" and "not ferry's" both XDP_PASS). XDP's rows are
//! scenarios of their own (tc_prog_test_run/xdp.rs): XDP forwards through the FIB what TC hands
//! to the stack, and leaves to TC what it does not handle, so TC's rows do not carry over.
//!
//! A failing row panics with its scenario, family, row description and, for frames, a hex diff
//! of what it got against what it wanted.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use agent_common::stats::Counter;

use super::{
    ETH_HLEN, assert_checksums, assert_checksums_v6,
    fixture::{Ct, CtVal, Fixture, TC_IN, TC_OUT, TC_POD, TC_POD_OUT, XDP},
    frames::{hex_diff, sport},
    isolated,
    net::{Family, Net, sa},
};

/// The program a row runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `ferry_tc_in`: ingress of the node's device.
    TcIn,
    /// `ferry_tc_out`: egress of the node's device.
    TcOut,
    /// `ferry_tc_pod`: ingress of a pod's device (what pods send).
    TcPod,
    /// `ferry_xdp`: the node's device before the skb (`--acceleration`).
    Xdp,
    /// `ferry_tc_pod_out`: egress of a pod's device (what pods receive).
    TcPodOut,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::TcIn => TC_IN,
            Hook::TcOut => TC_OUT,
            Hook::TcPod => TC_POD,
            Hook::Xdp => XDP,
            Hook::TcPodOut => TC_POD_OUT,
        }
    }
}

/// The program sets a scenario holds for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Tc,
    /// `ferry_xdp` (with TC beside it for what XDP passes).
    Xdp,
}

pub const TC: &[Target] = &[Target::Tc];
pub const XDP_TC: &[Target] = &[Target::Xdp, Target::Tc];

/// The skb's checksum state in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// What BPF_PROG_TEST_RUN gives by default (CHECKSUM_NONE).
    None,
    /// CHECKSUM_COMPLETE with the frame's sum: the kernel fails the run if the program leaves
    /// `skb->csum` inconsistent with the bytes it wrote.
    Complete,
}

/// A TC verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TC_ACT_UNSPEC / TCX_NEXT (-1): not ferry's packet.
    Pass,
    /// TC_ACT_OK: translated (or handled), on to the stack.
    Ok,
    /// TC_ACT_SHOT: dropped.
    Shot,
    /// TC_ACT_REDIRECT: out of another device (FIB) or back out of this one (a reject). The
    /// target device is not observable in a test run: the frame's MACs say where it goes.
    Redirect,
}

impl Verdict {
    pub fn tc(self) -> i32 {
        match self {
            Verdict::Pass => -1,
            Verdict::Ok => 0,
            Verdict::Shot => 2,
            Verdict::Redirect => 7,
        }
    }

    /// The XDP action an XDP target is held to (XDP_DROP 1, XDP_PASS 2, XDP_REDIRECT 4).
    pub fn xdp(self) -> u32 {
        match self {
            Verdict::Pass | Verdict::Ok => 2,
            Verdict::Shot => 1,
            Verdict::Redirect => 4,
        }
    }
}

/// A check of a row's output frame.
pub type FrameCheck = Box<dyn Fn(&[u8])>;
/// A check of the maps after a row.
pub type MapCheck = Box<dyn Fn(&mut Fixture)>;

/// What a row's frame must be after the run.
pub enum Out {
    /// Byte for byte the input.
    Unchanged,
    /// Byte for byte this frame (whose checksums, and the output's, verify from scratch).
    Frame(Vec<u8>),
    /// Checked by a function of the output.
    Check(FrameCheck),
    /// Not checked (a row run for its effect on the maps).
    Any,
}

/// The conntrack maps (both families) after a row.
pub enum CtCheck {
    /// Exactly these entries, each `last_seen` "now" on CLOCK_MONOTONIC.
    Exactly(Vec<(Ct, CtVal)>),
    /// This many entries.
    Len(usize),
}

/// A value a row learns from its output, for the rows after it (and its own expectations:
/// a learning row is built twice, once for its input and once after the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    Nothing,
    /// The SNAT source (the node's address and the source port of the output, which must be in
    /// the default SNAT range unless the scenario's node config says otherwise): [`Ctx::snat`].
    Snat,
    /// The SNAT source, with no range check (the scenario set its own range).
    SnatAnyPort,
}

/// One packet through one program, and what it must do.
pub struct Row {
    pub desc: String,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub csum: Csum,
    pub verdict: Verdict,
    pub out: Out,
    /// How much each named counter rose since the last row that named it (or since the
    /// fixture was filled).
    pub counters: Vec<(Counter, u64)>,
    pub ct: Option<CtCheck>,
    pub learn: Learn,
    /// Further checks of the maps after the run (affinity, single entries).
    pub check: Option<MapCheck>,
}

impl Row {
    /// A row of `hook` on `input` with verdict `verdict`, its output not checked yet.
    pub fn new(desc: impl Into<String>, hook: Hook, input: Vec<u8>, verdict: Verdict) -> Row {
        Row {
            desc: desc.into(),
            hook,
            input,
            csum: Csum::None,
            verdict,
            out: Out::Any,
            counters: Vec::new(),
            ct: None,
            learn: Learn::Nothing,
            check: None,
        }
    }

    pub fn out(mut self, frame: Vec<u8>) -> Row {
        self.out = Out::Frame(frame);
        self
    }

    pub fn unchanged(mut self) -> Row {
        self.out = Out::Unchanged;
        self
    }

    pub fn out_check(mut self, f: impl Fn(&[u8]) + 'static) -> Row {
        self.out = Out::Check(Box::new(f));
        self
    }

    pub fn complete(mut self) -> Row {
        self.csum = Csum::Complete;
        self
    }

    pub fn counter(mut self, c: Counter, delta: u64) -> Row {
        self.counters.push((c, delta));
        self
    }

    pub fn ct(mut self, entries: Vec<(Ct, CtVal)>) -> Row {
        self.ct = Some(CtCheck::Exactly(entries));
        self
    }

    pub fn ct_len(mut self, n: usize) -> Row {
        self.ct = Some(CtCheck::Len(n));
        self
    }

    pub fn learn(mut self, l: Learn) -> Row {
        self.learn = l;
        self
    }

    pub fn check(mut self, f: impl Fn(&mut Fixture) + 'static) -> Row {
        self.check = Some(Box::new(f));
        self
    }
}

/// What the rows of a scenario see: its maps, its family's addresses and what earlier rows
/// learned.
pub struct Ctx {
    pub f: Fixture,
    pub net: &'static Net,
    snat: Option<SocketAddr>,
    /// The last row's output frame.
    pub last: Vec<u8>,
    /// Counter values when a row last named them.
    seen: BTreeMap<u32, u64>,
}

impl Ctx {
    /// The SNAT source a [`Learn::Snat`] row learned (port 0 while the learning row is being
    /// built for its input).
    pub fn snat(&self) -> SocketAddr {
        self.snat.unwrap_or(sa(self.net.node, 0))
    }

    /// The last output's IP packet (without its Ethernet header).
    pub fn last_ip(&self) -> Vec<u8> {
        self.last[ETH_HLEN..].to_vec()
    }

    /// Forgets the counters' reference values (after the scenario changes its fixture).
    pub fn reset_counters(&mut self) {
        self.seen.clear();
    }
}

pub enum Step {
    /// A row, built when its turn comes (so that it can use what earlier rows learned).
    Row(Box<dyn Fn(&Ctx) -> Row>),
    /// A change to the maps (or the namespace) between rows, or checks of them.
    Maps(Box<dyn Fn(&mut Ctx)>),
}

/// A row that uses nothing learned.
pub fn row(r: impl Fn(&Ctx) -> Row + 'static) -> Step {
    Step::Row(Box::new(r))
}

pub fn maps(f: impl Fn(&mut Ctx) + 'static) -> Step {
    Step::Maps(Box::new(f))
}

pub struct Scenario {
    pub desc: &'static str,
    pub families: &'static [Family],
    pub targets: &'static [Target],
    /// The namespace's devices and routes (FIB rows), before the fixture is loaded.
    pub netns: fn(&Net),
    /// The maps before the first row.
    pub fixture: fn(&mut Fixture, &'static Net),
    pub steps: fn(&'static Net) -> Vec<Step>,
}

/// No devices or routes: the namespace's loopback only (no FIB route anywhere).
pub fn no_netns(_: &Net) {}

fn monotonic_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

fn family_of_frame(frame: &[u8]) -> Family {
    if frame.len() > 13 && u16::from_be_bytes([frame[12], frame[13]]) == super::ETH_P_IPV6 {
        Family::V6
    } else {
        Family::V4
    }
}

fn assert_frame_checksums(frame: &[u8], what: &str) {
    let r = std::panic::catch_unwind(|| match family_of_frame(frame) {
        Family::V4 => assert_checksums(frame),
        Family::V6 => assert_checksums_v6(frame),
    });
    if let Err(e) = r {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{what}: checksums: {msg}\n{}", hex_diff(frame, frame));
    }
}

/// `got` is byte for byte `want`, whose checksums (and `got`'s) verify from scratch; else a
/// panic naming `what` with a hex diff.
pub fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert_frame_checksums(want, &format!("{what}: the expected frame"));
    if got != want {
        panic!("{what}: frames differ\n{}", hex_diff(got, want));
    }
    assert_frame_checksums(got, &format!("{what}: the output"));
}

/// The SNAT source of a translated frame.
fn snat_of(frame: &[u8], net: &Net) -> SocketAddr {
    sa(net.node, sport(frame))
}

fn run_row(c: &mut Ctx, build: &dyn Fn(&Ctx) -> Row, at: &str) {
    let mut r = build(c);
    let got = c.f.run(r.hook, &r.input, r.csum);
    let what = format!("{at}: {} ({:?})", r.desc, r.hook);
    if r.learn != Learn::Nothing {
        let snat = snat_of(&got.data, c.net);
        if r.learn == Learn::Snat {
            assert!(
                (61_000..=65_535).contains(&snat.port()),
                "{what}: SNAT port {} outside the default range",
                snat.port()
            );
        }
        c.snat = Some(snat);
        let input = r.input;
        r = build(c);
        assert_eq!(
            r.input, input,
            "{what}: the input changed with the SNAT source"
        );
    }
    let want = if r.hook == Hook::Xdp {
        r.verdict.xdp() as i32
    } else {
        r.verdict.tc()
    };
    assert_eq!(
        got.verdict(),
        want,
        "{what}: verdict {} want {:?} ({want})\n{}",
        got.verdict(),
        r.verdict,
        hex_diff(&got.data, &r.input)
    );
    match &r.out {
        Out::Unchanged => {
            if got.data != r.input {
                panic!(
                    "{what}: changed, want it unchanged\n{}",
                    hex_diff(&got.data, &r.input)
                );
            }
        }
        Out::Frame(want) => assert_frame(&got.data, want, &what),
        Out::Check(f) => {
            let data = got.data.clone();
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&data))) {
                eprintln!("{what}: output\n{}", hex_diff(&got.data, &r.input));
                std::panic::resume_unwind(e);
            }
        }
        Out::Any => {}
    }
    for &(counter, delta) in &r.counters {
        let now = c.f.counter(counter);
        let before = c.seen.insert(counter as u32, now).unwrap_or(0);
        assert_eq!(
            now - before,
            delta,
            "{what}: counter {} rose by {}, want {delta}",
            counter.name(),
            now - before
        );
    }
    match &r.ct {
        Some(CtCheck::Exactly(want)) => {
            let now = monotonic_seconds();
            let got: BTreeMap<Ct, CtVal> =
                c.f.ct()
                    .into_iter()
                    .map(|(k, mut v)| {
                        assert!(
                            v.last_seen <= now && now - v.last_seen <= 2,
                            "{what}: {k:?} last_seen {} vs now {now}",
                            v.last_seen
                        );
                        v.last_seen = 0;
                        (k, v)
                    })
                    .collect();
            let want: BTreeMap<Ct, CtVal> = want.iter().copied().collect();
            assert_eq!(got, want, "{what}: conntrack entries");
        }
        Some(CtCheck::Len(n)) => {
            let got = c.f.ct();
            assert_eq!(got.len(), *n, "{what}: conntrack entries: {got:#?}");
        }
        None => {}
    }
    if let Some(check) = &r.check
        && let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut c.f)))
    {
        eprintln!("{what}: map check failed");
        std::panic::resume_unwind(e);
    }
    c.last = got.data;
}

/// Runs one scenario for one family, in a network namespace of its own.
pub fn run_scenario(s: &'static Scenario, family: Family) {
    isolated(move || {
        let net = family.net();
        (s.netns)(net);
        let mut f = Fixture::new(family);
        (s.fixture)(&mut f, net);
        let mut c = Ctx {
            f,
            net,
            snat: None,
            last: Vec::new(),
            seen: BTreeMap::new(),
        };
        for (i, step) in (s.steps)(net).iter().enumerate() {
            let at = format!("[{} / {family:?} / row {i}]", s.desc);
            match step {
                Step::Row(build) => run_row(&mut c, build, &at),
                Step::Maps(change) => change(&mut c),
            }
        }
    });
}

/// Runs every scenario of `table` that holds for `family` (its rows name their programs), each in a namespace of its
/// own, and fails with the list of the scenarios that failed (each one's message is printed
/// as it fails).
pub fn run_table(table: &'static [Scenario], family: Family) {
    let mut failed = String::new();
    let mut ran = 0;
    for s in table {
        if !s.families.contains(&family) || s.targets.is_empty() {
            continue;
        }
        ran += 1;
        let r = std::panic::catch_unwind(|| run_scenario(s, family));
        if r.is_err() {
            let _ = writeln!(failed, "  {} ({family:?})", s.desc);
        }
    }
    assert!(ran > 0, "no scenario of the table holds for {family:?}");
    assert!(failed.is_empty(), "failing scenarios:\n{failed}");
}
