//! Reading `ferry services -o json` (the agent's contract):
//!
//! ```json
//! {"frontends":[{"address":"10.96.0.10","port":80,"protocol":"TCP","scope":"external",
//!   "flags":["ClusterIP"],"revNatId":1,"affinityTimeout":null,
//!   "backends":[{"id":3,"address":"10.244.0.2","port":8080,"protocol":"TCP","state":"active"}]}]}
//! ```

use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `read` (one `ferry services -o json`) until `pred` holds; returns how long it
/// took. Past `deadline` it panics with the last answer, `what` and `log()`.
pub fn wait_until(
    what: &str,
    read: impl Fn() -> Result<Value, String>,
    pred: impl Fn(&Value) -> bool,
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

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub address: String,
    pub port: u16,
    pub state: String,
}

pub fn frontends(v: &Value) -> &[Value] {
    v["frontends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The frontend for address:port/protocol, if programmed.
pub fn frontend<'a>(v: &'a Value, address: &str, port: u16, protocol: &str) -> Option<&'a Value> {
    frontends(v).iter().find(|f| {
        f["address"] == address && f["port"] == port && f["protocol"].as_str() == Some(protocol)
    })
}

/// True if any frontend has this address.
pub fn has_address(v: &Value, address: &str) -> bool {
    frontends(v).iter().any(|f| f["address"] == address)
}

pub fn backends(frontend: &Value) -> Vec<Backend> {
    let mut list: Vec<Backend> = frontend["backends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|b| Backend {
            address: b["address"].as_str().unwrap_or_default().to_owned(),
            port: b["port"].as_u64().unwrap_or_default() as u16,
            state: b["state"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    list.sort();
    list
}

/// The active backends of a frontend as sorted "ip:port" strings (empty if the frontend is
/// missing).
pub fn active(v: &Value, address: &str, port: u16, protocol: &str) -> Vec<String> {
    frontend(v, address, port, protocol)
        .map(|f| {
            backends(f)
                .into_iter()
                .filter(|b| b.state == "active")
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect()
        })
        .unwrap_or_default()
}

/// True if the frontend exists and its active backends are exactly `want` ("ip:port", any order).
pub fn active_is(v: &Value, address: &str, port: u16, protocol: &str, want: &[&str]) -> bool {
    if frontend(v, address, port, protocol).is_none() {
        return false;
    }
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    active(v, address, port, protocol) == want
}

/// All backends of a frontend (any state) as sorted "ip:port" strings.
pub fn all(v: &Value, address: &str, port: u16, protocol: &str) -> Vec<String> {
    frontend(v, address, port, protocol)
        .map(|f| {
            backends(f)
                .into_iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect()
        })
        .unwrap_or_default()
}

/// True if the frontend exists and its backends (any state) are exactly `want`.
pub fn backends_are(v: &Value, address: &str, port: u16, protocol: &str, want: &[&str]) -> bool {
    if frontend(v, address, port, protocol).is_none() {
        return false;
    }
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    all(v, address, port, protocol) == want
}
