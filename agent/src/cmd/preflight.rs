//! `ferry preflight`: every requirement of the agent checked once, one line
//! each with the cause and the fix, without starting anything. The agent runs
//! the same checks at start and logs what is not ok, so a failure later (a
//! verifier error, `Permission denied` from bpf(2)) comes after a line that
//! already named its cause.

use std::{
    fmt,
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
};

use crate::{cli::PreflightArgs, paths};

/// Capability bits (linux/capability.h) the DaemonSet grants.
const CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];
/// Kernel features by the release that brought them, and what their absence costs.
const KERNEL: [(u32, u32, &str, Status, &str); 3] = [
    (
        5,
        18,
        "socket programs (bpf_set_retval)",
        Status::Fail,
        "ClusterIP translation cannot load",
    ),
    (
        6,
        5,
        "UDP socket destroy (bpf_sock_destroy)",
        Status::Warn,
        "connected UDP sockets keep a removed backend",
    ),
    (
        6,
        6,
        "TCX (north-south)",
        Status::Warn,
        "NodePort, LoadBalancer and externalIPs are not served",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One requirement's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub status: Status,
    pub detail: String,
    /// How to fix it (not for Ok).
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<5} {:<10} {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

fn check(what: &'static str, status: Status, detail: String, fix: Option<String>) -> Check {
    Check {
        what,
        status,
        detail,
        fix,
    }
}

/// What the checks look at.
pub struct Target<'a> {
    pub bpffs: &'a Path,
    /// None: the cgroup2 mount.
    pub cgroup: Option<&'a Path>,
    pub bind: [SocketAddr; 2],
}

/// Every check, in the order they are printed.
pub fn checks(t: &Target<'_>) -> Vec<Check> {
    let status = read("/proc/self/status");
    let mut out = vec![privileges(&status), udp_destroy_reach(&status)];
    out.extend(kernel(&kernel_release()));
    out.push(btf(Path::new("/sys/kernel/btf/vmlinux")));
    out.push(ipv6(
        Path::new("/proc/net/if_inet6").exists(),
        &read("/proc/sys/net/ipv6/conf/all/disable_ipv6"),
    ));
    out.push(bpffs(t.bpffs));
    out.push(cgroup(t.cgroup));
    out.extend(t.bind.iter().map(|&a| port(a)));
    out.push(kube_proxy_process());
    out.push(kube_proxy_rules(&super::kube_proxy_rules::find()));
    out.push(lsm(&read("/proc/self/attr/current")));
    out
}

/// The Linux security module confining this process, as /proc/self/attr/current names it:
/// AppArmor's default container profiles deny writes under /sys/fs/bpf, SELinux's
/// container_t denies bpf(2) on the host's objects (deploy/base/daemonset.yaml sets both
/// aside, as Cilium does).
fn lsm(current: &str) -> Check {
    let label = current.trim_end_matches(['\n', '\0']).trim();
    let confined = if label.is_empty() || label == "unconfined" || label.ends_with("(unconfined)") {
        None
    } else if label.contains("(enforce)") {
        Some(format!("AppArmor profile {label}"))
    } else if label.split(':').nth(2) == Some("container_t") {
        Some(format!("SELinux type container_t ({label})"))
    } else {
        None
    };
    match confined {
        None => check(
            "lsm",
            Status::Ok,
            if label.is_empty() {
                "not confined".into()
            } else {
                label.to_string()
            },
            None,
        ),
        Some(what) => check(
            "lsm",
            Status::Warn,
            format!("confined by {what}: pinning and attaching may be denied"),
            Some(
                "run unconfined (appArmorProfile: Unconfined) with SELinux type spc_t, \
                 as deploy/base/daemonset.yaml does"
                    .into(),
            ),
        ),
    }
}

/// The API server the agent would use answers `/version` (5 s at most).
async fn api_server(args: &PreflightArgs) -> Check {
    use crate::source::kube::{self, apiserver};
    let sources = apiserver::Sources::new(args.kubeconfig.as_deref(), args.master.as_deref());
    let fix = "set --master or FERRY_APISERVER to an address of the API server this node \
               reaches (deploy/README: the API server's address)";
    let (client, origin) = match kube::client(&sources).await {
        Ok(c) => c,
        Err(e) => return check("api", Status::Fail, e.to_string(), Some(fix.into())),
    };
    let asked = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.apiserver_version(),
    )
    .await;
    match asked {
        Ok(Ok(v)) => check(
            "api",
            Status::Ok,
            format!("Kubernetes {} (from {origin})", v.git_version),
            None,
        ),
        Ok(Err(e)) => check(
            "api",
            Status::Fail,
            format!("the API server (from {origin}) refused: {e}"),
            Some(fix.into()),
        ),
        Err(_) => check(
            "api",
            Status::Fail,
            format!("the API server (from {origin}) did not answer within 5 s"),
            Some(fix.into()),
        ),
    }
}

/// `ferry preflight`: prints the report; fails when a requirement is not met.
pub async fn run(args: &PreflightArgs) -> anyhow::Result<()> {
    let mut report = checks(&Target {
        bpffs: &args.bpffs,
        cgroup: args.cgroup.as_deref(),
        bind: [args.healthz_bind_address, args.metrics_bind_address],
    });
    if !args.no_api {
        report.push(api_server(args).await);
    }
    for c in &report {
        println!("{c}");
    }
    let failed = report.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!("preflight: {failed} requirement(s) not met");
    }
    Ok(())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Effective capabilities from /proc/self/status (`CapEff:` in hex).
fn effective(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0)
}

/// Destroying connected UDP sockets inside pods: reading another process's
/// network namespace needs CAP_SYS_PTRACE, entering it CAP_SYS_ADMIN. The
/// DaemonSet grants neither, on purpose: without them only the agent's own
/// namespace is walked, which must not go unsaid.
fn udp_destroy_reach(status: &str) -> Check {
    let missing = missing(status, &[(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")]);
    if missing.is_empty() {
        check(
            "udp-gc",
            Status::Ok,
            "pods' network namespaces can be entered".into(),
            None,
        )
    } else {
        check(
            "udp-gc",
            Status::Warn,
            format!(
                "without {}: connected UDP sockets in pods keep a removed backend \
                 (the agent's own namespace is still walked)",
                missing.join(" and ")
            ),
            Some(
                "grant CAP_SYS_ADMIN and CAP_SYS_PTRACE, and hostPID (deploy/README weighs it)"
                    .into(),
            ),
        )
    }
}

/// The capabilities of `caps` (bit, name) not in the effective set.
fn missing(status: &str, caps: &[(u32, &'static str)]) -> Vec<&'static str> {
    let eff = effective(status);
    caps.iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

fn privileges(status: &str) -> Check {
    let missing = missing(status, &CAPS);
    if missing.is_empty() {
        check("privilege", Status::Ok, CAPS.map(|c| c.1).join(", "), None)
    } else {
        check(
            "privilege",
            Status::Fail,
            format!("missing {}", missing.join(", ")),
            Some("run as root, or grant these capabilities (deploy/base/daemonset.yaml)".into()),
        )
    }
}

/// The kernel's release, e.g. "6.18.44-fc".
fn kernel_release() -> String {
    read("/proc/sys/kernel/osrelease").trim().to_owned()
}

/// (major, minor) of a release string.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel(release: &str) -> Vec<Check> {
    let Some(have) = parse_release(release) else {
        return vec![check(
            "kernel",
            Status::Warn,
            format!("release {release:?} not understood"),
            None,
        )];
    };
    KERNEL
        .iter()
        .map(|&(major, minor, feature, missing, cost)| {
            if have >= (major, minor) {
                check("kernel", Status::Ok, format!("{release}: {feature}"), None)
            } else {
                check(
                    "kernel",
                    missing,
                    format!("{release}: {feature} needs Linux {major}.{minor}: {cost}"),
                    Some(format!("a kernel >= {major}.{minor}")),
                )
            }
        })
        .collect()
}

fn btf(path: &Path) -> Check {
    if path.exists() {
        check("btf", Status::Ok, path.display().to_string(), None)
    } else {
        check(
            "btf",
            Status::Warn,
            format!("{} missing: UDP socket destroy is off", path.display()),
            Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        )
    }
}

/// IPv6 in this kernel and network namespace: without it IPv6 and
/// dual-stack Services are still programmed (the maps and socket hooks do
/// not need it) but no IPv6 traffic exists to serve; IPv4 is unaffected.
fn ipv6(in_kernel: bool, all_disabled: &str) -> Check {
    if !in_kernel {
        check(
            "ipv6",
            Status::Warn,
            "the kernel has no IPv6 (ipv6.disable=1?): IPv6 Services are programmed, not reachable"
                .into(),
            Some("boot without ipv6.disable=1 for dual-stack clusters".into()),
        )
    } else if all_disabled.trim() == "1" {
        check(
            "ipv6",
            Status::Warn,
            "net.ipv6.conf.all.disable_ipv6=1: IPv6 Services are programmed, not reachable".into(),
            Some("sysctl net.ipv6.conf.all.disable_ipv6=0 for dual-stack clusters".into()),
        )
    } else {
        check("ipv6", Status::Ok, "enabled".into(), None)
    }
}

/// The nearest existing ancestor of `path` (the pin directory may not exist yet).
fn existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn bpffs(pins: &Path) -> Check {
    match paths::is_on_bpffs(pins) {
        Ok(true) => {
            let at = existing(pins).unwrap_or(pins);
            if writable(at) {
                check(
                    "bpffs",
                    Status::Ok,
                    format!("{} is on a bpf filesystem", pins.display()),
                    None,
                )
            } else {
                check(
                    "bpffs",
                    Status::Fail,
                    format!("{} is not writable", at.display()),
                    Some(
                        "mount it read-write; under AppArmor, a profile that allows writes \
                         under /sys/fs/bpf (the runtime's default denies them)"
                            .into(),
                    ),
                )
            }
        }
        Ok(false) => check(
            "bpffs",
            Status::Fail,
            format!("{} is not on a bpf filesystem", pins.display()),
            Some("mount -t bpf -o mode=0700 bpf /sys/fs/bpf (kind nodes have none)".into()),
        ),
        Err(e) => check(
            "bpffs",
            Status::Fail,
            format!("{}: {e}", pins.display()),
            Some("a pin directory under a mounted bpf filesystem (--bpffs)".into()),
        ),
    }
}

fn cgroup(path: Option<&Path>) -> Check {
    let path: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => match paths::cgroup2_mount() {
            Ok(p) => p,
            Err(e) => {
                return check(
                    "cgroup2",
                    Status::Fail,
                    e.to_string(),
                    Some("mount cgroup2 (systemd does by default since 247)".into()),
                );
            }
        },
    };
    match paths::statfs_magic(&path) {
        Ok(paths::CGROUP2_SUPER_MAGIC) => check(
            "cgroup2",
            Status::Ok,
            format!("{} is a cgroup v2 directory", path.display()),
            None,
        ),
        Ok(_) => check(
            "cgroup2",
            Status::Fail,
            format!("{} is not a cgroup v2 directory", path.display()),
            Some("--cgroup at the cgroup2 mount (on hybrid hosts /sys/fs/cgroup/unified)".into()),
        ),
        Err(e) => check(
            "cgroup2",
            Status::Fail,
            format!("{}: {e}", path.display()),
            Some("--cgroup at the cgroup2 mount".into()),
        ),
    }
}

/// A port the agent listens on: free, or taken (by kube-proxy, most likely).
fn port(addr: SocketAddr) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => check("port", Status::Ok, format!("{addr} is free"), None),
        Err(e) if e.kind() == ErrorKind::AddrInUse => check(
            "port",
            Status::Fail,
            format!("{addr} is in use (kube-proxy still running?)"),
            Some(
                "stop kube-proxy on this node first, or give ferry other ports \
                 (--healthz-bind-address, --metrics-bind-address) while both run"
                    .into(),
            ),
        ),
        Err(e) => check("port", Status::Warn, format!("{addr}: {e}"), None),
    }
}

/// A kube-proxy process visible from here (same PID namespace).
fn kube_proxy_process() -> Check {
    let found = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .find(|e| read(&format!("{}/comm", e.path().display())).trim() == "kube-proxy");
    match found {
        None => check(
            "kube-proxy",
            Status::Ok,
            "no kube-proxy process seen".into(),
            None,
        ),
        Some(e) => check(
            "kube-proxy",
            Status::Warn,
            format!("kube-proxy runs (pid {})", e.file_name().to_string_lossy()),
            Some(
                "both would serve Services: remove kube-proxy from this node \
                 (its DaemonSet's nodeSelector), then `ferry cleanup --kube-proxy`"
                    .into(),
            ),
        ),
    }
}

/// kube-proxy's rules left on the node: they would translate packets before
/// or beside ferry (a ClusterIP the rules still DNAT to a gone pod).
fn kube_proxy_rules(found: &super::kube_proxy_rules::Found) -> Check {
    if found.any() {
        return check(
            "rules",
            Status::Warn,
            format!("kube-proxy's rules are in place: {}", found.describe()),
            Some(
                "once kube-proxy no longer runs on this node: `ferry cleanup --kube-proxy` \
                 (IPVS: ipvsadm --clear; ip link del kube-ipvs0)"
                    .into(),
            ),
        );
    }
    let detail = if found.checked_nothing() {
        "not checked: no iptables-save or nft here".to_string()
    } else {
        "no kube-proxy rules".to_string()
    };
    check("rules", Status::Ok, detail, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_modules_that_deny_pinning_are_named() {
        for (label, status) in [
            ("unconfined\n", Status::Ok),
            ("", Status::Ok),
            ("cri-containerd.apparmor.d (enforce)\n", Status::Warn),
            ("docker-default (enforce)", Status::Warn),
            ("ferry (complain)", Status::Ok),
            ("system_u:system_r:container_t:s0:c1,c2\0", Status::Warn),
            ("system_u:system_r:spc_t:s0\0", Status::Ok),
        ] {
            let c = lsm(label);
            assert_eq!(c.status, status, "{label:?}: {c}");
            if status == Status::Warn {
                assert!(c.fix.as_deref().unwrap().contains("spc_t"), "{c}");
            }
        }
    }

    #[test]
    fn a_node_without_ipv6_is_warned_about_and_ipv4_goes_on() {
        assert_eq!(ipv6(true, "0\n").status, Status::Ok);
        let off = ipv6(false, "");
        assert_eq!(off.status, Status::Warn);
        assert!(off.detail.contains("no IPv6"), "{off}");
        let disabled = ipv6(true, "1\n");
        assert_eq!(disabled.status, Status::Warn);
        assert!(disabled.detail.contains("disable_ipv6=1"), "{disabled}");
    }

    #[test]
    fn releases_are_read_to_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("weird"), None);
    }

    #[test]
    fn each_kernel_feature_is_judged_with_what_its_absence_costs() {
        let ok = kernel("6.18.44");
        assert!(ok.iter().all(|c| c.status == Status::Ok), "{ok:?}");
        let old = kernel("6.1.0-13-amd64");
        let by = |f: &str| old.iter().find(|c| c.detail.contains(f)).unwrap().clone();
        assert_eq!(by("socket programs").status, Status::Ok);
        assert_eq!(by("TCX").status, Status::Warn);
        assert!(by("TCX").detail.contains("needs Linux 6.6"));
        assert_eq!(by("bpf_sock_destroy").status, Status::Warn);
        let older = kernel("5.15.0");
        assert_eq!(
            older
                .iter()
                .find(|c| c.detail.contains("socket programs"))
                .unwrap()
                .status,
            Status::Fail
        );
    }

    #[test]
    fn udp_socket_destroy_without_its_capabilities_is_a_warning_that_names_them() {
        let daemonset = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 12) | (1 << 38));
        let c = udp_destroy_reach(&daemonset);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail
                .starts_with("without CAP_SYS_ADMIN and CAP_SYS_PTRACE"),
            "{c}"
        );
        let root = format!("CapEff:\t{:016x}\n", u64::MAX >> 23);
        assert_eq!(udp_destroy_reach(&root).status, Status::Ok);
    }

    #[test]
    fn missing_capabilities_are_named() {
        let all = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 12) | (1 << 38));
        assert_eq!(privileges(&all).status, Status::Ok);
        let c = privileges("CapEff:\t0000000000001000\n");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.detail, "missing CAP_BPF, CAP_PERFMON");
        assert!(
            c.to_string()
                .starts_with("FAIL  privilege  missing CAP_BPF"),
            "{c}"
        );
    }
}
