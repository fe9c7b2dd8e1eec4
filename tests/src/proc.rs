//! Starting processes inside a lab and ending them again, by PID only.
//!
//! A child is placed before it runs: `pre_exec` joins a cgroup (writing "0" to its
//! `cgroup.procs`) and enters a network namespace (`setns`), both through file descriptors
//! opened before the fork, so the child does nothing but two system calls between fork and exec.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Poll interval used everywhere a condition is waited for.
pub const POLL: Duration = Duration::from_millis(10);

/// How long a terminated process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Where a child runs: a network namespace and/or a cgroup.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// A network namespace file (`/run/netns/NAME`) to enter.
    pub netns: Option<PathBuf>,
    /// A cgroup v2 directory to join.
    pub cgroup: Option<PathBuf>,
}

/// Spawns `cmd` placed as asked.
pub fn spawn_placed(cmd: &mut Command, placement: &Placement) -> io::Result<Child> {
    let ns = placement.netns.as_deref().map(File::open).transpose()?;
    let procs = placement
        .cgroup
        .as_deref()
        .map(|cg| OpenOptions::new().write(true).open(cg.join("cgroup.procs")))
        .transpose()?;
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure only calls write(2) and setns(2), both async-signal-safe, on file
    // descriptors that stay open until spawn returns (they are CLOEXEC, so the program does
    // not inherit them).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(ns);
    drop(procs);
    child
}

/// Runs `cmd` to completion, placed as asked; kills it (by PID) after `timeout`.
/// A timed-out run is reported on stderr and returns the killed process's status.
pub fn output_placed(
    cmd: &mut Command,
    placement: &Placement,
    timeout: Duration,
) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_placed(cmd, placement)?;
    let out = child.stdout.take().map(read_all_thread);
    let err = child.stderr.take().map(read_all_thread);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "lab: {cmd:?} still running after {timeout:?}: killing pid {}",
                child.id()
            );
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(POLL);
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out),
        stderr: join(err),
    })
}

fn read_all_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs a command in the current namespaces and fails with its stderr unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_placed(program, args, &Placement::default())
}

/// [`run`], placed as asked.
pub fn run_placed(program: &str, args: &[&str], placement: &Placement) -> Result<String> {
    let out = output_placed(
        Command::new(program).args(args),
        placement,
        Duration::from_secs(30),
    )
    .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A started process. Dropping the guard ends it (SIGTERM, SIGKILL after [`TERM_GRACE`]),
/// unless it was [`detach`](Proc::detach)ed. Its stdout, if piped, is read line by line.
pub struct Proc {
    pub(crate) inner: Arc<ProcInner>,
}

pub(crate) struct ProcInner {
    label: String,
    pid: u32,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    lines: Mutex<Option<Receiver<String>>>,
    detached: AtomicBool,
}

impl Proc {
    /// Wraps a spawned child; starts reading its stdout if it was piped.
    pub fn new(label: impl Into<String>, mut child: Child) -> Proc {
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let stdin = child.stdin.take();
        Proc {
            inner: Arc::new(ProcInner {
                label: label.into(),
                pid: child.id(),
                child: Mutex::new(child),
                stdin: Mutex::new(stdin),
                lines: Mutex::new(lines),
                detached: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn share(&self) -> Arc<ProcInner> {
        self.inner.clone()
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The next stdout line, waiting at most `timeout`. None on timeout or end of output.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        let lines = lock(&self.inner.lines);
        lines.as_ref()?.recv_timeout(timeout).ok()
    }

    /// Waits until a stdout line satisfies `pred`; returns it. Other lines are discarded.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left)?;
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// All stdout lines available now, without waiting.
    pub fn drain_lines(&self) -> Vec<String> {
        let lines = lock(&self.inner.lines);
        lines
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Writes one line to the child's stdin (if it was piped).
    pub fn send_line(&self, line: &str) -> io::Result<()> {
        let mut stdin = lock(&self.inner.stdin);
        let w = stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin not piped"))?;
        w.write_all(format!("{line}\n").as_bytes())?;
        w.flush()
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&self) {
        lock(&self.inner.stdin).take();
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.inner.child).try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_exit(timeout)
    }

    /// Ends the process: SIGTERM, then SIGKILL after `grace`. Returns its exit status.
    pub fn terminate_with(&self, grace: Duration) -> Option<ExitStatus> {
        self.inner.terminate(grace)
    }

    /// Ends the process: SIGTERM, then SIGKILL after [`TERM_GRACE`].
    pub fn terminate(&self) -> Option<ExitStatus> {
        self.inner.terminate(TERM_GRACE)
    }

    /// Leaves the process running when the guard (and the lab) are dropped.
    pub fn detach(&self) {
        self.inner.detached.store(true, Ordering::SeqCst);
    }
}

impl ProcInner {
    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }

    pub(crate) fn detach_inner(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// Sends SIGTERM unless the process was already reaped (so a reused PID is never hit).
    pub(crate) fn signal_term(&self) {
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        }
    }

    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = lock(&self.child).try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    pub(crate) fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        self.signal_term();
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        let mut child = lock(&self.child);
        eprintln!(
            "lab: {} (pid {}) ignored SIGTERM: killing it",
            self.label, self.pid
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.inner.is_detached() {
            self.inner.terminate(TERM_GRACE);
        }
    }
}

/// Locks a mutex even if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True if a process with this PID exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Ends a process that may not be our child (or whose `Child` we do not hold), by PID,
/// but only if its command line contains `must_contain` (a guard against a reused PID).
/// SIGTERM, then SIGKILL after `grace`. Returns false if the process was not ours.
pub fn terminate_pid(pid: u32, must_contain: &str, grace: Duration) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return true;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains(must_contain) {
        return false;
    }
    // SAFETY: kill(2) by PID on a process verified to be the lab's.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            break;
        }
        thread::sleep(POLL);
    }
    true
}

/// Resolves a program built next to the running executable: `<exe dir>/NAME` (bins run
/// from target/debug) or `<exe dir>/../NAME` (test binaries run from target/debug/deps).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
}

/// Like [`sibling_binary`], panicking with a build hint when missing.
pub fn lab_binary(name: &str) -> PathBuf {
    sibling_binary(name).unwrap_or_else(|| {
        panic!(
            "{name} not found next to {:?}: build it: cargo build -p ferry-tests",
            exe_dir()
        )
    })
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}
