//! Generating cases: valid TCP, UDP and ICMP frames aimed at the fixture's frontends,
//! backends and flows (IP options, DSR options, fragments, ICMP errors quoting flows,
//! checksum-complete skbs), other and random frames, then mutations (header fields, lengths,
//! IHL, truncation, trailing bytes, with or without fixed checksums), chained into short
//! sequences where each frame may answer the last. IPv6 frames (v6.rs) are mixed in: about
//! two fresh frames in five.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    case::{Case, Mutation, Prog, ROUTER, Source, Step, ether},
    fixture::{
        CLIENT, Endpoint, Fixture, LOCAL_POD, NODE, OUTSIDER, REMOTE_POD, REMOTE_POD2, SNAT_PORTS,
        State,
    },
    frame::{Ip, Tuple},
    rng::Rng,
    v6::{self, Gen6},
};
use crate::progtest::{
    ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpOpts, TCP_ACK, TCP_SYN, ethernet, icmp,
    ipv4, ipv4_with_options, tcp, udp,
};
use agent_common::{DSR_OPT_LEN, DSR_OPT_TYPE, net::ip4_from_raw, net::port_from_raw};

/// Frames stay well below what BPF_PROG_TEST_RUN takes (a page, less headroom).
const MAX_PAYLOAD: usize = 1400;

/// The flows a frame may belong to: the baseline's conntrack keys and the translated tuples
/// of their values, both ways.
pub fn flow_tuples(baseline: &State) -> Vec<Tuple> {
    let addr = |raw: u32| Ipv4Addr::from(ip4_from_raw(raw));
    let mut out = Vec::new();
    for (k, v) in &baseline.ct {
        let key = Tuple {
            saddr: addr(k.saddr),
            daddr: addr(k.daddr),
            sport: port_from_raw(k.sport),
            dport: port_from_raw(k.dport),
            proto: k.proto,
        };
        let nat = Tuple {
            saddr: addr(v.nat_saddr),
            daddr: addr(v.nat_daddr),
            sport: port_from_raw(v.nat_sport),
            dport: port_from_raw(v.nat_dport),
            proto: k.proto,
        };
        out.extend([key, key.reversed(), nat, nat.reversed()]);
    }
    out
}

pub struct Gen {
    rng: Rng,
    v6: Gen6,
    frontends: Vec<Endpoint>,
    backends: Vec<Endpoint>,
    flows: Vec<Tuple>,
}

impl Gen {
    pub fn new(seed: u64, fx: &Fixture) -> Gen {
        let flows6 = fx
            .baseline()
            .ct6
            .iter()
            .flat_map(|(k, v)| {
                let (key, nat) = (v6::key_tuple(k), v6::nat_tuple(k, v));
                [key, key.reversed(), nat, nat.reversed()]
            })
            .collect();
        Gen {
            v6: Gen6 {
                frontends: fx.frontends6.clone(),
                backends: fx.backends6.clone(),
                flows: flows6,
            },
            rng: Rng::new(seed),
            frontends: fx.frontends.clone(),
            backends: fx.backends.clone(),
            flows: flow_tuples(fx.baseline()),
        }
    }

    pub fn case(&mut self) -> Case {
        let n = *self.rng.pick(&[1, 1, 1, 1, 2, 2, 2, 3, 3, 4]);
        let mut steps = vec![self.fresh_step()];
        while steps.len() < n {
            let step = if self.rng.chance(11, 20) {
                self.derived_step()
            } else {
                self.fresh_step()
            };
            steps.push(step);
        }
        Case {
            dsr: self.rng.chance(1, 3),
            steps,
        }
    }

    fn prog(&mut self) -> Prog {
        match self.rng.below(10) {
            0..=5 => Prog::In,
            6..=7 => Prog::Out,
            8 => Prog::Pod,
            _ => Prog::PodOut,
        }
    }

    fn fresh_step(&mut self) -> Step {
        let prog = self.prog();
        // IPv4 and IPv6 mixed in one run, IPv6 a bit less than half the time.
        let ipv6 = self.rng.chance(2, 5);
        let frame = if ipv6 {
            let p = self.v6.packet(&mut self.rng);
            v6::ether(prog, &p)
        } else {
            self.frame(prog)
        };
        let mutations = if !self.rng.chance(1, 3) {
            Vec::new()
        } else if ipv6 {
            self.v6.mutations(&mut self.rng, &frame)
        } else {
            self.mutations(&frame)
        };
        Step {
            prog,
            csum_complete: self.rng.chance(1, 4),
            source: Source::Lit(frame),
            mutations,
        }
    }

    fn derived_step(&mut self) -> Step {
        let source = match self.rng.below(20) {
            0..=7 => Source::Reply,
            8..=12 => Source::Again,
            _ => {
                let &(ty, code) = self.rng.pick(&[(3, 3), (3, 4), (3, 1), (11, 0), (3, 13)]);
                Source::Icmp {
                    ty,
                    code,
                    from_router: self.rng.chance(1, 3),
                    quote: *self.rng.pick(&[28, 28, 48, 64, 20, 1500]),
                }
            }
        };
        // Mutations of a derived frame: only those that need no knowledge of its bytes.
        let mut mutations = Vec::new();
        if self.rng.chance(1, 5) {
            let off = ETH_HLEN as u16 + self.rng.below(48) as u16;
            mutations.push(Mutation::Set(off, self.rng.byte()));
            if self.rng.chance(1, 2) {
                mutations.push(Mutation::FixIp);
            }
        }
        Step {
            prog: self.prog(),
            csum_complete: self.rng.chance(1, 4),
            source,
            mutations,
        }
    }

    /// A frame for `prog`.
    fn frame(&mut self, prog: Prog) -> Vec<u8> {
        match self.rng.below(100) {
            0..=54 => {
                let (src, dst, proto) = self.flow();
                ether(prog, &self.l4_packet(src, dst, proto))
            }
            55..=72 => ether(prog, &self.icmp_error()),
            73..=80 => ether(prog, &self.dsr_packet()),
            81..=84 => {
                let ty = *self.rng.pick(&[0, 8, 5, 4, 255]);
                let n = self.rng.below(40);
                let body = self.rng.bytes(n);
                let (src, dst, _) = self.flow();
                ether(
                    prog,
                    &ipv4(
                        self.ip_opts(),
                        *src.ip(),
                        *dst.ip(),
                        IPPROTO_ICMP,
                        &icmp(ty, 0, 0, &body),
                    ),
                )
            }
            85..=89 => {
                let proto = *self.rng.pick(&[0, 2, 47, 50, 132, 255]);
                let n = self.rng.below(60);
                let body = self.rng.bytes(n);
                let (src, dst, _) = self.flow();
                ether(
                    prog,
                    &ipv4(self.ip_opts(), *src.ip(), *dst.ip(), proto, &body),
                )
            }
            90..=93 => {
                // ARP, IPv6, a VLAN tag, or a made-up ethertype, in front of an IPv4 packet.
                let ty = *self.rng.pick(&[0x0806u16, 0x86dd, 0x8100, 0x88cc, 0x0000]);
                let (src, dst, proto) = self.flow();
                let p = self.l4_packet(src, dst, proto);
                ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], ty, &p)
            }
            _ => {
                let n = ETH_HLEN + self.rng.below(120);
                let mut f = self.rng.bytes(n);
                if self.rng.chance(1, 2) && f.len() >= 15 {
                    f[12] = 0x08;
                    f[13] = 0x00;
                    f[14] = 0x40 | (f[14] & 0x0f);
                }
                f
            }
        }
    }

    fn addr(&mut self) -> Ipv4Addr {
        match self.rng.below(12) {
            0..=2 => CLIENT,
            3 => Ipv4Addr::new(198, 51, 100, 8),
            4 => OUTSIDER,
            5 => NODE,
            6 => LOCAL_POD,
            7 => REMOTE_POD,
            8 => REMOTE_POD2,
            9 => ROUTER,
            10 => *self.rng.pick(&[
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::new(224, 0, 0, 1),
            ]),
            _ => Ipv4Addr::from(self.rng.next_u64() as u32),
        }
    }

    fn port(&mut self) -> u16 {
        match self.rng.below(8) {
            0..=2 => 40_000 + self.rng.below(8) as u16,
            3..=4 => SNAT_PORTS.0 + self.rng.below(4) as u16,
            5 => *self.rng.pick(&[0, 1, 53, 80, 443, 8080, 30080, 65535]),
            _ => self.rng.u16(),
        }
    }

    /// Source, destination and protocol of a TCP/UDP packet: to a frontend, of a flow, to a
    /// backend or the node, or anything.
    fn flow(&mut self) -> (SocketAddrV4, SocketAddrV4, u8) {
        let proto = if self.rng.chance(1, 2) {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        match self.rng.below(20) {
            0..=8 => {
                let fe = *self.rng.pick(&self.frontends);
                let src = SocketAddrV4::new(self.addr(), self.port());
                let proto = if self.rng.chance(9, 10) {
                    fe.proto
                } else {
                    proto
                };
                (src, SocketAddrV4::new(fe.ip, fe.port), proto)
            }
            9..=13 if !self.flows.is_empty() => {
                let t = *self.rng.pick(&self.flows);
                (
                    SocketAddrV4::new(t.saddr, t.sport),
                    SocketAddrV4::new(t.daddr, t.dport),
                    t.proto,
                )
            }
            14..=16 => {
                let b = *self.rng.pick(&self.backends);
                let dst = SocketAddrV4::new(self.addr(), self.port());
                (SocketAddrV4::new(b.ip, b.port), dst, b.proto)
            }
            _ => (
                SocketAddrV4::new(self.addr(), self.port()),
                SocketAddrV4::new(self.addr(), self.port()),
                proto,
            ),
        }
    }

    fn ip_opts(&mut self) -> IpOpts {
        IpOpts {
            tos: if self.rng.chance(1, 8) {
                self.rng.byte()
            } else {
                0
            },
            id: self.rng.u16(),
            dont_fragment: self.rng.chance(1, 2),
            ttl: *self.rng.pick(&[64, 64, 64, 1, 2, 0, 255]),
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.below(10) {
            0..=3 => 0,
            4..=7 => self.rng.below(64),
            _ => self.rng.below(MAX_PAYLOAD),
        };
        self.rng.bytes(n)
    }

    /// A TCP or UDP IP packet with right checksums, sometimes with IP options or as a
    /// fragment.
    fn l4_packet(&mut self, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Vec<u8> {
        let payload = self.payload();
        let l4 = if proto == IPPROTO_TCP {
            let flags = *self.rng.pick(&[
                TCP_SYN,
                TCP_SYN,
                TCP_ACK,
                TCP_SYN | TCP_ACK,
                0x11,
                0x04,
                0x18,
                0,
            ]);
            let ack = if flags & TCP_ACK != 0 {
                self.rng.next_u64() as u32
            } else {
                0
            };
            tcp(src, dst, self.rng.next_u64() as u32, ack, flags, &payload)
        } else {
            udp(src, dst, &payload, self.rng.chance(4, 5))
        };
        let opts = self.ip_opts();
        let mut p = if self.rng.chance(1, 8) {
            let options = self.ip_options();
            ipv4_with_options(opts, *src.ip(), *dst.ip(), proto, &options, &l4)
        } else {
            ipv4(opts, *src.ip(), *dst.ip(), proto, &l4)
        };
        if self.rng.chance(1, 10) {
            // More fragments, an offset, or both.
            let frag: u16 = *self.rng.pick(&[0x2000, 0x2000, 0x0001, 0x2005, 0x1fff]);
            let old = u16::from_be_bytes([p[6], p[7]]) & 0x4000;
            p[6..8].copy_from_slice(&(old | frag).to_be_bytes());
            let mut f = ethernet([0; 6], [0; 6], 0x0800, &p);
            super::frame::fix_ip_csum(&mut f);
            p = f[ETH_HLEN..].to_vec();
        }
        p
    }

    /// IP options (a multiple of 4 bytes, at most 40): no-ops, end of list, record route,
    /// a timestamp, ferry's DSR option naming a frontend, or garbage.
    fn ip_options(&mut self) -> Vec<u8> {
        let mut o = match self.rng.below(6) {
            0 => vec![1, 1, 1, 0],
            1 => vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
            2 => vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            3 => self.dsr_option().to_vec(),
            4 => {
                let n = 4 * (1 + self.rng.below(10));
                self.rng.bytes(n)
            }
            _ => vec![self.rng.byte(), self.rng.byte()],
        };
        o.resize(o.len().div_ceil(4) * 4, 0);
        o.truncate(40);
        o
    }

    fn dsr_option(&mut self) -> [u8; 8] {
        let fe = *self.rng.pick(&self.frontends);
        let (addr, port) = if self.rng.chance(7, 8) {
            (fe.ip, fe.port)
        } else {
            (self.addr(), self.port())
        };
        let mut o = [DSR_OPT_TYPE, DSR_OPT_LEN, 0, 0, 0, 0, 0, 0];
        if self.rng.chance(1, 10) {
            o[1] = *self.rng.pick(&[0, 2, 7, 9, 255]);
        }
        o[2..4].copy_from_slice(&port.to_be_bytes());
        o[4..8].copy_from_slice(&addr.octets());
        o
    }

    /// A packet carrying the DSR option first, to a pod of this node, the node or anywhere.
    fn dsr_packet(&mut self) -> Vec<u8> {
        let proto = if self.rng.chance(1, 2) {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        let src = SocketAddrV4::new(self.addr(), self.port());
        let any = self.addr();
        let dst_ip = *self
            .rng
            .pick(&[LOCAL_POD, LOCAL_POD, NODE, REMOTE_POD, any]);
        let any = self.port();
        let dst = SocketAddrV4::new(dst_ip, *self.rng.pick(&[8080, 53, 8443, any]));
        let payload = self.payload();
        let l4 = if proto == IPPROTO_TCP {
            tcp(
                src,
                dst,
                1,
                0,
                *self.rng.pick(&[TCP_SYN, TCP_ACK, 0x11]),
                &payload,
            )
        } else {
            udp(src, dst, &payload, true)
        };
        let mut options = self.dsr_option().to_vec();
        if self.rng.chance(1, 4) {
            options.extend(self.ip_options());
            options.truncate(40);
        }
        ipv4_with_options(self.ip_opts(), *src.ip(), dst_ip, proto, &options, &l4)
    }

    /// An ICMP destination unreachable or time exceeded quoting a TCP/UDP packet (often one
    /// of a flow), from its destination or a router, to its source.
    fn icmp_error(&mut self) -> Vec<u8> {
        let (src, dst, proto) = self.flow();
        let quoted_packet = self.l4_packet(src, dst, proto);
        let n = *self
            .rng
            .pick(&[28, 28, 28, 48, 20, 24, quoted_packet.len()]);
        let quoted = &quoted_packet[..n.min(quoted_packet.len())];
        let &(ty, code) = self.rng.pick(&[(3, 3), (3, 4), (3, 1), (11, 0), (3, 13)]);
        let rest = if code == 4 { 1400 } else { 0 };
        let from = if self.rng.chance(1, 3) {
            ROUTER
        } else {
            *dst.ip()
        };
        let opts = IpOpts {
            tos: 0xc0,
            id: self.rng.u16(),
            dont_fragment: false,
            ttl: 64,
        };
        ipv4(
            opts,
            from,
            *src.ip(),
            IPPROTO_ICMP,
            &icmp(ty, code, rest, quoted),
        )
    }

    /// 1 to 4 mutations of `frame`, at offsets that matter most of the time, then sometimes
    /// the checksums fixed.
    fn mutations(&mut self, frame: &[u8]) -> Vec<Mutation> {
        let ihl = Ip::parse(frame).map_or(20, |ip| ip.ihl);
        let l4 = ETH_HLEN + ihl;
        let mut out = Vec::new();
        for _ in 0..1 + self.rng.below(4) {
            let m = match self.rng.below(12) {
                0 => Mutation::Set(
                    14,
                    *self
                        .rng
                        .pick(&[0x45, 0x46, 0x47, 0x4f, 0x44, 0x40, 0x55, 0x35]),
                ),
                1 => {
                    let any = self.rng.byte();
                    Mutation::Set(
                        16 + self.rng.below(2) as u16,
                        *self.rng.pick(&[0, 0x14, 0x1c, 0xff, any]),
                    )
                }
                2 => Mutation::Set(
                    20 + self.rng.below(2) as u16,
                    *self.rng.pick(&[0x20, 0x00, 0x1f, 0xff, 0x40]),
                ),
                3 => Mutation::Set(
                    22 + self.rng.below(2) as u16,
                    *self.rng.pick(&[0, 1, 6, 17, 47, 255]),
                ),
                4 => Mutation::Set((l4 + self.rng.below(20)) as u16, self.rng.byte()),
                5 => Mutation::Set((l4 + 8 + self.rng.below(28)) as u16, self.rng.byte()),
                6 => Mutation::Set(self.rng.below(frame.len().max(1)) as u16, self.rng.byte()),
                7 | 8 => Mutation::Trunc(
                    (ETH_HLEN + self.rng.below(frame.len().saturating_sub(ETH_HLEN).max(1))) as u16,
                ),
                9 => {
                    let n = 1 + self.rng.below(40);
                    Mutation::Append(if self.rng.chance(1, 2) {
                        vec![0; n]
                    } else {
                        self.rng.bytes(n)
                    })
                }
                10 => Mutation::Set((26 + self.rng.below(8)) as u16, self.rng.byte()),
                _ => Mutation::Set(
                    l4 as u16 + 13,
                    *self.rng.pick(&[TCP_SYN, TCP_ACK, 0x04, 0x01, 0xff]),
                ),
            };
            out.push(m);
        }
        if self.rng.chance(1, 2) {
            out.push(Mutation::FixIp);
        }
        if self.rng.chance(1, 2) {
            out.push(Mutation::FixL4);
        }
        out
    }
}
