//! The demo as a test: `ferry-demo` (gin-vue-admin's network on one machine, what
//! `cargo xtask demo` runs) must exit 0 with every report line `ok`, and leave nothing behind.

use std::{
    io::Read,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ferry_tests::{cleanup, require_root};

/// Far above the demo's warm time (under 30 s): only a hang trips it.
const DEADLINE: Duration = Duration::from_secs(180);

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn demo_reports_every_line_ok() {
    require_root!();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-demo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ferry-demo");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ferry-demo") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            // SIGTERM: the demo removes its lab on the way out.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            break child.wait().expect("waiting for ferry-demo");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    println!("{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        status.success() && failed.is_empty() && stdout.contains("ok    cleanup"),
        "ferry-demo {status} after {:?}; failed lines:\n{}\nstderr:\n{stderr}",
        start.elapsed(),
        failed.join("\n")
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ok    lab")?.split_whitespace().next())
        .expect("the report names its lab");
    let left = cleanup::leftovers(id);
    assert!(left.is_empty(), "the demo left {left:?}");
}
