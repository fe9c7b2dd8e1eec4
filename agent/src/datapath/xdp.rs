//! `ferry_xdp` on the node's devices (`--acceleration native|generic`):
//! the north-south fast path (IPv4 and IPv6) before the skb, beside the TC programs
//! (which handle what it passes). Attached through a pinned link, like the
//! TC programs, so a restarted agent swaps its program in (BPF_LINK_UPDATE)
//! and `ferry cleanup` detaches it by removing the pin.
//!
//! The pin names the mode (`ferry_link_xdpdrv_<dev>`, `ferry_link_xdpskb_<dev>`):
//! a link keeps the mode it was made with, so an agent started with another
//! mode removes the old link and attaches anew.
//!
//! On veth (a node that is a container, a lab) a frame XDP forwards is
//! handed to the peer device's NAPI ring, which exists only when the peer
//! has GRO asked for (`ethtool -K PEER gro on`, Linux >= 5.13) or an XDP
//! program of its own; without it the kernel drops the frame (counted in
//! this device's `ethtool -S` `rx_queue_N_drops`). ferry cannot see or set
//! the peer (another namespace), so a native attach to a veth says so.
//! `ferry_xdp` sends with a redirect even out of the ingress device
//! (agent-ebpf/src/xdp.rs says why), which needs only that NAPI ring.
//!
//! A device whose driver refuses native XDP keeps TC only, with a warning
//! naming it: generic XDP runs after the skb is built (and linearises it),
//! which gains nothing over TC and can cost more, so it is never a silent
//! substitute for the fast path the operator asked for (Cilium refuses the
//! same way).

use std::{collections::BTreeSet, fs, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use tracing::{info, warn};

use super::ifaces::Interface;
use crate::{
    cli::Acceleration,
    error::{Error, Result},
    paths::{self, PinDir},
};

/// The pin infixes of the two modes.
const NATIVE: &str = "xdpdrv";
const GENERIC: &str = "xdpskb";

fn infix(mode: Acceleration) -> Option<&'static str> {
    match mode {
        Acceleration::Native => Some(NATIVE),
        Acceleration::Generic => Some(GENERIC),
        Acceleration::Disabled => None,
    }
}

fn pin_name(infix: &str, ifname: &str) -> String {
    format!("ferry_link_{infix}_{ifname}")
}

/// The mode of a link pinned as `pin` (for re-attaching it).
pub(super) fn mode_of_pin(pin: &std::path::Path) -> Acceleration {
    let name = pin.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.is_some_and(|n| n.starts_with(&format!("ferry_link_{GENERIC}_"))) {
        Acceleration::Generic
    } else {
        Acceleration::Native
    }
}

/// True when the object carries the XDP program.
pub fn available(ebpf: &Ebpf) -> bool {
    ebpf.program(paths::XDP).is_some()
}

/// Loads the XDP program (the verifier speaks at start).
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    program(ebpf)?
        .load()
        .map_err(|e| Error::program(paths::XDP, e))
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    super::loader::program_mut(ebpf, paths::XDP)
}

/// Attaches the XDP program to `iface` in `mode` (or swaps it into its
/// pinned link); the pin of its link, None when the device keeps TC only
/// (native XDP refused: warned) or the kernel gave no link to pin.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    iface: &Interface,
    mode: Acceleration,
) -> Result<Option<PathBuf>> {
    let Some(infix) = infix(mode) else {
        return Ok(None);
    };
    // A link of the other mode goes first: a device holds one XDP program.
    for other in [NATIVE, GENERIC].into_iter().filter(|i| *i != infix) {
        let _ = fs::remove_file(pins.link(&pin_name(other, &iface.name)));
    }
    let pin = pins.link(&pin_name(infix, &iface.name));
    let prog = program(ebpf)?;
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|e| e.to_string());
        match pinned.and_then(|link| replace(prog, link.into())) {
            Ok(()) => {
                info!(program = paths::XDP, device = %iface.name, ?mode, "replaced in its pinned link");
                return Ok(Some(pin));
            }
            Err(detail) => {
                warn!(program = paths::XDP, device = %iface.name, %detail, "re-attaching");
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let xdp_mode = match mode {
        Acceleration::Generic => XdpMode::Skb,
        _ => XdpMode::Driver,
    };
    let id = match prog.attach(iface.index, xdp_mode) {
        Ok(id) => id,
        Err(e) if mode == Acceleration::Native => {
            warn!(
                device = %iface.name,
                error = %e,
                "--acceleration native: the device's driver refused native XDP; it keeps the TC \
                 programs only (no fast path on it)"
            );
            return Ok(None);
        }
        Err(e) => return Err(Error::program(paths::XDP, e)),
    };
    let link = prog
        .take_link(id)
        .map_err(|e| Error::program(paths::XDP, e))?;
    info!(program = paths::XDP, device = %iface.name, ifindex = iface.index, ?mode, "attached");
    if mode == Acceleration::Native && driver(&iface.name).as_deref() == Some("veth") {
        warn!(
            device = %iface.name,
            "native XDP on a veth: the frames it forwards reach the other end only if the \
             peer device has GRO on (`ethtool -K PEER gro on`) or an XDP program; otherwise \
             the kernel drops them (`ethtool -S` on this device: rx_queue_*_drops)"
        );
    }
    match FdLink::try_from(link) {
        Ok(fd_link) => {
            fd_link.pin(&pin).map_err(|e| Error::Link {
                name: paths::XDP.to_string(),
                path: pin.clone(),
                detail: e.to_string(),
            })?;
            Ok(Some(pin))
        }
        Err(e) => {
            // Kernels before 5.9 attach XDP through netlink, without a link.
            warn!(program = paths::XDP, device = %iface.name, error = %e, "attached without a link");
            Ok(None)
        }
    }
}

/// The driver of device `ifname` (ETHTOOL_GDRVINFO), None when it cannot
/// be asked.
fn driver(ifname: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h): its command and driver
    /// name, the rest room for the kernel to fill.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 164],
    };
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with an ifreq naming the device and pointing at
    // an ethtool_drvinfo that outlives the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut ifr) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Swaps `prog` into `link` (BPF_LINK_UPDATE): atomic, never detached.
fn replace(prog: &mut Xdp, link: FdLink) -> Result<(), String> {
    let link = XdpLink::try_from(link).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    drop(prog.take_link(id).map_err(|e| e.to_string())?);
    Ok(())
}

/// Swaps ferry's XDP program back into its `link`.
pub(super) fn swap_back(ebpf: &mut Ebpf, link: FdLink) -> Result<(), String> {
    replace(program(ebpf).map_err(|e| e.to_string())?, link)
}

/// Detaches the XDP program from devices not in `keep` (their pins go),
/// and from every device in a mode other than `mode` (all of them when
/// acceleration is disabled).
pub fn detach_others(pins: &PinDir, mode: Acceleration, keep: &BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(pins.root()) else {
        return;
    };
    let current = infix(mode);
    for e in entries.filter_map(std::result::Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((infix, ifname)) = [NATIVE, GENERIC].into_iter().find_map(|i| {
            name.strip_prefix(&format!("ferry_link_{i}_"))
                .map(|d| (i, d.to_string()))
        }) else {
            continue;
        };
        if current != Some(infix) || !keep.contains(&ifname) {
            info!(device = %ifname, "detaching the XDP program");
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_pin_names_its_mode() {
        for mode in [Acceleration::Native, Acceleration::Generic] {
            let name = pin_name(infix(mode).unwrap(), "eth0");
            assert_eq!(
                mode_of_pin(&Path::new("/sys/fs/bpf/ferry").join(&name)),
                mode
            );
        }
        assert_eq!(pin_name(NATIVE, "eth0"), "ferry_link_xdpdrv_eth0");
        assert_eq!(infix(Acceleration::Disabled), None);
    }
}
