//! The few bpf(2) commands aya does not expose: reading a map in batches
//! (conntrack), walking the kernel's links to find ferry's on one cgroup
//! (for `ferry cleanup --cgroup`, which must also remove links a hung agent
//! still holds) and detaching them, and opening a pin with access flags
//! (aya's `from_pin` always asks for read-write).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;
pub const BPF_LINK_TYPE_TCX: u32 = 11;
/// `file_flags` of BPF_OBJ_GET: the descriptor may only read the map.
pub const BPF_F_RDONLY: u32 = 1 << 3;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised union bpf_attr of ample size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a pinned object (BPF_OBJ_GET) with `file_flags` (0: read-write).
pub fn obj_get(path: &std::path::Path, file_flags: u32) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    attr[1] = u64::from(file_flags) << 32; // bpf_fd 0, file_flags
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Ids of every bpf link in the kernel.
pub fn link_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(start); // start_id
        if bpf(BPF_LINK_GET_NEXT_ID, &mut attr).is_err() {
            return ids;
        }
        start = (attr[0] >> 32) as u32; // next_id
        ids.push(start);
    }
}

pub fn link_fd(id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub kind: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Cgroup links: the cgroup's id, 0 once detached. TCX links: the
    /// ifindex in the low 32 bits, 0 once detached.
    pub target: u64,
}

impl LinkInfo {
    pub fn detached(&self) -> bool {
        match self.kind {
            BPF_LINK_TYPE_TCX => self.target as u32 == 0,
            _ => self.target == 0,
        }
    }
}

pub fn link_info(fd: &impl AsFd) -> io::Result<LinkInfo> {
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union (8-aligned) {
    //   struct { u64 cgroup_id; u32 attach_type; } cgroup;
    //   struct { u32 ifindex; u32 attach_type; } tcx; ... } }
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_fd().as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        kind: info[0] as u32,
        id: (info[0] >> 32) as u32,
        prog_id: info[1] as u32,
        target: info[2],
    })
}

/// Swaps the program inside a link (BPF_LINK_UPDATE), atomically.
pub fn link_update(link: &impl AsFd, prog: &impl AsFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] =
        link.as_fd().as_raw_fd() as u32 as u64 | ((prog.as_fd().as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Pins an object we hold a descriptor on (BPF_OBJ_PIN).
pub fn obj_pin(fd: &impl AsFd, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = fd.as_fd().as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// The name the kernel holds for a program (up to 15 bytes).
pub fn prog_name(id: u32) -> io::Result<String> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: new descriptor owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_prog_info: name[16] is at byte offset 64.
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

pub fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// A cgroup v2 directory's id is its inode number.
pub fn cgroup_id(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.ino())
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of a hash map, read `chunk` at a time with BPF_MAP_LOOKUP_BATCH
/// (Linux 5.6): a few syscalls for a map of 100,000s of entries, where
/// walking it key by key takes two per entry. Entries added or removed
/// meanwhile may or may not be seen, as with any walk. `chunk` must be at
/// least the longest hash bucket (ENOSPC otherwise): thousands are plenty.
pub fn read_hash<K: aya::Pod, V: aya::Pod>(
    map: std::os::fd::BorrowedFd<'_>,
    chunk: u32,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    // SAFETY: K and V are plain old data; zeroes are valid values.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk as usize];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk as usize];
    // Hash maps use a 4-byte bucket cursor.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        // union bpf_attr.batch: in_batch, out_batch, keys, values, count|map_fd, elem_flags, flags.
        let mut attr = [0u64; 16];
        attr[0] = if first {
            0
        } else {
            &mut cursor_in as *mut u64 as u64
        };
        attr[1] = &mut cursor_out as *mut u64 as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = u64::from(chunk) | (u64::from(map.as_raw_fd() as u32) << 32);
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = (attr[4] as u32).min(chunk) as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if done {
            return Ok(out);
        }
        cursor_in = cursor_out;
        first = false;
    }
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Deletes one key (already gone is fine).
pub fn delete<K: aya::Pod>(map: std::os::fd::BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key as *const K as u64;
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}
