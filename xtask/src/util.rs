//! Running child commands: echo them, give them a sane environment, check their status.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of xtask's manifest directory.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`: where rustup's proxies and `cargo install` live.
pub fn cargo_bin_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH for every child: ours, with the cargo bin directory in front if it is missing.
pub fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
        let bin = cargo_bin_dir();
        if !dirs.contains(&bin) {
            dirs.insert(0, bin);
        }
        std::env::join_paths(dirs).unwrap_or(current)
    })
}

/// Finds `name` in the children's PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(child_path())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether we run with effective uid 0 (read from /proc: std has no geteuid).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Variables `cargo run` sets for xtask that must not leak into the cargo/rustup
/// children (RUSTUP_TOOLCHAIN would pin them to the toolchain that built xtask).
const SCRUB: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
];

/// A child command: echoed as `+ prog args` when run, inherited stdio, checked status.
pub struct Cmd {
    cmd: Command,
    shown_env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut cmd = Command::new(program);
        cmd.env("PATH", child_path()).current_dir(root());
        for key in SCRUB {
            cmd.env_remove(key);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CARGO_PKG_") {
                cmd.env_remove(key);
            }
        }
        Self {
            cmd,
            shown_env: Vec::new(),
        }
    }

    /// `cargo +TOOLCHAIN ...` through rustup's proxy.
    pub fn cargo(toolchain: &str) -> Self {
        let mut c = Self::new("cargo");
        c.arg(format!("+{toolchain}"));
        c
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets a variable and shows it in the echoed command line.
    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        let value = value.as_ref();
        self.shown_env
            .push((key.to_owned(), value.to_string_lossy().into_owned()));
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(&mut self, key: &str) -> &mut Self {
        self.cmd.env_remove(key);
        self
    }

    /// The command line as a shell would read it (for echo and errors).
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .shown_env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        parts.push(quote(&self.cmd.get_program().to_string_lossy()));
        parts.extend(self.cmd.get_args().map(|a| quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    /// Echoes and runs the command with inherited stdio; fails unless it exits 0.
    pub fn run(&mut self) -> Result<()> {
        eprintln!("+ {}", self.display());
        let status = self.status()?;
        check(status, &self.display())
    }

    /// Echoes and runs the command, passing each line of its stdout through
    /// `on_line` on the way to ours; fails unless it exits 0.
    pub fn run_tee(&mut self, mut on_line: impl FnMut(&str)) -> Result<()> {
        use std::io::{BufRead as _, Write as _};
        eprintln!("+ {}", self.display());
        let mut child = self
            .cmd
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut out = std::io::stdout().lock();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("reading the command's output")?;
            let _ = writeln!(out, "{line}");
            on_line(&line);
        }
        let status = child.wait().context("waiting for the command")?;
        check(status, &self.display())
    }

    /// Echoes and runs the command with its stdout and stderr written to `log`; returns
    /// whether it exited 0 (the caller reads the log).
    pub fn run_logged(&mut self, log: &Path) -> Result<bool> {
        eprintln!("+ {} > {}", self.display(), log.display());
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let status = self
            .cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .with_context(|| format!("cannot start `{}`", self.display()))?;
        Ok(status.success())
    }

    /// Echoes and runs the command; returns whether it exited 0 (for retries).
    pub fn run_ok(&mut self) -> Result<bool> {
        eprintln!("+ {}", self.display());
        Ok(self.status()?.success())
    }

    fn status(&mut self) -> Result<ExitStatus> {
        self.cmd
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("cannot start `{}`", self.display()))
    }

    /// Runs silently and returns stdout; fails (with its stderr) unless it exits 0.
    pub fn output(&mut self) -> Result<String> {
        let out = self
            .cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start `{}`", self.display()))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Cmd::output`], but `None` when it cannot start or fails.
    pub fn try_output(&mut self) -> Option<String> {
        self.output().ok()
    }
}

fn check(status: ExitStatus, shown: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{shown}` failed ({status})")
    }
}

/// Shell-style quoting, for display only.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=+:,@%".contains(c));
    if plain {
        return s.to_owned();
    }
    if s.chars().any(|c| c.is_control()) {
        // e.g. CARGO_ENCODED_RUSTFLAGS' \x1f separators: bash's $'...' form.
        let inner: String = s
            .chars()
            .map(|c| match c {
                '\'' => "\\'".to_owned(),
                '\\' => "\\\\".to_owned(),
                c if c.is_control() => format!("\\x{:02x}", c as u32),
                c => c.to_string(),
            })
            .collect();
        return format!("$'{inner}'");
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Seconds since `start`, for summaries.
pub fn secs(start: std::time::Instant) -> String {
    format!("{:.0} s", start.elapsed().as_secs_f64())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}
