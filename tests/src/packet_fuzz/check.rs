//! The invariants every run must keep, whatever the frame:
//!
//! - (a) a frame that no frontend and no flow concerns comes out as it went in, with verdict
//!   PASS or OK, and leaves conntrack and affinity as they were. "Concerns": its destination
//!   is a frontend (address, port, protocol; any scope), its 5-tuple or the reverse is a
//!   conntrack key, the packet an ICMP error quotes is, or its first IP option is ferry's DSR
//!   option (which names a frontend);
//! - (b) a frame the program changed and did not drop has a valid IP header checksum, L4
//!   checksum (TCP, UDP, ICMP, computed from scratch over the IP payload) and quoted IP header
//!   checksum (ICMP errors) wherever the input's was valid;
//! - (c) a dropped frame (SHOT) created no conntrack and no affinity entry;
//! - (e) IPv6: a TCP/UDP frame (or ICMPv6 error) the program rewrote and let through is
//!   changed only where a translation may change it (MACs, hop limit, addresses, ports,
//!   checksums; an error's quoted addresses, ports and checksum), same length, unless it
//!   became ferry's port unreachable; and a rewritten TCP/UDP frame is addressed as the
//!   conntrack entry of its tuple says (its 5-tuple is that entry's NAT tuple); ferry's DSR
//!   destination options header, inserted or stripped, is set aside before judging;
//! - (b) for IPv6 covers the TCP/UDP/ICMPv6 checksums over the pseudo-header and the quoted
//!   packet's L4 checksum; NDP, echo and MLD concern no frontend and fall under (a);
//! - (d) every run succeeds (with CHECKSUM_COMPLETE, the kernel also checks that `skb->csum`
//!   matches what the program left) and returns a TC verdict.

use std::net::Ipv4Addr;

use agent_common::{
    Ct4Key,
    net::{ip4_from_raw, port_from_raw},
};

use super::{
    fixture::{Endpoint, Endpoint6, OK, PASS, REDIRECT, SHOT, State},
    frame::{self, Ip, Tuple},
    v6,
};

/// What kind of check a run got (for the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checked {
    Untouched,
    Rewritten,
    /// Replaced by ferry's ICMPv6 port unreachable.
    Rejected,
    Dropped,
    /// Concerned frames passed or redirected unchanged: only (d) applies.
    Other,
}

/// Whether a checksum of a frame verifies (None: it cannot be judged from the frame).
type Verdict = fn(&[u8]) -> Option<bool>;

/// A broken invariant: which, and what happened.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

fn key_tuple(k: &Ct4Key) -> Tuple {
    Tuple {
        saddr: Ipv4Addr::from(ip4_from_raw(k.saddr)),
        daddr: Ipv4Addr::from(ip4_from_raw(k.daddr)),
        sport: port_from_raw(k.sport),
        dport: port_from_raw(k.dport),
        proto: k.proto,
    }
}

/// Whether an IPv6 frontend or flow concerns an IPv6 frame.
fn concerned6(frame: &[u8], frontends: &[Endpoint6], state: &State) -> bool {
    let tracked = |t: v6::Tuple6| {
        state
            .ct6
            .keys()
            .map(v6::key_tuple)
            .any(|k| k == t || k == t.reversed())
    };
    if let Some(t) = v6::tuple(frame) {
        return frontends
            .iter()
            .any(|f| f.ip == t.daddr && f.port == t.dport && f.proto == t.proto)
            || tracked(t)
            || v6::without_dsr_option(frame).is_some();
    }
    v6::quoted_tuple(frame).is_some_and(tracked)
}

/// Whether a frontend or a flow of `state` concerns `frame` (see (a)).
fn concerned(frame: &[u8], frontends: &[Endpoint], state: &State) -> bool {
    let Some(ip) = Ip::parse(frame) else {
        return false;
    };
    if ip.later_fragment() {
        return false;
    }
    let tracked = |t: Tuple| {
        state
            .ct
            .keys()
            .map(key_tuple)
            .any(|k| k == t || k == t.reversed())
    };
    if let Some(t) = frame::tuple(frame) {
        let frontend = frontends
            .iter()
            .any(|f| f.ip == t.daddr && f.port == t.dport && f.proto == t.proto);
        return frontend || tracked(t) || frame::has_dsr_option(frame);
    }
    frame::quoted_tuple(frame).is_some_and(tracked)
}

fn keys<K: Ord + Clone, V>(m: &std::collections::BTreeMap<K, V>) -> std::collections::BTreeSet<K> {
    m.keys().cloned().collect()
}

/// Checks one run of a frame (`input`) that gave `verdict` and `output`, with conntrack and
/// affinity `before` and `after` it.
pub fn run(
    frontends: &[Endpoint],
    frontends6: &[Endpoint6],
    before: &State,
    after: &State,
    input: &[u8],
    verdict: i32,
    output: &[u8],
) -> Result<Checked, Violation> {
    let fail = |rule, detail: String| Err(Violation { rule, detail });
    if ![PASS, OK, SHOT, REDIRECT].contains(&verdict) {
        return fail(
            "(d) a TC verdict",
            format!("the program returned {verdict}"),
        );
    }
    let is6 = v6::is_v6(input);
    let concerns = if is6 {
        concerned6(input, frontends6, before)
    } else {
        concerned(input, frontends, before)
    };
    if !concerns {
        if ![PASS, OK].contains(&verdict) || output != input || after != before {
            return fail(
                "(a) untouched without frontend or flow",
                format!(
                    "verdict {verdict}, {}, {}",
                    diff_frames(input, output),
                    diff_state(before, after)
                ),
            );
        }
        return Ok(Checked::Untouched);
    }
    if verdict == SHOT {
        let created_ct = !keys(&after.ct).is_subset(&keys(&before.ct))
            || !keys(&after.ct6).is_subset(&keys(&before.ct6));
        let created_aff = !keys(&after.affinity).is_subset(&keys(&before.affinity));
        if created_ct || created_aff {
            return fail(
                "(c) no state for a dropped frame",
                diff_state(before, after),
            );
        }
        return Ok(Checked::Dropped);
    }
    if output == input {
        return Ok(Checked::Other);
    }
    let checks: [(&str, Verdict); 3] = [
        ("IP header", frame::ip_csum_ok),
        ("L4", frame::l4_csum_ok),
        ("quoted IP header", frame::quoted_ip_csum_ok),
    ];
    for (what, ok) in checks {
        if ok(input) == Some(true) && ok(output) == Some(false) {
            return fail(
                "(b) checksums valid after a rewrite",
                format!(
                    "{what} checksum broken (verdict {verdict}): {}",
                    diff_frames(input, output)
                ),
            );
        }
    }
    if is6 {
        return check6(after, input, verdict, output);
    }
    Ok(Checked::Rewritten)
}

/// (b) and (e) for an IPv6 frame the program changed and did not drop.
fn check6(after: &State, input: &[u8], verdict: i32, output: &[u8]) -> Result<Checked, Violation> {
    let fail = |rule, detail: String| Err(Violation { rule, detail });
    // ferry's own port unreachable (the frame replaced by an ICMPv6 error about it).
    let reject = v6::Ip6::parse(output).is_some_and(|ip| {
        ip.proto == crate::progtest::IPPROTO_ICMPV6
            && output.get(ip.l4..ip.l4 + 2) == Some(&[1, 4][..])
            && v6::Ip6::parse(input).is_some_and(|i| i.daddr == ip.saddr || i.saddr != ip.saddr)
    }) && v6::Ip6::parse(input)
        .is_some_and(|i| i.proto != crate::progtest::IPPROTO_ICMPV6);
    let checks: [(&str, Verdict); 2] = [
        ("L4 (pseudo-header included)", v6::l4_csum_ok),
        ("quoted L4", v6::quoted_l4_csum_ok),
    ];
    for (what, ok) in checks {
        // A generated port unreachable must verify, whatever the input's.
        let judged = ok(input) == Some(true) || (reject && what != "quoted L4");
        if judged && ok(output) == Some(false) {
            return fail(
                "(b) checksums valid after a rewrite",
                format!(
                    "IPv6 {what} checksum broken (verdict {verdict}): {}",
                    diff_frames(input, output)
                ),
            );
        }
    }
    if reject {
        return Ok(Checked::Rejected);
    }
    // DSR inserts its destination options header on the node the client reached and strips
    // it on the backend's: judged as the frame without it (same rules otherwise).
    let (input, output) = match (
        v6::without_dsr_option(input),
        v6::without_dsr_option(output),
    ) {
        (None, Some(out)) => (input.to_vec(), out),
        (Some(inp), None) => (inp, output.to_vec()),
        _ => (input.to_vec(), output.to_vec()),
    };
    let (input, output) = (&input[..], &output[..]);
    if let Some(at) = v6::changed_outside(input, output) {
        return fail(
            "(e) only what a translation may change",
            format!(
                "IPv6 byte {at} changed (verdict {verdict}): {}",
                diff_frames(input, output)
            ),
        );
    }
    if let (Some(tin), Some(tout)) = (v6::tuple(input), v6::tuple(output))
        && tin != tout
    {
        let ok = after
            .ct6
            .iter()
            .any(|(k, v)| v6::key_tuple(k) == tin && v6::nat_tuple(k, v) == tout);
        if !ok {
            return fail(
                "(e) addressed as conntrack says",
                format!(
                    "IPv6 {tin:?} became {tout:?}, no conntrack entry says so (verdict \
                     {verdict}): {}",
                    diff_frames(input, output)
                ),
            );
        }
    }
    if let (Some(qin), Some(qout)) = (v6::quoted_tuple(input), v6::quoted_tuple(output))
        && qin != qout
    {
        // The quoted packet is translated by one entry, either way round.
        let ok = after.ct6.iter().any(|(k, v)| {
            let (key, nat) = (v6::key_tuple(k), v6::nat_tuple(k, v));
            [(key, nat), (nat, key)]
                .iter()
                .any(|&(a, b)| (qin, qout) == (a, b) || (qin, qout) == (a.reversed(), b.reversed()))
        });
        let (oin, oout) = (v6::Ip6::parse(input), v6::Ip6::parse(output));
        // An error sent to the quoted packet's source goes to the translated one's.
        let misaddressed = oin
            .zip(oout)
            .is_some_and(|(i, o)| i.daddr == qin.saddr && o.daddr != qout.saddr);
        if !ok || misaddressed {
            return fail(
                "(e) addressed as conntrack says",
                format!(
                    "ICMPv6 error quoting {qin:?} now quotes {qout:?} (conntrack entry: {ok}, \
                     outer destination follows: {}; verdict {verdict}): {}",
                    !misaddressed,
                    diff_frames(input, output)
                ),
            );
        }
    }
    Ok(Checked::Rewritten)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn diff_frames(input: &[u8], output: &[u8]) -> String {
    if input == output {
        return "frame unchanged".to_owned();
    }
    format!("frame changed\n  in  {}\n  out {}", hex(input), hex(output))
}

fn diff_state(before: &State, after: &State) -> String {
    let mut out = Vec::new();
    for (k, v) in &after.ct {
        match before.ct.get(k) {
            None => out.push(format!("conntrack +{:?} {k:?} -> {v:?}", key_tuple(k))),
            Some(old) if old != v => {
                out.push(format!("conntrack ~{:?} {old:?} -> {v:?}", key_tuple(k)))
            }
            Some(_) => {}
        }
    }
    for k in before.ct.keys().filter(|k| !after.ct.contains_key(k)) {
        out.push(format!("conntrack -{:?}", key_tuple(k)));
    }
    for (k, v) in &after.ct6 {
        match before.ct6.get(k) {
            None => out.push(format!("conntrack6 +{:?} -> {v:?}", v6::key_tuple(k))),
            Some(old) if old != v => out.push(format!(
                "conntrack6 ~{:?} {old:?} -> {v:?}",
                v6::key_tuple(k)
            )),
            Some(_) => {}
        }
    }
    for k in before.ct6.keys().filter(|k| !after.ct6.contains_key(k)) {
        out.push(format!("conntrack6 -{:?}", v6::key_tuple(k)));
    }
    for (k, v) in &after.affinity {
        if before.affinity.get(k) != Some(v) {
            out.push(format!("affinity +/~ {k:?} -> {v:?}"));
        }
    }
    for k in before
        .affinity
        .keys()
        .filter(|k| !after.affinity.contains_key(k))
    {
        out.push(format!("affinity -{k:?}"));
    }
    if out.is_empty() {
        "maps unchanged".to_owned()
    } else {
        format!("maps changed:\n  {}", out.join("\n  "))
    }
}
