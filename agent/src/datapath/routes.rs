//! Which device the node reaches an address through: one RTM_GETROUTE
//! request (what `ip route get ADDR` asks) on a netlink socket.
//!
//! The agent asks it for its local endpoints: a masqueraded flow's replies
//! come back from the pod through that device, which must carry
//! `ferry_tc_pod`. Asking the kernel's routing, rather than matching device
//! names (`cali*`, `lxc*`, `cni0`), works with whatever CNI made the pods.

use std::{
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Where the node sends packets for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Out of the device with this index.
    Device(u32),
    /// Delivered locally: the address is the node's own (a host-network
    /// endpoint).
    Local,
    /// No route, or one that sends nothing anywhere (blackhole, prohibit).
    None,
}

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
/// The header size the netlink attribute and message alignment rules use.
const NLA_ALIGN: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RtMsg {
    family: u8,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    kind: u8,
    flags: u32,
}

#[repr(C)]
struct Request {
    nlh: libc::nlmsghdr,
    rtm: RtMsg,
    /// rtattr header of RTA_DST.
    rta_len: u16,
    rta_type: u16,
    /// The address, 4 or 16 bytes of it sent.
    dst: [u8; 16],
}

fn align(n: usize) -> usize {
    n.div_ceil(NLA_ALIGN) * NLA_ALIGN
}

/// A netlink route socket for a series of lookups.
pub struct Resolver {
    fd: OwnedFd,
    seq: u32,
}

impl Resolver {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Resolver { fd, seq: 0 })
    }

    /// The route the node would take to `addr` now.
    pub fn get(&mut self, addr: IpAddr) -> io::Result<Route> {
        self.seq = self.seq.wrapping_add(1);
        let (family, bits, bytes) = match addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (libc::AF_INET, 32, b)
            }
            IpAddr::V6(a) => (libc::AF_INET6, 128, a.octets()),
        };
        let addr_len = usize::from(bits / 8);
        let len = size_of::<Request>() - 16 + addr_len;
        let req = Request {
            nlh: libc::nlmsghdr {
                nlmsg_len: len as u32,
                nlmsg_type: libc::RTM_GETROUTE,
                nlmsg_flags: libc::NLM_F_REQUEST as u16,
                nlmsg_seq: self.seq,
                nlmsg_pid: 0,
            },
            rtm: RtMsg {
                family: family as u8,
                dst_len: bits,
                ..RtMsg::default()
            },
            rta_len: (4 + addr_len) as u16,
            rta_type: RTA_DST,
            dst: bytes,
        };
        // SAFETY: sending the bytes of a plain repr(C) struct we own.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), (&req as *const Request).cast(), len, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receiving into a buffer we own, of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(route) = parse_reply(&buf[..n as usize], self.seq)? {
                return Ok(route);
            }
        }
    }
}

/// The route in a reply to request `seq`; None when these messages are not
/// its answer (a stale one).
fn parse_reply(mut buf: &[u8], seq: u32) -> io::Result<Option<Route>> {
    let hdr_len = size_of::<libc::nlmsghdr>();
    while buf.len() >= hdr_len {
        // SAFETY: at least a header's bytes; read unaligned.
        let nlh: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = nlh.nlmsg_len as usize;
        if len < hdr_len || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &buf[hdr_len..len];
        buf = &buf[align(len).min(buf.len())..];
        if nlh.nlmsg_seq != seq {
            continue;
        }
        if nlh.nlmsg_type == libc::NLMSG_ERROR as u16 {
            let code = body
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .unwrap_or(-libc::EINVAL);
            return match -code {
                0 => Ok(Some(Route::None)),
                // No route at all, or an unreachable/prohibit one.
                libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL => {
                    Ok(Some(Route::None))
                }
                errno => Err(io::Error::from_raw_os_error(errno)),
            };
        }
        if nlh.nlmsg_type != libc::RTM_NEWROUTE || body.len() < size_of::<RtMsg>() {
            continue;
        }
        // SAFETY: at least an rtmsg's bytes; read unaligned.
        let rtm: RtMsg = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
        return Ok(Some(match rtm.kind {
            RTN_LOCAL => Route::Local,
            RTN_UNICAST => oif(&body[size_of::<RtMsg>()..]).map_or(Route::None, Route::Device),
            _ => Route::None,
        }));
    }
    Ok(None)
}

/// RTA_OIF among a route's attributes.
fn oif(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == RTA_OIF && len >= 8 {
            return Some(u32::from_ne_bytes(attrs[4..8].try_into().ok()?));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn loopback_is_local() {
        let mut r = Resolver::new().expect("netlink socket");
        assert_eq!(r.get(Ipv4Addr::LOCALHOST.into()).unwrap(), Route::Local);
        // IPv6 may be off in this namespace: then there is no route at all.
        if std::fs::read_to_string("/proc/net/if_inet6")
            .is_ok_and(|t| t.contains("00000000000000000000000000000001"))
        {
            assert_eq!(
                r.get(std::net::Ipv6Addr::LOCALHOST.into()).unwrap(),
                Route::Local
            );
        }
    }

    #[test]
    fn attributes_are_walked_to_the_output_device() {
        // RTA_TABLE (4 bytes of value), then RTA_OIF 7.
        let attrs = [8, 0, 15, 0, 254, 0, 0, 0, 8, 0, 4, 0, 7, 0, 0, 0];
        assert_eq!(oif(&attrs), Some(7));
        // A length running past the end is refused, not read.
        assert_eq!(oif(&[200, 0, 4, 0, 7, 0, 0, 0]), None);
        assert_eq!(oif(&[2, 0]), None);
    }

    #[test]
    fn a_truncated_reply_is_an_error() {
        let mut msg = vec![0u8; size_of::<libc::nlmsghdr>()];
        msg[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_reply(&msg, 0).is_err());
    }
}
