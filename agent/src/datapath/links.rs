//! ferry's links (the socket hooks on the cgroup, TCX on the node's devices)
//! are checked periodically: another process with the privilege to do so may
//! detach one (`bpftool link detach`), swap another program into it
//! (BPF_LINK_UPDATE), or unpin it. The agent holds a descriptor on each link,
//! so an unpinned link stays attached and is pinned again; a detached one is
//! attached anew; a foreign program is swapped back out. Each finding is
//! logged, counted in the metrics and shown in /healthz.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use tracing::{info, warn};

use super::{ifaces::Interface, loader::Loaded, sys, tc, xdp};
use crate::{
    error::{Error, Result},
    paths,
};

/// How often the agent verifies its links.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// What a link is attached to.
#[derive(Clone, Debug)]
pub enum Target {
    Cgroup(PathBuf),
    Device(Interface),
}

struct Held {
    program: &'static str,
    target: Target,
    /// Keeps the link alive whatever happens to its pin. A descriptor of
    /// our own, not aya's `FdLink`: aya neither says what an `FdLink` is
    /// attached to nor pins one without consuming it.
    fd: OwnedFd,
    /// The kernel's id of the link.
    id: u32,
}

/// The links the agent made or adopted, by pin path.
#[derive(Default)]
pub struct Links {
    held: BTreeMap<PathBuf, Held>,
}

impl Links {
    /// Takes a descriptor on the link pinned at `pin`.
    pub fn hold(&mut self, program: &'static str, pin: PathBuf, target: Target) -> Result<()> {
        let opened = sys::obj_get(&pin, 0).and_then(|fd| Ok((sys::link_info(&fd)?.id, fd)));
        let (id, fd) = opened.map_err(|e| Error::Link {
            name: program.to_string(),
            path: pin.clone(),
            detail: format!("opening the pinned link: {e}"),
        })?;
        self.held.insert(
            pin,
            Held {
                program,
                target,
                fd,
                id,
            },
        );
        Ok(())
    }

    /// Lets go of the link pinned at `pin` (the caller removes the pin).
    pub fn release(&mut self, pin: &Path) {
        self.held.remove(pin);
    }

    /// Lets go of the links of `programs` on devices not in `keep` (their
    /// pins are removed by the caller; without our descriptor they then
    /// detach).
    pub fn release_devices_except(
        &mut self,
        programs: &[&str],
        keep: &std::collections::BTreeSet<String>,
    ) {
        self.held.retain(|_, h| match &h.target {
            Target::Device(iface) => !programs.contains(&h.program) || keep.contains(&iface.name),
            Target::Cgroup(_) => true,
        });
    }
}

/// What was wrong with a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No longer attached (BPF_LINK_DETACH by someone): attached anew.
    Detached,
    /// Another program in ferry's link: ferry's swapped back in.
    Replaced,
    /// The pin is gone or names another object: pinned again.
    Unpinned,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Detached => "detached",
            Fault::Replaced => "replaced",
            Fault::Unpinned => "unpinned",
        }
    }
}

/// One finding of [`Loaded::verify_links`].
#[derive(Clone, Debug)]
pub struct Finding {
    /// The link's pin name (`ferry_link_conn4`, `ferry_link_tcin_eth0`).
    pub link: String,
    pub fault: Fault,
    /// Err: the repair failed, and why.
    pub repair: Result<(), String>,
}

/// The outcome of one check of every link.
#[derive(Clone, Debug, Default)]
pub struct LinkReport {
    pub checked: usize,
    pub findings: Vec<Finding>,
}

impl LinkReport {
    /// Links still broken after this check.
    pub fn broken(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.repair.is_err())
    }

    pub fn repaired(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.repair.is_ok())
    }
}

/// What is wrong with one held link, in the order of repair: a detached
/// link is attached anew (nothing else to fix), and the pin is restored
/// before a foreign program is swapped out through it.
fn inspect(held: &Held, pin: &Path, prog_id: Option<u32>) -> Vec<Fault> {
    let info = match sys::link_info(&held.fd) {
        Ok(info) if info.attachment != sys::Attachment::Nothing => info,
        _ => return vec![Fault::Detached],
    };
    let mut faults = Vec::new();
    if pinned(pin).ok().map(|p| p.1) != Some(held.id) {
        faults.push(Fault::Unpinned);
    }
    if prog_id.is_some_and(|id| id != info.prog_id) {
        faults.push(Fault::Replaced);
    }
    faults
}

/// The link pinned at `pin`, and its id.
fn pinned(pin: &Path) -> Result<(FdLink, u32), String> {
    let link = FdLink::from(PinnedLink::from_pin(pin).map_err(|e| e.to_string())?);
    let id = link.info().map_err(|e| e.to_string())?.id();
    Ok((link, id))
}

fn remove_pin(pin: &Path) -> io::Result<()> {
    match fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Loaded {
    /// Checks that every link is attached, runs ferry's program and is
    /// pinned, and repairs what is not. The control loop calls it every
    /// [`CHECK_PERIOD`] and passes the report to `Health::links_verified`
    /// and `Metrics::links_verified`.
    pub fn verify_links(&mut self) -> LinkReport {
        let mut report = LinkReport::default();
        let pins: Vec<PathBuf> = self.links.held.keys().cloned().collect();
        for pin in pins {
            let Some(held) = self.links.held.get(&pin) else {
                continue;
            };
            report.checked += 1;
            let program = held.program;
            let prog_id = self
                .ebpf
                .program(program)
                .and_then(|p| p.info().ok())
                .map(|i| i.id());
            let link = pin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for fault in inspect(held, &pin, prog_id) {
                let repair = self.repair(&pin, fault);
                match &repair {
                    Ok(()) => warn!(%link, program, fault = fault.as_str(),
                        "a link of ferry's was changed by someone else: repaired"),
                    Err(e) => warn!(%link, program, fault = fault.as_str(), error = %e,
                        "a link of ferry's was changed by someone else: repair failed"),
                }
                let detached = fault == Fault::Detached;
                report.findings.push(Finding {
                    link: link.clone(),
                    fault,
                    repair,
                });
                // A new link replaces the old one: nothing else to fix on it.
                if detached {
                    break;
                }
            }
        }
        report
    }

    fn repair(&mut self, pin: &Path, fault: Fault) -> Result<(), String> {
        let held = self.links.held.get(pin).ok_or("no longer held")?;
        let program = held.program;
        match fault {
            Fault::Replaced => {
                // Through the pin, restored first if it had gone (aya swaps
                // programs only in an `FdLink`, made only from a pin).
                let (link, id) = pinned(pin).map_err(|e| format!("opening the pin: {e}"))?;
                if id != held.id {
                    return Err(format!("the pin names link {id}, not {}", held.id));
                }
                match held.target {
                    Target::Cgroup(_) => super::loader::swap_into_pin(&self.ebpf, program, pin),
                    Target::Device(_) if program == paths::XDP => {
                        xdp::swap_back(&mut self.ebpf, link)
                    }
                    Target::Device(_) => tc::swap_back(&mut self.ebpf, program, link),
                }
                .map_err(|e| format!("BPF_LINK_UPDATE: {e}"))
            }
            Fault::Unpinned => {
                remove_pin(pin).map_err(|e| format!("removing what is at the pin: {e}"))?;
                sys::obj_pin(&held.fd, pin).map_err(|e| format!("BPF_OBJ_PIN: {e}"))
            }
            Fault::Detached => {
                let target = held.target.clone();
                self.links.held.remove(pin);
                remove_pin(pin).map_err(|e| format!("removing the dead link's pin: {e}"))?;
                let target = match target {
                    Target::Cgroup(path) => {
                        let cgroup = fs::File::open(&path)
                            .map_err(|e| format!("cgroup {}: {e}", path.display()))?;
                        super::loader::attach_cgroup_program(&mut self.ebpf, program, &cgroup, pin)
                            .map_err(|e| e.to_string())?;
                        Target::Cgroup(path)
                    }
                    Target::Device(iface) => {
                        let Some(now) = super::ifaces::index_of(&iface.name) else {
                            info!(device = %iface.name, program, "device gone: its link is released");
                            return Ok(());
                        };
                        let iface = Interface {
                            index: now,
                            ..iface
                        };
                        if program == paths::XDP {
                            let mode = xdp::mode_of_pin(pin);
                            if xdp::attach(&mut self.ebpf, &self.pins, &iface, mode)
                                .map_err(|e| e.to_string())?
                                .is_none()
                            {
                                return Err("the device no longer takes the XDP program".into());
                            }
                        } else {
                            tc::attach_program(&mut self.ebpf, &self.pins, &iface, program)
                                .map_err(|e| e.to_string())?;
                        }
                        Target::Device(iface)
                    }
                };
                self.links
                    .hold(program, pin.to_path_buf(), target)
                    .map_err(|e| e.to_string())
            }
        }
    }
}
