//! The flood's sink: a tc ingress filter on the device where forwarded frames arrive that
//! counts and drops them there, so that what comes after (a pod's IP and UDP receive, its
//! ICMP errors) costs the forwarding CPU nothing and the count is of the flood's frames alone.
//!
//! The kernel here has `cls_bpf` but no `gact` action, so the filter is a classic BPF program
//! in direct-action mode (`tc filter ... bpf da bytecode ...`), returning `TC_ACT_SHOT` for an
//! IPv4 UDP frame to the flood's port (and, if asked, to one IPv4 prefix) and `TC_ACT_OK`
//! for anything else (ARP, ICMP): the device's neighbours keep resolving. The drops are the
//! `clsact` qdisc's `drops` counter.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::env::{in_lab_ns, in_lab_ns_ok};

/// TC_ACT_OK and TC_ACT_SHOT.
const PASS: u32 = 0;
const DROP: u32 = 2;

/// One classic BPF instruction: (code, jt, jf, k).
type Insn = (u16, u8, u8, u32);

const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_W_ABS: u16 = 0x20;
const LDX_B_MSH: u16 = 0xb1;
const LD_H_IND: u16 = 0x48;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// The filter: drop IPv4 UDP frames to `port` (and to `dst`/len when given), pass the rest.
/// Offsets are from the Ethernet header (cls_bpf pushes it back at ingress); the UDP header
/// follows the IPv4 header's own length (`ldxb 4*([14]&0xf)`).
fn program(port: u16, dst: Option<(Ipv4Addr, u8)>) -> Vec<Insn> {
    // Each test jumps to `pass` (the last instruction) when false; `None` marks the jf to fill.
    let mut p: Vec<(u16, u8, Option<u8>, u32)> = vec![
        (LD_H_ABS, 0, Some(0), 12),
        (JEQ_K, 0, None, 0x0800),
        (LD_B_ABS, 0, Some(0), 23),
        (JEQ_K, 0, None, 17),
        (LDX_B_MSH, 0, Some(0), 14),
        (LD_H_IND, 0, Some(0), 14 + 2),
        (JEQ_K, 0, None, u32::from(port)),
    ];
    if let Some((net, len)) = dst {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0);
        p.push((LD_W_ABS, 0, Some(0), 14 + 16));
        p.push((AND_K, 0, Some(0), mask));
        p.push((JEQ_K, 0, None, u32::from(net) & mask));
    }
    p.push((RET_K, 0, Some(0), DROP));
    let pass = p.len();
    p.into_iter()
        .enumerate()
        .map(|(i, (code, jt, jf, k))| {
            let jf = jf.unwrap_or_else(|| u8::try_from(pass - (i + 1)).expect("a short program"));
            (code, jt, jf, k)
        })
        .chain([(RET_K, 0, 0, PASS)])
        .collect()
}

/// `tc`'s `bytecode` argument: `N,code jt jf k,...`.
fn bytecode(p: &[Insn]) -> String {
    let mut s = p.len().to_string();
    for (code, jt, jf, k) in p {
        s.push_str(&format!(",{code} {jt} {jf} {k}"));
    }
    s
}

/// Installs the sink on `dev` in the lab namespace `ns` (a `clsact` qdisc and the filter).
pub fn install(ns: &str, dev: &str, port: u16, dst: Option<(Ipv4Addr, u8)>) -> Result<()> {
    let t = Duration::from_secs(10);
    in_lab_ns_ok(ns, "tc", &["qdisc", "add", "dev", dev, "clsact"], t)?;
    let code = bytecode(&program(port, dst));
    in_lab_ns_ok(
        ns,
        "tc",
        &[
            "filter", "add", "dev", dev, "ingress", "pref", "1", "bpf", "da", "bytecode", &code,
        ],
        t,
    )
    .with_context(|| format!("the flood's sink on {dev} in {ns}"))?;
    Ok(())
}

/// Frames the sink on `dev` dropped so far, and when that was read (the read's midpoint).
pub fn dropped(ns: &str, dev: &str) -> Result<(u64, Instant)> {
    let t0 = Instant::now();
    let (out, took) = in_lab_ns(
        ns,
        "tc",
        &["-s", "-j", "qdisc", "show", "dev", dev],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "`tc -s qdisc show dev {dev}` in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`tc -s -j qdisc show dev {dev}` in {ns}"))?;
    let drops = v
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["kind"] == "clsact"))
        .and_then(|q| q["drops"].as_u64())
        .with_context(|| format!("no clsact qdisc with a drops counter on {dev} in {ns}"))?;
    Ok((drops, t0 + took / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the few classic BPF instructions the sink uses over a frame, as the kernel does:
    /// a load beyond the frame ends the program with 0 (TC_ACT_OK: the frame passes).
    fn run(p: &[Insn], frame: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |off: usize| frame.get(off).copied().map(u32::from);
        loop {
            let (code, jt, jf, k) = p[pc];
            let k_off = k as usize;
            pc += 1;
            match code {
                LD_H_ABS => match (byte(k_off), byte(k_off + 1)) {
                    (Some(h), Some(l)) => a = h << 8 | l,
                    _ => return 0,
                },
                LD_B_ABS => match byte(k_off) {
                    Some(b) => a = b,
                    None => return 0,
                },
                LD_W_ABS => match frame.get(k_off..k_off + 4) {
                    Some(w) => a = u32::from_be_bytes(w.try_into().unwrap()),
                    None => return 0,
                },
                LDX_B_MSH => match byte(k_off) {
                    Some(b) => x = 4 * (b & 0xf),
                    None => return 0,
                },
                LD_H_IND => {
                    let off = x as usize + k_off;
                    match (byte(off), byte(off + 1)) {
                        (Some(h), Some(l)) => a = h << 8 | l,
                        _ => return 0,
                    }
                }
                JEQ_K => pc += usize::from(if a == k { jt } else { jf }),
                AND_K => a &= k,
                RET_K => return k,
                _ => panic!("unknown opcode {code:#x}"),
            }
        }
    }

    fn udp_frame(dst: Ipv4Addr, dport: u16, ihl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0u8; usize::from(ihl) * 4];
        ip[0] = 0x40 | ihl;
        ip[9] = 17;
        ip[16..20].copy_from_slice(&dst.octets());
        f.extend(ip);
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        f.extend(udp);
        f.extend([0u8; 18]);
        f
    }

    #[test]
    fn drops_the_floods_frames_only() {
        let node2_pods = (Ipv4Addr::new(10, 244, 2, 0), 24);
        for dst in [None, Some(node2_pods)] {
            let p = program(9000, dst);
            assert_eq!(*p.last().unwrap(), (RET_K, 0, 0, PASS));
            // Every jump lands inside the program.
            for (i, &(code, jt, jf, _)) in p.iter().enumerate() {
                if code == JEQ_K {
                    assert!(i + 1 + usize::from(jt.max(jf)) < p.len(), "{p:?}");
                }
            }
            let to_pod = udp_frame(Ipv4Addr::new(10, 244, 2, 7), 9000, 5);
            assert_eq!(run(&p, &to_pod), DROP);
            // IP options move the UDP header; the filter follows.
            assert_eq!(
                run(&p, &udp_frame(Ipv4Addr::new(10, 244, 2, 7), 9000, 6)),
                DROP
            );
            assert_eq!(
                run(&p, &udp_frame(Ipv4Addr::new(10, 244, 2, 7), 9001, 5)),
                PASS
            );
            let mut tcp = to_pod.clone();
            tcp[14 + 9] = 6;
            assert_eq!(run(&p, &tcp), PASS);
            let mut arp = to_pod.clone();
            arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            assert_eq!(run(&p, &arp), PASS);
            assert_eq!(run(&p, &to_pod[..20]), PASS);
            // Another destination: dropped unless the prefix is asked for.
            let elsewhere = udp_frame(Ipv4Addr::new(192, 0, 2, 40), 9000, 5);
            assert_eq!(run(&p, &elsewhere), if dst.is_some() { PASS } else { DROP });
        }
        assert_eq!(
            bytecode(&program(9000, None)),
            "9,40 0 0 12,21 0 6 2048,48 0 0 23,21 0 4 17,177 0 0 14,72 0 0 16,21 0 1 9000,\
             6 0 0 2,6 0 0 0"
        );
    }
}
