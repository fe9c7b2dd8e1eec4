//! Reading `ferry services -o json`, typed as the agent prints it
//! ([`ServicesView`]: the type is the contract). Frontends and backends of either family:
//! addresses are named as text (`"10.96.0.10"`, `"fd00:96::a"`) or typed, and backends are
//! listed as `ip:port` / `[ipv6]:port`.
//!
//! A test written once for both families takes a [`Family`] (the lab is dual-stack): the
//! address of each thing it names in that family, its EndpointSlices of that family, and
//! [`over_both_families!`](crate::over_both_families) makes it two tests, `NAME::ipv4` and
//! `NAME::ipv6`, so that a failure names its family.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use ferry::{
    cmd::services::{BackendView, FrontendView, ServicesView},
    model::{Protocol, Scope},
};

use crate::{
    lab::Pod,
    manifests::{Endpoint, EndpointSlice},
};

/// Polls `read` (one `ferry services -o json`) until `pred` holds; returns how long it
/// took. Past `deadline` it panics with the last answer, `what` and `log()`.
pub fn wait_until(
    what: &str,
    read: impl Fn() -> Result<ServicesView, String>,
    pred: impl Fn(&ServicesView) -> bool,
    deadline: Duration,
    log: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = read();
        if let Ok(v) = &last
            && pred(v)
        {
            return start.elapsed();
        }
        if start.elapsed() >= deadline {
            let last = match last {
                Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                Err(e) => e,
            };
            panic!(
                "{what} did not reach the expected state within {deadline:?}; last:\n{last}\nagent log:\n{}",
                log()
            );
        }
        std::thread::sleep(crate::proc::POLL);
    }
}

/// An IPv4 address as a test names it: a constant like `"10.96.0.10"` or a pod's address.
pub trait AsIpv4 {
    fn ipv4(self) -> Ipv4Addr;
}

impl AsIpv4 for Ipv4Addr {
    fn ipv4(self) -> Ipv4Addr {
        self
    }
}

impl AsIpv4 for &str {
    /// Panics on text that is no IPv4 address: a mistake in the test itself.
    fn ipv4(self) -> Ipv4Addr {
        self.parse()
            .unwrap_or_else(|e| panic!("the test names {self:?} as an IPv4 address: {e}"))
    }
}

/// An address of either family as a test names it: `"10.96.0.10"`, `"fd00:96::a"`, a pod's
/// `ip` or `ip6`.
pub trait AsIp {
    fn ip(self) -> IpAddr;
}

impl AsIp for IpAddr {
    fn ip(self) -> IpAddr {
        self
    }
}

impl AsIp for Ipv4Addr {
    fn ip(self) -> IpAddr {
        self.into()
    }
}

impl AsIp for Ipv6Addr {
    fn ip(self) -> IpAddr {
        self.into()
    }
}

impl AsIp for &str {
    /// Panics on text that is no IP address: a mistake in the test itself.
    fn ip(self) -> IpAddr {
        self.parse()
            .unwrap_or_else(|e| panic!("the test names {self:?} as an IP address: {e}"))
    }
}

/// The frontend for address:port/protocol, if programmed (the external scope first).
pub fn frontend(
    v: &ServicesView,
    address: impl AsIp,
    port: u16,
    protocol: Protocol,
) -> Option<&FrontendView> {
    let address = address.ip();
    v.frontends
        .iter()
        .find(|f| f.address == address && f.port == port && f.protocol == protocol)
}

/// The frontend for address:port/protocol in one scope (an externalTrafficPolicy Local
/// frontend has an external and an internal entry), if programmed.
pub fn frontend_in(
    v: &ServicesView,
    address: impl AsIp,
    port: u16,
    protocol: Protocol,
    scope: Scope,
) -> Option<&FrontendView> {
    let address = address.ip();
    v.frontends.iter().find(|f| {
        f.address == address && f.port == port && f.protocol == protocol && f.scope == scope
    })
}

/// True if any frontend has this address.
pub fn has_address(v: &ServicesView, address: impl AsIp) -> bool {
    let address = address.ip();
    v.frontends.iter().any(|f| f.address == address)
}

/// A backend as "ip:port" (`[ipv6]:port`); one whose entry is missing from the kernel as its
/// id and state.
pub fn endpoint(b: &BackendView) -> String {
    match (b.address, b.port) {
        (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
        _ => format!("#{} ({})", b.id, b.state),
    }
}

/// The backends of a frontend that pass `keep`, as sorted "ip:port" strings (empty if the
/// frontend is missing).
fn endpoints(
    v: &ServicesView,
    address: impl AsIp,
    port: u16,
    protocol: Protocol,
    keep: impl Fn(&BackendView) -> bool,
) -> Vec<String> {
    let mut list: Vec<String> = frontend(v, address, port, protocol)
        .map(|f| {
            f.backends
                .iter()
                .filter(|b| keep(b))
                .map(endpoint)
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

/// The active backends of a frontend as sorted "ip:port" strings (empty if the frontend is
/// missing).
pub fn active(v: &ServicesView, address: impl AsIp, port: u16, protocol: Protocol) -> Vec<String> {
    endpoints(v, address, port, protocol, |b| b.state == "active")
}

/// True if the frontend exists and its active backends are exactly `want` ("ip:port", any order).
pub fn active_is(
    v: &ServicesView,
    address: impl AsIp,
    port: u16,
    protocol: Protocol,
    want: &[&str],
) -> bool {
    let address = address.ip();
    frontend(v, address, port, protocol).is_some()
        && active(v, address, port, protocol) == sorted(want)
}

/// All backends of a frontend (any state) as sorted "ip:port" strings.
pub fn all(v: &ServicesView, address: impl AsIp, port: u16, protocol: Protocol) -> Vec<String> {
    endpoints(v, address, port, protocol, |_| true)
}

/// True if the frontend exists and its backends (any state) are exactly `want`.
pub fn backends_are(
    v: &ServicesView,
    address: impl AsIp,
    port: u16,
    protocol: Protocol,
    want: &[&str],
) -> bool {
    let address = address.ip();
    frontend(v, address, port, protocol).is_some()
        && all(v, address, port, protocol) == sorted(want)
}

fn sorted(want: &[&str]) -> Vec<String> {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    want
}

/// The address family a test runs over. Things a test names in both families are given as a
/// pair `[ipv4, ipv6]` and read with [`pick`](Family::pick): `["10.96.0.10", "fd00:96::a"]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// This family's of a pair given IPv4 first: `family.pick(["10.96.0.10", "fd00:96::a"])`.
    pub fn pick<T>(self, pair: [T; 2]) -> T {
        let [v4, v6] = pair;
        match self {
            Family::V4 => v4,
            Family::V6 => v6,
        }
    }

    /// The family of an address.
    pub fn of(address: impl AsIp) -> Family {
        match address.ip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `ipv4` or `ipv6`: the name of the test of this family and a suffix of names.
    pub fn tag(self) -> &'static str {
        self.pick(["ipv4", "ipv6"])
    }

    /// The pod's address of this family (`ip`, or its twin `ip6`).
    pub fn ip(self, pod: &Pod) -> IpAddr {
        self.pick([IpAddr::V4(pod.ip), IpAddr::V6(pod.ip6)])
    }

    /// The pod's address as the one address of a prefix (`a.b.c.d/32`, `x::y/128`), as
    /// loadBalancerSourceRanges take it.
    pub fn host_cidr(self, pod: &Pod) -> String {
        format!("{}/{}", self.ip(pod), self.pick([32, 128]))
    }

    /// The pod's `port` as `ferry services` lists a backend: `ip:port` or `[ipv6]:port`.
    pub fn ep(self, pod: &Pod, port: u16) -> String {
        at(self.ip(pod), port)
    }

    /// The pod as a ready endpoint of a slice of this family (on node-1).
    pub fn ready(self, pod: &Pod) -> Endpoint {
        Endpoint::ready(self.ip(pod))
    }

    /// An EndpointSlice `<name>-ipv4` / `<name>-ipv6` of `service` (addressType of this family):
    /// the EndpointSlice controller writes one per family for a dual-stack Service.
    pub fn slice(self, name: &str, service: &str) -> EndpointSlice {
        let name = format!("{name}-{}", self.tag());
        match self {
            Family::V4 => EndpointSlice::new(&name, service),
            Family::V6 => EndpointSlice::ipv6(&name, service),
        }
    }
}

impl std::fmt::Display for Family {
    /// `IPv4` or `IPv6`, as `ipFamilies` names them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pick(["IPv4", "IPv6"]))
    }
}

/// `ip:port` or `[ipv6]:port`: a lab-client target, what getpeername/recvfrom print, a
/// backend as `ferry services` lists it.
pub fn at(address: impl AsIp, port: u16) -> String {
    SocketAddr::new(address.ip(), port).to_string()
}

/// `http://ip:port/` or `http://[ipv6]:port/` (curl needs `-g` for the brackets).
pub fn url(address: impl AsIp, port: u16) -> String {
    format!("http://{}/", at(address, port))
}

/// Makes each `fn NAME(family: Family)` of a test file two kernel tests, `NAME::ipv4` and
/// `NAME::ipv6` (ignored as kernel tests are: `cargo xtask test` runs them as root), so that
/// one body runs over both families of the dual-stack lab and a failure names its family.
#[macro_export]
macro_rules! over_both_families {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            #[ignore = "kernel test: needs root (cargo xtask test runs it)"]
            fn ipv4() {
                super::$name($crate::services::Family::V4)
            }

            #[test]
            #[ignore = "kernel test: needs root (cargo xtask test runs it)"]
            fn ipv6() {
                super::$name($crate::services::Family::V6)
            }
        }
    )+};
}
