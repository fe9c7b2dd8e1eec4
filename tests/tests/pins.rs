//! The pin directory and the links in it cannot be broken from outside (issue 9, item 10):
//! the agent refuses a pin directory another user could write, creates its own 0700, mounts
//! bpffs 0700, repairs links another process detached or unpinned (and says so in
//! /healthz, /metrics and its log), and the read-only commands open maps read-only.

mod common;

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::*;
use ferry::{
    cmd::services::ServicesView,
    datapath::{Maps, pin_dir, snapshot::KernelState},
    paths::PinDir,
};
use ferry_tests::{
    AgentOpts, Lab, flood, flows,
    lab::HEALTHZ_PORT,
    proc::{self, Placement},
    require_root,
};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
/// The agent's link check period (`ferry::datapath::LINK_CHECK_PERIOD`) and slack.
const NOTICED_WITHIN: Duration = Duration::from_secs(5 + 3);
const NOBODY: u32 = 65534;

/// Runs `ferry agent` with `--bpffs pin_dir` and expects it to refuse to start; returns
/// what it printed.
fn agent_refuses(lab: &Lab, pin_dir: &Path) -> String {
    let out = lab.agent_until_exit(&AgentOpts::default(), pin_dir, Duration::from_secs(20));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the agent started with {}:\n{text}",
        pin_dir.display()
    );
    text
}

/// Nothing of ferry's got into the kernel: no pin, no program on the lab cgroup.
fn assert_nothing_attached(lab: &Lab, dir: &Path) {
    let pins: Vec<_> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        pins.is_empty(),
        "pinned into the refused directory: {pins:?}"
    );
    let attached = lab.bpftool_cgroup_show();
    assert!(!attached.contains("ferry_"), "attached:\n{attached}");
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn as_nobody(program: &str, args: &[&str]) {
    let ids = [format!("--reuid={NOBODY}"), format!("--regid={NOBODY}")];
    let mut all = vec![ids[0].as_str(), ids[1].as_str(), "--clear-groups", program];
    all.extend_from_slice(args);
    proc::run("setpriv", &all).unwrap_or_else(|e| panic!("as nobody: {e:#}"));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_pin_directory_owned_by_another_user_is_refused() {
    require_root!();
    let lab = Lab::new("a_pin_directory_owned_by_another_user_is_refused");
    let dir = lab.pin_dir();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = agent_refuses(&lab, &dir);
    println!("{out}");
    let want = format!("pin directory {}: owned by uid {NOBODY}", dir.display());
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains(&format!("fix: remove it (`rm -r {}`", dir.display())),
        "{out}"
    );
    assert_nothing_attached(&lab, &dir);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_group_or_world_writable_pin_directory_is_refused() {
    require_root!();
    let lab = Lab::new("a_group_or_world_writable_pin_directory_is_refused");
    let dir = lab.pin_dir();
    fs::create_dir(&dir).unwrap();
    for m in [0o770, 0o707, 0o777] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
        let out = agent_refuses(&lab, &dir);
        let want = format!("pin directory {}: mode {m:04o} lets", dir.display());
        assert!(out.contains(&want), "{out}");
        assert!(
            out.contains(&format!("`chmod 0700 {}`", dir.display())),
            "{out}"
        );
        assert_nothing_attached(&lab, &dir);
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_pin_directory_pre_created_on_a_world_writable_bpffs_is_refused() {
    require_root!();
    let lab = Lab::new("a_pin_directory_pre_created_on_a_world_writable_bpffs_is_refused");
    // The lab mounts its bpffs without options: the kernel's default mode, 1777.
    assert_eq!(
        mode(lab.bpffs()),
        0o1777,
        "the lab's bpffs is not the permissive kind"
    );

    // An unprivileged user gets there first (the issue's attack).
    let dir = lab.pin_dir();
    as_nobody("mkdir", &[&dir.to_string_lossy()]);
    let out = agent_refuses(&lab, &dir);
    println!("{out}");
    assert!(
        out.contains(&format!("{}: owned by uid {NOBODY}", dir.display())),
        "{out}"
    );
    assert_nothing_attached(&lab, &dir);

    // A root-owned pin directory under a parent that others may write (no sticky bit):
    // they could rename it away and put their own in its place.
    let shared = lab.bpffs().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let nested = shared.join("ferry");
    let out = agent_refuses(&lab, &nested);
    println!("{out}");
    let want = format!(
        "{}: its parent {} has mode 0777",
        nested.display(),
        shared.display()
    );
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains(&format!("`chmod go-w {}`", shared.display())),
        "{out}"
    );
    assert_nothing_attached(&lab, &nested);
}

/// Unmounts on drop (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a mount this test made, by path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_agents_own_bpffs_mount_is_root_only() {
    require_root!();
    let lab = Lab::new("the_agents_own_bpffs_mount_is_root_only");
    let at = lab.tmp_dir().join("own-bpffs");
    pin_dir::mount_bpffs(&at).expect("mounting bpffs");
    let _mounted = Mounted(at.clone());
    assert!(ferry::paths::is_on_bpffs(&at).unwrap());
    assert_eq!(mode(&at) & 0o777, 0o700, "mode {:04o}", mode(&at));
    // And what the agent creates in it passes its own check.
    pin_dir::prepare(&at.join("ferry")).expect("a fresh pin directory is accepted");
    assert_eq!(mode(&at.join("ferry")), 0o700);
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

fn healthz(lab: &Lab) -> (u16, Value) {
    let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
    let a = flood::http_get_in(
        &lab.node_netns_path(),
        addr,
        "/healthz",
        Duration::from_secs(2),
    )
    .expect("/healthz");
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

/// The id of the link pinned at `pin` (bpftool, another process).
fn link_id(pin: &Path) -> Option<u64> {
    let out = proc::run(
        "bpftool",
        &["-j", "link", "show", "pinned", &pin.to_string_lossy()],
    )
    .ok()?;
    serde_json::from_str::<Value>(&out).ok()?["id"].as_u64()
}

/// Polls the agent's metrics until `line` appears; the time it took.
fn wait_metric(lab: &Lab, line: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if metrics_text(lab).lines().any(|l| l == line) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < NOTICED_WITHIN,
            "no `{line}` after {NOTICED_WITHIN:?}; metrics:\n{}\nlog:\n{}",
            metrics_text(lab),
            lab.agent_log()
        );
        thread::sleep(proc::POLL);
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn links_detached_or_unpinned_by_another_process_are_repaired_and_reported() {
    require_root!();
    let lab = Lab::new("links_detached_or_unpinned_by_another_process_are_repaired_and_reported");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");
    let client = lab.add_pod("client");
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "before");
    let dir = lab.pin_dir();
    assert_eq!(
        mode(&dir),
        0o700,
        "the agent creates its pin directory 0700"
    );
    assert_eq!(fs::metadata(&dir).unwrap().uid(), 0);

    // An unprivileged user can neither unpin nor detach the connect hook any more.
    let conn4 = dir.join("ferry_link_conn4");
    let before = link_id(&conn4).expect("the connect hook's link");
    let shown = conn4.to_string_lossy().into_owned();
    for (program, args) in [
        ("rm", vec!["-f", shown.as_str()]),
        ("bpftool", vec!["link", "detach", "pinned", shown.as_str()]),
    ] {
        let ids = [format!("--reuid={NOBODY}"), format!("--regid={NOBODY}")];
        let mut all = vec![ids[0].as_str(), ids[1].as_str(), "--clear-groups", program];
        all.extend_from_slice(&args);
        let refused = proc::run("setpriv", &all).expect_err("an unprivileged user got through");
        println!("as uid {NOBODY}: {refused:#}");
    }
    assert_eq!(link_id(&conn4), Some(before), "untouched");

    // Another process with the privilege to do it detaches the hook and removes its pin.
    proc::run(
        "bpftool",
        &["link", "detach", "pinned", &conn4.to_string_lossy()],
    )
    .unwrap();
    fs::remove_file(&conn4).unwrap();
    println!(
        "detached and unpinned link {before}; lab cgroup now:\n{}",
        lab.bpftool_cgroup_show()
    );

    let took = wait_metric(
        &lab,
        r#"ferry_link_repairs_total{link="ferry_link_conn4",fault="detached"} 1"#,
    );
    println!(
        "latency: detached connect hook -> repaired and counted: {} ms",
        took.as_millis()
    );
    let after = link_id(&conn4).expect("pinned again");
    assert_ne!(after, before, "a new link");
    let attached = lab.bpftool_cgroup_show();
    assert!(attached.contains("ferry_conn4"), "{attached}");
    assert_all_ok(
        &lab.tcp(&client, &format!("{VIP}:80"), 3),
        "after the repair",
    );
    let (status, body) = healthz(&lab);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["links"]["repairs"], 1, "{body}");
    assert_eq!(body["links"]["broken"], serde_json::json!([]), "{body}");
    assert!(body["links"]["lastRepair"].is_string(), "{body}");
    assert!(metrics_text(&lab).contains("ferry_links_broken 0"));
    let log = lab.agent_log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("changed by someone else: repaired")
            && l.contains("ferry_link_conn4")
            && l.contains("detached")),
        "{log}"
    );

    // Only the pin goes: the agent's own descriptor keeps the link attached, and it is
    // pinned again.
    let send4 = dir.join("ferry_link_send4");
    let id = link_id(&send4).expect("the sendmsg hook's link");
    fs::remove_file(&send4).unwrap();
    assert!(
        lab.bpftool_cgroup_show().contains("ferry_send4"),
        "still attached"
    );
    let took = wait_metric(
        &lab,
        r#"ferry_link_repairs_total{link="ferry_link_send4",fault="unpinned"} 1"#,
    );
    println!(
        "latency: removed pin -> pinned again: {} ms",
        took.as_millis()
    );
    assert_eq!(link_id(&send4), Some(id), "the same link, pinned again");
    assert_eq!(healthz(&lab).1["links"]["repairs"], 2);

    // The egress guard (a cgroup_skb link, attached while a Service needs it) detached:
    // attached anew.
    let _guarded = apply_guarded(&lab, "guarded", "10.96.0.77");
    let guard = dir.join("ferry_link_guard4");
    let before = link_id(&guard).expect("the guard's link");
    proc::run(
        "bpftool",
        &["link", "detach", "pinned", &guard.to_string_lossy()],
    )
    .unwrap();
    wait_metric(
        &lab,
        r#"ferry_link_repairs_total{link="ferry_link_guard4",fault="detached"} 1"#,
    );
    assert_ne!(link_id(&guard), Some(before), "a new link");
    assert!(lab.bpftool_cgroup_show().contains("ferry_guard4"));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_read_only_commands_open_maps_read_only() {
    require_root!();
    let lab = Lab::new("the_read_only_commands_open_maps_read_only");
    let (b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");

    // The kernel refuses writes through what open_pinned returns.
    let mut maps = Maps::open_pinned(&PinDir::new(lab.pin_dir())).expect("opening the pins");
    let state = KernelState::read(&maps);
    assert_eq!(state.frontends.len(), 1, "reads work");
    let backend = agent_common::Backend4 {
        addr: 1,
        port: 1,
        proto: 6,
        state: 0,
        flags: 0,
        _pad: [0; 3],
    };
    let err = maps
        .backends
        .insert(&999_999, &backend, 0)
        .expect_err("a write through a read-only descriptor");
    let errno = match &err {
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    assert_eq!(errno, Some(libc::EPERM), "{err}");
    drop(maps);

    // With read access to the map pins and nothing more (root without the capabilities
    // that override file permissions), services, stats and conntrack still work.
    let dir = lab.pin_dir();
    let map_pins: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ferry_link_")
        })
        .collect();
    for p in &map_pins {
        fs::set_permissions(p, fs::Permissions::from_mode(0o400)).unwrap();
    }
    let pin = dir.to_string_lossy().into_owned();
    for cmd in ["services", "stats", "conntrack"] {
        let out = proc::output_placed(
            Command::new("setpriv")
                .args([
                    "--inh-caps=-all",
                    "--bounding-set=-dac_override,-dac_read_search",
                ])
                .arg(Lab::ferry_bin())
                .args([cmd, "--bpffs", &pin, "-o", "json"]),
            &Placement::default(),
            Duration::from_secs(30),
        )
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ferry {cmd} with read access only: {stderr}"
        );
        match cmd {
            "services" => {
                let v: ServicesView = serde_json::from_slice(&out.stdout).expect("JSON");
                assert!(
                    v.frontends
                        .iter()
                        .flat_map(|f| &f.backends)
                        .any(|b| b.address == Some(b1.ip.into())),
                    "{v:?}"
                );
            }
            "conntrack" => {
                flows::parse(&out.stdout).expect("JSON");
            }
            _ => {
                serde_json::from_slice::<Value>(&out.stdout).expect("JSON");
            }
        }
    }
    for p in &map_pins {
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    }
}
