//! Removing a lab: from its `Drop`, on SIGINT/SIGTERM/SIGHUP of the test process, or later by
//! id (`ferry-demo --down`, or a lab left behind by a killed test process).
//!
//! Every live lab is described by a [`Record`] kept in a global registry and mirrored to
//! `/tmp/ferry-lab-<id>/lab.json`. [`teardown`] works from a record alone and is idempotent.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex, Once,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup, netns,
    proc::{self, Placement, lock},
};

/// Prefix of lab tmp dirs and cgroup dirs.
pub const LAB_PREFIX: &str = "ferry-lab-";

/// What must be removed for one lab.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The process that created the lab; a lab whose owner is gone and that was not kept is stale.
    pub owner_pid: u32,
    /// Left running on purpose (`ferry-demo --keep`): only removed by [`down`].
    pub kept: bool,
    pub tmp: PathBuf,
    pub bpffs_mount: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub netns: Vec<String>,
    pub agent_pid: Option<u32>,
    /// `ferry cleanup` to run once an agent has been started: (binary, pin dir, cgroup).
    pub ferry_cleanup: Option<(PathBuf, PathBuf, PathBuf)>,
    /// A multi-node lab: the agents running per node (node name -> PID).
    #[serde(default)]
    pub node_agents: BTreeMap<String, u32>,
    /// A multi-node lab: `ferry cleanup` per node (binary, pin dir, node cgroup).
    #[serde(default)]
    pub node_cleanups: Vec<(PathBuf, PathBuf, PathBuf)>,
    /// Cgroups inside the lab cgroup (the nodes' of a multi-node lab), removed before it.
    #[serde(default)]
    pub child_cgroups: Vec<PathBuf>,
}

impl Record {
    pub fn tmp_dir(id: &str) -> PathBuf {
        PathBuf::from(format!("/tmp/{LAB_PREFIX}{id}"))
    }

    pub fn netns_prefix(id: &str) -> String {
        format!("fy{id}-")
    }

    fn save(&self) {
        let path = self.tmp.join("lab.json");
        let tmp = self.tmp.join(".lab.json.tmp");
        let Ok(text) = serde_json::to_string_pretty(self) else {
            return;
        };
        if fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .is_err()
        {
            eprintln!("lab {}: could not write {}", self.id, path.display());
        }
    }
}

static LABS: Mutex<BTreeMap<String, Record>> = Mutex::new(BTreeMap::new());

/// Adds a live lab to the registry (and installs the signal handlers on first use).
pub fn register(rec: Record) {
    install_signal_handlers();
    rec.save();
    lock(&LABS).insert(rec.id.clone(), rec);
}

/// Changes a registered lab's record.
pub fn update(id: &str, f: impl FnOnce(&mut Record)) {
    let mut labs = lock(&LABS);
    if let Some(rec) = labs.get_mut(id) {
        f(rec);
        rec.save();
    }
}

/// A registered lab's record.
pub fn get(id: &str) -> Option<Record> {
    lock(&LABS).get(id).cloned()
}

pub fn unregister(id: &str) {
    lock(&LABS).remove(id);
}

/// Removes everything a record names. Returns the errors met (it never panics).
pub fn teardown(rec: &Record) -> Vec<String> {
    let mut errors = Vec::new();
    for pid in rec.agent_pid.iter().chain(rec.node_agents.values()) {
        if !proc::terminate_pid(*pid, &rec.id, Duration::from_secs(5)) {
            errors.push(format!(
                "pid {pid} is no longer the lab's agent: left alone"
            ));
        }
    }
    for (bin, pin, cg) in rec.ferry_cleanup.iter().chain(&rec.node_cleanups) {
        if (pin.exists() || cg.exists()) && bin.is_file() {
            ferry_cleanup(bin, pin, cg, &mut errors);
        }
    }
    let cgroups = lab_cgroups(rec);
    for cg in &cgroups {
        cgroup::kill_all(cg, Duration::from_secs(5));
    }
    let mut names = rec.netns.clone();
    names.extend(netns::list_with_prefix(&Record::netns_prefix(&rec.id)));
    names.sort();
    names.dedup();
    for name in names {
        if let Err(e) = netns::del(&name) {
            errors.push(format!("{e:#}"));
        }
    }
    for cg in &cgroups {
        if let Err(e) = cgroup::remove(cg, Duration::from_secs(5)) {
            errors.push(format!("{e:#}"));
        }
    }
    let mounted =
        cgroup::is_mount_point(&rec.bpffs_mount) && !unmount(&rec.bpffs_mount, &mut errors);
    if mounted {
        errors.push(format!(
            "{} still mounted: {} kept",
            rec.bpffs_mount.display(),
            rec.tmp.display()
        ));
    } else if rec.tmp.exists()
        && let Err(e) = fs::remove_dir_all(&rec.tmp)
    {
        errors.push(format!("removing {}: {e}", rec.tmp.display()));
    }
    errors
}

/// The lab's cgroups, children first: the recorded ones and any directory found inside the lab
/// cgroup (only the lab creates cgroups there), then the lab cgroup itself.
fn lab_cgroups(rec: &Record) -> Vec<PathBuf> {
    let mut all = rec.child_cgroups.clone();
    if let Some(cg) = &rec.cgroup {
        if let Ok(dir) = fs::read_dir(cg) {
            for e in dir.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) && !all.contains(&e.path()) {
                    all.push(e.path());
                }
            }
        }
        all.push(cg.clone());
    }
    all
}

/// `ferry cleanup --bpffs PIN --cgroup CG`: detaches and unpins what an agent left.
fn ferry_cleanup(bin: &Path, pin: &Path, cg: &Path, errors: &mut Vec<String>) {
    let mut cmd = Command::new(bin);
    cmd.arg("cleanup")
        .arg("--bpffs")
        .arg(pin)
        .arg("--cgroup")
        .arg(cg);
    match proc::output_placed(&mut cmd, &Placement::default(), Duration::from_secs(30)) {
        Ok(out) if out.status.success() => {}
        Ok(out) => errors.push(format!(
            "ferry cleanup failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => errors.push(format!("ferry cleanup: {e}")),
    }
}

/// Unmounts; returns true if it is no longer mounted.
fn unmount(path: &Path, errors: &mut Vec<String>) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: umount2 with a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: as above; a lazy unmount detaches it even if something still holds it.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            errors.push(format!("umount {}: {e}", path.display()));
            return false;
        }
    }
    !cgroup::is_mount_point(path)
}

/// Removes a lab by id: from its `lab.json` when present, else from the naming conventions.
pub fn down(id: &str) -> Vec<String> {
    let tmp = Record::tmp_dir(id);
    let rec = fs::read_to_string(tmp.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Record>(&t).ok())
        .unwrap_or_else(|| Record {
            id: id.to_owned(),
            bpffs_mount: tmp.join("bpffs"),
            cgroup: cgroup::cgroup2_mount()
                .ok()
                .map(|m| m.join(format!("{LAB_PREFIX}{id}"))),
            tmp,
            ..Record::default()
        });
    teardown(&rec)
}

/// Removes labs whose creating process is gone (killed before it could clean up), except kept
/// ones. Live labs of other processes are left alone.
pub fn sweep_stale() {
    let Ok(dir) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(LAB_PREFIX) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(entry.path().join("lab.json")) else {
            continue;
        };
        let Ok(rec) = serde_json::from_str::<Record>(&text) else {
            continue;
        };
        if rec.id != id || rec.kept || proc::pid_alive(rec.owner_pid) {
            continue;
        }
        eprintln!(
            "lab: removing stale lab {id} (its test process {} is gone)",
            rec.owner_pid
        );
        for e in teardown(&rec) {
            eprintln!("lab {id}: {e}");
        }
    }
}

/// What is left of a lab on the machine (empty when it is fully removed).
pub fn leftovers(id: &str) -> Vec<String> {
    let mut left: Vec<String> = netns::list_with_prefix(&Record::netns_prefix(id))
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    if let Ok(mount) = cgroup::cgroup2_mount() {
        let cg = mount.join(format!("{LAB_PREFIX}{id}"));
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    let tmp = Record::tmp_dir(id);
    if cgroup::is_mount_point(&tmp.join("bpffs")) {
        left.push(format!("mount {}/bpffs", tmp.display()));
    }
    if tmp.exists() {
        left.push(format!("dir {}", tmp.display()));
    }
    left
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT/SIGTERM/SIGHUP arrived and the live labs are being removed.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}
static INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe stays open for the process' life.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove every live lab of this process, then die of the signal.
/// The handler only writes the signal number to a pipe; a thread does the work.
fn install_signal_handlers() {
    INSTALL.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!("lab: pipe2 failed: labs will not be removed on signals");
            return;
        }
        let read_fd = fds[0];
        SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("lab-signals".into())
            .spawn(move || {
                loop {
                    let mut byte = 0u8;
                    // SAFETY: reading one byte into a local.
                    let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
                    if n != 1 {
                        continue;
                    }
                    let sig = libc::c_int::from(byte);
                    SIGNALLED.store(true, Ordering::SeqCst);
                    let labs: Vec<Record> = lock(&LABS).values().cloned().collect();
                    eprintln!("lab: signal {sig}: removing {} live lab(s)", labs.len());
                    for rec in &labs {
                        for e in teardown(rec) {
                            eprintln!("lab {}: {e}", rec.id);
                        }
                    }
                    // SAFETY: restore the default action and re-raise, so the process dies of the
                    // signal as it would have without us.
                    unsafe {
                        libc::signal(sig, libc::SIG_DFL);
                        libc::raise(sig);
                    }
                }
            });
        if spawned.is_err() {
            eprintln!("lab: could not start the signal thread");
            return;
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}
