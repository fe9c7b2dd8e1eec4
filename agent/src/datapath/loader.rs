//! Loads ferry's eBPF object with its maps pinned by name, and attaches the
//! socket-layer programs to the cgroup through pinned links; the egress
//! guard is attached the same way while a Service needs it
//! ([`Loaded::set_guard`]).
//!
//! A restarted agent finds the pins of its predecessor: the maps are reused
//! as they are (so nothing programmed is lost), and each pinned link gets the
//! new program swapped in atomically with BPF_LINK_UPDATE, so there is no
//! moment where sockets in the cgroup go untranslated.

use std::{
    collections::BTreeSet,
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program,
        ProgramError, links::FdLink,
    },
};
use tracing::{info, warn};

use super::{
    Maps,
    ifaces::Interface,
    links::{Links, Target},
    sizes::{self, MapSizes},
    sys,
    tc::Role,
};
use crate::{
    error::{Error, Result},
    paths::{self, PinDir, map_names},
};

/// The object agent-ebpf compiled to, embedded at build time (agent/build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// The embedded eBPF object (empty when built with AYA_BUILD_SKIP=1), for
/// tools and tests that load programs on their own (BPF_PROG_TEST_RUN).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Sizes of the maps the operator sizes (a pinned map of another size
    /// is resized: see sizes.rs).
    pub sizes: MapSizes,
}

/// The loaded object. Dropping it leaves the datapath in place: links and
/// maps live on in their pins.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub pins: PinDir,
    /// Destroys connected UDP sockets of removed backends, when the kernel can.
    pub sock_gc: Option<super::sock_gc::SockGc>,
    /// Every link, held and verified ([`Loaded::verify_links`]).
    pub(super) links: Links,
    /// The cgroup the programs are attached to.
    cgroup: PathBuf,
    /// The egress guard is attached (its link held and pinned).
    guard_attached: bool,
}

/// What happened to each program's link at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    Attached,
    Replaced,
}

impl Loaded {
    pub fn load(opts: &LoadOptions) -> Result<(Self, Maps)> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::MissingObject {
                what: "eBPF object",
                name: "agent-ebpf (built with AYA_BUILD_SKIP=1; rebuild without it)".into(),
            });
        }
        super::pin_dir::prepare(&opts.pin_dir)?;
        let pins = PinDir::new(&opts.pin_dir);
        let resizes = sizes::prepare(&pins, &opts.sizes)?;
        let sock_ports_new = !pins.map(map_names::SOCK_PORTS).exists();
        // The kernel's BTF, parsed once for the three that read it (the
        // kfunc patch, the loader's relocations, the iterator): it is the
        // largest thing the agent ever holds, for a moment.
        let btf = aya::Btf::from_sys_fs().ok();
        let object = super::sock_gc::patch_object(EBPF_OBJECT, btf.as_ref());
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&opts.pin_dir);
        if let Some(btf) = &btf {
            loader.btf(btf);
        }
        for (name, entries) in opts.sizes.entries() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader
            .load(object.bytes())
            .map_err(|e| Error::Load(Box::new(e)))?;
        sizes::finish(&pins, resizes)?;
        if sock_ports_new {
            // Before the hooks attach: they skip a port with no bit.
            let ports = super::sock_ports::seed(&mut ebpf)?;
            if ports > 0 {
                info!(
                    map = map_names::SOCK_PORTS,
                    ports, "backend ports of the sockets translated before this version set"
                );
            }
        }
        start_kernel_logs(&mut ebpf);
        // North-south programs: loaded now (the verifier speaks at start),
        // attached once the node's devices are known.
        if super::tc::available(&ebpf) {
            super::tc::load(&mut ebpf)?;
        }
        if super::xdp::available(&ebpf) {
            super::xdp::load(&mut ebpf)?;
        }

        let cgroup = fs::File::open(&opts.cgroup).map_err(|source| Error::Cgroup {
            path: opts.cgroup.clone(),
            source,
        })?;
        let mut links = Links::default();
        for (name, _) in paths::cgroup_programs() {
            load_cgroup_program(&mut ebpf, name)?;
        }
        // The guard first (cgroup_programs' order): a socket the hooks mark
        // must never find it absent. A predecessor's guard link is kept, the
        // new guard swapped in, until the first full sync says whether any
        // Service still needs it ([`Loaded::set_guard`]); without one, the
        // guard waits for a Service that needs it. The release hook is new
        // in this version: an agent upgraded from one without it finds no
        // pin and attaches it.
        let mut guard_attached = false;
        for (name, link_pin) in paths::cgroup_programs() {
            let pin = pins.link(link_pin);
            let what = if is_guard(name) {
                if !pin.exists() {
                    continue;
                }
                guard_attached = true;
                "egress guard"
            } else {
                "socket hook"
            };
            let outcome = attach_cgroup_program(&mut ebpf, name, &cgroup, &pin)?;
            info!(program = name, cgroup = %opts.cgroup.display(), ?outcome, "{what}");
            links.hold(name, pin, Target::Cgroup(opts.cgroup.clone()))?;
        }
        let sock_gc = super::sock_gc::SockGc::load(&mut ebpf, &object.kfunc, btf.as_ref());
        drop(btf);
        let mut maps = Maps::take(&mut ebpf)?;
        // Before any TC program of this agent is attached (owner.rs).
        maps.fill_backend_live()?;
        Ok((
            Loaded {
                ebpf,
                pins,
                sock_gc,
                links,
                cgroup: opts.cgroup.clone(),
                guard_attached,
            },
            maps,
        ))
    }

    /// Whether the egress guard is attached.
    pub fn guard_attached(&self) -> bool {
        self.guard_attached
    }

    /// Attaches the egress guard (`wanted`) or detaches it. It runs on every
    /// packet of every socket in the cgroup, and only the sockets of two
    /// rules need it (a Local traffic policy without a local endpoint,
    /// loadBalancerSourceRanges): the agent attaches it before it writes
    /// the first frontend of either kind and detaches it once none is left,
    /// so a cluster without such Services pays nothing per packet.
    pub fn set_guard(&mut self, wanted: bool) -> Result<()> {
        if wanted == self.guard_attached {
            return Ok(());
        }
        let (name, link_pin) = paths::GUARD_PROGRAM;
        let pin = self.pins.link(link_pin);
        if wanted {
            let cgroup = fs::File::open(&self.cgroup).map_err(|source| Error::Cgroup {
                path: self.cgroup.clone(),
                source,
            })?;
            let outcome = attach_cgroup_program(&mut self.ebpf, name, &cgroup, &pin)?;
            self.links
                .hold(name, pin, Target::Cgroup(self.cgroup.clone()))?;
            info!(program = name, cgroup = %self.cgroup.display(), ?outcome,
                "egress guard attached: a Service needs it");
        } else {
            // Without our descriptor and its pin, the link detaches.
            self.links.release(&pin);
            match fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Link {
                        name: name.to_string(),
                        path: pin,
                        detail: format!("removing the pin: {e}"),
                    });
                }
                _ => {}
            }
            info!(program = name, "egress guard detached: no Service needs it");
        }
        self.guard_attached = wanted;
        Ok(())
    }

    /// Attaches the TC programs of `role` to `iface` (or replaces them in
    /// their pinned links).
    pub fn attach_tc(&mut self, iface: &Interface, role: Role) -> Result<()> {
        for (program, pin) in super::tc::attach(&mut self.ebpf, &self.pins, iface, role)? {
            self.links
                .hold(program, pin, Target::Device(iface.clone()))?;
        }
        Ok(())
    }

    /// Attaches the XDP program to `iface` in `mode` (or replaces it in its
    /// pinned link); nothing when disabled or the device refuses it (TC
    /// only, warned).
    pub fn attach_xdp(&mut self, iface: &Interface, mode: crate::cli::Acceleration) -> Result<()> {
        if let Some(pin) = super::xdp::attach(&mut self.ebpf, &self.pins, iface, mode)? {
            self.links
                .hold(paths::XDP, pin, Target::Device(iface.clone()))?;
        }
        Ok(())
    }

    /// Detaches the XDP program from every device not in `keep`, and from
    /// all of them in another mode than `mode`.
    pub fn detach_xdp_except(&mut self, mode: crate::cli::Acceleration, keep: &BTreeSet<String>) {
        let kept = if mode == crate::cli::Acceleration::Disabled {
            BTreeSet::new()
        } else {
            keep.clone()
        };
        self.links.release_devices_except(&[paths::XDP], &kept);
        super::xdp::detach_others(&self.pins, mode, &kept);
    }

    /// Detaches the TC programs of `role` from every device not in `keep`.
    pub fn detach_tc_except(&mut self, role: Role, keep: &BTreeSet<String>) {
        self.links.release_devices_except(role.programs(), keep);
        super::tc::detach_others(&self.pins, role, keep);
    }
}

/// A program of the object, as its type.
pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::MissingObject {
            what: "program",
            name: name.to_string(),
        })?
        .try_into()
        .map_err(|e| Error::program(name, e))
}

fn is_guard(name: &str) -> bool {
    name == paths::GUARD_PROGRAM.0
}

fn is_release(name: &str) -> bool {
    name == paths::RELEASE_PROGRAM.0
}

fn load_cgroup_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let loaded = if is_guard(name) {
        program_mut::<CgroupSkb>(ebpf, name)?.load()
    } else if is_release(name) {
        program_mut::<CgroupSock>(ebpf, name)?.load()
    } else {
        program_mut::<CgroupSockAddr>(ebpf, name)?.load()
    };
    loaded.map_err(|e| Error::program(name, e))
}

/// Attaches a loaded cgroup program (a socket hook, the release hook or the
/// guard) to `cgroup` through the link pinned at `link_pin`, swapping it
/// into an existing one.
pub(super) fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &fs::File,
    link_pin: &Path,
) -> Result<LinkOutcome> {
    if link_pin.exists() {
        match swap_into_pin(ebpf, name, link_pin) {
            Ok(()) => return Ok(LinkOutcome::Replaced),
            // A pin we cannot use (a different link type, say) would leave the
            // old program attached beside ours: replace the pin instead.
            Err(detail) => {
                warn!(program = name, pin = %link_pin.display(), %detail, "re-attaching");
                let _ = fs::remove_file(link_pin);
            }
        }
    }
    // Links are always "multi": the kernel wants no attach flags with them.
    let mode = CgroupAttachMode::Single;
    let link = if is_guard(name) {
        let prog = program_mut::<CgroupSkb>(ebpf, name)?;
        let id = prog
            .attach(cgroup, CgroupSkbAttachType::Egress, mode)
            .map_err(|e| Error::program(name, e))?;
        FdLink::try_from(prog.take_link(id).map_err(|e| Error::program(name, e))?)
    } else if is_release(name) {
        let prog = program_mut::<CgroupSock>(ebpf, name)?;
        let id = prog
            .attach(cgroup, mode)
            .map_err(|e| Error::program(name, e))?;
        FdLink::try_from(prog.take_link(id).map_err(|e| Error::program(name, e))?)
    } else {
        let prog = program_mut::<CgroupSockAddr>(ebpf, name)?;
        let id = prog
            .attach(cgroup, mode)
            .map_err(|e| Error::program(name, e))?;
        FdLink::try_from(prog.take_link(id).map_err(|e| Error::program(name, e))?)
    }
    .map_err(|_| Error::KernelFeature {
        feature: "bpf_link for cgroup programs (Linux >= 5.7)",
        detail: format!("program {name} was attached without a link"),
    })?;
    link.pin(link_pin).map_err(|e| Error::Link {
        name: name.to_string(),
        path: link_pin.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(LinkOutcome::Attached)
}

/// Swaps ferry's program `name` into the cgroup link pinned at `pin`
/// (BPF_LINK_UPDATE through ferry's own wrapper, which serves every cgroup
/// program type; aya's serves sock_addr ones only): atomic, the hook is never
/// empty. A pin that is not a link attached to a cgroup is refused.
pub(super) fn swap_into_pin(ebpf: &Ebpf, name: &str, pin: &Path) -> Result<(), String> {
    let link = sys::obj_get(pin, 0).map_err(|e| format!("opening the pin: {e}"))?;
    let info = sys::link_info(&link).map_err(|e| e.to_string())?;
    if !matches!(info.attachment, sys::Attachment::Cgroup(_)) {
        return Err("not a link attached to a cgroup".into());
    }
    let prog = ebpf
        .program(name)
        .ok_or("program missing from the object")?;
    let fd = prog.fd().map_err(|e| e.to_string())?;
    sys::link_update(&link, fd.as_fd()).map_err(|e| e.to_string())
}

/// Forwards aya-log records from the kernel programs to `log` (and so to
/// tracing) on a background task.
fn start_kernel_logs(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the AsyncFd owns the logger, which owns the ring
                // buffer's descriptor: it stays open while registered.
                let Ok(mut fd) = (unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                }) else {
                    return;
                };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!(error = %e, "kernel program logs unavailable"),
    }
}
