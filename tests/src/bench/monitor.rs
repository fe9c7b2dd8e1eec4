//! `ferry-bench run --monitor`: ferry measured with `ferry monitor` listening, so that the cost
//! of the datapath's events (the programs writing them, the monitor reading and printing them)
//! shows against a run without it. The monitor prints JSON to /dev/null: its formatting is
//! part of the cost, as it would be on a node; nothing the bench reads depends on it.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ferry::{datapath::events::read_control, paths::PinDir};

use crate::{
    Lab,
    proc::{self, Placement},
};

/// A running `ferry monitor`; ended (SIGTERM) when dropped, which turns the events off.
pub struct Monitor {
    child: Child,
}

impl Monitor {
    /// Starts `ferry monitor --bpffs PIN_DIR -o json --no-agent` in the network namespace
    /// `netns` and waits until it holds the lease.
    pub fn start(netns: &Path, pin_dir: &Path) -> Result<Monitor> {
        let bin = Lab::ferry_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("monitor")
            .arg("--bpffs")
            .arg(pin_dir)
            .args(["-o", "json", "--no-agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let placement = Placement {
            netns: Some(netns.to_owned()),
            cgroup: None,
        };
        let child = proc::spawn_placed(&mut cmd, &placement)
            .with_context(|| format!("starting {} monitor", bin.display()))?;
        let mut m = Monitor { child };
        let pid = m.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = m.child.try_wait() {
                bail!("ferry monitor exited at start ({status})");
            }
            if read_control(&PinDir::new(pin_dir)).is_ok_and(|c| c.pid == pid) {
                eprintln!("bench: ferry monitor (pid {pid}) listening");
                return Ok(m);
            }
            if Instant::now() >= deadline {
                bail!("ferry monitor did not take the lease within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: a process this bench started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
