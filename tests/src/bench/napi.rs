//! Threaded NAPI on a lab's veth, its kernel thread pinned to one CPU: how the flood puts a
//! forwarding node's receive work on a CPU of its own.
//!
//! A veth whose device has NAPI (GRO asked for, or an XDP program) receives through a ring
//! that its NAPI poll drains; the poll runs in the softirq of the CPU that scheduled it (the
//! sender's) unless the device is threaded (`/sys/class/net/DEV/threaded`, a per-device
//! setting), in which case it runs in a kernel thread `napi/DEV-ID` that the device's NAPI
//! owns: it exists while the NAPI does and goes with the device (the lab's removal ends it).
//! This module only asks for it inside a lab namespace, finds it, and pins it.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result, bail};

use super::env::{in_lab_ns_ok, is_lab_ns};
use crate::proc;

/// `ethtool -K DEV gro off` then `on` in the lab namespace `ns`: the veth adds its NAPI when
/// GRO is asked for (GRO shown on by default does not count, hence off first).
pub fn gro_on(ns: &str, dev: &str) -> Result<()> {
    for gro in ["off", "on"] {
        in_lab_ns_ok(
            ns,
            "ethtool",
            &["-K", dev, "gro", gro],
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}

/// A NAPI kernel thread of a lab device.
#[derive(Clone, Debug)]
pub struct Thread {
    /// What it serves, for messages: `node1's eth0`.
    pub what: String,
    pub pid: i32,
    /// Its name when found (`napi/eth0-8195`): a pid that no longer has it is not ours.
    pub comm: String,
}

/// Makes `dev` in the lab namespace `ns` threaded (it must have NAPI already: [`gro_on`]) and
/// returns its NAPI thread: the one `napi/DEV-*` kernel thread that appeared when it was
/// asked for. `sysfs` shows a namespace's devices only when mounted from inside it, hence
/// `ip netns exec` (which mounts one for the command).
pub fn threaded(ns: &str, dev: &str, what: &str) -> Result<Thread> {
    if !is_lab_ns(ns) {
        bail!("refusing to make {dev} threaded outside a lab namespace (got {ns:?})");
    }
    let prefix = format!("napi/{dev}-");
    let before = threads(&prefix)?;
    let attr = format!("/sys/class/net/{dev}/threaded");
    proc::run(
        "ip",
        &["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {attr}")],
    )
    .with_context(|| format!("making {what} threaded"))?;
    let now = proc::run("ip", &["netns", "exec", ns, "cat", &attr])?;
    if now.trim() != "1" {
        bail!("{what}: {attr} reads {:?} after writing 1", now.trim());
    }
    let new: Vec<(i32, String)> = threads(&prefix)?.difference(&before).cloned().collect();
    match new.as_slice() {
        [(pid, comm)] => Ok(Thread {
            what: what.to_owned(),
            pid: *pid,
            comm: comm.clone(),
        }),
        _ => bail!(
            "{what}: expected one new {prefix}* kernel thread once threaded, found {new:?} \
             (a veth has one receive queue)"
        ),
    }
}

/// Kernel threads (children of kthreadd, pid 2) whose name starts with `prefix`.
fn threads(prefix: &str) -> Result<BTreeSet<(i32, String)>> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone since the listing: not an error.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, ppid)) = comm_and_ppid(&stat)
            && ppid == 2
            && comm.starts_with(prefix)
        {
            found.insert((pid, comm.to_owned()));
        }
    }
    Ok(found)
}

/// The name and parent pid from a `/proc/PID/stat` line: `PID (COMM) STATE PPID ...` (the
/// name may hold spaces and parentheses: it ends at the last `)`).
fn comm_and_ppid(stat: &str) -> Option<(&str, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

impl Thread {
    /// Fails unless the thread still runs under the name it was found with.
    pub fn alive(&self) -> Result<()> {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        if comm.trim_end() != self.comm {
            bail!(
                "the NAPI thread of {} ({} {}) is gone",
                self.what,
                self.pid,
                self.comm
            );
        }
        Ok(())
    }

    /// Pins the thread to `cpu` alone and gives it `nice` (the generator's priority, so that
    /// the machine's other work weighs on both alike); checks both took.
    pub fn pin(&self, cpu: usize, nice: i32) -> Result<()> {
        self.alive()?;
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: sched_setaffinity(2) on the lab's NAPI thread with a valid set.
        if unsafe { libc::sched_setaffinity(self.pid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning {}'s NAPI thread to CPU {cpu}", self.what));
        }
        // SAFETY: setpriority(2) on the same thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid as libc::id_t, nice) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting {}'s NAPI thread to nice {nice}", self.what));
        }
        let cpus = self.cpus()?;
        if cpus != [cpu] {
            bail!(
                "{}'s NAPI thread runs on CPUs {cpus:?} after pinning to {cpu}",
                self.what
            );
        }
        Ok(())
    }

    /// The CPUs the thread may run on.
    pub fn cpus(&self) -> Result<Vec<usize>> {
        // SAFETY: as in `pin`; sched_getaffinity(2) fills the set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if unsafe { libc::sched_getaffinity(self.pid, size_of::<libc::cpu_set_t>(), &mut set) } != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("reading the CPUs of {}'s NAPI thread", self.what));
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect())
    }

    /// CPU time the thread has used so far (user + system, which includes the softirqs that
    /// run on its way out of a poll), seconds.
    pub fn cpu_secs(&self) -> Result<f64> {
        self.alive()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading the stat of {}'s NAPI thread", self.what))?;
        cpu_secs(&stat).with_context(|| format!("parsing /proc/{}/stat", self.pid))
    }
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`) in seconds.
fn cpu_secs(stat: &str) -> Option<f64> {
    let close = stat.rfind(')')?;
    // Fields from the third (state) on: utime and stime are the 12th and 13th of these.
    let mut rest = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}

/// The CPUs process `pid` may run on, from `/proc/PID/status` (`Cpus_allowed_list: 0-1,3`).
pub fn allowed_cpus(pid: u32) -> Result<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .with_context(|| format!("no Cpus_allowed_list in /proc/{pid}/status"))?;
    parse_cpu_list(list.trim()).with_context(|| format!("parsing Cpus_allowed_list {list:?}"))
}

fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let line = "4242 (napi/eth0-8195) S 2 0 0 0 -1 2129984 0 0 0 0 7 1234 0 0 0 -20 1 0 \
                    100 0 0 18446744073709551615";
        assert_eq!(comm_and_ppid(line), Some(("napi/eth0-8195", 2)));
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_secs(line), Some(1241.0 / hz));
        // A name with a space and a parenthesis ends at the last ')'.
        let odd = "7 (a) b) R 1 0 0 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(comm_and_ppid(odd), Some(("a) b", 1)));
        assert_eq!(cpu_secs(odd), Some(7.0 / hz));
        assert_eq!(comm_and_ppid("garbage"), None);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-1,3"), Some(vec![0, 1, 3]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn threaded_refuses_other_namespaces() {
        let e = threaded("not-a-lab", "eth0", "x").unwrap_err();
        assert!(
            format!("{e:#}").contains("outside a lab namespace"),
            "{e:#}"
        );
    }
}
