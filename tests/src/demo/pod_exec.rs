//! Running the demo's clients: in a pod (its network namespace, the lab cgroup so that ferry's
//! socket hooks translate Service addresses, and a private mount namespace whose
//! `/etc/resolv.conf` is the lab's, pointing at the cluster DNS), or in the external client's
//! namespace (network namespace only: outside the lab cgroup, so that only the programs on the
//! node's device can carry its traffic).

use std::{
    ffi::CString,
    fs::File,
    io,
    net::{SocketAddrV4, TcpStream},
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::process::CommandExt},
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    lab::{Lab, Pod},
    proc::{self, POLL, Placement},
};

/// Where a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// In a pod: its netns, the lab cgroup, the lab's resolv.conf.
    Pod,
    /// Outside the cluster: the namespace's network only.
    External,
}

/// Runs `program args` in `pod` as `side` says, killed after `timeout`. `resolv` is the lab's
/// resolv.conf (bind-mounted over /etc/resolv.conf for [`Side::Pod`]).
pub fn output(
    lab: &Lab,
    pod: &Pod,
    side: Side,
    resolv: &Path,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let placement = match side {
        Side::Pod => {
            with_resolv_conf(&mut cmd, resolv)?;
            Placement {
                netns: Some(pod.netns_path.clone()),
                cgroup: Some(lab.cgroup().to_path_buf()),
            }
        }
        Side::External => Placement {
            netns: Some(pod.netns_path.clone()),
            cgroup: None,
        },
    };
    proc::output_placed(&mut cmd, &placement, timeout)
        .with_context(|| format!("running {program} in {}", pod.name))
}

/// Makes the child enter a private mount namespace (nothing propagates back to the machine's)
/// and bind-mount `resolv` over /etc/resolv.conf there, as the kubelet gives a pod its own.
pub fn with_resolv_conf(cmd: &mut Command, resolv: &Path) -> Result<()> {
    let src = CString::new(resolv.as_os_str().as_bytes())?;
    // SAFETY: unshare(2) and mount(2) are async-signal-safe system calls; the strings were
    // allocated before the fork and are only read.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            let none = std::ptr::null();
            if libc::mount(none, c"/".as_ptr(), none, flags, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let bind = libc::MS_BIND;
            let target = c"/etc/resolv.conf".as_ptr();
            if libc::mount(src.as_ptr(), target, none, bind, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Waits until a TCP connection to `addr` from inside the namespace `netns` succeeds (the
/// server listens). A thread of ours enters the namespace (setns applies to the calling thread
/// only) and polls. Returns how long it took.
pub fn wait_tcp(netns: &Path, addr: SocketAddrV4, timeout: Duration) -> Result<Duration> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let start = Instant::now();
    let handle = thread::spawn(move || -> Result<Duration> {
        // SAFETY: setns on a namespace file we opened; it affects this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
        let mut last = None;
        while start.elapsed() < timeout {
            match TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)) {
                Ok(_) => return Ok(start.elapsed()),
                Err(e) => last = Some(e),
            }
            thread::sleep(POLL);
        }
        bail!(
            "nothing listens on {addr} after {timeout:?} ({})",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    });
    handle
        .join()
        .unwrap_or_else(|_| bail!("the readiness thread for {addr} panicked"))
}
