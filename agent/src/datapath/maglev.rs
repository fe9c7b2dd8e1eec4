//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Every node computes the same lookup table from the same backends, so a
//! flow hashed to index `i` reaches the same backend whichever node the
//! load balancer sends it to; removing one of N backends moves only about
//! 1/N of the flows. The table names backends by their position in the
//! sorted backend list; the programmer maps positions to its local ids.

use crate::model::BackendAddr;

pub use agent_common::MAGLEV_TABLE_SIZE;

/// FNV-1a 64: stable across builds, platforms and releases (unlike std's
/// hasher), which the cross-node agreement depends on.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bytes a backend is hashed by: address, port, protocol (an IPv4
/// backend's 7 bytes as before IPv6, so its tables are unchanged).
fn name(b: &BackendAddr) -> Vec<u8> {
    let mut out = match b.ip {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend(b.port.to_be_bytes());
    out.push(b.proto.number());
    out
}

/// The lookup table for `backends` (any order: it is sorted here): entry
/// `i` is the index into the sorted list. Empty for no backends.
pub fn table(backends: &[BackendAddr], m: u32) -> Vec<u32> {
    let mut sorted = backends.to_vec();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let key = name(b);
            let offset = fnv1a(0x5bd1_e995, &key) % m64;
            let skip = fnv1a(0x1b87_3593, &key) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m64) as usize;
            while entry[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m64) as usize;
            }
            entry[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// The sorted, deduplicated backend list the table indexes.
pub fn sorted(backends: &[BackendAddr]) -> Vec<BackendAddr> {
    let mut s = backends.to_vec();
    s.sort();
    s.dedup();
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    fn backends(n: u8) -> Vec<BackendAddr> {
        (1..=n)
            .map(|i| BackendAddr {
                ip: Ipv4Addr::new(10, 244, 1, i).into(),
                port: 8080,
                proto: Protocol::Tcp,
            })
            .collect()
    }

    fn names(t: &[u32], bs: &[BackendAddr]) -> Vec<BackendAddr> {
        let s = sorted(bs);
        t.iter().map(|&i| s[i as usize]).collect()
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        for n in [1u8, 2, 3, 7, 10, 50] {
            let t = table(&backends(n), MAGLEV_TABLE_SIZE);
            assert_eq!(t.len(), MAGLEV_TABLE_SIZE as usize);
            let mut counts = vec![0u32; n as usize];
            for &i in &t {
                counts[i as usize] += 1;
            }
            let ideal = f64::from(MAGLEV_TABLE_SIZE) / f64::from(n);
            for c in counts {
                // Maglev's guarantee: shares differ by at most ~1 entry per
                // backend round; allow 1% of the ideal plus one.
                assert!(
                    (f64::from(c) - ideal).abs() <= ideal * 0.01 + 1.0,
                    "n={n}: {c} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_entries() {
        for n in [5u8, 10, 20] {
            let all = backends(n);
            let before = names(&table(&all, MAGLEV_TABLE_SIZE), &all);
            let fewer: Vec<_> = all[1..].to_vec();
            let after = names(&table(&fewer, MAGLEV_TABLE_SIZE), &fewer);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
            let share = moved / f64::from(MAGLEV_TABLE_SIZE);
            let ideal = 1.0 / f64::from(n);
            // The removed backend's entries must move; Maglev moves a little
            // more than that, far less than a rehash (which moves ~(n-1)/n).
            assert!(share >= ideal * 0.99, "n={n}: moved {share}");
            assert!(share <= ideal * 1.6, "n={n}: moved {share}, ideal {ideal}");
        }
    }

    #[test]
    fn the_table_depends_on_the_set_not_the_order() {
        let mut b = backends(6);
        let t1 = table(&b, MAGLEV_TABLE_SIZE);
        b.reverse();
        assert_eq!(t1, table(&b, MAGLEV_TABLE_SIZE));
    }

    #[test]
    fn known_values_stay_stable_across_releases() {
        // Nodes running different ferry versions must agree: pin a few entries.
        let t = table(&backends(3), MAGLEV_TABLE_SIZE);
        let head: Vec<u32> = t[..8].to_vec();
        assert_eq!(
            head, KNOWN_HEAD,
            "the Maglev table changed: nodes would disagree"
        );
    }

    const KNOWN_HEAD: [u32; 8] = [1, 2, 2, 1, 2, 2, 1, 0];
}
