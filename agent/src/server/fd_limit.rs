//! RLIMIT_NOFILE: the soft limit is raised to the hard one at start (as Go
//! programs such as kube-proxy do since Go 1.19). The common soft default of
//! 1,024 is what a thousand idle connections exhausted; raising it needs no
//! privilege, only the hard limit needs CAP_SYS_RESOURCE.

use std::io;

use tracing::{debug, info, warn};

/// (soft, hard) limits on open descriptors.
pub fn current() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit to the hard limit, and says so. A failure is only
/// logged: the agent can work within the lower limit.
pub fn raise_soft_to_hard() {
    match raise() {
        Ok((before, after)) if before != after => {
            info!(
                before,
                after, "raised the soft limit on open files to the hard limit"
            );
        }
        Ok((limit, _)) => debug!(limit, "the soft limit on open files is the hard limit"),
        Err(e) => warn!(error = %e, "cannot raise the soft limit on open files"),
    }
}

/// Raises the soft limit to the hard limit; returns (before, after).
fn raise() -> io::Result<(u64, u64)> {
    let (soft, hard) = current()?;
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: a valid rlimit; lowering nothing, raising only up to the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((soft, current()?.0))
}
