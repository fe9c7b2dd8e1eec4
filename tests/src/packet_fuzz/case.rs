//! A fuzz case: a few frames run in order through the TC programs, from the fixture's
//! baseline state, and its one-line text form (a regression row):
//!
//! ```text
//! dsr=0 | in c lit:<hex> set:14:46 fixip | out - reply | in - icmp:3:4:host:28 trunc:40
//! ```
//!
//! A step names the program (`in` = `ferry_tc_in`, `out` = `ferry_tc_out`), whether the skb
//! has CHECKSUM_COMPLETE (`c`) or not (`-`), where its frame comes from, then mutations. A
//! frame is literal bytes (`lit:`), or made from the step before: the same input `again`, the
//! `reply` to what the program let out (addresses and ports swapped), or an ICMP error
//! (`icmp:TYPE:CODE:host|router:QUOTED_BYTES`) about what it let out. Derived frames follow
//! what the kernel did on replay, which matters where it chose at random (a SNAT port).

use std::{fmt, net::SocketAddrV4, str::FromStr};

use anyhow::{Context as _, Result, bail};

use super::frame::{self, Ip};
use crate::progtest::{
    ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IpOpts, TCP_ACK, TCP_SYN, ethernet, icmp, ipv4,
    tcp, udp,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    In,
    Out,
    /// ferry_tc_pod: what a pod device receives from its pods.
    Pod,
    /// ferry_tc_pod_out: what a pod device sends to its pods (the per-packet path's replies
    /// and ICMP errors about its flows).
    PodOut,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::In => "ferry_tc_in",
            Prog::Out => "ferry_tc_out",
            Prog::Pod => "ferry_tc_pod",
            Prog::PodOut => "ferry_tc_pod_out",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Lit(Vec<u8>),
    Again,
    Reply,
    Icmp {
        ty: u8,
        code: u8,
        from_router: bool,
        quote: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Byte at offset := value.
    Set(u16, u8),
    /// Cut the frame to this length (at least the Ethernet header).
    Trunc(u16),
    Append(Vec<u8>),
    /// Recompute the IP header checksum, or the L4 one, after the mutations before it.
    FixIp,
    FixL4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub prog: Prog,
    pub csum_complete: bool,
    pub source: Source,
    pub mutations: Vec<Mutation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The node runs `--lb-mode dsr`.
    pub dsr: bool,
    pub steps: Vec<Step>,
}

/// The source router of ICMP errors that do not come from the quoted packet's destination.
pub const ROUTER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 254);
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A frame for `prog`: arriving from the router, or leaving towards it.
pub fn ether(prog: Prog, ip_packet: &[u8]) -> Vec<u8> {
    match prog {
        Prog::In | Prog::Pod => ethernet(NODE_MAC, PEER_MAC, ETH_P_IP, ip_packet),
        Prog::Out | Prog::PodOut => ethernet(PEER_MAC, NODE_MAC, ETH_P_IP, ip_packet),
    }
}

impl Step {
    /// The step's input frame, given the step before's input and output.
    pub fn frame(&self, prev: Option<(&[u8], &[u8])>) -> Vec<u8> {
        let f = match (&self.source, prev) {
            (Source::Lit(bytes), _) => bytes.clone(),
            (_, None) => unreachable!("Case::parse and the generator start with a literal"),
            (Source::Again, Some((input, _))) => input.to_vec(),
            (Source::Reply, Some((input, output))) if super::v6::is_v6(input) => {
                super::v6::reply(self.prog, output)
                    .or_else(|| super::v6::reply(self.prog, input))
                    .unwrap_or_else(|| input.to_vec())
            }
            (Source::Reply, Some((input, output))) => reply(self.prog, output)
                .or_else(|| reply(self.prog, input))
                .unwrap_or_else(|| input.to_vec()),
            (
                &Source::Icmp {
                    ty,
                    code,
                    from_router,
                    quote,
                },
                Some((input, output)),
            ) => {
                if super::v6::is_v6(input) {
                    let about = if super::v6::is_v6(output) {
                        output
                    } else {
                        input
                    };
                    return self.mutated(
                        super::v6::icmp_error(
                            self.prog,
                            about,
                            ty,
                            code,
                            from_router,
                            quote as usize,
                        )
                        .unwrap_or_else(|| input.to_vec()),
                    );
                }
                let about = if Ip::parse(output).is_some() {
                    output
                } else {
                    input
                };
                icmp_error(self.prog, about, ty, code, from_router, quote as usize)
                    .unwrap_or_else(|| input.to_vec())
            }
        };
        self.mutated(f)
    }

    fn mutated(&self, mut f: Vec<u8>) -> Vec<u8> {
        for m in &self.mutations {
            m.apply(&mut f);
        }
        f
    }
}

/// The answer to a TCP/UDP frame: addresses and ports swapped, a SYN answered with SYN-ACK.
fn reply(prog: Prog, to: &[u8]) -> Option<Vec<u8>> {
    let t = frame::tuple(to)?;
    let (src, dst) = (
        SocketAddrV4::new(t.daddr, t.dport),
        SocketAddrV4::new(t.saddr, t.sport),
    );
    let l4 = if t.proto == IPPROTO_TCP {
        let ip = Ip::parse(to)?;
        let flags = to.get(ETH_HLEN + ip.ihl + 13).copied().unwrap_or(0);
        let answer = if flags & TCP_SYN != 0 {
            TCP_SYN | TCP_ACK
        } else {
            TCP_ACK
        };
        tcp(src, dst, 7000, 1001, answer, b"")
    } else {
        udp(src, dst, b"re", true)
    };
    Some(ether(
        prog,
        &ipv4(IpOpts::default(), t.daddr, t.saddr, t.proto, &l4),
    ))
}

/// An ICMP error about the IP packet of `about`, quoting `quote` bytes of it, sent to its
/// source by its destination (or by the router).
fn icmp_error(
    prog: Prog,
    about: &[u8],
    ty: u8,
    code: u8,
    from_router: bool,
    quote: usize,
) -> Option<Vec<u8>> {
    let ip = Ip::parse(about)?;
    let packet = &about[ETH_HLEN..];
    let quoted = &packet[..quote.clamp(20, packet.len())];
    // Fragmentation needed carries the next hop's MTU.
    let rest = if ty == 3 && code == 4 { 1400 } else { 0 };
    let from = if from_router { ROUTER } else { ip.daddr };
    let opts = IpOpts {
        tos: 0xc0,
        id: 7,
        dont_fragment: false,
        ttl: 64,
    };
    let msg = icmp(ty, code, rest, quoted);
    Some(ether(prog, &ipv4(opts, from, ip.saddr, IPPROTO_ICMP, &msg)))
}

impl Mutation {
    pub fn apply(&self, f: &mut Vec<u8>) {
        match self {
            Mutation::Set(off, v) => {
                if let Some(b) = f.get_mut(*off as usize) {
                    *b = *v;
                }
            }
            Mutation::Trunc(n) => f.truncate((*n as usize).max(ETH_HLEN)),
            Mutation::Append(bytes) => f.extend_from_slice(bytes),
            Mutation::FixIp => frame::fix_ip_csum(f),
            Mutation::FixL4 => frame::fix_l4_csum(f),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("hex {s:?}")))
        .collect()
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dsr={}", u8::from(self.dsr))?;
        for s in &self.steps {
            let prog = match s.prog {
                Prog::In => "in",
                Prog::Out => "out",
                Prog::Pod => "pod",
                Prog::PodOut => "podout",
            };
            let csum = if s.csum_complete { "c" } else { "-" };
            write!(f, " | {prog} {csum} ")?;
            match &s.source {
                Source::Lit(b) => write!(f, "lit:{}", hex(b))?,
                Source::Again => f.write_str("again")?,
                Source::Reply => f.write_str("reply")?,
                Source::Icmp {
                    ty,
                    code,
                    from_router,
                    quote,
                } => {
                    let from = if *from_router { "router" } else { "host" };
                    write!(f, "icmp:{ty}:{code}:{from}:{quote}")?
                }
            }
            for m in &s.mutations {
                match m {
                    Mutation::Set(off, v) => write!(f, " set:{off}:{v}")?,
                    Mutation::Trunc(n) => write!(f, " trunc:{n}")?,
                    Mutation::Append(b) => write!(f, " app:{}", hex(b))?,
                    Mutation::FixIp => f.write_str(" fixip")?,
                    Mutation::FixL4 => f.write_str(" fixl4")?,
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Case {
    type Err = anyhow::Error;

    fn from_str(row: &str) -> Result<Case> {
        let mut parts = row.split(" | ");
        let dsr = match parts.next().map(str::trim) {
            Some("dsr=0") => false,
            Some("dsr=1") => true,
            other => bail!("a row starts with dsr=0 or dsr=1, not {other:?}"),
        };
        let steps = parts.map(parse_step).collect::<Result<Vec<_>>>()?;
        match steps.first() {
            Some(Step {
                source: Source::Lit(_),
                ..
            }) => Ok(Case { dsr, steps }),
            Some(_) => bail!("the first step's frame must be literal (lit:)"),
            None => bail!("no step"),
        }
    }
}

fn parse_step(text: &str) -> Result<Step> {
    let mut words = text.split_whitespace();
    let prog = match words.next() {
        Some("in") => Prog::In,
        Some("out") => Prog::Out,
        Some("pod") => Prog::Pod,
        Some("podout") => Prog::PodOut,
        other => bail!("step {text:?}: program in, out or pod, not {other:?}"),
    };
    let csum_complete = match words.next() {
        Some("c") => true,
        Some("-") => false,
        other => bail!("step {text:?}: checksum mode c or -, not {other:?}"),
    };
    let word = words
        .next()
        .with_context(|| format!("step {text:?}: no frame"))?;
    let source = match word.split(':').collect::<Vec<_>>()[..] {
        ["lit", h] => Source::Lit(unhex(h)?),
        ["again"] => Source::Again,
        ["reply"] => Source::Reply,
        ["icmp", ty, code, from, quote] => Source::Icmp {
            ty: ty.parse()?,
            code: code.parse()?,
            from_router: match from {
                "router" => true,
                "host" => false,
                _ => bail!("icmp source {from:?}: host or router"),
            },
            quote: quote.parse()?,
        },
        _ => bail!("step {text:?}: unknown frame {word:?}"),
    };
    let mutations = words
        .map(|w| {
            Ok(match w.split(':').collect::<Vec<_>>()[..] {
                ["set", off, v] => Mutation::Set(off.parse()?, v.parse()?),
                ["trunc", n] => Mutation::Trunc(n.parse()?),
                ["app", h] => Mutation::Append(unhex(h)?),
                ["fixip"] => Mutation::FixIp,
                ["fixl4"] => Mutation::FixL4,
                _ => bail!("step {text:?}: unknown mutation {w:?}"),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Step {
        prog,
        csum_complete,
        source,
        mutations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let case = Case {
            dsr: true,
            steps: vec![
                Step {
                    prog: Prog::In,
                    csum_complete: true,
                    source: Source::Lit(vec![0, 1, 0xfe]),
                    mutations: vec![Mutation::Set(14, 0x46), Mutation::FixIp],
                },
                Step {
                    prog: Prog::Out,
                    csum_complete: false,
                    source: Source::Icmp {
                        ty: 3,
                        code: 4,
                        from_router: true,
                        quote: 28,
                    },
                    mutations: vec![
                        Mutation::Trunc(40),
                        Mutation::Append(vec![7]),
                        Mutation::FixL4,
                    ],
                },
                Step {
                    prog: Prog::In,
                    csum_complete: false,
                    source: Source::Again,
                    mutations: vec![],
                },
                Step {
                    prog: Prog::Pod,
                    csum_complete: false,
                    source: Source::Reply,
                    mutations: vec![],
                },
                Step {
                    prog: Prog::PodOut,
                    csum_complete: true,
                    source: Source::Reply,
                    mutations: vec![],
                },
            ],
        };
        let row = case.to_string();
        assert_eq!(
            row,
            "dsr=1 | in c lit:0001fe set:14:70 fixip | out - icmp:3:4:router:28 trunc:40 app:07 \
             fixl4 | in - again | pod - reply | podout c reply"
        );
        assert_eq!(row.parse::<Case>().unwrap(), case);
        assert!(
            "dsr=0 | in - reply".parse::<Case>().is_err(),
            "starts with a literal"
        );
        assert!("dsr=2 | in - lit:00".parse::<Case>().is_err());
    }
}
