//! `ferry monitor`'s side of the datapath events (agent_common::event):
//! the pinned ring buffer, the lease that turns the programs' events on
//! ([`Lease`]), and the decoding of a record ([`EventView`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use agent_common::{
    drop::DropReason,
    event::{self, Event, FAMILY_V6, MonitorControl, event_flags, kind, program},
    maps as names,
    net::{ip4_from_raw, ip6_from_raw, port_from_raw},
};
use aya::maps::{Array, Map, MapData, RingBuf};
use serde::{Deserialize, Serialize};

use super::sys;
use crate::{
    error::{Error, Result},
    model::{Protocol, SockAddr},
    paths::PinDir,
};

/// Opens a pinned map read-write (the ring buffer is consumed, the control
/// written), saying which agent is missing when it is not there.
fn open_rw(dir: &PinDir, name: &'static str) -> Result<Map> {
    let path = dir.map(name);
    let fd = sys::obj_get(&path, 0).map_err(|source| Error::Io {
        context: if source.kind() == std::io::ErrorKind::NotFound {
            format!(
                "opening map {name} at {}: not there (no agent ran here, or one older than \
                 `ferry monitor`: restart the agent with this version)",
                path.display()
            )
        } else {
            format!("opening map {name} at {}", path.display())
        },
        source,
    })?;
    let data = MapData::from_fd(fd).map_err(|e| Error::map(name, e))?;
    Map::from_map_data(data).map_err(|e| Error::map(name, e))
}

/// The pinned event ring buffer.
pub fn open_ring(dir: &PinDir) -> Result<RingBuf<MapData>> {
    RingBuf::try_from(open_rw(dir, names::EVENTS)?).map_err(|e| Error::map(names::EVENTS, e))
}

/// CLOCK_MONOTONIC in nanoseconds: the programs' clock (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monitor's hold on `ferry_mon_v1`: while its lease is live the
/// programs emit events. Renewed by [`Lease::renew`] every
/// [`event::RENEW_NS`]; released on drop (only if still ours). A monitor
/// that dies without releasing costs the datapath nothing once the lease
/// ran out ([`event::LEASE_NS`]): the programs clear it.
pub struct Lease {
    map: Array<MapData, MonitorControl>,
    pid: u32,
}

impl Lease {
    /// Takes the control, unless another live monitor holds it: a ring
    /// buffer has one reader, two would split the events between them.
    pub fn acquire(dir: &PinDir) -> Result<Lease> {
        let map: Array<MapData, MonitorControl> = Array::try_from(open_rw(dir, names::MONITOR)?)
            .map_err(|e| Error::map(names::MONITOR, e))?;
        let mut lease = Lease {
            map,
            pid: std::process::id(),
        };
        let held = lease.read()?;
        if held.lease_until_ns > monotonic_ns()
            && held.pid != lease.pid
            && Path::new(&format!("/proc/{}", held.pid)).exists()
        {
            return Err(Error::Io {
                context: format!(
                    "map {}: another ferry monitor (pid {}) is reading the events: one reader at a time",
                    names::MONITOR,
                    held.pid
                ),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        lease.renew()?;
        Ok(lease)
    }

    fn read(&self) -> Result<MonitorControl> {
        self.map
            .get(&0, 0)
            .map_err(|e| Error::map(names::MONITOR, e))
    }

    /// Extends the lease by [`event::LEASE_NS`] from now.
    pub fn renew(&mut self) -> Result<()> {
        let v = MonitorControl {
            lease_until_ns: monotonic_ns() + event::LEASE_NS,
            pid: self.pid,
            _pad: 0,
        };
        self.map
            .set(0, &v, 0)
            .map_err(|e| Error::map(names::MONITOR, e))
    }

    /// Turns the events off (if the control is still ours).
    pub fn release(&mut self) {
        if self.read().is_ok_and(|c| c.pid == self.pid) {
            let _ = self.map.set(0, &MonitorControl::default(), 0);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// The control's value as the pins hold it (tests, diagnostics).
pub fn read_control(dir: &PinDir) -> Result<MonitorControl> {
    let path = dir.map(names::MONITOR);
    let fd = sys::obj_get(&path, sys::READ_ONLY).map_err(|source| Error::Io {
        context: format!("opening map {} at {}", names::MONITOR, path.display()),
        source,
    })?;
    let data = MapData::from_fd(fd).map_err(|e| Error::map(names::MONITOR, e))?;
    let map: Array<MapData, MonitorControl> =
        Array::try_from(Map::from_map_data(data).map_err(|e| Error::map(names::MONITOR, e))?)
            .map_err(|e| Error::map(names::MONITOR, e))?;
    map.get(&0, 0).map_err(|e| Error::map(names::MONITOR, e))
}

/// One event decoded for people and tools (`ferry monitor -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Wall-clock time, RFC 3339 with microseconds.
    pub time: String,
    /// The kernel's timestamp (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// drop, new_flow, icmp_translated, port_unreachable (`kind_N` for a
    /// kind this build does not know).
    pub kind: String,
    /// A drop's reason (`agent_common::drop::DropReason` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// ipv4 or ipv6.
    pub family: String,
    pub protocol: Option<Protocol>,
    /// The program that saw the packet (tc_in, tc_out, tc_pod).
    pub program: String,
    pub ifindex: u32,
    /// The original tuple.
    pub src: String,
    pub dst: String,
    /// The translated tuple, when there is one (new source, new
    /// destination: the backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_dst: Option<String>,
    /// snat, dsr, local: how the flow reaches its backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    /// The frontend the event concerns, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// Its Service (NAMESPACE/NAME), when the running agent named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The addresses of an event, decoded.
#[derive(Clone, Copy, Debug)]
pub struct Tuple {
    pub src: SockAddr,
    pub dst: SockAddr,
}

/// A record of the ring, or None when it is not one (a short read).
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is plain-old-data of that size; read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

fn addr(family: u8, words: [u32; 4]) -> IpAddr {
    if family == FAMILY_V6 {
        Ipv6Addr::from(ip6_from_raw(words)).into()
    } else {
        Ipv4Addr::from(ip4_from_raw(words[0])).into()
    }
}

/// The event's original tuple and, when it has one, its translation.
pub fn tuples(e: &Event) -> (Tuple, Option<Tuple>) {
    let at = |w, p| SockAddr(addr(e.family, w), port_from_raw(p));
    let orig = Tuple {
        src: at(e.saddr, e.sport),
        dst: at(e.daddr, e.dport),
    };
    let nat = (e.flags & event_flags::TRANSLATED != 0).then(|| Tuple {
        src: at(e.nat_saddr, e.nat_sport),
        dst: at(e.nat_daddr, e.nat_dport),
    });
    (orig, nat)
}

pub fn kind_name(k: u8) -> String {
    match k {
        kind::DROP => "drop".into(),
        kind::NEW_FLOW => "new_flow".into(),
        kind::ICMP_TRANSLATED => "icmp_translated".into(),
        kind::PORT_UNREACHABLE => "port_unreachable".into(),
        other => format!("kind_{other}"),
    }
}

fn program_name(p: u8) -> String {
    match p {
        program::TC_IN => "tc_in".into(),
        program::TC_OUT => "tc_out".into(),
        program::TC_POD => "tc_pod".into(),
        program::SOCK => "sock".into(),
        program::GUARD => "guard".into(),
        program::XDP => "xdp".into(),
        other => format!("program_{other}"),
    }
}

fn mode_name(ct_flags: u8) -> Option<String> {
    use agent_common::ct_flags as f;
    let m = if ct_flags & f::SNAT != 0 {
        "snat"
    } else if ct_flags & f::DSR != 0 {
        "dsr"
    } else if ct_flags & f::LOCAL != 0 {
        "local"
    } else {
        return None;
    };
    Some(m.into())
}

/// Decodes `e`; `wall_offset_ns` turns its monotonic time into wall time
/// (realtime - monotonic, measured once).
pub fn view(e: &Event, wall_offset_ns: u64) -> EventView {
    let (orig, nat) = tuples(e);
    let wall = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(e.ts_ns.saturating_add(wall_offset_ns));
    EventView {
        time: humantime::format_rfc3339_micros(wall).to_string(),
        ts_ns: e.ts_ns,
        kind: kind_name(e.kind),
        reason: (e.kind == kind::DROP).then(|| {
            DropReason::from_raw(e.reason)
                .map_or_else(|| format!("reason_{}", e.reason), |r| r.name().into())
        }),
        family: if e.family == FAMILY_V6 {
            "ipv6"
        } else {
            "ipv4"
        }
        .into(),
        protocol: Protocol::from_number(e.proto),
        program: program_name(e.program),
        ifindex: e.ifindex,
        src: orig.src.to_string(),
        dst: orig.dst.to_string(),
        nat_src: nat.map(|t| t.src.to_string()),
        nat_dst: nat.map(|t| t.dst.to_string()),
        mode: nat.and_then(|_| mode_name(e.ct_flags)),
        backend_id: e.backend_id,
        rev_nat_id: e.rev_nat_id,
        frontend: None,
        service: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{
        event::FAMILY_V4,
        net::{ip4_to_raw, ip6_to_raw, port_to_raw},
    };

    #[test]
    fn a_new_flow_decodes_with_its_translation() {
        let e = Event {
            ts_ns: 5,
            kind: kind::NEW_FLOW,
            family: FAMILY_V4,
            proto: 6,
            program: program::TC_IN,
            flags: event_flags::TRANSLATED,
            rev_nat_id: 7,
            saddr: [ip4_to_raw([172, 18, 0, 100]), 0, 0, 0],
            daddr: [ip4_to_raw([192, 0, 2, 10]), 0, 0, 0],
            sport: port_to_raw(40000),
            dport: port_to_raw(80),
            nat_saddr: [ip4_to_raw([172, 18, 0, 11]), 0, 0, 0],
            nat_daddr: [ip4_to_raw([10, 244, 1, 2]), 0, 0, 0],
            nat_sport: port_to_raw(40000),
            nat_dport: port_to_raw(8080),
            ct_flags: agent_common::ct_flags::SNAT,
            ..Event::default()
        };
        let bytes: [u8; size_of::<Event>()] = unsafe { std::mem::transmute(e) };
        let v = view(&parse(&bytes).unwrap(), 0);
        assert_eq!(v.kind, "new_flow");
        assert_eq!(v.reason, None);
        assert_eq!(v.src, "172.18.0.100:40000");
        assert_eq!(v.dst, "192.0.2.10:80");
        assert_eq!(v.nat_src.as_deref(), Some("172.18.0.11:40000"));
        assert_eq!(v.nat_dst.as_deref(), Some("10.244.1.2:8080"));
        assert_eq!(v.mode.as_deref(), Some("snat"));
        assert_eq!(v.protocol, Some(Protocol::Tcp));
        assert!(parse(&bytes[..50]).is_none());
    }

    #[test]
    fn a_drop_names_its_reason_and_an_ipv6_address() {
        let e = Event {
            kind: kind::DROP,
            reason: DropReason::SourceRange as u8,
            family: FAMILY_V6,
            proto: 17,
            saddr: ip6_to_raw("fd00:172:18::101".parse::<Ipv6Addr>().unwrap().octets()),
            daddr: ip6_to_raw("fd00:192:0:2::10".parse::<Ipv6Addr>().unwrap().octets()),
            sport: port_to_raw(5000),
            dport: port_to_raw(53),
            ..Event::default()
        };
        let v = view(&e, 0);
        assert_eq!(v.reason.as_deref(), Some("source_range"));
        assert_eq!(v.src, "[fd00:172:18::101]:5000");
        assert_eq!(v.family, "ipv6");
        assert_eq!(v.nat_dst, None);
    }
}
