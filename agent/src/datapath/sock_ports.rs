//! `ferry_skport_v1`: the backend ports the socket layer has sent a socket
//! to (agent-common's `maps::SOCK_PORTS`). The hooks set a port's bit before
//! they write its reverse entry, and getpeername/recvmsg look a socket up
//! only when its peer's port is set.
//!
//! An agent upgraded from a version without the map finds reverse entries
//! its predecessor's hooks wrote with no bit set: their sockets' getpeername
//! would show the backend instead of the ClusterIP. So when the map is new,
//! the ports of every reverse entry already in `ferry_sk4_v1`/`ferry_sk6_v1`
//! are set before the new hooks attach.

use agent_common::{
    SockRev4, SockRev4Key, SockRev6, SockRev6Key,
    maps::{self as names, SOCK_PORTS_WORDS},
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};

use crate::error::{Error, Result};

/// The bit of a port in the map's layout (`port / 64`, `1 << port % 64`,
/// the port in host order).
fn bit(port_be: u16) -> (usize, u64) {
    let port = u16::from_be(port_be) as usize;
    (port / 64, 1 << (port % 64))
}

/// Sets the ports of every reverse entry in the bitmap (ORed into what the
/// hooks set meanwhile). Returns how many ports were set.
pub fn seed(ebpf: &mut Ebpf) -> Result<usize> {
    let mut words = vec![0u64; SOCK_PORTS_WORDS as usize];
    let mut mark = |port: u16| {
        let (w, b) = bit(port);
        words[w] |= b;
    };
    {
        let map = ebpf.map(names::SOCK_REV_V4).ok_or(Error::MissingObject {
            what: "map",
            name: names::SOCK_REV_V4.into(),
        })?;
        let rev: HashMap<&MapData, SockRev4Key, SockRev4> =
            HashMap::try_from(map).map_err(|e| Error::map(names::SOCK_REV_V4, e))?;
        // An entry that vanishes mid-walk (evicted, its socket closed) needs no bit.
        rev.keys().flatten().for_each(|k| mark(k.port));
    }
    {
        let map = ebpf.map(names::SOCK_REV_V6).ok_or(Error::MissingObject {
            what: "map",
            name: names::SOCK_REV_V6.into(),
        })?;
        let rev: HashMap<&MapData, SockRev6Key, SockRev6> =
            HashMap::try_from(map).map_err(|e| Error::map(names::SOCK_REV_V6, e))?;
        rev.keys().flatten().for_each(|k| mark(k.port));
    }
    let map = ebpf
        .map_mut(names::SOCK_PORTS)
        .ok_or(Error::MissingObject {
            what: "map",
            name: names::SOCK_PORTS.into(),
        })?;
    let mut ports: Array<&mut MapData, u64> =
        Array::try_from(map).map_err(|e| Error::map(names::SOCK_PORTS, e))?;
    let mut set = 0;
    for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
        let i = i as u32;
        let have = ports
            .get(&i, 0)
            .map_err(|e| Error::map(names::SOCK_PORTS, e))?;
        ports
            .set(i, &(have | w), 0)
            .map_err(|e| Error::map(names::SOCK_PORTS, e))?;
        set += w.count_ones() as usize;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_the_hooks_layout() {
        // sock_lb.rs: word port / 64, bit port % 64, the port in host order.
        assert_eq!(bit(8080u16.to_be()), (126, 1 << 16));
        assert_eq!(bit(0u16.to_be()), (0, 1));
        assert_eq!(bit(65535u16.to_be()), (1023, 1 << 63));
    }
}
