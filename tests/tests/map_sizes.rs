//! The operator-sized maps (`--conntrack-max`, `--maglev-max-services`) on the two-node lab:
//! an agent restarted with another size resizes the pinned map and keeps what it held (a live
//! flow goes on), and refuses, before changing anything, to shrink the Maglev map below the
//! tables it holds.

use std::{process::Command, time::Duration};

use ferry_tests::{
    Attempt, Cluster, Endpoint, EndpointSlice, Service, cluster::poll, proc, require_root,
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
    let target = format!("{}:30080", c.node("node1").ip);
    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &["tcp", &target, "--hold", "--timeout-ms", "3000"],
    );
    let exchange = |what: &str| {
        let line = held.next_line(Duration::from_secs(5));
        let a = line.as_deref().and_then(Attempt::parse);
        assert!(
            a.as_ref().is_some_and(|a| a.ok),
            "{what}: {line:?}\n{}",
            c.dump()
        );
    };
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
    assert!(log.contains("resized"), "the log says what was resized");
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
