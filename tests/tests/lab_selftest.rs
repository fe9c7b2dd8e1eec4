//! The lab itself, without ferry: pods reach each other, children land in the right namespace
//! and cgroup, and nothing is left behind (after a drop, a panic, or a signal).

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    panic,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use ferry_tests::{Lab, cgroup, cleanup, require_root};

fn assert_nothing_left(id: &str) {
    let left = cleanup::leftovers(id);
    assert!(left.is_empty(), "lab {id} left behind: {left:?}");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn pods_reach_each_other_over_the_bridge() {
    require_root!();
    let lab = Lab::new("pods_reach_each_other_over_the_bridge");
    let server = lab.add_pod("server");
    let client = lab.add_pod("client");
    assert_eq!(server.ip.to_string(), "10.244.0.2");
    assert_eq!(client.ip.to_string(), "10.244.0.3");
    let _echo = lab.start_echo(&server, &[8080], &[5353]);

    let body = lab
        .curl(&client, &format!("http://{}:8080/", server.ip))
        .expect("curl");
    let reply = ferry_tests::EchoReply::parse(&body).expect("an echo reply");
    assert_eq!(reply.pod, "server");
    assert_eq!(reply.port, 8080);
    assert_eq!(
        *reply.peer.ip(),
        client.ip,
        "the server sees the client pod's address"
    );

    let tcp = lab.tcp(&client, &format!("{}:8080", server.ip), 3);
    assert_eq!(tcp.len(), 3);
    for a in &tcp {
        assert!(a.ok, "{}", a.raw);
        assert_eq!(a.peer.as_deref(), Some("10.244.0.2:8080"));
        assert_eq!(a.pod().as_deref(), Some("server"));
    }

    let udp = lab.udp(&client, &format!("{}:5353", server.ip), 3);
    assert_eq!(udp.len(), 3);
    for a in &udp {
        assert!(a.ok, "{}", a.raw);
        assert_eq!(a.from.as_deref(), Some("10.244.0.2:5353"));
        assert_eq!(a.echo().map(|e| *e.peer.ip()), Some(client.ip));
    }

    // Checksum offload is off on both ends of the pod's veth.
    let out = lab.output(&client, "ethtool", &["-k", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tx-checksumming: off"), "{text}");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_held_connection_answers_every_line() {
    require_root!();
    let lab = Lab::new("a_held_connection_answers_every_line");
    let server = lab.add_pod("server");
    let client = lab.add_pod("client");
    let _echo = lab.start_echo(&server, &[8080], &[]);
    let client_bin = ferry_tests::proc::lab_binary("lab-client");
    let target = format!("{}:8080", server.ip);
    let held = lab.spawn_interactive(&client, client_bin, &["tcp", &target, "--hold"]);
    let first = held
        .next_line(Duration::from_secs(5))
        .expect("a first reply");
    let first = ferry_tests::Attempt::parse(&first).expect("json");
    assert!(first.ok, "{}", first.raw);
    for _ in 0..3 {
        held.send_line("again").expect("stdin");
        let next = held.next_line(Duration::from_secs(5)).expect("a reply");
        let next = ferry_tests::Attempt::parse(&next).expect("json");
        assert!(next.ok, "{}", next.raw);
        assert_eq!(
            next.echo().map(|e| e.peer),
            first.echo().map(|e| e.peer),
            "same connection"
        );
    }
    held.close_stdin();
    assert!(
        held.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn children_run_in_the_pod_namespace_and_the_lab_cgroup() {
    require_root!();
    let lab = Lab::new("children_run_in_the_pod_namespace_and_the_lab_cgroup");
    let pod = lab.add_pod("p");
    let child = lab.spawn(&pod, "sleep", &["30"]);
    let want = format!("/{}", lab.cgroup().file_name().unwrap().to_string_lossy());
    assert_eq!(cgroup::of_pid(child.pid()).as_deref(), Some(want.as_str()));
    assert_eq!(cgroup::procs(lab.cgroup()), vec![child.pid()]);
    let ns_of_child = std::fs::metadata(format!("/proc/{}/ns/net", child.pid()))
        .unwrap()
        .ino();
    let ns_of_pod = std::fs::metadata(&pod.netns_path).unwrap().ino();
    assert_eq!(ns_of_child, ns_of_pod);
    let own_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(ns_of_child, own_ns);
    // The lab never adds links to the root namespace: the node namespace has them.
    let links = ferry_tests::netns::ip(lab.node_netns(), &["-o", "link"]).unwrap();
    assert!(links.contains("br0") && links.contains("veth2"), "{links}");
    child.terminate();
    assert!(cgroup::procs(lab.cgroup()).is_empty());
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn output_kills_a_hanging_program() {
    require_root!();
    let lab = Lab::new("output_kills_a_hanging_program");
    let pod = lab.add_pod("p");
    let start = Instant::now();
    let out = lab.output_timeout(&pod, "sleep", &["30"], Duration::from_millis(300));
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn an_unknown_address_is_not_reached_without_ferry() {
    require_root!();
    let lab = Lab::new("an_unknown_address_is_not_reached_without_ferry");
    let pod = lab.add_pod("p");
    let a = lab.client(&pod, &["tcp", "10.96.0.1:80", "--timeout-ms", "500"]);
    assert!(!a[0].ok, "{}", a[0].raw);
    println!("untranslated connect: {}", a[0].raw);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dropping_the_lab_leaves_nothing() {
    require_root!();
    let lab = Lab::new("dropping_the_lab_leaves_nothing");
    let id = lab.id().to_owned();
    let a = lab.add_pod("a");
    let _echo = lab.start_echo(&a, &[8080], &[53]);
    let _sleeper = lab.spawn(&a, "sleep", &["30"]);
    assert!(!cleanup::leftovers(&id).is_empty());
    drop(_sleeper);
    drop(_echo);
    drop(lab);
    assert_nothing_left(&id);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_panicking_test_leaves_nothing() {
    require_root!();
    let id = Mutex::new(String::new());
    let result = panic::catch_unwind(|| {
        let lab = Lab::new("a_panicking_test_leaves_nothing");
        *id.lock().unwrap() = lab.id().to_owned();
        let a = lab.add_pod("a");
        let _sleeper = lab.spawn(&a, "sleep", &["30"]);
        panic!("a deliberate failure inside a lab");
    });
    assert!(result.is_err());
    let id = id.into_inner().unwrap();
    assert_eq!(id.len(), 6);
    assert_nothing_left(&id);
}

/// Helper for `a_signal_removes_live_labs`: holds a lab until it is killed.
#[test]
#[ignore = "run by a_signal_removes_live_labs in a child process"]
fn hold_a_lab_until_signalled() {
    if std::env::var_os("FERRY_LAB_HOLD").is_none() {
        return;
    }
    let lab = Lab::new("hold_a_lab_until_signalled");
    let a = lab.add_pod("a");
    let _sleeper = lab.spawn(&a, "sleep", &["60"]);
    println!("LAB_ID={}", lab.id());
    // Until the parent's signal: the parent holds our stdin open.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_signal_removes_live_labs() {
    require_root!();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hold_a_lab_until_signalled",
                "--ignored",
                "--nocapture",
            ])
            .env("FERRY_LAB_HOLD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let id = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("LAB_ID=").map(str::to_owned))
            .expect("the helper printed its lab id");
        assert!(
            !cleanup::leftovers(&id).is_empty(),
            "the helper's lab exists"
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the helper did not exit after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(signal), "it dies of the signal");
        assert_nothing_left(&id);
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_killed_test_process_is_swept_by_the_next_lab() {
    require_root!();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_a_lab_until_signalled",
            "--ignored",
            "--nocapture",
        ])
        .env("FERRY_LAB_HOLD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let id = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("LAB_ID=").map(str::to_owned))
        .expect("the helper printed its lab id");
    // SIGKILL: no handler runs, the lab stays behind.
    child.kill().unwrap();
    child.wait().unwrap();
    // Its lab stays behind (unless a lab of a parallel test swept it already): the next lab
    // sweeps it, since its owner is gone.
    println!("left by the killed process: {:?}", cleanup::leftovers(&id));
    let lab = Lab::new("a_killed_test_process_is_swept_by_the_next_lab");
    assert_nothing_left(&id);
    drop(lab);
}
