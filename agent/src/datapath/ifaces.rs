//! The network namespace's interfaces and their addresses (getifaddrs).

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Vec<Ipv4Addr>,
    /// Global IPv6 addresses (link-local ones cannot be a SNAT source for
    /// a client beyond the link).
    pub ipv6: Vec<Ipv6Addr>,
}

impl Interface {
    /// The device's address of `ip`'s family to masquerade behind: one of
    /// the node's addresses if it holds one, else its first.
    pub fn snat_source(&self, family_of: IpAddr, node_ips: &[IpAddr]) -> Option<IpAddr> {
        let own: Vec<IpAddr> = match family_of {
            IpAddr::V4(_) => self.ipv4.iter().map(|&a| a.into()).collect(),
            IpAddr::V6(_) => self.ipv6.iter().map(|&a| a.into()).collect(),
        };
        own.iter()
            .find(|ip| node_ips.contains(ip))
            .or(own.first())
            .copied()
    }
}

/// The index of the device named `name` now, if there is one.
pub fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of the device with index `index` now, if there is one.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Every interface with at least one IPv4 or global IPv6 address, by name.
pub fn list() -> io::Result<BTreeMap<String, Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out: BTreeMap<String, Interface> = BTreeMap::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; the family says which sockaddr it is.
        let ip: IpAddr = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into()
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if ip.is_unicast_link_local() || ip.is_loopback() {
                    continue;
                }
                ip.into()
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name_c = unsafe { CStr::from_ptr(ifa.ifa_name) };
        let name = name_c.to_string_lossy().into_owned();
        // SAFETY: valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name_c.as_ptr()) };
        let iface = out.entry(name.clone()).or_insert(Interface {
            name,
            index,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        });
        match ip {
            IpAddr::V4(ip) => iface.ipv4.push(ip),
            IpAddr::V6(ip) => iface.ipv6.push(ip),
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interfaces that hold any of `node_ips` (the default for
/// `--interfaces`, as Cilium picks the devices with the node's addresses).
pub fn holding(all: &BTreeMap<String, Interface>, node_ips: &[IpAddr]) -> Vec<Interface> {
    all.values()
        .filter(|i| {
            i.ipv4.iter().any(|&ip| node_ips.contains(&ip.into()))
                || i.ipv6.iter().any(|&ip| node_ips.contains(&ip.into()))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_address() {
        let all = list().expect("getifaddrs");
        let lo = all.values().find(|i| i.ipv4.contains(&Ipv4Addr::LOCALHOST));
        // A namespace without lo up has no IPv4 on it; only check what is there.
        if let Some(lo) = lo {
            assert!(lo.index > 0);
            assert_eq!(
                holding(&all, &[Ipv4Addr::LOCALHOST.into()])[0].name,
                lo.name
            );
            assert!(lo.ipv6.is_empty(), "::1 is not a SNAT source");
        }
    }
}
