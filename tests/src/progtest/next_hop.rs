//! The FIB tests' next hop, in the calling thread's namespace: a veth `d0` (MAC
//! [`super::net::ME_MAC`]) whose peer is up, the node's address on it, a resolved gateway
//! ([`super::net::GW_MAC`]) and routes through it, forwarding on. The table tests, the packet
//! fuzzer's fixture and the program-cost bench route their frames through it.

use anyhow::{Result, bail};

use super::net::Family;

/// Runs `ip` commands in the calling thread's namespace, failing at the first that fails.
pub fn ip_cmds(cmds: &[&[&str]]) -> Result<()> {
    for args in cmds {
        let st = std::process::Command::new("ip").args(*args).status()?;
        if !st.success() {
            bail!("ip {}: {st}", args.join(" "));
        }
    }
    Ok(())
}

/// Forwarding on for `family` (/proc/sys/net is the namespace of the thread that opens it).
pub fn forwarding(family: Family) -> Result<()> {
    let knob = match family {
        Family::V4 => "/proc/sys/net/ipv4/ip_forward",
        Family::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
    };
    std::fs::write(knob, "1").map_err(|e| anyhow::anyhow!("writing 1 to {knob}: {e}"))
}

/// The veth `d0` (`mtu` if given) and its peer `d1`, both up.
pub fn device(mtu: Option<&str>) -> Result<()> {
    let mut link = vec!["link", "add", "d0", "address", "02:00:00:00:aa:01"];
    if let Some(mtu) = mtu {
        link.extend(["mtu", mtu]);
    }
    link.extend(["type", "veth", "peer", "name", "d1"]);
    ip_cmds(&[
        &link,
        &["link", "set", "d1", "up"],
        &["link", "set", "d0", "up"],
    ])
}

/// `family`'s side of [`device`]: the node's address on `d0` (100.64.0.1/24, fd00:64::1/64),
/// the gateway (100.64.0.2, fd00:64::2) resolved to 02:00:00:00:aa:02, `routes` through it,
/// and forwarding on.
pub fn routes(family: Family, routes: &[&str]) -> Result<()> {
    let (v, me, gw) = match family {
        Family::V4 => ("-4", "100.64.0.1/24", "100.64.0.2"),
        Family::V6 => ("-6", "fd00:64::1/64", "fd00:64::2"),
    };
    let mut addr = vec![v, "addr", "add", me, "dev", "d0"];
    if family == Family::V6 {
        addr.push("nodad");
    }
    ip_cmds(&[
        &addr,
        &[
            v,
            "neigh",
            "add",
            gw,
            "lladdr",
            "02:00:00:00:aa:02",
            "dev",
            "d0",
            "nud",
            "permanent",
        ],
    ])?;
    for r in routes {
        ip_cmds(&[&[v, "route", "add", r, "via", gw, "dev", "d0"]])?;
    }
    forwarding(family)
}
