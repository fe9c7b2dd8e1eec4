//! The backend arrays (`ferry_bel4_v1`, `ferry_bel6_v1`:
//! agent_common::maps::BACKEND_LIVE_V4 and BACKEND_LIVE_V6): each family's
//! backend map again, indexed by id, for the conntrack hit path's check
//! that a flow's backend is still there (an array lookup the verifier
//! inlines). Written with the backend map ([`super::lbmaps`]) and filled
//! from it when the agent starts.

use std::{
    io, mem,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap as _, MapData},
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

use crate::error::{Error, Result};

/// Makes `live` hold exactly `backends` (a free id: all zeroes) before any
/// program of this agent is attached: an agent of before the array left
/// none (every tracked flow's next packet would otherwise find its backend
/// gone and be chosen again), and an older agent run in between may have
/// changed the backend map without it. One batch write of the whole array
/// (IPv4: 2 MiB, IPv6: 3 MiB), key by key where the kernel has no batch
/// update. `names`: the backend map's and the array's.
pub fn fill<B: Pod + Default>(
    live: &mut Array<MapData, B>,
    backends: &HashMap<MapData, u32, B>,
    (map_name, live_name): (&str, &str),
) -> Result<()> {
    let len = live.len();
    let mut values = vec![B::default(); len as usize];
    let entries = super::sys::read_hash::<u32, B>(backends.map(), 4096).or_else(|_| {
        backends
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(io::Error::other)
    });
    let entries = entries.map_err(|source| Error::Io {
        context: format!("reading {map_name} to fill {live_name}"),
        source,
    })?;
    for (id, b) in entries {
        if let Some(slot) = values.get_mut(id as usize) {
            *slot = b;
        }
    }
    let keys: Vec<u32> = (0..len).collect();
    match update_batch(live.map(), &keys, &values) {
        Ok(()) => Ok(()),
        // No batch update for this map (EINVAL; the kernel's ENOTSUPP, 524).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | 524)) => {
            for (id, v) in keys.iter().zip(&values) {
                live.set(*id, v, 0).map_err(|e| Error::map(live_name, e))?;
            }
            Ok(())
        }
        Err(source) => Err(Error::Io {
            context: format!("filling {live_name}"),
            source,
        }),
    }
}

/// BPF_MAP_UPDATE_BATCH (Linux 5.6) of `keys` to `values`.
fn update_batch<B: Pod>(map: &MapData, keys: &[u32], values: &[B]) -> io::Result<()> {
    // SAFETY: bpf_attr is a union of integers: all zeroes is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = keys.len().min(values.len()) as u32;
    attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY: a valid bpf_attr for this command; the keys and values (u32
    // and the map's value type) outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
            &mut attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
