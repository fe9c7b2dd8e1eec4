//! `cargo xtask image`: ferry's OCI image, built with Debian's buildah without pulling anything.
//!
//! The image holds the agent binary (the eBPF object is embedded in it) and exactly the
//! shared libraries it links (glibc, libgcc_s, libm and the dynamic loader, from this
//! machine, as `ldd` names them), plus empty /proc, /sys, /dev and /tmp: no shell, no package
//! manager, nothing else. deploy/Dockerfile builds the same content from a registry
//! (a Rust build stage and distroless/cc) where one is reachable; this task is for machines
//! that reach none (and for the tests, which check the image by running it chrooted).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    toolchain::STABLE,
    util::{Cmd, root},
};

pub struct Options {
    /// The ferry binary to put in (default: a release build made now).
    pub binary: Option<PathBuf>,
    /// The image's name (default `localhost/ferry:<version>`).
    pub tag: Option<String>,
    /// buildah storage of its own (vfs driver), instead of the system's.
    pub storage: Option<PathBuf>,
}

/// The buildah command, on `storage` when given.
fn buildah(storage: Option<&Path>) -> Cmd {
    let mut cmd = Cmd::new("buildah");
    if let Some(dir) = storage {
        cmd.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs"]);
    }
    cmd
}

pub fn run(o: &Options) -> Result<()> {
    if crate::util::which("buildah").is_none() {
        bail!("buildah is missing: cargo xtask setup installs it (Debian's buildah)");
    }
    let binary = match &o.binary {
        Some(b) => b.clone(),
        None => {
            let mut cmd = Cmd::cargo(STABLE);
            cmd.args(["build", "--release", "-p", "agent"]).run()?;
            root().join("target/release/ferry")
        }
    };
    let version = Cmd::new(&binary).arg("--version").output()?;
    // "ferry 0.1.0 (abcdef123456)"
    let mut words = version.split_whitespace().skip(1);
    let release = words.next().unwrap_or("0.0.0").to_owned();
    let revision = words
        .next()
        .map(|r| r.trim_matches(|c| c == '(' || c == ')').to_owned())
        .unwrap_or_default();
    let tag = o
        .tag
        .clone()
        .unwrap_or_else(|| format!("localhost/ferry:{release}"));

    let staging = root().join(format!("target/image-rootfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result =
        stage(&binary, &staging).and_then(|()| commit(o, &staging, &tag, &release, &revision));
    let _ = fs::remove_dir_all(&staging);
    let id = result?;
    println!("{tag} {id}");
    eprintln!(
        "image: {tag} ({release}, revision {revision}); push it with\n    \
         buildah push {tag} docker://REGISTRY/ferry:{release}"
    );
    Ok(())
}

/// The image's files under `dir`.
fn stage(binary: &Path, dir: &Path) -> Result<()> {
    for d in ["usr/local/bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(binary, dir.join("usr/local/bin/ferry"))
        .with_context(|| format!("copying {}", binary.display()))?;
    for lib in libraries(binary)? {
        let to = dir.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(to.parent().expect("a library has a directory"))?;
        // The file itself, under the name the binary asks for (no symlink chains).
        fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(())
}

/// The shared libraries `ldd` resolves for `binary` (the vDSO has no file).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Cmd::new("ldd").arg(binary).output()?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        bail!("ldd named no library for {}: {out}", binary.display());
    }
    Ok(libs)
}

/// A scratch image holding `dir`; returns its id.
fn commit(o: &Options, dir: &Path, tag: &str, release: &str, revision: &str) -> Result<String> {
    let storage = o.storage.as_deref();
    let ctr = buildah(storage).args(["from", "scratch"]).output()?;
    let ctr = ctr.trim().to_owned();
    let result = (|| -> Result<String> {
        buildah(storage)
            .args(["copy", &ctr])
            .arg(format!("{}/", dir.display()))
            .arg("/")
            .output()?;
        buildah(storage)
            .args(["config", "--entrypoint", r#"["/usr/local/bin/ferry"]"#])
            .args(["--cmd", "agent", "--user", "0:0"])
            .args([
                "--label",
                &format!("org.opencontainers.image.version={release}"),
            ])
            .args([
                "--label",
                &format!("org.opencontainers.image.revision={revision}"),
            ])
            .args(["--label", "org.opencontainers.image.title=ferry"])
            .args(["--label", "org.opencontainers.image.licenses=Apache-2.0"])
            .arg(&ctr)
            .output()?;
        let id = buildah(storage)
            .args(["commit", "--rm", &ctr, tag])
            .output()?;
        Ok(id.trim().to_owned())
    })();
    if result.is_err() {
        let _ = buildah(storage).args(["rm", &ctr]).output();
    }
    result
}
