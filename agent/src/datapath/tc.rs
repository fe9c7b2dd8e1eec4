//! The north-south programs on the node's devices (TCX ingress and egress)
//! and on its pod devices (ingress), through pinned links so they survive
//! agent restarts and are replaced in place (BPF_LINK_UPDATE) by the next
//! agent.

use std::{collections::BTreeSet, fs, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttach},
    },
};
use tracing::{info, warn};

use super::ifaces::Interface;
use crate::{
    error::{Error, Result},
    paths::{self, PinDir},
};

/// (program, hook, pin infix) of every TC program.
const TC_PROGRAMS: &[(&str, TcAttachType, &str)] = &[
    (paths::TC_INGRESS, TcAttachType::Ingress, "in"),
    (paths::TC_EGRESS, TcAttachType::Egress, "out"),
    (paths::TC_POD, TcAttachType::Ingress, "pod"),
    (paths::TC_POD_OUT, TcAttachType::Egress, "podout"),
];

/// What a device is to ferry: which of the programs it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds node addresses: north-south in and out.
    Node,
    /// Leads to local endpoints: their masqueraded replies; pods' packets to
    /// ClusterIPs and their replies (the per-packet ClusterIP path).
    Pod,
}

impl Role {
    /// Its programs, by name.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Role::Node => &[paths::TC_INGRESS, paths::TC_EGRESS],
            Role::Pod => &[paths::TC_POD, paths::TC_POD_OUT],
        }
    }

    /// The pin infixes of its links (`ferry_link_tc<infix>_<device>`).
    fn infixes(self) -> impl Iterator<Item = &'static str> {
        self.programs()
            .iter()
            .filter_map(|p| TC_PROGRAMS.iter().find(|(n, _, _)| n == p))
            .map(|&(_, _, dir)| dir)
    }
}

/// True when the object carries the TC programs.
pub fn available(ebpf: &Ebpf) -> bool {
    TC_PROGRAMS
        .iter()
        .all(|(name, _, _)| ebpf.program(name).is_some())
}

/// Loads the TC programs (once per agent).
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for &(name, _, _) in TC_PROGRAMS {
        classifier(ebpf, name)?
            .load()
            .map_err(|e| Error::program(name, e))?;
    }
    Ok(())
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    super::loader::program_mut(ebpf, name)
}

fn pin_name(dir: &str, ifname: &str) -> String {
    format!("ferry_link_tc{dir}_{ifname}")
}

/// Attaches (or replaces in the pinned links) the programs of `role` on
/// `iface`; returns the pins of their links.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    iface: &Interface,
    role: Role,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut linked = Vec::new();
    for &name in role.programs() {
        if let Some(pin) = attach_program(ebpf, pins, iface, name)? {
            linked.push((name, pin));
        }
    }
    Ok(linked)
}

/// Attaches one of the programs to `iface`; the pin of its link (none on
/// kernels without TCX).
pub fn attach_program(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    iface: &Interface,
    program: &str,
) -> Result<Option<PathBuf>> {
    let &(name, hook, dir) =
        TC_PROGRAMS
            .iter()
            .find(|(n, _, _)| *n == program)
            .ok_or(Error::MissingObject {
                what: "north-south program",
                name: program.to_string(),
            })?;
    let pin = pins.link(&pin_name(dir, &iface.name));
    let prog = classifier(ebpf, name)?;
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|e| e.to_string());
        match pinned.and_then(|link| replace(prog, link.into())) {
            Ok(()) => {
                info!(program = name, device = %iface.name, "replaced in its pinned link");
                return Ok(Some(pin));
            }
            Err(detail) => {
                warn!(program = name, device = %iface.name, %detail, "re-attaching");
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let id = prog
        .attach(iface.index, TcAttach::Auto(hook))
        .map_err(|e| Error::program(name, e))?;
    let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
    info!(program = name, device = %iface.name, ifindex = iface.index, "attached");
    match FdLink::try_from(link) {
        Ok(fd_link) => {
            fd_link.pin(&pin).map_err(|e| Error::Link {
                name: name.to_string(),
                path: pin.clone(),
                detail: e.to_string(),
            })?;
            Ok(Some(pin))
        }
        Err(e) => {
            // Kernels before 6.6 (no TCX) attach through netlink, which has
            // no link to pin. The filter outlives us like kube-proxy's
            // rules; `ferry cleanup` cannot remove it (tc filter del can).
            warn!(program = name, device = %iface.name, error = %e, "attached without TCX");
            Ok(None)
        }
    }
}

/// Swaps `prog` into `link` (BPF_LINK_UPDATE): atomic, never detached.
fn replace(prog: &mut SchedClassifier, link: FdLink) -> Result<(), String> {
    let link = SchedClassifierLink::try_from(link).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    // The pin and the agent's descriptor keep the link; this handle may go.
    drop(prog.take_link(id).map_err(|e| e.to_string())?);
    Ok(())
}

/// Swaps ferry's north-south `program` back into its TCX `link`.
pub(super) fn swap_back(ebpf: &mut Ebpf, program: &str, link: FdLink) -> Result<(), String> {
    replace(classifier(ebpf, program).map_err(|e| e.to_string())?, link)
}

/// Detaches the programs of `role` from devices not in `keep` (their pins go).
pub fn detach_others(pins: &PinDir, role: Role, keep: &BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(pins.root()) else {
        return;
    };
    for e in entries.filter_map(std::result::Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ifname) = role
            .infixes()
            .find_map(|dir| name.strip_prefix(&format!("ferry_link_tc{dir}_")))
        else {
            continue;
        };
        if !keep.contains(ifname) {
            info!(
                device = ifname,
                ?role,
                "detaching from a device no longer used"
            );
            let _ = fs::remove_file(e.path());
        }
    }
}
