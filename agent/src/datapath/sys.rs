//! The bpf(2) commands ferry needs and aya 0.16 does not expose. Each
//! wrapper fills the kernel's own `union bpf_attr` (aya_obj's generated
//! bindings), never byte offsets:
//! - BPF_OBJ_GET with `file_flags`: aya's `from_pin` always opens
//!   read-write, and its `PinnedLink` gives no descriptor to hold;
//! - BPF_LINK_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD for what a link is
//!   attached to: aya's `LinkInfo` has its id, type and program only;
//! - BPF_OBJ_PIN of a descriptor ferry holds: aya pins only an `FdLink`,
//!   cannot make one from a descriptor, and consumes it (a failed pin would
//!   close the hold that keeps the link attached);
//! - BPF_LINK_DETACH;
//! - BPF_LINK_UPDATE for a cgroup_skb program: aya 0.16 swaps programs into
//!   links of the sock_addr and TCX kinds only;
//! - BPF_MAP_LOOKUP_BATCH (conntrack reads).
//!
//! Walking the kernel's links and programs, swapping a program into a link
//! and removing map entries go through aya.

use std::{
    ffi::CString,
    io, mem,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    ptr,
};

use aya::maps::{MapData, MapType};
use aya_obj::generated::{BPF_F_RDONLY, bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// `file_flags` of [`obj_get`]: the descriptor may only read the map.
pub const READ_ONLY: u32 = BPF_F_RDONLY;

/// An all-zero attribute: the kernel wants every byte a command does not
/// use zeroed.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of structs of integers, for which all
    // zeroes is a valid value.
    unsafe { mem::zeroed() }
}

/// bpf(2) itself.
///
/// # Safety
/// Every pointer `cmd` reads from `attr` must be valid, for the reads and
/// writes the kernel makes through it, until the call returns.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a whole bpf_attr of the size passed; the caller
    // vouches for the pointers in it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            ptr::from_mut(attr),
            mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor a command returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other(format!("bpf(2) returned {fd}")))?;
    // SAFETY: the kernel just opened it for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are non-negative: the cast is exact.
    fd.as_raw_fd() as u32
}

/// Opens a pinned object (BPF_OBJ_GET) with `file_flags` (0: read-write,
/// [`READ_ONLY`]).
pub fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr().expose_provenance() as u64;
    attr.__bindgen_anon_4.file_flags = file_flags;
    // SAFETY: the only pointer is the NUL-terminated path, which the kernel
    // reads and `path` keeps alive through the call.
    let fd = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    owned(fd)
}

/// Pins an object we hold a descriptor on (BPF_OBJ_PIN).
pub fn obj_pin(fd: &impl AsFd, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr().expose_provenance() as u64;
    attr.__bindgen_anon_4.bpf_fd = raw(fd.as_fd());
    // SAFETY: as in obj_get: one NUL-terminated path, alive through the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// A descriptor on the link with this id (BPF_LINK_GET_FD_BY_ID).
pub fn link_fd(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.link_id = id;
    // SAFETY: no pointer in the attribute.
    let fd = unsafe { bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut attr) }?;
    owned(fd)
}

/// What a link is attached to, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A cgroup link, by the cgroup's id (its inode number in cgroup2).
    Cgroup(u64),
    /// A TCX link, by the device's ifindex.
    Device(u32),
    /// A cgroup or TCX link whose cgroup or device let it go (detached).
    Nothing,
    /// A link of another type.
    Other,
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    pub attachment: Attachment,
}

/// A link's id, program and target (BPF_OBJ_GET_INFO_BY_FD).
pub fn link_info(fd: &impl AsFd) -> io::Result<LinkInfo> {
    // SAFETY: plain integers (and unions of them): all zeroes is valid.
    let mut info: bpf_link_info = unsafe { mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = raw(fd.as_fd());
    attr.info.info_len = mem::size_of::<bpf_link_info>() as u32;
    attr.info.info = ptr::from_mut(&mut info).expose_provenance() as u64;
    // SAFETY: the kernel writes at most info_len bytes to `info`, which is
    // that big and outlives the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    // SAFETY: each union member is read only for its own link type, and
    // any bits are valid integers.
    let attachment = unsafe {
        match info.type_ {
            t if t == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 => {
                match info.__bindgen_anon_1.cgroup.cgroup_id {
                    0 => Attachment::Nothing,
                    id => Attachment::Cgroup(id),
                }
            }
            t if t == bpf_link_type::BPF_LINK_TYPE_TCX as u32 => {
                match info.__bindgen_anon_1.tcx.ifindex {
                    0 => Attachment::Nothing,
                    ifindex => Attachment::Device(ifindex),
                }
            }
            _ => Attachment::Other,
        }
    };
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        attachment,
    })
}

/// Detaches a link, whoever else holds it (BPF_LINK_DETACH).
pub fn link_detach(fd: &impl AsFd) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = raw(fd.as_fd());
    // SAFETY: no pointer in the attribute.
    unsafe { bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr) }.map(drop)
}

/// Swaps the program `prog` into the link `link` (BPF_LINK_UPDATE): atomic,
/// the hook is never empty.
pub fn link_update(link: &impl AsFd, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = raw(link.as_fd());
    attr.link_update.__bindgen_anon_1.new_prog_fd = raw(prog);
    // SAFETY: no pointer in the attribute.
    unsafe { bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// Every entry of a hash map, read `chunk` at a time with BPF_MAP_LOOKUP_BATCH
/// (Linux 5.6): a few syscalls for a map of 100,000s of entries, where
/// walking it key by key takes two per entry. Entries added or removed
/// meanwhile may or may not be seen, as with any walk. `chunk` must be at
/// least the longest hash bucket (ENOSPC otherwise): thousands are plenty.
/// The map must be a (LRU) hash of K to V: the kernel copies its own sizes,
/// so any other map (a pin replaced by someone, say) is refused.
pub fn read_hash<K: aya::Pod, V: aya::Pod>(map: &MapData, chunk: u32) -> io::Result<Vec<(K, V)>> {
    let info = map.info().map_err(io::Error::other)?;
    let hash = matches!(info.map_type(), Ok(MapType::Hash | MapType::LruHash));
    if !hash
        || info.key_size() as usize != mem::size_of::<K>()
        || info.value_size() as usize != mem::size_of::<V>()
        || chunk == 0
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map {} ({:?}, key {} B, value {} B) is not a hash of {} B keys to {} B values (chunk {chunk})",
                info.id(),
                info.map_type(),
                info.key_size(),
                info.value_size(),
                mem::size_of::<K>(),
                mem::size_of::<V>()
            ),
        ));
    }
    let fd = raw(map.fd().as_fd());
    let mut out = Vec::new();
    // SAFETY: K and V are plain old data; zeroes are valid values.
    let mut keys: Vec<K> = vec![unsafe { mem::zeroed() }; chunk as usize];
    let mut values: Vec<V> = vec![unsafe { mem::zeroed() }; chunk as usize];
    // The kernel's cursor: 4 bytes for hash maps, room for 8.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        // No in_batch: from the start.
        if !first {
            attr.batch.in_batch = ptr::from_mut(&mut cursor_in).expose_provenance() as u64;
        }
        attr.batch.out_batch = ptr::from_mut(&mut cursor_out).expose_provenance() as u64;
        attr.batch.keys = keys.as_mut_ptr().expose_provenance() as u64;
        attr.batch.values = values.as_mut_ptr().expose_provenance() as u64;
        attr.batch.count = chunk;
        attr.batch.map_fd = fd;
        // SAFETY: keys and values have room for `count` entries of the
        // map's key and value sizes (checked above; a map's sizes never
        // change), the cursors for 8 bytes; all outlive the call.
        let done = match unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        // SAFETY: an integer the kernel set to the entries it copied.
        let n = unsafe { attr.batch.count }.min(chunk) as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if done {
            return Ok(out);
        }
        cursor_in = cursor_out;
        first = false;
    }
}
