//! Every filesystem path and kernel object name the agent uses.

use std::{
    io,
    path::{Path, PathBuf},
};

pub use agent_common::maps as map_names;

/// Where maps and links are pinned unless `--bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/ferry";
/// The conventional bpffs mount point; the agent mounts one there (mode 0700,
/// as systemd does) when the default pin directory is used and nothing is.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// statfs(2) f_type of a bpf filesystem.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// statfs(2) f_type of cgroup v2.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The socket-layer programs: (ELF function name, link pin name).
pub const SOCK_PROGRAMS: &[(&str, &str)] = &[
    ("ferry_conn4", "ferry_link_conn4"),
    ("ferry_send4", "ferry_link_send4"),
    ("ferry_recv4", "ferry_link_recv4"),
    ("ferry_peer4", "ferry_link_peer4"),
    ("ferry_conn6", "ferry_link_conn6"),
    ("ferry_send6", "ferry_link_send6"),
    ("ferry_recv6", "ferry_link_recv6"),
    ("ferry_peer6", "ferry_link_peer6"),
];

/// The egress guard beside them (cgroup_skb/egress): (ELF function name,
/// link pin name).
pub const GUARD_PROGRAM: (&str, &str) = ("ferry_guard4", "ferry_link_guard4");

/// The socket release hook (cgroup/sock_release, both families): deletes a
/// closing socket's reverse entry. (ELF function name, link pin name.)
pub const RELEASE_PROGRAM: (&str, &str) = ("ferry_release", "ferry_link_release");

/// Every program ferry attaches to the cgroup, with its link pin name: the
/// guard first, so that no socket a hook marks is ever without it; the
/// release hook before the hooks that write the entries it deletes.
pub fn cgroup_programs() -> impl Iterator<Item = (&'static str, &'static str)> {
    [GUARD_PROGRAM, RELEASE_PROGRAM]
        .into_iter()
        .chain(SOCK_PROGRAMS.iter().copied())
}

/// The north-south TC programs (ELF function names).
pub const TC_INGRESS: &str = "ferry_tc_in";
pub const TC_EGRESS: &str = "ferry_tc_out";
/// The program on the devices the node reaches its local endpoints through.
pub const TC_POD: &str = "ferry_tc_pod";
/// The north-south fast path before the skb (`--acceleration`).
pub const XDP: &str = "ferry_xdp";
pub const TC_POD_OUT: &str = "ferry_tc_pod_out";

/// The kernel keeps 15 characters of a program's name (BPF_OBJ_NAME_LEN).
const KERNEL_NAME_LEN: usize = 15;

/// Every program ferry loads (ELF function names).
pub fn programs() -> impl Iterator<Item = &'static str> {
    cgroup_programs()
        .map(|(program, _)| program)
        .chain([TC_INGRESS, TC_EGRESS, TC_POD, TC_POD_OUT, XDP])
}

/// A ferry program's ELF name from the name the kernel reports, which it
/// cuts to 15 characters (`ferry_tc_pod_ou` is `ferry_tc_pod_out`); None
/// for a name no ferry program has.
pub fn program_named(kernel_name: &str) -> Option<&'static str> {
    programs().find(|p| {
        *p == kernel_name || (kernel_name.len() == KERNEL_NAME_LEN && p.starts_with(kernel_name))
    })
}

/// Pin directory layout.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn link(&self, pin_name: &str) -> PathBuf {
        self.root.join(pin_name)
    }
}

/// True when `path` (or its nearest existing ancestor) is on a bpf filesystem.
pub fn is_on_bpffs(path: &Path) -> io::Result<bool> {
    let mut p = path;
    loop {
        if p.exists() {
            return statfs_magic(p).map(|m| m == BPF_FS_MAGIC);
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return Ok(false),
        }
    }
}

/// statfs(2) f_type of the filesystem holding `path`.
pub fn statfs_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The cgroup v2 mount point (see [`crate::mountinfo`]).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    crate::mountinfo::cgroup2_mount()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem is mounted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_name_one_program_each() {
        for p in programs() {
            let kernel = &p[..p.len().min(KERNEL_NAME_LEN)];
            assert_eq!(program_named(kernel), Some(p), "{kernel}");
        }
        assert_eq!(program_named("ferry_tc_pod_ou"), Some(TC_POD_OUT));
        assert_eq!(program_named("ferry_tc_pod"), Some(TC_POD));
        assert_eq!(program_named("ferry_tc"), None);
        assert_eq!(program_named("bpf_prog"), None);
    }
}
