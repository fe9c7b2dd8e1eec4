//! `cargo xtask setup`: installs what is missing, idempotently, and says what it does.
//!
//! Pieces, in order: the pinned stable and nightly toolchains (rustup), the
//! `rustup override` for the checkout, Debian packages (LLVM for bpf-linker, lab
//! tools), bpf-linker built against the system LLVM, cargo-fuzz. Each piece is checked first
//! and skipped when present, so a complete machine costs about a second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Error, Result, anyhow, bail};

use crate::toolchain::{
    BPF_LINKER, CARGO_FUZZ, LLVM_MAJOR, NIGHTLY, NIGHTLY_COMPONENTS, STABLE, STABLE_COMPONENTS,
};
use crate::util::{Cmd, child_path, is_root, root, which};

/// Debian packages bpf-linker's build needs (`llvm-sys` links the system LLVM).
fn build_packages() -> Vec<String> {
    vec![
        format!("llvm-{LLVM_MAJOR}-dev"),
        format!("libpolly-{LLVM_MAJOR}-dev"),
        "zlib1g-dev".into(),
        "libzstd-dev".into(),
    ]
}

/// Debian packages the labs and tests use, with a command that proves each
/// one on machines without dpkg.
const LAB_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("socat", "socat"),
    ("netcat-openbsd", "nc"),
    ("iperf3", "iperf3"),
    ("redis-tools", "redis-cli"),
    ("python3", "python3"),
    ("procps", "ps"),
    ("util-linux", "nsenter"),
    // Builds ferry's image (cargo xtask image, tests/tests/image.rs).
    ("buildah", "buildah"),
];

/// Debian packages of the demo's servers and clients (`cargo xtask demo`, tests/tests/demo.rs).
/// Only their programs are used: the demo runs each server itself inside a lab namespace, with
/// its data and config in the lab's temporary directory. Installing them must not start the
/// system services some of them ship, see [`NoServiceStarts`].
const DEMO_PACKAGES: &[(&str, &str)] = &[
    ("mariadb-server", "mariadbd"),
    ("mariadb-client", "mariadb"),
    ("redis-server", "redis-server"),
    ("nginx", "nginx"),
    ("dnsmasq-base", "dnsmasq"),
    ("bind9-dnsutils", "dig"),
];

/// Debian packages of `cargo xtask bench`: the load tool, kube-proxy's two rule layouts
/// (loaded only inside lab namespaces, through `nsenter`), and the plots of
/// docs/benchmarks.md. The flood section's generator is the kernel's (BPF_PROG_RUN, or a veth
/// relay set up with the lab's `ip`, `ethtool` and `nsenter` where live frames are refused).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("gnuplot-nox", "gnuplot"),
];

/// Every apt package the lab, the demo and the bench use, with a command proving each one.
fn lab_packages() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    LAB_PACKAGES
        .iter()
        .chain(DEMO_PACKAGES)
        .chain(BENCH_PACKAGES)
}

/// apt lists younger than this are used without `apt-get update` (unless an install fails).
const APT_LISTS_FRESH: Duration = Duration::from_secs(6 * 3600);

/// Runs setup. `verbose` prints one line per piece; otherwise (when another
/// command calls it) a single summary line, plus whatever it installs.
pub fn run(verbose: bool) -> Result<()> {
    run_for(verbose, Scope::Everything)
}

/// What a command needs set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Building only (the image's build stage): toolchains, LLVM, bpf-linker.
    Build,
    /// Also the lab's, the demo's and the bench's packages, and cargo-fuzz.
    Everything,
}

/// [`run`] for `scope`.
pub fn run_for(verbose: bool, scope: Scope) -> Result<()> {
    let start = Instant::now();
    let mut s = Setup {
        verbose,
        scope,
        summary: Vec::new(),
    };
    s.rustup()?;
    let toolchains = Cmd::new("rustup").args(["toolchain", "list"]).output()?;
    s.toolchain(&toolchains, STABLE, STABLE_COMPONENTS)?;
    s.toolchain(&toolchains, NIGHTLY, NIGHTLY_COMPONENTS)?;
    s.rustup_override()?;
    s.apt()?;
    s.bpf_linker()?;
    if scope == Scope::Everything {
        s.cargo_fuzz()?;
        // Not an apt package everywhere (these machines ship it outside apt's sources): said,
        // not installed. The deploy/ rendering tests need it.
        if which("kubectl").is_none() {
            eprintln!(
                "setup: warning: no kubectl: tests/tests/deploy_manifests.rs renders deploy/ with it"
            );
        }
    }
    if verbose {
        eprintln!("setup: done in {:.1} s", start.elapsed().as_secs_f64());
    } else {
        eprintln!("setup: ok: {}", s.summary.join(", "));
    }
    Ok(())
}

struct Setup {
    verbose: bool,
    scope: Scope,
    summary: Vec<String>,
}

impl Setup {
    /// Records a piece that is in place: a line of its own when verbose.
    fn ok(&mut self, long: String, short: String) {
        if self.verbose {
            eprintln!("setup: ok: {long}");
        }
        self.summary.push(short);
    }

    fn rustup(&mut self) -> Result<()> {
        let version = Cmd::new("rustup").arg("--version").output().map_err(|e| {
            fix(
                e,
                "rustup is missing (looked in PATH and ~/.cargo/bin)",
                "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y",
            )
        })?;
        let version = version
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        self.ok(version, "rustup".into());
        Ok(())
    }

    /// Installs `name` with `components` unless present; adds missing components.
    fn toolchain(&mut self, list: &str, name: &str, components: &[&str]) -> Result<()> {
        let prefix = format!("{name}-");
        let present = list.lines().any(|l| {
            let t = l.split_whitespace().next().unwrap_or("");
            t == name || t.starts_with(&prefix)
        });
        let comps = components.join(",");
        if !present {
            eprintln!("setup: installing toolchain {name} (rustup)…");
            let mut cmd = Cmd::new("rustup");
            cmd.args(["toolchain", "install", name, "--profile", "minimal"])
                .args(["--component", &comps]);
            cmd.run().map_err(|e| {
                fix(
                    e,
                    &format!("could not install toolchain {name}"),
                    &cmd.display(),
                )
            })?;
        } else {
            let installed = Cmd::new("rustup")
                .args(["component", "list", "--toolchain", name, "--installed"])
                .output()?;
            let missing: Vec<&str> = components
                .iter()
                .copied()
                .filter(|c| {
                    let prefix = format!("{c}-");
                    !installed
                        .lines()
                        .map(str::trim)
                        .any(|l| l == *c || l.starts_with(&prefix))
                })
                .collect();
            if !missing.is_empty() {
                eprintln!(
                    "setup: adding {} to toolchain {name} (rustup)…",
                    missing.join(", ")
                );
                let mut cmd = Cmd::new("rustup");
                cmd.args(["component", "add", "--toolchain", name])
                    .args(&missing);
                cmd.run().map_err(|e| {
                    fix(
                        e,
                        &format!("could not add components to {name}"),
                        &cmd.display(),
                    )
                })?;
            }
        }
        self.ok(
            format!("toolchain {name} ({})", components.join(", ")),
            name.into(),
        );
        Ok(())
    }

    /// `rustup override set STABLE` for the checkout, so plain `cargo build` works.
    fn rustup_override(&mut self) -> Result<()> {
        let root = root().canonicalize().context("workspace root")?;
        let list = Cmd::new("rustup").args(["override", "list"]).output()?;
        let current = list.lines().find_map(|l| {
            let (path, toolchain) = l.split_once('\t')?;
            (Path::new(path.trim()) == root).then(|| toolchain.trim().to_owned())
        });
        let wanted = current
            .as_deref()
            .is_some_and(|t| t == STABLE || t.starts_with(&format!("{STABLE}-")));
        if !wanted {
            eprintln!("setup: rustup override set {STABLE} for {}", root.display());
            let mut cmd = Cmd::new("rustup");
            cmd.args(["override", "set", STABLE, "--path"]).arg(&root);
            cmd.run()
                .map_err(|e| fix(e, "could not set the rustup override", &cmd.display()))?;
        }
        self.ok(
            format!(
                "rustup override {STABLE} for {} (plain `cargo` uses it)",
                root.display()
            ),
            format!("override {STABLE}"),
        );
        Ok(())
    }

    fn apt(&mut self) -> Result<()> {
        let mut wanted = build_packages();
        if self.scope == Scope::Everything {
            wanted.extend(lab_packages().map(|(p, _)| p.to_string()));
        }
        let debian = Path::new("/etc/debian_version").exists();
        let missing = if debian {
            dpkg_missing(&wanted)?
        } else {
            probe_missing(self.scope)
        };
        if missing.is_empty() {
            self.ok(
                format!("{} system packages ({})", wanted.len(), wanted.join(" ")),
                format!("{} apt packages", wanted.len()),
            );
            return Ok(());
        }
        let list = missing.join(" ");
        let install = format!(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends {list}"
        );
        if !debian {
            bail!(
                "setup: missing system packages (Debian names): {list}. This machine is not \
                 Debian/Ubuntu, so setup cannot install them: install the equivalents with its \
                 package manager, then rerun"
            );
        }
        if !is_root() {
            bail!(
                "setup: missing apt packages: {list}. Installing them needs root. Fix:\n    \
                 sudo sh -c '{install}'\nthen rerun"
            );
        }
        eprintln!("setup: installing apt packages: {list}…");
        let mut updated = false;
        if !apt_lists_fresh() {
            apt_update()?;
            updated = true;
        }
        let llvm = format!("llvm-{LLVM_MAJOR}-dev");
        if missing.contains(&llvm) && !apt_candidate(&llvm) {
            if !updated {
                apt_update()?;
                updated = true;
            }
            if !apt_candidate(&llvm) {
                bail!(
                    "setup: {llvm} is not available from the configured apt sources \
                     (`apt-cache policy {llvm}` shows no candidate). bpf-linker {BPF_LINKER} \
                     must link LLVM {LLVM_MAJOR}, the LLVM of {NIGHTLY}. Fix: add a source \
                     that has it (Debian 12: bookworm-security, `deb \
                     http://deb.debian.org/debian-security bookworm-security main`; or \
                     apt.llvm.org's llvm-toolchain-<codename>-{LLVM_MAJOR}), then run:\n    \
                     {install}"
                );
            }
        }
        // mariadb-server, redis-server and nginx ship system services whose postinst starts
        // them: no service may start (the demo runs its own servers, in lab namespaces).
        let _no_starts = NoServiceStarts::install()?;
        let mut cmd = Cmd::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("RUNLEVEL", "1")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        if !cmd.run_ok()? {
            if !updated {
                eprintln!("setup: install failed with the cached apt lists; updating them…");
                apt_update()?;
            }
            cmd.run().map_err(|e| {
                fix(
                    e,
                    &format!("could not install apt packages {list}"),
                    &install,
                )
            })?;
        }
        let still = dpkg_missing(&wanted)?;
        if !still.is_empty() {
            bail!(
                "setup: apt-get did not install {}. Fix: {install}",
                still.join(" ")
            );
        }
        self.ok(
            format!("installed apt packages: {list}"),
            format!("{} apt packages", wanted.len()),
        );
        Ok(())
    }

    fn bpf_linker(&mut self) -> Result<()> {
        let reason = match probe_bpf_linker() {
            Linker::Ok(path, version, llvm) => {
                let llvm = llvm.map_or("llvm: static".to_owned(), |m| format!("llvm-{m}"));
                self.ok(
                    format!("{version} ({llvm}) at {}", path.display()),
                    format!("{version} ({llvm})"),
                );
                return Ok(());
            }
            Linker::Unusable(reason) => reason,
        };
        eprintln!(
            "setup: installing bpf-linker {BPF_LINKER} (llvm-{LLVM_MAJOR}; {reason}); takes ~1 min…"
        );
        let path = install_path();
        let install = |locked: bool| -> Result<bool> {
            let mut cmd = Cmd::cargo(STABLE);
            cmd.env("PATH", &path).args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER,
                "--force",
            ]);
            if locked {
                cmd.arg("--locked");
            }
            cmd.args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]);
            cmd.run_ok()
        };
        if !install(true)? {
            eprintln!("setup: `cargo install --locked` failed; retrying without --locked…");
            if !install(false)? {
                bail!(
                    "setup: could not build bpf-linker {BPF_LINKER} against LLVM {LLVM_MAJOR} \
                     (output above). Fix: PATH=/usr/lib/llvm-{LLVM_MAJOR}/bin:$PATH cargo \
                     +{STABLE} install bpf-linker --version {BPF_LINKER} --no-default-features \
                     --features llvm-{LLVM_MAJOR}"
                );
            }
        }
        match probe_bpf_linker() {
            Linker::Ok(path, version, llvm) => {
                let llvm = llvm.map_or("llvm: static".to_owned(), |m| format!("llvm-{m}"));
                eprintln!("setup: ok: {version} ({llvm}) at {}", path.display());
                self.summary.push(format!("{version} ({llvm})"));
                Ok(())
            }
            Linker::Unusable(reason) => bail!(
                "setup: bpf-linker is still unusable after installing it: {reason}. Another \
                 bpf-linker earlier in PATH? Fix: remove it, or put {} first in PATH",
                crate::util::cargo_bin_dir().display()
            ),
        }
    }
}

impl Setup {
    /// cargo-fuzz for `cargo xtask fuzz` and the gate's fuzz run (the pinned version).
    fn cargo_fuzz(&mut self) -> Result<()> {
        let found = which("cargo-fuzz").map(|path| {
            let version = Cmd::new(&path).arg("--version").try_output();
            (path, version.map(|v| v.trim().to_owned()))
        });
        let why = match &found {
            Some((path, Some(v))) if v.strip_prefix("cargo-fuzz ") == Some(CARGO_FUZZ) => {
                self.ok(format!("{v} at {}", path.display()), v.clone());
                return Ok(());
            }
            Some((_, Some(v))) => format!("found `{v}`"),
            Some((path, None)) => format!("{} --version fails", path.display()),
            None => "not installed".to_owned(),
        };
        eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ} ({why}); takes ~1 min…");
        let mut cmd = Cmd::cargo(STABLE);
        cmd.args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ,
            "--locked",
            "--force",
        ]);
        cmd.run()
            .map_err(|e| fix(e, "could not install cargo-fuzz", &cmd.display()))?;
        self.ok(
            format!("installed cargo-fuzz {CARGO_FUZZ}"),
            format!("cargo-fuzz {CARGO_FUZZ}"),
        );
        Ok(())
    }
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while apt-get runs, so that
/// `invoke-rc.d`/`deb-systemd-invoke` in the packages' postinst scripts start no service. An
/// existing policy-rc.d (a container's, or the admin's) is left as it is; ours is removed again
/// when the guard is dropped.
struct NoServiceStarts {
    /// Ours to remove on drop.
    written: Option<PathBuf>,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const POLICY_RC_D_TEXT: &str = "#!/bin/sh\n# Written by ferry's `cargo xtask setup` while it runs \
    apt-get (removed after): start no service.\nexit 101\n";

impl NoServiceStarts {
    fn install() -> Result<Self> {
        Self::install_at(Path::new(POLICY_RC_D))
    }

    fn install_at(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            // Someone else's stays; ours (left by a killed run) is removed after this one.
            let ours = std::fs::read_to_string(path).is_ok_and(|t| t == POLICY_RC_D_TEXT);
            return Ok(Self {
                written: ours.then(|| path.to_owned()),
            });
        }
        eprintln!(
            "setup: writing {} (exit 101) so that apt-get starts no service",
            path.display()
        );
        std::fs::write(path, POLICY_RC_D_TEXT)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("setup: writing {}", path.display()))?;
        Ok(Self {
            written: Some(path.to_owned()),
        })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.written
            && let Err(e) = std::fs::remove_file(path)
        {
            eprintln!(
                "setup: could not remove {}: {e}: remove it by hand",
                path.display()
            );
        }
    }
}

/// An error that names the piece and the exact command that fixes it.
fn fix(err: Error, what: &str, command: &str) -> Error {
    err.context(format!("setup: {what}. Fix:\n    {command}\nthen rerun"))
}

/// Which of `packages` dpkg does not list as installed.
fn dpkg_missing(packages: &[String]) -> Result<Vec<String>> {
    // dpkg-query exits 1 when some package is unknown but still prints the others.
    let out = std::process::Command::new("dpkg-query")
        .env("PATH", child_path())
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .stderr(std::process::Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let out = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = out
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect();
    Ok(packages
        .iter()
        .filter(|p| !installed.contains(&p.as_str()))
        .cloned()
        .collect())
}

/// Without dpkg: the lab tools by their commands, LLVM by its llvm-config.
fn probe_missing(scope: Scope) -> Vec<String> {
    let mut missing: Vec<String> = lab_packages()
        .filter(|_| scope == Scope::Everything)
        .filter(|(_, bin)| which(bin).is_none())
        .map(|(p, _)| p.to_string())
        .collect();
    let llvm_config = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin/llvm-config");
    if !Path::new(&llvm_config).exists() && which(&format!("llvm-config-{LLVM_MAJOR}")).is_none() {
        missing.insert(0, format!("llvm-{LLVM_MAJOR}-dev"));
    }
    missing
}

/// Whether `apt-get update` ran less than [`APT_LISTS_FRESH`] ago.
fn apt_lists_fresh() -> bool {
    let Ok(dir) = std::fs::read_dir("/var/lib/apt/lists") else {
        return false;
    };
    let newest = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    newest
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < APT_LISTS_FRESH)
}

fn apt_update() -> Result<()> {
    Cmd::new("apt-get").arg("update").run().map_err(|e| {
        fix(
            e,
            "`apt-get update` failed (network or /etc/apt/sources.list*)",
            "apt-get update",
        )
    })
}

/// Whether apt knows an installable version of `package`.
fn apt_candidate(package: &str) -> bool {
    Cmd::new("apt-cache")
        .args(["policy", package])
        .try_output()
        .is_some_and(|out| {
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("Candidate:"))
                .any(|c| c.trim() != "(none)")
        })
}

enum Linker {
    /// Path, `bpf-linker X.Y.Z`, LLVM major it links (None: not dynamically linked).
    Ok(PathBuf, String, Option<u32>),
    Unusable(String),
}

fn probe_bpf_linker() -> Linker {
    let Some(path) = which("bpf-linker") else {
        return Linker::Unusable("not installed".into());
    };
    let Some(version) = Cmd::new(&path).arg("--version").try_output() else {
        return Linker::Unusable(format!("{} --version fails", path.display()));
    };
    let version = version.trim().to_owned();
    let wanted = BPF_LINKER
        .rsplit_once('.')
        .map_or(BPF_LINKER, |(minor, _)| minor);
    if !version
        .strip_prefix("bpf-linker ")
        .is_some_and(|v| v.starts_with(&format!("{wanted}.")))
    {
        return Linker::Unusable(format!("found `{version}`, want {wanted}.x"));
    }
    let llvm = match Cmd::new("ldd").arg(&path).try_output() {
        Some(ldd) => match linked_llvm(&ldd) {
            Ok(m) => m,
            Err(e) => return Linker::Unusable(e.to_string()),
        },
        None => None,
    };
    if llvm.is_some_and(|m| m != LLVM_MAJOR) {
        return Linker::Unusable(format!(
            "it links LLVM {}, want {LLVM_MAJOR}",
            llvm.unwrap_or(0)
        ));
    }
    Linker::Ok(path, version, llvm)
}

/// The LLVM major in `ldd` output (`libLLVM.so.22.1` or `libLLVM-14.so.1`).
fn linked_llvm(ldd: &str) -> Result<Option<u32>> {
    let Some(line) = ldd.lines().find(|l| l.trim_start().starts_with("libLLVM")) else {
        return Ok(None);
    };
    if line.contains("not found") {
        return Err(anyhow!("its LLVM library is missing: {}", line.trim()));
    }
    let name = line.trim_start().trim_start_matches("libLLVM");
    let name = name.trim_start_matches(".so.").trim_start_matches('-');
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse().ok())
}

/// PATH for building bpf-linker: LLVM's llvm-config first.
fn install_path() -> std::ffi::OsString {
    let mut dirs = vec![PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"))];
    dirs.extend(std::env::split_paths(child_path()));
    std::env::join_paths(dirs).unwrap_or_else(|_| child_path().clone())
}

#[cfg(test)]
mod tests {
    use super::{NoServiceStarts, POLICY_RC_D_TEXT, linked_llvm};

    #[test]
    fn policy_rc_d_forbids_starts_while_apt_runs_and_leaves_others_alone() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-rc-d-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        {
            let _guard = NoServiceStarts::install_at(&path).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), POLICY_RC_D_TEXT);
            let status = std::process::Command::new(&path).status().unwrap();
            assert_eq!(
                status.code(),
                Some(101),
                "invoke-rc.d reads 101 as forbidden"
            );
        }
        assert!(!path.exists(), "ours is removed");
        std::fs::write(&path, "#!/bin/sh\nexit 101\n").unwrap();
        drop(NoServiceStarts::install_at(&path).unwrap());
        assert!(path.exists(), "someone else's stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn llvm_major_from_ldd() {
        let new = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x1)\n";
        assert_eq!(linked_llvm(new).unwrap(), Some(22));
        let old = "\tlibLLVM-14.so.1 => /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1 (0x1)\n";
        assert_eq!(linked_llvm(old).unwrap(), Some(14));
        assert_eq!(
            linked_llvm("\tlibc.so.6 => /lib/libc.so.6\n").unwrap(),
            None
        );
        assert!(linked_llvm("\tlibLLVM.so.22.1 => not found\n").is_err());
    }
}
