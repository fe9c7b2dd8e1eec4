//! Reading `ferry services -o json`, typed as the agent prints it
//! ([`ServicesView`]: the type is the contract). Frontends and backends of either family:
//! addresses are named as text (`"10.96.0.10"`, `"fd00:96::a"`) or typed, and backends are
//! listed as `ip:port` / `[ipv6]:port`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use ferry::{
    cmd::services::{BackendView, FrontendView, ServicesView},
    model::{Protocol, Scope},
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
