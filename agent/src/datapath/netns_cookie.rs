//! The agent's own network namespace cookie (`--socket-lb-host-netns-only`):
//! the socket hooks compare each socket's `bpf_get_netns_cookie` with it.
//! The agent runs in the node's namespace, so this is the host's.

use std::{io, mem, os::fd::FromRawFd as _, os::fd::OwnedFd};

/// SO_NETNS_COOKIE (Linux 5.14), not in every libc crate release.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the namespace the calling thread is in: getsockopt
/// SO_NETNS_COOKIE on a throwaway socket.
pub fn own() -> io::Result<u64> {
    // SAFETY: plain syscalls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let _owned = OwnedFd::from_raw_fd(fd);
        let mut cookie: u64 = 0;
        let mut len = mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }
}
