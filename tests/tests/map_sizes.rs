//! The operator-sized maps (`--conntrack-max`, `--maglev-max-services`) on the two-node lab:
//! an agent restarted with another size resizes the pinned map and keeps what it held (a live
//! flow goes on), and refuses, before changing anything, to shrink the Maglev map below the
//! tables it holds. A conntrack map another version left with other flags (common or per-CPU
//! LRU lists) is recreated with this version's the same way, its flows kept.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
    time::Duration,
};

use agent_common::{
    Ct4Key, Ct4Value,
    maps::{BPF_F_NO_COMMON_LRU, CT_FLAGS},
};
use aya::maps::{HashMap, Map, MapData};
use ferry_tests::{
    Attempt, Cluster, Endpoint, EndpointSlice, Service,
    cluster::poll,
    over_both_families, proc, require_root,
    services::{Family, at},
};

const DEADLINE: Duration = Duration::from_secs(10);

fn max_entries(c: &Cluster, map: &str) -> u32 {
    let pin = c.node("node1").pin_dir.join(map);
    aya::maps::MapData::from_pin(&pin)
        .and_then(|m| m.info())
        .map(|i| i.max_entries())
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()))
}

fn start_node1(c: &Cluster, args: &[&str]) {
    let opts = ferry_tests::AgentOpts {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    c.start_agent("node1", &opts);
    let attached = poll(DEADLINE, Duration::from_millis(50), || {
        c.tc_attached("node1")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    if let Err(e) = attached {
        panic!("TC programs on node1: {e}\n{}", c.agent_log("node1"));
    }
}

/// Service `s`: NodePort 30080 to 8080/TCP, its one endpoint `b1` on node1 in a slice of each
/// of `families` (its echo server returned); dual-stack (ClusterIPs 10.96.0.10 and fd00:96::a)
/// when IPv6 is one of them.
fn node_port_to_node1(c: &Cluster, families: &[Family]) -> proc::Proc {
    let b1 = c.add_pod_on("node1", "b1");
    let echo = c.start_echo(&b1, &[8080], &[5353]);
    let mut svc = Service::node_port_service("s", "10.96.0.10");
    if families.contains(&Family::V6) {
        svc = svc
            .cluster_ips(&["10.96.0.10", "fd00:96::a"])
            .ip_family_policy("PreferDualStack");
    }
    c.manifests()
        .apply(&svc.port_to("http", 80, "TCP", 8080u16).node_port(30080));
    for f in families {
        c.manifests().apply(
            &f.slice("s", "s")
                .port("http", 8080, "TCP")
                .endpoint(f.ready(&b1).node("node1")),
        );
    }
    echo
}

/// A TCP connection from `ext` to node1's NodePort 30080, held open: each line sent to it
/// makes one more exchange on the same connection.
fn hold(c: &Cluster, ext: &ferry_tests::Pod) -> proc::Proc {
    hold_over(c, ext, Family::V4)
}

/// [`hold`] to node1's address of `family`.
fn hold_over(c: &Cluster, ext: &ferry_tests::Pod, family: Family) -> proc::Proc {
    let node = c.node("node1");
    let ip: std::net::IpAddr = family.pick([node.ip.into(), node.ip6.into()]);
    let target = at(ip, 30080);
    c.spawn_interactive(
        ext,
        proc::lab_binary("lab-client"),
        &["tcp", &target, "--hold", "--timeout-ms", "3000"],
    )
}

/// The held connection's next exchange succeeded.
fn exchange(c: &Cluster, held: &proc::Proc, what: &str) {
    let line = held.next_line(Duration::from_secs(5));
    let a = line.as_deref().and_then(Attempt::parse);
    assert!(
        a.as_ref().is_some_and(|a| a.ok),
        "{what}: {line:?}\n{}",
        c.dump()
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_restart_with_other_sizes_resizes_the_maps_and_keeps_their_content() {
    require_root!();
    let c = Cluster::new("a_restart_with_other_sizes_resizes_the_maps_and_keeps_their_content");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    // Two Maglev services.
    for (name, cip, np) in [("m1", "10.96.0.10", 30080), ("m2", "10.96.0.11", 30081)] {
        c.manifests().apply(
            &Service::node_port_service(name, cip)
                .port_to("http", 80, "TCP", 8080u16)
                .node_port(np)
                .annotation("ferry.io/lb-algorithm", "maglev"),
        );
        c.manifests().apply(
            &EndpointSlice::new(&format!("{name}-1"), name)
                .port("http", 8080, "TCP")
                .endpoint(Endpoint::ready(b1.ip).node("node1")),
        );
    }
    let sizes = ["--conntrack-max", "4096", "--maglev-max-services", "2"];
    start_node1(&c, &sizes);
    assert_eq!(max_entries(&c, "ferry_ct4_v1"), 4096);
    assert_eq!(max_entries(&c, "ferry_maglev_v1"), 2 * 16_381);
    let held = hold(&c, &ext1);
    let exchange = |what: &str| exchange(&c, &held, what);
    exchange("the first exchange");
    let maglev_before = c.services("node1");
    let flows_before = c.conntrack("node1").len();
    assert!(flows_before >= 2, "the held flow is tracked");

    // One Maglev table too few: refused before anything changes; the datapath goes on.
    c.stop_agent("node1");
    let node = c.node("node1");
    let out = proc::output_placed(
        Command::new(ferry_tests::Lab::ferry_bin())
            .arg("agent")
            .arg("--manifests")
            .arg(c.manifests().dir())
            .args(["--node-name", "node1", "--interfaces", "eth0"])
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&node.pin_dir)
            .args(["--conntrack-max", "4096", "--maglev-max-services", "1"])
            .env("NO_COLOR", "1"),
        &proc::Placement {
            netns: Some(node.netns_path.clone()),
            cgroup: None,
        },
        Duration::from_secs(20),
    )
    .expect("running the agent");
    let err = String::from_utf8_lossy(&out.stderr);
    println!("--maglev-max-services 1: {}\n{err}", out.status);
    assert!(!out.status.success(), "the agent refuses to start");
    assert!(
        err.contains("ferry_maglev_v1") && err.contains("--maglev-max-services 2"),
        "the error names the map and the size it needs: {err}"
    );
    assert_eq!(max_entries(&c, "ferry_maglev_v1"), 2 * 16_381, "unchanged");
    held.send_line("while no agent runs")
        .expect("stdin of the held client");
    exchange("after the refusal");

    // Bigger maps: resized, their entries copied, the live flow goes on.
    start_node1(
        &c,
        &["--conntrack-max", "8192", "--maglev-max-services", "4"],
    );
    assert_eq!(max_entries(&c, "ferry_ct4_v1"), 8192);
    assert_eq!(max_entries(&c, "ferry_maglev_v1"), 4 * 16_381);
    let log = c.agent_log("node1");
    println!("{log}");
    assert!(
        log.contains("recreated") && log.contains("max_entries 4096 -> 8192"),
        "the log says what was resized"
    );
    assert!(
        c.conntrack("node1").len() >= flows_before,
        "the flows were copied"
    );
    assert_eq!(c.services("node1"), maglev_before, "the same frontends");
    held.send_line("after the resize")
        .expect("stdin of the held client");
    exchange("after the resize");
    let leftovers: Vec<_> = std::fs::read_dir(&c.node("node1").pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_resizing"))
        .collect();
    assert!(leftovers.is_empty(), "no old pins left: {leftovers:?}");
}

const CT4: &str = "ferry_ct4_v1";

/// max_entries as the kernel makes it: a per-CPU LRU's rounded up to a multiple of the CPUs.
fn kernel_size(asked: u32, flags: u32) -> u32 {
    if flags & BPF_F_NO_COMMON_LRU == 0 {
        return asked;
    }
    let cpus = aya::util::nr_cpus().expect("possible CPUs").get();
    asked.div_ceil(cpus) * cpus
}

fn ct_entries(pin: &Path) -> BTreeMap<Ct4Key, Ct4Value> {
    let map = MapData::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let ct: HashMap<MapData, Ct4Key, Ct4Value> = Map::from_map_data(map)
        .and_then(HashMap::try_from)
        .expect("a conntrack map");
    ct.iter().map(|r| r.expect("an entry")).collect()
}

/// (id, max_entries, flags) of a pinned map.
fn info(pin: &Path) -> (u32, u32, u32) {
    let i = MapData::from_pin(pin)
        .and_then(|m| m.info())
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    (i.id(), i.max_entries(), i.map_flags())
}

fn bpf(cmd: u32, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: a zero-padded bpf_attr of 128 bytes, valid for the commands used here.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Creates a preallocated LRU hash map with `flags` and pins it at `pin`.
fn pin_lru(pin: &Path, key_size: u32, value_size: u32, max_entries: u32, flags: u32) {
    const BPF_MAP_CREATE: u32 = 0;
    const BPF_OBJ_PIN: u32 = 6;
    const BPF_MAP_TYPE_LRU_HASH: u64 = 9;
    let mut attr = [0u64; 16];
    attr[0] = BPF_MAP_TYPE_LRU_HASH | (u64::from(key_size) << 32);
    attr[1] = u64::from(value_size) | (u64::from(max_entries) << 32);
    // map_flags, inner_map_fd, numa_node, then map_name at byte 28.
    attr[2] = u64::from(flags);
    let name = b"ferry_ct4_v1";
    // SAFETY: the name lies within the 128-byte attr (bytes 28..44).
    unsafe {
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (attr.as_mut_ptr() as *mut u8).add(28),
            name.len(),
        )
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE (LRU hash)");
    // SAFETY: a new descriptor the kernel just returned.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u64;
    bpf(BPF_OBJ_PIN, &mut attr).expect("BPF_OBJ_PIN");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_conntrack_map_of_other_flags_is_recreated_with_its_flows() {
    require_root!();
    let c = Cluster::new("a_conntrack_map_of_other_flags_is_recreated_with_its_flows");
    let ext1 = c.ext("ext1");
    let _e1 = node_port_to_node1(&c, &[Family::V4]);
    // An odd size: the kernel rounds a per-CPU LRU's up to a multiple of the possible CPUs.
    let size = ["--conntrack-max", "4097"];
    // The other kind of LRU lists than this version's.
    let other = CT_FLAGS ^ BPF_F_NO_COMMON_LRU;
    start_node1(&c, &size);
    let pin = c.node("node1").pin_dir.join(CT4);
    let (_, entries, flags) = info(&pin);
    assert_eq!(
        (entries, flags),
        (kernel_size(4097, CT_FLAGS), CT_FLAGS),
        "a new map has this version's flags, its size as the kernel makes it"
    );
    let held = hold(&c, &ext1);
    let exchange = |what: &str| exchange(&c, &held, what);
    exchange("the first exchange");
    c.stop_agent("node1");

    // What an agent of another version leaves: the same flows in a map of the other flags
    // (and of the size the kernel makes of 4097 with them) under the conntrack map's pin.
    let flows = ct_entries(&pin);
    assert!(flows.len() >= 2, "the held flow is tracked: {flows:?}");
    let older = pin.with_file_name("older_ct4");
    pin_lru(
        &older,
        std::mem::size_of::<Ct4Key>() as u32,
        std::mem::size_of::<Ct4Value>() as u32,
        4097,
        other,
    );
    {
        let map = MapData::from_pin(&older).expect("the older map");
        let mut ct: HashMap<MapData, Ct4Key, Ct4Value> = Map::from_map_data(map)
            .and_then(HashMap::try_from)
            .expect("a conntrack map");
        for (k, v) in &flows {
            ct.insert(k, v, 0)
                .expect("copying a flow into the older map");
        }
    }
    std::fs::rename(&older, &pin).expect("the older map under the conntrack pin");
    assert_eq!(info(&pin).2, other, "the other flags now");

    // The agent recreates it with its flags and copies the flows.
    start_node1(&c, &size);
    let log = c.agent_log("node1");
    let (id, entries, flags) = info(&pin);
    assert_eq!(
        (entries, flags),
        (kernel_size(4097, CT_FLAGS), CT_FLAGS),
        "recreated with this version's flags\n{log}"
    );
    let cause = format!("flags {other:#x} (");
    assert!(
        log.lines().any(|l| l.contains(CT4)
            && l.contains("recreated")
            && l.contains(&cause)
            && l.contains(&format!(") -> {CT_FLAGS:#x} ("))),
        "the log names the map and the cause:\n{log}"
    );
    // No packet of the flow has passed since: what the map holds was copied.
    let now = ct_entries(&pin);
    for (k, v) in &flows {
        assert_eq!(now.get(k), Some(v), "flow entry {k:?} copied\n{log}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&c.node("node1").pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_resizing"))
        .collect();
    assert!(leftovers.is_empty(), "no old pins left: {leftovers:?}");
    held.send_line("after the upgrade")
        .expect("stdin of the held client");
    exchange("after the upgrade");

    // The same size and flags again: the map is reused as it is (its size is the kernel's
    // rounding of the one asked, not another size).
    c.stop_agent("node1");
    start_node1(&c, &size);
    let log = c.agent_log("node1");
    assert_eq!(info(&pin).0, id, "the same map\n{log}");
    assert!(!log.contains("recreat"), "nothing recreated:\n{log}");
    held.send_line("after a plain restart")
        .expect("stdin of the held client");
    exchange("after a plain restart");
}

over_both_families!(the_backend_array_is_filled_from_the_backend_map_at_start);

/// An agent of before the backend arrays (`ferry_bel4_v1`, `ferry_bel6_v1`: the conntrack
/// hit path's check that a flow's backend is still there) left none: the new agent fills the
/// family's array from its backend map before its programs attach, so a held connection's
/// next packets find their backend (not "gone": no flow is lost and chosen again).
fn the_backend_array_is_filled_from_the_backend_map_at_start(family: Family) {
    require_root!();
    let c = Cluster::new(&format!(
        "the_backend_array_is_filled_at_start_{}",
        family.tag()
    ));
    let ext1 = c.ext("ext1");
    let _e1 = node_port_to_node1(&c, &Family::BOTH);
    start_node1(&c, &[]);
    let held = hold_over(&c, &ext1, family);
    let exchange = |what: &str| exchange(&c, &held, what);
    exchange("the first exchange");
    c.stop_agent("node1");
    let pins = &c.node("node1").pin_dir;
    let (map_name, array_name) = family.pick([
        (
            agent_common::maps::BACKENDS_V4,
            agent_common::maps::BACKEND_LIVE_V4,
        ),
        (
            agent_common::maps::BACKENDS_V6,
            agent_common::maps::BACKEND_LIVE_V6,
        ),
    ]);
    let live = pins.join(array_name);
    std::fs::remove_file(&live).expect("removing the array's pin, as before it existed");
    let lost = |c: &Cluster| {
        c.stats("node1")["counters"]["ns_ct_lost_flow"]
            .as_u64()
            .unwrap_or(0)
    };

    start_node1(&c, &[]);
    match family {
        Family::V4 => array_as_map::<agent_common::Backend4>(&pins.join(map_name), &live),
        Family::V6 => array_as_map::<agent_common::Backend6>(&pins.join(map_name), &live),
    }
    let before = lost(&c);
    held.send_line("after the upgrade")
        .expect("stdin of the held client");
    exchange("after the upgrade");
    assert_eq!(
        lost(&c),
        before,
        "{family}: no tracked packet found its backend gone"
    );
}

/// The backend array pinned at `array` holds every entry of the backend map pinned at `map`,
/// at its id.
fn array_as_map<B>(map: &Path, array: &Path)
where
    B: aya::Pod + PartialEq + std::fmt::Debug,
{
    let backends: BTreeMap<u32, B> = {
        let map = MapData::from_pin(map).unwrap();
        let h: HashMap<MapData, u32, B> =
            Map::from_map_data(map).and_then(HashMap::try_from).unwrap();
        h.iter().map(Result::unwrap).collect()
    };
    assert!(!backends.is_empty(), "{}: holds b1", map.display());
    let data = MapData::from_pin(array).expect("the array, pinned again");
    let array: aya::maps::Array<MapData, B> = Map::from_map_data(data)
        .and_then(aya::maps::Array::try_from)
        .unwrap();
    for (id, b) in &backends {
        assert_eq!(
            array.get(id, 0).ok().as_ref(),
            Some(b),
            "backend {id} in the array as in the backend map"
        );
    }
}
