//! `ferry preflight` (issue 13): one line per requirement, with the cause and the fix, and a
//! failing exit when one is not met. Run in a lab's node namespace against the lab's own bpffs
//! and cgroup, then against a directory that is no bpffs, and beside a running agent that holds
//! kube-proxy's health port (what a node still running kube-proxy looks like to ferry).

mod common;

use std::{path::Path, process::Output, time::Duration};

use common::*;
use ferry_tests::{Lab, netns, require_root};

fn preflight(lab: &Lab, bpffs: &Path, ports: [&str; 2]) -> (Output, String) {
    let bin = Lab::ferry_bin();
    let (bpffs, cgroup) = (bpffs.to_string_lossy(), lab.cgroup().to_string_lossy());
    let args = [
        "preflight",
        "--bpffs",
        &bpffs,
        "--cgroup",
        &cgroup,
        "--healthz-bind-address",
        ports[0],
        "--metrics-bind-address",
        ports[1],
    ];
    let out = netns::output(
        lab.node_netns(),
        &bin.to_string_lossy(),
        &args,
        Duration::from_secs(30),
    )
    .expect("running ferry preflight");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("ferry preflight --bpffs {bpffs}:\n{text}");
    (out, text)
}

fn line<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn preflight_names_each_unmet_requirement_with_its_fix() {
    require_root!();
    let lab = Lab::new("preflight_names_each_unmet_requirement_with_its_fix");
    let ports = ["0.0.0.0:10256", "127.0.0.1:10249"];

    // The lab meets every requirement.
    let (out, text) = preflight(&lab, &lab.pin_dir(), ports);
    assert!(out.status.success(), "{text}");
    for what in ["privilege", "btf", "bpffs", "cgroup2", "port"] {
        assert!(line(&text, what).starts_with("ok "), "{what}:\n{text}");
    }
    assert!(
        text.lines().filter(|l| l.contains(" kernel ")).count() >= 3,
        "one line per kernel feature:\n{text}"
    );

    // A pin directory on no bpffs: the line says so and how to mount one; the exit fails.
    let plain = lab.tmp_dir().join("pins");
    let (out, text) = preflight(&lab, &plain, ports);
    assert!(!out.status.success(), "{text}");
    let bpffs = line(&text, "bpffs");
    assert!(
        bpffs.starts_with("FAIL") && bpffs.contains("not on a bpf filesystem"),
        "{bpffs}"
    );
    assert!(bpffs.contains("mount -t bpf"), "{bpffs}");

    // Something holds the health port (here a running agent, on a node kube-proxy itself).
    let (svc, slice) = simple("web", "10.96.0.10", 80, 8080, &[]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    let (out, text) = preflight(&lab, &lab.pin_dir(), ports);
    assert!(!out.status.success(), "{text}");
    let port = text
        .lines()
        .find(|l| l.contains("0.0.0.0:10256"))
        .unwrap_or_else(|| panic!("no line for 10256:\n{text}"));
    assert!(
        port.starts_with("FAIL")
            && port.contains("in use")
            && port.contains("--healthz-bind-address"),
        "{port}"
    );
}

/// Migration: while another process (kube-proxy) holds the health port, the agent does not
/// exit: it programs the kernel, says why /healthz is not its own yet, and serves it once the
/// port is free (kube-proxy retries its own servers the same way).
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_agent_waits_for_a_port_kube_proxy_still_holds() {
    require_root!();
    let lab = Lab::new("the_agent_waits_for_a_port_kube_proxy_still_holds");
    let (svc, slice) = simple("web", "10.96.0.10", 80, 8080, &[]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    let hold = "import socket, sys\n\
                s = socket.socket()\n\
                s.bind(('0.0.0.0', 10256))\n\
                s.listen()\n\
                print('held', flush=True)\n\
                sys.stdin.readline()\n";
    let holder = lab.spawn_interactive(&lab.host(), "python3", &["-c", hold]);
    holder
        .wait_line(Duration::from_secs(10), |l| l == "held")
        .expect("the holder bound 10256");

    std::thread::scope(|s| {
        let agent = s.spawn(|| start_agent(&lab));
        // The agent runs and says why the port is not its own; only then is the port freed.
        let waited = std::time::Instant::now();
        while !lab.agent_log().contains("the port is in use") {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "no warning about the held port:\n{}",
                lab.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = lab.agent_log();
        assert!(log.contains("kube-proxy still running"), "{log}");
        holder.send_line("").expect("releasing the port");
        drop(holder);
        let took = agent.join().expect("the agent became ready");
        report("port freed -> agent ready", took);
    });
    let log = lab.agent_log();
    assert!(log.contains("healthz server listening"), "{log}");
    assert!(
        log.find("socket hook").unwrap() < log.find("healthz server listening").unwrap(),
        "the datapath did not wait for the port:\n{log}"
    );
}
