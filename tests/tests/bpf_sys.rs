//! ferry's own bpf(2) wrappers (`ferry::datapath::sys`, issue 10) against the real kernel, and
//! the two paths that changed with them: a foreign program swapped into ferry's link is swapped
//! back through aya's `attach_to_link`, and `ferry cleanup --cgroup` walks the kernel's links
//! with aya's `loaded_links` and detaches ferry's on that cgroup only, even those a hung agent
//! still holds.

mod common;

use std::{
    fs,
    net::SocketAddr,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use agent_common::{Ct4Key, Ct4Value, ct_dir, maps::CT_V4, proto as ip_proto};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSockAddr, SchedClassifier, TcAttachType,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, LinkOrder, PinnedLink},
        tc::TcAttach,
    },
};
use common::*;
use ferry::{
    datapath::{
        codec::CtKey as _,
        loader::ebpf_object,
        sys::{self, Attachment},
    },
    northsouth::monotonic_seconds,
    paths::{TC_INGRESS, cgroup_programs},
};
use ferry_tests::{
    AgentOpts, Lab, flood, proc,
    progtest::{PrivateBpffs, ProgTest, isolated},
    require_root,
};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
/// The agent's link check period (`ferry::datapath::LINK_CHECK_PERIOD`) and slack.
const NOTICED_WITHIN: Duration = Duration::from_secs(5 + 3);

/// Loads `program` of `ebpf` as a socket-address hook (not attached).
fn sock_program<'a>(ebpf: &'a mut Ebpf, program: &str) -> &'a mut CgroupSockAddr {
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(program)
        .unwrap_or_else(|| panic!("no program {program}"))
        .try_into()
        .unwrap();
    prog.load()
        .unwrap_or_else(|e| panic!("loading {program}: {e}"));
    prog
}

/// What the kernel says about the link pinned at `pin` (through ferry's wrappers).
fn pinned_link(pin: &Path) -> sys::LinkInfo {
    let fd = sys::obj_get(pin, 0).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    sys::link_info(&fd).unwrap()
}

/// The names of the programs attached to a cgroup (bpftool, another process).
fn attached_to(cgroup: &Path) -> Vec<String> {
    let out = proc::run(
        "bpftool",
        &["-j", "cgroup", "show", &cgroup.to_string_lossy()],
    )
    .unwrap_or_else(|e| panic!("bpftool cgroup show: {e:#}"));
    let mut names: Vec<String> = serde_json::from_str::<Value>(&out)
        .unwrap_or(Value::Null)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn metrics_text(lab: &Lab) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], 10249));
    flood::http_get_in(
        &lab.node_netns_path(),
        addr,
        "/metrics",
        Duration::from_secs(2),
    )
    .map(|a| a.body)
    .unwrap_or_default()
}

/// Polls `cond` until it holds; the time it took.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        thread::sleep(proc::POLL);
    }
    t0.elapsed()
}

/// The object with every `from` (a program's name in its symbol, BTF and debug strings)
/// renamed `to`, of the same length: programs the kernel knows by another name. 8-byte
/// aligned, as the ELF parser wants.
fn renamed(object: &[u8], from: &str, to: &str) -> Vec<u64> {
    assert_eq!(from.len(), to.len());
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` has room for `object.len()` bytes; u8 has no alignment.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + to.len()].copy_from_slice(to.as_bytes());
            n += 1;
        }
        i += 1;
    }
    assert!(n > 0, "no {from} in the object");
    words
}

fn as_bytes(words: &[u64], len: usize) -> &[u8] {
    // SAFETY: `words` holds at least `len` initialised bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn batched_reads_see_every_entry_once_and_refuse_other_maps() {
    require_root!();
    let mut map: HashMap<MapData, u32, u64> = HashMap::create(20_000, 0).unwrap();
    let mut want = Vec::new();
    // Empty, one, around a chunk of 8, many chunks; then the agent's chunk on a big map.
    for (count, chunk) in [
        (0, 8),
        (1, 8),
        (7, 8),
        (8, 8),
        (9, 8),
        (1_000, 8),
        (20_000, 4096),
    ] {
        while want.len() < count {
            let k = want.len() as u32 * 7919;
            let v = u64::from(k) << 20 | 0xf;
            map.insert(&k, &v, 0).unwrap();
            want.push((k, v));
        }
        let t0 = Instant::now();
        let mut got: Vec<(u32, u64)> = sys::read_hash(map.map(), chunk).unwrap();
        let took = t0.elapsed();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{count} entries read {chunk} at a time");
        println!(
            "read_hash: {count} entries, chunk {chunk}: {} us",
            took.as_micros()
        );
    }

    // Maps whose entries are not K and V: refused before the kernel copies anything.
    let wrong_value = sys::read_hash::<u32, u32>(map.map(), 8).expect_err("a u64 value as u32");
    assert_eq!(wrong_value.kind(), std::io::ErrorKind::InvalidInput);
    println!("{wrong_value}");
    let per_cpu: PerCpuHashMap<MapData, u32, u64> = PerCpuHashMap::create(16, 0).unwrap();
    let e = sys::read_hash::<u32, u64>(per_cpu.map(), 8).expect_err("a per-CPU hash");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    let array: Array<MapData, u64> = Array::create(16, 0).unwrap();
    let array = MapData::from_fd(array.map().fd().as_fd().try_clone_to_owned().unwrap()).unwrap();
    let e = sys::read_hash::<u32, u64>(&array, 8).expect_err("an array");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_read_only_open_reads_but_cannot_write() {
    require_root!();
    let bpffs = PrivateBpffs::new().unwrap();
    let mut map: HashMap<MapData, u32, u64> = HashMap::create(16, 0).unwrap();
    map.insert(&1, &10, 0).unwrap();
    let pin = bpffs.path().join("ro_test");
    map.map().pin(&pin).unwrap();

    let fd = sys::obj_get(&pin, sys::READ_ONLY).unwrap();
    let data = MapData::from_fd(fd).unwrap();
    assert_eq!(sys::read_hash::<u32, u64>(&data, 8).unwrap(), vec![(1, 10)]);
    let mut ro: HashMap<MapData, u32, u64> = Map::from_map_data(data)
        .and_then(HashMap::try_from)
        .unwrap();
    assert_eq!(ro.get(&1, 0).unwrap(), 10);
    let err = ro
        .insert(&2, &20, 0)
        .expect_err("a write through a read-only descriptor");
    let errno = match &err {
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    assert_eq!(errno, Some(libc::EPERM), "{err}");

    let e = sys::obj_get(&bpffs.path().join("missing"), 0).expect_err("no such pin");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_tcx_link_names_its_device_until_detached() {
    require_root!();
    // On the loopback of a namespace of this test's own (ifindex 1), on a thread in it.
    isolated(|| {
        let mut t = ProgTest::load(ebpf_object(), &[TC_INGRESS]).unwrap();
        let prog: &mut SchedClassifier =
            t.ebpf.program_mut(TC_INGRESS).unwrap().try_into().unwrap();
        let attach = TcAttach::Tcx {
            attach_type: TcAttachType::Ingress,
            order: LinkOrder::default(),
        };
        let id = prog.attach(1, attach).unwrap();
        let prog_id = prog.info().unwrap().id();
        let link = FdLink::try_from(prog.take_link(id).unwrap()).unwrap();
        let pin = t.bpffs.path().join("tcx_link");
        let pinned = link.pin(&pin).unwrap();

        let fd = sys::obj_get(&pin, 0).unwrap();
        let info = sys::link_info(&fd).unwrap();
        assert_eq!(info.attachment, Attachment::Device(1));
        assert_eq!(info.prog_id, prog_id);
        let same = sys::link_fd(info.id).unwrap();
        assert_eq!(sys::link_info(&same).unwrap(), info, "by id: the same link");

        sys::link_detach(&same).unwrap();
        let after = sys::link_info(&fd).unwrap();
        assert_eq!(after.attachment, Attachment::Nothing, "{after:?}");
        assert_eq!(after.id, info.id);
        drop(pinned.unpin().unwrap());
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_program_swapped_into_ferrys_link_is_swapped_back_in_the_same_link() {
    require_root!();
    let lab = Lab::new("a_program_swapped_into_ferrys_link_is_swapped_back_in_the_same_link");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");
    let client = lab.add_pod("client");
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "before");
    let pin = lab.pin_dir().join("ferry_link_conn4");
    let before = pinned_link(&pin);
    assert_eq!(
        before.attachment,
        Attachment::Cgroup(fs::metadata(lab.cgroup()).unwrap().ino()),
        "the link names the lab's cgroup by its id"
    );

    // Another process swaps its own ferry_conn4 (with empty maps of its own) into the link.
    let mut foreign = ProgTest::load(ebpf_object(), &[]).unwrap();
    let prog = sock_program(&mut foreign.ebpf, "ferry_conn4");
    let foreign_id = prog.info().unwrap().id();
    let link = FdLink::from(PinnedLink::from_pin(&pin).unwrap());
    let swapped = prog
        .attach_to_link(CgroupSockAddrLink::try_from(link).unwrap())
        .unwrap();
    drop(prog.take_link(swapped).unwrap());
    assert_eq!(pinned_link(&pin).prog_id, foreign_id, "swapped in");

    let line = r#"ferry_link_repairs_total{link="ferry_link_conn4",fault="replaced"} 1"#;
    let took = wait_for("the replaced program counted", NOTICED_WITHIN, || {
        metrics_text(&lab).lines().any(|l| l == line)
    });
    println!(
        "latency: foreign program swapped in -> swapped back and counted: {} ms",
        took.as_millis()
    );
    let after = pinned_link(&pin);
    assert_eq!(
        after, before,
        "the same link, attached, with the agent's program"
    );
    assert_all_ok(
        &lab.tcp(&client, &format!("{VIP}:80"), 3),
        "after the repair",
    );
    let log = lab.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("changed by someone else: repaired")
                && l.contains("ferry_link_conn4")
                && l.contains("replaced")),
        "{log}"
    );

    // The egress guard's link (cgroup_skb, swapped through ferry's own BPF_LINK_UPDATE),
    // attached while a Service needs it.
    let _guarded = apply_guarded(&lab, "guarded", "10.96.0.77");
    let pin = lab.pin_dir().join("ferry_link_guard4");
    let before = pinned_link(&pin);
    let guard: &mut CgroupSkb = foreign
        .ebpf
        .program_mut("ferry_guard4")
        .expect("the guard program")
        .try_into()
        .unwrap();
    guard.load().unwrap();
    let foreign_id = guard.info().unwrap().id();
    let link = sys::obj_get(&pin, 0).unwrap();
    sys::link_update(&link, std::os::fd::AsFd::as_fd(guard.fd().unwrap())).unwrap();
    assert_eq!(pinned_link(&pin).prog_id, foreign_id, "swapped in");
    let line = r#"ferry_link_repairs_total{link="ferry_link_guard4",fault="replaced"} 1"#;
    wait_for("the replaced guard counted", NOTICED_WITHIN, || {
        metrics_text(&lab).lines().any(|l| l == line)
    });
    assert_eq!(
        pinned_link(&pin),
        before,
        "the guard's link, with the agent's guard"
    );
}

/// A process stopped with SIGSTOP (a hung agent) until dropped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on the lab's own agent.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        let stopped = Stopped(pid);
        wait_for("the agent stopped", Duration::from_secs(5), || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
                .unwrap_or(false)
        });
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in new().
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn cleanup_cgroup_detaches_a_hung_agents_links_and_nothing_else() {
    require_root!();
    let lab = Lab::new("cleanup_cgroup_detaches_a_hung_agents_links_and_nothing_else");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");
    // Every cgroup program attached, the egress guard too.
    let _guarded = apply_guarded(&lab, "guarded", "10.96.0.77");
    let client = lab.add_pod("client");
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "before");

    // Descriptors on the agent's links, to see them detached while still held.
    let cgroup_id = fs::metadata(lab.cgroup()).unwrap().ino();
    let held: Vec<_> = cgroup_programs()
        .map(|(_, link)| {
            let fd = sys::obj_get(&lab.pin_dir().join(link), 0).unwrap();
            assert_eq!(
                sys::link_info(&fd).unwrap().attachment,
                Attachment::Cgroup(cgroup_id)
            );
            fd
        })
        .collect();

    // Not ferry's: a program of another name on the same cgroup. Ferry's program on another
    // cgroup (a child of the lab's).
    let object = ebpf_object();
    let other = renamed(object, "ferry_conn4", "other_conn4");
    let mut foreign = ProgTest::load(as_bytes(&other, object.len()), &[]).unwrap();
    let lab_cg = fs::File::open(lab.cgroup()).unwrap();
    sock_program(&mut foreign.ebpf, "other_conn4")
        .attach(&lab_cg, CgroupAttachMode::Single)
        .unwrap();
    let child = lab.cgroup().join("sibling");
    fs::create_dir(&child).unwrap();
    let mut elsewhere = ProgTest::load(object, &[]).unwrap();
    sock_program(&mut elsewhere.ebpf, "ferry_conn4")
        .attach(fs::File::open(&child).unwrap(), CgroupAttachMode::Single)
        .unwrap();
    let mut on_lab: Vec<String> = cgroup_programs().map(|(p, _)| p.to_string()).collect();
    on_lab.push("other_conn4".into());
    on_lab.sort();
    assert_eq!(attached_to(lab.cgroup()), on_lab);

    let hung = Stopped::new(lab.agent_pid().expect("the agent runs"));
    let out = lab.ferry_cleanup();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("ferry cleanup --cgroup:\n{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("links={}", cgroup_programs().count())),
        "{text}"
    );

    assert_eq!(attached_to(lab.cgroup()), vec!["other_conn4".to_string()]);
    assert_eq!(attached_to(&child), vec!["ferry_conn4".to_string()]);
    for fd in &held {
        assert_eq!(
            sys::link_info(fd).unwrap().attachment,
            Attachment::Nothing,
            "detached though the hung agent holds it"
        );
    }
    let a = lab.client(
        &client,
        &["tcp", &format!("{VIP}:80"), "--timeout-ms", "1000"],
    );
    assert_untranslated(&a[0], "after ferry cleanup, the agent still hung");
    drop(hung);
    lab.stop_agent();
}

/// A UDP flow's two conntrack entries, last seen at `last_seen`.
fn udp_flow(n: u32, last_seen: u32) -> [(Ct4Key, Ct4Value); 2] {
    let forward = Ct4Key {
        saddr: 0x0a00_0000 | n,
        daddr: 0x0a60_000a,
        sport: 40_000,
        dport: 53,
        proto: ip_proto::UDP,
        dir: ct_dir::FORWARD,
        ..Default::default()
    };
    let value = Ct4Value {
        nat_saddr: 0x0a00_0000 | n,
        nat_daddr: 0x0af4_0002,
        nat_sport: 40_000,
        nat_dport: 5353,
        last_seen,
        ..Default::default()
    };
    let reply = forward.reply_key(&value);
    [
        (forward, value),
        (
            reply,
            Ct4Value {
                last_seen,
                ..Default::default()
            },
        ),
    ]
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_agent_removes_idle_flows_and_keeps_live_ones() {
    require_root!();
    let lab = Lab::new("the_agent_removes_idle_flows_and_keeps_live_ones");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");
    lab.stop_agent();

    // While no agent runs: 3,000 UDP flows idle for 1,000 s (past the 120 s timeout) and
    // 10 just seen, in the pinned conntrack map the next agent adopts.
    let pin = lab.pin_dir().join(CT_V4);
    let mut ct: HashMap<MapData, Ct4Key, Ct4Value> =
        Map::from_map_data(MapData::from_pin(&pin).unwrap())
            .and_then(HashMap::try_from)
            .unwrap();
    // Idle for up to 1,000 s: a machine up for a short while (a fresh CI machine) has a
    // younger clock, and any age past the timeout will do.
    let now = monotonic_seconds();
    assert!(now > 200, "the machine is up for less than 200 s");
    let idle_since = now - (now - 1).min(1_000);
    let (idle, live): (Vec<_>, Vec<_>) = (0..3_010u32)
        .flat_map(|n| udp_flow(n + 1, if n < 3_000 { idle_since } else { now }))
        .partition(|(_, v)| v.last_seen < now);
    for (k, v) in idle.iter().chain(&live) {
        ct.insert(k, v, 0).unwrap();
    }
    let count = |ct: &HashMap<MapData, Ct4Key, Ct4Value>| {
        sys::read_hash::<Ct4Key, Ct4Value>(ct.map(), 4096)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.daddr == 0x0a60_000a || k.saddr == 0x0af4_0002)
            .count()
    };
    assert_eq!(count(&ct), idle.len() + live.len());

    // The agent's first pass collects at once.
    lab.start_agent(&AgentOpts::default());
    let took = wait_for("the idle flows removed", DEADLINE, || {
        count(&ct) == live.len()
    });
    println!(
        "latency: agent start -> {} idle entries removed: {} ms",
        idle.len(),
        took.as_millis()
    );
    for (k, v) in &live {
        assert_eq!(ct.get(k, 0).ok().as_ref(), Some(v), "a live flow kept");
    }
}
