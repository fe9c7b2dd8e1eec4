//! Frontends without endpoints answer with a port unreachable sent back out of the ingress
//! device (ICMP, ICMPv6), within the node's and each source's budget; what must never be
//! answered is dropped.

use super::*;

fn no_endpoints(f: &mut Fixture, n: &'static Net) {
    let np = sa(n.node, 30053);
    f.frontend(
        np,
        IPPROTO_UDP,
        scope::EXTERNAL,
        svc_flags::NODE_PORT,
        REV_NODEPORT,
        &[],
    );
}

/// Ten sources, 198.51.100.100+i / 2001:db8:100::100+i.
fn source(n: &Net, i: u16) -> SocketAddr {
    match n.family {
        Family::V4 => sa(
            IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 100 + i as u8)),
            5353,
        ),
        Family::V6 => sa(v6(0x2001, 0xdb8, 0x100, 0x100 + i), 5353),
    }
}

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "a service without endpoints is rejected with a port unreachable",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            let vip = sa(n.lb_vip, 80);
            f.frontend(
                vip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::LOAD_BALANCER,
                REV_LB,
                &[],
            );
            no_endpoints(f, n);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let np = sa(n.node, 30053);
            let reject = move |frame: Vec<u8>, from: IpAddr| {
                let want = port_unreachable(&frame, from, n.client);
                (frame, want)
            };
            let mut steps = Vec::new();
            // A TCP SYN (IPv4: 54 bytes, the frame grows to 70; IPv6: the whole packet quoted).
            let (syn, want) = reject(
                inbound(tcp_packet(sa(n.client, 40000), vip, TCP_SYN, b"")),
                n.lb_vip,
            );
            steps.push(row(move |_| {
                Row::new(
                    "TCP reject, sent back out of the ingress device",
                    TcIn,
                    syn.clone(),
                    Redirect,
                )
                .out(want.clone())
            }));
            // UDP: IPv4 with a payload (the frame shrinks to 70) and an empty one (it grows);
            // IPv6 empty, odd-sized, and larger than an error may quote (cut at 1232 bytes).
            let payloads: Vec<Vec<u8>> = match n.family {
                Family::V4 => vec![vec![0x5a; 200], vec![]],
                Family::V6 => vec![vec![], vec![0x5a; 201], vec![0x5b; 1400]],
            };
            let count = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                let (q, want) = reject(
                    inbound(udp_packet(sa(n.client, 5353), np, &payload)),
                    n.node,
                );
                assert!(want.len() <= ETH_HLEN + 1280);
                let last_v4 = !is_v6(n) && i + 1 == count;
                steps.push(row(move |_| {
                    let r = Row::new("UDP reject", TcIn, q.clone(), Redirect).out(want.clone());
                    if !last_v4 {
                        return r;
                    }
                    r.counter(Counter::NsRejected, 3).ct_len(0)
                }));
            }
            match n.family {
                Family::V4 => {
                    // A packet with IP options is dropped instead (the quote would not have a
                    // fixed size).
                    steps.push(row(move |_| {
                        let opt = syn_with_options(sa(n.client, 40001), vip, &[1, 1, 1, 0]);
                        Row::new("IP options: dropped", TcIn, inbound(opt), Shot)
                            .counter(Counter::NsRejectFailed, 1)
                    }));
                }
                Family::V6 => {
                    // Ethernet padding after the packet is not quoted.
                    let unpadded = inbound(udp_packet(sa(n.client, 5354), np, b"x"));
                    let mut padded = unpadded.clone();
                    padded.extend_from_slice(&[0xee; 9]);
                    let want = port_unreachable(&unpadded, n.node, n.client);
                    steps.push(row(move |_| {
                        Row::new("padding is not quoted", TcIn, padded.clone(), Redirect)
                            .out(want.clone())
                    }));
                    // A CHECKSUM_COMPLETE skb keeps a right skb->csum through the rebuild.
                    // (Only a frame of the error's own size stays CHECKSUM_COMPLETE: resizing
                    // makes an skb CHECKSUM_NONE, whose stale csum the test run cannot tell
                    // from a wrong one.)
                    let (q, want) = reject(
                        inbound(udp_packet(sa(n.client, 5355), np, &[7; 1232])),
                        n.node,
                    );
                    assert_eq!(q.len(), ETH_HLEN + 1280);
                    steps.push(row(move |_| {
                        Row::new("CHECKSUM_COMPLETE", TcIn, q.clone(), Redirect)
                            .complete()
                            .out(want.clone())
                            .counter(Counter::NsRejected, 6)
                            .ct_len(0)
                    }));
                    // Never answered (RFC 4443 2.4 (e)): a multicast source, the unspecified
                    // source, a frame sent to a link-layer multicast address.
                    let multicast =
                        inbound(udp_packet(sa("ff02::1".parse().unwrap(), 1), np, b"x"));
                    let unspecified = inbound(udp_packet(sa("::".parse().unwrap(), 1), np, b"x"));
                    let mut group_mac = inbound(udp_packet(sa(n.client, 1), np, b"x"));
                    group_mac[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
                    let cases = [
                        ("a multicast source", multicast),
                        ("the unspecified source", unspecified),
                        ("a link-layer multicast destination", group_mac),
                    ];
                    for (i, (what, frame)) in cases.into_iter().enumerate() {
                        steps.push(row(move |_| {
                            let r = Row::new(what, TcIn, frame.clone(), Shot);
                            if i < 2 {
                                return r;
                            }
                            r.counter(Counter::NsRejectFailed, 3)
                                .counter(Counter::NsRejected, 0)
                        }));
                    }
                }
            }
            steps
        },
    },
    Scenario {
        desc: "port unreachables beyond the node's budget are dropped and counted",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            no_endpoints(f, n);
            // 1 a second, 3 at once (shared by both families); ten sources, one datagram each.
            f.node_config(NodeConfig {
                icmp_rate: 1,
                icmp_burst: 3,
                ..NodeConfig::default()
            });
        },
        steps: |n| {
            let np = sa(n.node, 30053);
            (0..10u16)
                .map(|i| {
                    row(move |_| {
                        let verdict = if i < 3 { Redirect } else { Shot };
                        let what = if i < 3 {
                            "the burst is answered"
                        } else {
                            "the rest is dropped"
                        };
                        let r = Row::new(
                            what,
                            TcIn,
                            inbound(udp_packet(source(n, i), np, b"q")),
                            verdict,
                        );
                        if i < 9 {
                            return r;
                        }
                        r.counter(Counter::NsRejected, 3)
                            .counter(Counter::NsRejectLimited, 7)
                    })
                })
                .collect()
        },
    },
    Scenario {
        desc: "port unreachables beyond one source's budget are dropped and counted",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            no_endpoints(f, n);
            // 6 at once (the kernel's burst), then one a minute here.
            f.node_config(NodeConfig {
                icmp_rate: 1_000_000,
                icmp_burst: 1_000,
                icmp_source_interval_ms: 60_000,
                ..NodeConfig::default()
            });
        },
        steps: |n| {
            let np = sa(n.node, 30053);
            let mut steps: Vec<Step> = (0..10u16)
                .map(|i| {
                    row(move |_| {
                        let verdict = if i < 6 { Redirect } else { Shot };
                        let r = Row::new(
                            format!("datagram {i} of one source"),
                            TcIn,
                            inbound(udp_packet(source(n, 0), np, b"q")),
                            verdict,
                        );
                        if i < 9 {
                            return r;
                        }
                        r.counter(Counter::NsRejectLimitedSource, 4)
                    })
                })
                .collect();
            steps.push(row(move |_| {
                let r = Row::new(
                    "another source still gets its answer",
                    TcIn,
                    inbound(udp_packet(source(n, 1), np, b"q")),
                    Redirect,
                )
                .counter(Counter::NsRejected, 7)
                .counter(Counter::NsRejectLimited, 0);
                if !is_v6(n) {
                    return r;
                }
                r.check(|f| {
                    let sources: aya::maps::HashMap<&mut aya::maps::MapData, [u32; 4], u64> =
                        aya::maps::HashMap::try_from(f.map(agent_common::maps::ICMP6_SOURCES))
                            .unwrap();
                    assert_eq!(sources.keys().count(), 2, "one budget per IPv6 source");
                })
            }));
            steps
        },
    },
];

table_tests!(TABLE, reject_v4: V4, reject_v6: V6);
