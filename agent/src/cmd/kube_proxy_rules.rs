//! kube-proxy's rules on this node: found (preflight) and removed
//! (`ferry cleanup --kube-proxy`), as `kube-proxy --cleanup` removes them.
//!
//! iptables mode (legacy and nft backends, IPv4 and IPv6): kube-proxy's own
//! chains (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, ...) are flushed and
//! deleted and the rules that jump to them from other chains (PREROUTING,
//! OUTPUT, ...) are deleted, in one `iptables-restore --noflush` per table, so
//! a table is never left half-done. kubelet's chains (KUBE-FIREWALL,
//! KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and everything else stay.
//! nftables mode: its tables `ip kube-proxy` and `ip6 kube-proxy` are
//! deleted. IPVS mode is found (the kube-ipvs0 device) but not removed.
//!
//! The host's own tools do the work: found on the PATH, or under a host root
//! (`--host-root /host` in a `kubectl debug node/...` pod, whose image has no
//! iptables), where each tool runs chrooted.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The iptables tools, each with its save and restore commands.
const IPTABLES: [(&str, &str); 4] = [
    ("iptables-save", "iptables-restore"),
    ("ip6tables-save", "ip6tables-restore"),
    ("iptables-legacy-save", "iptables-legacy-restore"),
    ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
];

/// Chains kube-proxy makes with a fixed name (iptables and IPVS modes).
const FIXED: [&str; 10] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-LOAD-BALANCER",
];
/// Prefixes of its per-Service and per-endpoint chains.
const PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
    "KUBE-SVL-",
];

/// A chain kube-proxy made (not kubelet's KUBE-FIREWALL and the like).
pub fn is_kube_proxy_chain(name: &str) -> bool {
    FIXED.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// kube-proxy's chains and jumps in one table of an `iptables-save` output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    pub chains: Vec<String>,
    /// `-A CHAIN ...` rules of other chains that jump to one of them.
    pub jumps: Vec<String>,
}

impl TablePlan {
    /// The `iptables-restore --noflush` input that removes them: jumps
    /// deleted, chains flushed (declaring a chain flushes it) and deleted.
    pub fn restore_input(&self) -> String {
        let mut out = format!("*{}\n", self.table);
        for c in &self.chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in &self.jumps {
            out.push_str(&format!("-D{}\n", &j[2..]));
        }
        for c in &self.chains {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Reads an `iptables-save` output: one plan per table holding any of
/// kube-proxy's chains.
pub fn plan(save: &str) -> Vec<TablePlan> {
    let mut plans = Vec::new();
    let mut cur: Option<TablePlan> = None;
    for line in save.lines() {
        if let Some(table) = line.strip_prefix('*') {
            cur = Some(TablePlan {
                table: table.trim().to_owned(),
                ..TablePlan::default()
            });
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            if let Some(p) = cur.as_mut().filter(|_| is_kube_proxy_chain(name)) {
                p.chains.push(name.to_owned());
            }
        } else if line.starts_with("-A ") {
            let mut words = line.split_whitespace().skip(1);
            let chain = words.next().unwrap_or_default();
            let target = line
                .split_whitespace()
                .skip_while(|w| *w != "-j" && *w != "-g" && *w != "--jump" && *w != "--goto")
                .nth(1)
                .unwrap_or_default();
            if !is_kube_proxy_chain(chain)
                && is_kube_proxy_chain(target)
                && let Some(p) = cur.as_mut()
            {
                p.jumps.push(line.to_owned());
            }
        } else if line.trim() == "COMMIT"
            && let Some(p) = cur.take()
            && (!p.chains.is_empty() || !p.jumps.is_empty())
        {
            plans.push(p);
        }
    }
    plans
}

/// What there is of kube-proxy's on this node.
#[derive(Debug, Default)]
pub struct Found {
    /// (save tool, table, chains) for every table holding its chains.
    pub iptables: Vec<(&'static str, String, usize)>,
    /// nftables tables (`ip kube-proxy`).
    pub nft_tables: Vec<String>,
    /// The IPVS dummy device exists.
    pub ipvs: bool,
    /// Tools that were not there to ask.
    pub unchecked: Vec<&'static str>,
}

impl Found {
    /// No tool was there to ask (an image without iptables and nft).
    pub fn checked_nothing(&self) -> bool {
        IPTABLES
            .iter()
            .all(|(save, _)| self.unchecked.contains(save))
            && self.unchecked.contains(&"nft")
    }

    pub fn any(&self) -> bool {
        !self.iptables.is_empty() || !self.nft_tables.is_empty() || self.ipvs
    }

    /// One line: what was found where.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .iptables
            .iter()
            .map(|(tool, table, n)| format!("{n} chains in {table} ({tool})"))
            .collect();
        parts.extend(
            self.nft_tables
                .iter()
                .map(|t| format!("nftables table {t}")),
        );
        if self.ipvs {
            parts.push("IPVS (device kube-ipvs0)".into());
        }
        parts.join(", ")
    }
}

/// Where the tools are: this filesystem, or a host's mounted at a root.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    pub root: Option<PathBuf>,
}

impl Tools {
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        if let Some(root) = &self.root {
            let root =
                std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: chroot and chdir are async-signal-safe; between fork and
            // exec they only change the child's root, so that exec finds the
            // host's tool and its libraries.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // The child's PATH is searched after the chroot.
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd
    }

    fn output(&self, tool: &str, args: &[&str]) -> Option<std::io::Result<std::process::Output>> {
        match self.command(tool).args(args).stdin(Stdio::null()).output() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            other => Some(other),
        }
    }
}

/// kube-proxy's state as the tools see it: each iptables table's plan (with the restore tool
/// that applies it) and the nftables families holding its table. Tools that exist but fail
/// to run are errors for whoever must act on them.
#[derive(Default)]
struct Survey {
    plans: Vec<(&'static str, &'static str, TablePlan)>,
    nft_families: Vec<&'static str>,
    unchecked: Vec<&'static str>,
    failed: Vec<String>,
}

fn survey(tools: &Tools) -> Survey {
    let mut out = Survey::default();
    for (save, restore) in IPTABLES {
        match tools.output(save, &[]) {
            None => out.unchecked.push(save),
            Some(Ok(o)) if o.status.success() => out.plans.extend(
                plan(&String::from_utf8_lossy(&o.stdout))
                    .into_iter()
                    .map(|p| (save, restore, p)),
            ),
            // A backend the kernel lacks (legacy without its modules).
            Some(Ok(_)) => {}
            Some(Err(e)) => out.failed.push(format!("running {save}: {e}")),
        }
    }
    for family in ["ip", "ip6"] {
        match tools.output("nft", &["list", "table", family, "kube-proxy"]) {
            None => {
                out.unchecked.push("nft");
                break;
            }
            Some(Ok(o)) if o.status.success() => out.nft_families.push(family),
            // No such table.
            Some(Ok(_)) => {}
            Some(Err(e)) => out.failed.push(format!("running nft: {e}")),
        }
    }
    out
}

impl Survey {
    fn found(&self) -> Found {
        Found {
            iptables: self
                .plans
                .iter()
                .map(|(save, _, p)| (*save, p.table.clone(), p.chains.len()))
                .collect(),
            nft_tables: self
                .nft_families
                .iter()
                .map(|f| format!("{f} kube-proxy"))
                .collect(),
            ipvs: crate::datapath::ifaces::index_of("kube-ipvs0").is_some(),
            unchecked: self.unchecked.clone(),
        }
    }
}

/// Looks for kube-proxy's rules with the tools this node (or image) has.
pub fn find() -> Found {
    find_with(&Tools::default())
}

/// [`find`] with the tools of `tools`.
pub fn find_with(tools: &Tools) -> Found {
    survey(tools).found()
}

/// Removes kube-proxy's iptables chains and nftables tables; returns what
/// was removed (the same shape as [`find`]'s answer).
pub fn remove(tools: &Tools) -> anyhow::Result<Found> {
    if let Some(root) = &tools.root
        && !Path::new(root).join("usr").is_dir()
    {
        bail!(
            "{}: no host root filesystem there (no usr/)",
            root.display()
        );
    }
    let found = survey(tools);
    if let Some(e) = found.failed.first() {
        bail!("{e}");
    }
    for (_, restore, p) in &found.plans {
        let mut child = tools
            .command(restore)
            .args(["--noflush", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {restore}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(p.restore_input().as_bytes())
            .with_context(|| format!("writing to {restore}"))?;
        let done = child.wait_with_output()?;
        if !done.status.success() {
            bail!(
                "{restore} refused the removal of kube-proxy's {} chains in table {}: {}",
                p.chains.len(),
                p.table,
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
    }
    for family in &found.nft_families {
        let del = tools
            .command("nft")
            .args(["delete", "table", family, "kube-proxy"])
            .output()
            .context("running nft")?;
        if !del.status.success() {
            bail!(
                "nft delete table {family} kube-proxy: {}",
                String::from_utf8_lossy(&del.stderr).trim()
            );
        }
    }
    let mut removed = found.found();
    // IPVS is found, not removed.
    removed.ipvs = false;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names of the chains a plan set removes.
    fn chain_names(plans: &[TablePlan]) -> BTreeSet<&str> {
        plans
            .iter()
            .flat_map(|p| p.chains.iter().map(String::as_str))
            .collect()
    }

    const SAVE: &str = "\
# Generated by iptables-nft-save v1.8.11 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:MY-CHAIN - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 10.0.0.0/8 -j MY-CHAIN
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-XYZ
-A KUBE-SVC-XYZ -j KUBE-SEP-ABC
-A KUBE-SEP-ABC -p tcp -m tcp -j DNAT --to-destination 10.244.0.5:8080
COMMIT
";

    #[test]
    fn kube_proxys_chains_and_the_jumps_to_them_are_planned_kubelets_are_left() {
        let plans = plan(SAVE);
        assert_eq!(
            plans.iter().map(|p| p.table.as_str()).collect::<Vec<_>>(),
            ["filter", "nat"],
            "mangle holds only kubelet's chains"
        );
        assert_eq!(
            chain_names(&plans),
            BTreeSet::from([
                "KUBE-FORWARD",
                "KUBE-PROXY-FIREWALL",
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING",
                "KUBE-SEP-ABC",
                "KUBE-SERVICES",
                "KUBE-SVC-XYZ",
            ])
        );
        assert_eq!(plans[0].jumps.len(), 2, "{:?}", plans[0].jumps);
        assert_eq!(plans[1].jumps.len(), 3, "{:?}", plans[1].jumps);
        let input = plans[1].restore_input();
        assert!(
            input.starts_with("*nat\n:KUBE-MARK-MASQ - [0:0]\n"),
            "{input}"
        );
        assert!(input.contains(
            "\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.ends_with("-X KUBE-SVC-XYZ\nCOMMIT\n"), "{input}");
        assert!(!plans[0].restore_input().contains("KUBE-FIREWALL"));
        assert!(!plans[0].restore_input().contains("MY-CHAIN"));
    }

    #[test]
    fn a_table_without_kube_proxy_plans_nothing() {
        assert!(plan("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n").is_empty());
        assert!(plan("").is_empty());
    }
}
