//! /proc/self/mountinfo, read once for all of ferry: the agent (where
//! cgroup2 and bpffs are mounted), the tests and xtask (which includes this
//! file by path: it must build before the agent's toolchain exists). std
//! only, on purpose.

use std::path::PathBuf;

/// One mount: where, and what filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// Every mount of this process's mount namespace (empty if unreadable).
pub fn mounts() -> Vec<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse(&info)
}

/// Parses mountinfo text:
/// `id parent dev root POINT opts [optional...] - FSTYPE source superopts`.
pub fn parse(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Where cgroup v2 is mounted (hybrid hosts: /sys/fs/cgroup/unified; pure
/// v2: /sys/fs/cgroup), the first such mount.
pub fn cgroup2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_types_and_escapes() {
        let info = "24 1 0:22 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    30 1 0:30 / /tmp/a\\040b rw shared:5 - bpf bpf rw,mode=700\n\
                    garbage\n";
        let m = parse(info);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[1].point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "bpf");
    }
}
