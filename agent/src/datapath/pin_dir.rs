//! The pin directory must be the agent's alone. Whoever can write to it can
//! unlink ferry's link pins, which detaches its programs (an unprivileged
//! user who pre-created /sys/fs/bpf/ferry on a world-writable bpffs did just
//! that). So the agent creates it with mode 0700, mounts a bpffs of its own
//! with mode 0700, and refuses a directory that another user owns or that
//! group or others may write, and one whose parents (up to the bpffs root)
//! would let someone else rename it away.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::Path,
};

use tracing::info;

use crate::{
    error::{Error, Result},
    paths,
};

const S_ISVTX: u32 = 0o1000;

/// Makes sure `dir` exists on a bpf filesystem and is safe to pin into.
/// The default location gets a bpffs mounted at /sys/fs/bpf when none is (as
/// Cilium does); anywhere else is the operator's choice and only checked.
pub fn prepare(dir: &Path) -> Result<()> {
    let on_bpffs = paths::is_on_bpffs(dir).map_err(|source| Error::PinDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !on_bpffs {
        let mount = Path::new(paths::BPFFS_MOUNT);
        if dir.starts_with(mount) && !paths::is_on_bpffs(mount).unwrap_or(false) {
            mount_bpffs(mount)?;
        } else {
            return Err(Error::NotBpffs {
                path: dir.to_path_buf(),
                mount: paths::BPFFS_MOUNT.to_string(),
            });
        }
    }
    create(dir)?;
    check(dir)
}

/// Creates the missing directories of `dir`, each with mode 0700.
fn create(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => info!(path = %d.display(), "created the pin directory (mode 0700)"),
            // Made by someone else meanwhile: `check` judges it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::PinDir {
                    path: d.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn unsafe_dir(path: &Path, problem: String, fix: String) -> Error {
    Error::UnsafePinDir {
        path: path.to_path_buf(),
        problem,
        fix,
    }
}

/// Refuses `dir` unless only the agent's user can change it or its parents
/// on the same filesystem.
pub fn check(dir: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let stat = |p: &Path| {
        fs::symlink_metadata(p).map_err(|source| Error::PinDir {
            path: p.to_path_buf(),
            source,
        })
    };
    let md = stat(dir)?;
    if md.file_type().is_symlink() {
        return Err(unsafe_dir(
            dir,
            "a symbolic link".into(),
            "give --bpffs the directory it points to".into(),
        ));
    }
    if !md.is_dir() {
        return Err(unsafe_dir(
            dir,
            "not a directory".into(),
            "remove it or choose another --bpffs".into(),
        ));
    }
    let shown = dir.display();
    if md.uid() != me {
        return Err(unsafe_dir(
            dir,
            format!(
                "owned by uid {}, not by uid {me} that the agent runs as: its owner can \
                 unpin ferry's programs and maps",
                md.uid()
            ),
            format!(
                "remove it (`rm -r {shown}`, which also unpins what is in it) and let the agent \
                 create it with mode 0700"
            ),
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            dir,
            format!(
                "mode {:04o} lets group or others unpin ferry's programs and maps",
                md.mode() & 0o7777
            ),
            format!("`chmod 0700 {shown}`"),
        ));
    }
    // The parents, up to the root of this filesystem: whoever may write one
    // can rename the pin directory away and put their own in its place.
    let real = fs::canonicalize(dir).map_err(|source| Error::PinDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for parent in real.ancestors().skip(1) {
        let pm = stat(parent)?;
        if pm.dev() != md.dev() {
            break;
        }
        let shown_parent = parent.display();
        if pm.uid() != me && pm.uid() != 0 {
            return Err(unsafe_dir(
                dir,
                format!(
                    "its parent {shown_parent} is owned by uid {}, who can replace it",
                    pm.uid()
                ),
                format!("`chown 0 {shown_parent}`, or choose a --bpffs under root's directories"),
            ));
        }
        if pm.mode() & 0o022 != 0 && pm.mode() & S_ISVTX == 0 {
            return Err(unsafe_dir(
                dir,
                format!(
                    "its parent {shown_parent} has mode {:04o}: group or others can rename the \
                     pin directory away and put their own in its place",
                    pm.mode() & 0o7777
                ),
                format!(
                    "`chmod go-w {shown_parent}` (a bpffs mounted without mode=0700 is \
                     world-writable)"
                ),
            ));
        }
    }
    Ok(())
}

/// Mounts a new bpf filesystem at `at`, writable only by root (the kernel's
/// default mode for a bpffs root is 1777).
pub fn mount_bpffs(at: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let failed = |source| Error::PinDir {
        path: at.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(at)
        .map_err(failed)?;
    let target = std::ffi::CString::new(at.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    info!(path = %at.display(), "mounted a bpf filesystem (mode 0700)");
    Ok(())
}
