//! Hostile packets (issue 9): forged DSR options, SYNs on live flows, lost flows and a full
//! conntrack map.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use super::*;

/// A TCP segment with seq 1000, ack 0 whatever the flags (a forger's), carrying the DSR option
/// naming `frontend`.
fn forged_dsr(src: SocketAddr, dst: SocketAddr, frontend: SocketAddr, flags: u8) -> Vec<u8> {
    let seg = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            ferry_tests::progtest::tcp(s, d, 1000, 0, flags, b"")
        }
        _ => panic!("IPv4 rows"),
    };
    inbound(dsr_packet(src, dst, frontend, IPPROTO_TCP, &seg))
}

type Snapshot = Rc<RefCell<BTreeMap<Ct, CtVal>>>;

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "DSR options are honoured only when they can be verified (IPv4)",
        families: V4,
        targets: TC,
        netns: pods_behind_p0,
        fixture: |f, n| {
            f.node_addr(IFINDEX, n.node_b);
            let pod = sa(n.remote_pod, 8080);
            let other = sa(n.remote_pod2, 8080);
            f.backend(4, pod, IPPROTO_TCP, true);
            f.backend(6, other, IPPROTO_TCP, true);
            f.backend(7, sa(n.remote_pod, 5353), IPPROTO_UDP, true);
            let np = svc_flags::NODE_PORT;
            let lb = svc_flags::LOAD_BALANCER;
            f.frontend(
                sa(n.node_b, 30080),
                IPPROTO_TCP,
                scope::EXTERNAL,
                np,
                REV_NODEPORT,
                &[4],
            );
            f.member(n.family, REV_NODEPORT, 4);
            f.frontend(
                sa(n.node_b, 30053),
                IPPROTO_UDP,
                scope::EXTERNAL,
                np,
                REV_NODEPORT + 1,
                &[7],
            );
            f.member(n.family, REV_NODEPORT + 1, 7);
            f.frontend(
                sa(n.lb_vip, 80),
                IPPROTO_TCP,
                scope::EXTERNAL,
                lb,
                REV_LB,
                &[4],
            );
            f.member(n.family, REV_LB, 4);
            f.frontend(
                sa(n.lb_vip, 81),
                IPPROTO_TCP,
                scope::EXTERNAL,
                lb,
                REV_LB + 1,
                &[6],
            );
            f.member(n.family, REV_LB + 1, 6);
            f.cluster_node(n.node);
        },
        steps: |n| {
            let np_a = sa(n.node, 30080);
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.remote_pod, 8080);
            let other = sa(n.remote_pod2, 8080);
            let client = sa(n.client, 40000);
            let client2 = sa(n.client2, 40000);
            let client3 = sa(n.client, 40003);
            let udp_pod = sa(n.remote_pod, 5353);
            let forged_udp = inbound(dsr_udp(
                client,
                udp_pod,
                sa(n.forged, 30053),
                b"who are you",
            ));
            let untouched = |what: String, frame: Vec<u8>| {
                row(move |_| Row::new(what.clone(), TcIn, frame.clone(), Pass).unchanged())
            };
            let mut steps = Vec::new();
            // SNAT mode (the default): no option is honoured, not even a valid one; the
            // issue's datagram naming 6.6.6.6 with a NodePort's port passes untouched too.
            for frontend in [np_a, vip, sa(n.forged, 30080)] {
                steps.push(untouched(
                    format!("SNAT mode, option {frontend}"),
                    forged_dsr(client, pod, frontend, TCP_SYN),
                ));
            }
            let fu = forged_udp.clone();
            steps.push(row(move |_| {
                Row::new("SNAT mode, the issue's datagram", TcIn, fu.clone(), Pass)
                    .unchanged()
                    .ct_len(0)
                    .counter(Counter::NsDsrIgnored, 4)
            }));
            // DSR mode: only what can be verified.
            steps.push(maps(|c| dsr_mode(&mut c.f)));
            steps.push(untouched(
                "a NodePort on no node's address (UDP)".into(),
                forged_udp,
            ));
            steps.push(untouched(
                "a NodePort on no node's address".into(),
                forged_dsr(client, pod, sa(n.forged, 30080), TCP_SYN),
            ));
            steps.push(untouched(
                "a frontend the destination is no backend of".into(),
                forged_dsr(client, other, vip, TCP_SYN),
            ));
            steps.push(row(move |_| {
                Row::new(
                    "a TCP segment other than a SYN, with no flow",
                    TcIn,
                    forged_dsr(client, pod, vip, TCP_ACK),
                    Pass,
                )
                .unchanged()
                .ct_len(0)
                .counter(Counter::NsDsrIgnored, 4)
            }));
            // Never over an entry DSR did not make: a live flow through this node's own
            // frontend.
            let local_flow: Snapshot = Rc::default();
            steps.push(row(move |_| {
                Row::new(
                    "a live flow through this node's frontend",
                    TcIn,
                    inbound(tcp_packet(client2, vip, TCP_SYN, b"")),
                    Ok,
                )
                .ct_len(2)
            }));
            let lf = local_flow.clone();
            steps.push(maps(move |c| *lf.borrow_mut() = c.f.ct()));
            let lf = local_flow.clone();
            steps.push(row(move |_| {
                let lf = lf.clone();
                Row::new(
                    "a valid option on a local flow's 5-tuple",
                    TcIn,
                    forged_dsr(client2, pod, np_a, TCP_SYN),
                    Shot,
                )
                .counter(Counter::NsDsrClashDrop, 1)
                .check(move |f| {
                    assert_eq!(f.ct(), *lf.borrow(), "the local flow keeps its entries")
                })
            }));
            // A DSR flow: made by its SYN, refreshed by a retransmitted one.
            for what in ["a DSR flow's SYN", "its retransmission"] {
                steps.push(row(move |_| {
                    Row::new(what, TcIn, forged_dsr(client3, pod, vip, TCP_SYN), Ok)
                }));
            }
            let rkey = ct_key(pod, client3, IPPROTO_TCP, ct_dir::REPLY);
            let dsr_entry: Rc<RefCell<Option<CtVal>>> = Rc::default();
            let de = dsr_entry.clone();
            steps.push(maps(move |c| {
                let e = c.f.ct()[&rkey];
                assert_eq!(e.nat_src.ip(), n.lb_vip);
                *de.borrow_mut() = Some(e);
            }));
            // Another frontend's SYN on it while it lives: dropped, the entry kept.
            let de = dsr_entry.clone();
            steps.push(row(move |_| {
                let de = de.clone();
                Row::new(
                    "another frontend on a live DSR flow",
                    TcIn,
                    forged_dsr(client3, pod, np_a, TCP_SYN),
                    Shot,
                )
                .counter(Counter::NsDsrClashDrop, 1)
                .check(move |f| assert_eq!(f.ct()[&rkey], de.borrow().unwrap()))
            }));
            // Once it is closing, a new flow may take the 5-tuple.
            let de = dsr_entry.clone();
            steps.push(maps(move |c| {
                let e = de.borrow().unwrap();
                c.f.ct_put(
                    rkey,
                    CtVal {
                        tcp_flags: TCP_SYN | TCP_FIN,
                        ..e
                    },
                );
            }));
            steps.push(row(move |_| {
                Row::new(
                    "a finished DSR flow makes room",
                    TcIn,
                    forged_dsr(client3, pod, np_a, TCP_SYN),
                    Ok,
                )
                .check(move |f| {
                    let e = f.ct()[&rkey];
                    assert_eq!(e.nat_src.ip(), n.node);
                    assert_eq!(e.tcp_flags, TCP_SYN);
                })
                .counter(Counter::NsDsrReceived, 3)
                .counter(Counter::NsDsrIgnored, 0)
            }));
            steps
        },
    },
    Scenario {
        desc: "DSR headers are honoured only when they can be verified (IPv6)",
        families: V6,
        targets: TC,
        netns: pods_behind_p0,
        fixture: |f, n| {
            dsr_mode(f);
            f.node_addr(IFINDEX, n.node_b);
            f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, true);
            f.backend(5, sa(n.remote_pod, 9090), IPPROTO_TCP, true);
            let vip = sa(n.lb_vip, 80);
            f.frontend(
                vip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::LOAD_BALANCER,
                REV_LB,
                &[4],
            );
            f.member(n.family, REV_LB, 4);
            let np_b = sa(n.node_b, 30080);
            f.frontend(
                np_b,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::NODE_PORT,
                REV_NODEPORT,
                &[4],
            );
            f.member(n.family, REV_NODEPORT, 4);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.remote_pod, 8080);
            let other = sa(n.remote_pod, 9090);
            let client = sa(n.client, 40000);
            let syn = move |to: SocketAddr, frontend: SocketAddr| {
                inbound(dsr_tcp(client, to, frontend, TCP_SYN))
            };
            vec![
                row(move |_| {
                    Row::new(
                        "a pod that is no backend of the frontend named",
                        TcIn,
                        syn(other, vip),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "a frontend nobody serves",
                        TcIn,
                        syn(pod, sa(n.outsider, 80)),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "a NodePort on an address that is no cluster node's",
                        TcIn,
                        syn(pod, sa(n.outsider, 30080)),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsDsrIgnored, 3)
                    .ct_len(0)
                }),
                maps(move |c| c.f.cluster_node(n.outsider)),
                row(move |_| {
                    Row::new(
                        "with the node's address known, the same header is honoured",
                        TcIn,
                        syn(pod, sa(n.outsider, 30080)),
                        Ok,
                    )
                    .counter(Counter::NsDsrReceived, 1)
                }),
                row(move |_| {
                    Row::new(
                        "a live DSR flow of another frontend on the 5-tuple: dropped",
                        TcIn,
                        syn(pod, vip),
                        Shot,
                    )
                    .counter(Counter::NsDsrClashDrop, 1)
                    .ct_len(1)
                }),
                // DSR off here: every header passes untouched (a flow no entry knows).
                maps(|c| c.f.node_config(NodeConfig::default())),
                row(move |_| {
                    let client3 = sa(n.client, 40003);
                    Row::new(
                        "DSR off",
                        TcIn,
                        inbound(dsr_tcp(client3, pod, vip, TCP_SYN)),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsDsrIgnored, 1)
                }),
            ]
        },
    },
    Scenario {
        desc: "a SYN on a live flow's reply tuple is dropped and a finished flow is forgotten",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            for (port, rev) in [(80, REV_LB), (81, REV_LB + 1)] {
                f.frontend(
                    sa(n.lb_vip, port),
                    IPPROTO_TCP,
                    scope::EXTERNAL,
                    flags,
                    rev,
                    &[1],
                );
            }
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let vip2 = sa(n.lb_vip, 81);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40002);
            let client2 = sa(n.client, 40003);
            let live: Snapshot = Rc::default();
            let l = live.clone();
            vec![
                row(move |_| {
                    Row::new(
                        "a live flow",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                }),
                maps(move |c| *l.borrow_mut() = c.f.ct()),
                row(move |_| {
                    let live = live.clone();
                    // Anyone can forge it; dropped, as netfilter drops a clashing SYN.
                    Row::new(
                        "a SYN straight to the pod on the live flow's 5-tuple",
                        TcIn,
                        inbound(tcp_packet(client, pod, TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsCtClashDrop, 1)
                    .check(move |f| {
                        assert_eq!(f.ct(), *live.borrow(), "the live flow keeps both entries")
                    })
                }),
                row(move |_| {
                    Row::new(
                        "the live flow goes on",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_ACK, b"more")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, pod, TCP_ACK, b"more")))
                }),
                row(move |_| {
                    // Its reply would take the live flow's entry: dropped, nothing of it left.
                    Row::new(
                        "a new flow through another frontend to the pod from the same client port",
                        TcIn,
                        inbound(tcp_packet(client, vip2, TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsCtClashDrop, 1)
                    .ct_len(2)
                    .check(move |f| {
                        assert!(!f.ct().contains_key(&ct_key(
                            client,
                            vip2,
                            IPPROTO_TCP,
                            ct_dir::FORWARD
                        )))
                    })
                }),
                // A flow that was reset is over (idle past its timeout too:
                // agent_common::ct_over): the direct SYN forgets it and passes.
                row(move |_| {
                    Row::new(
                        "the flow is reset",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_RST, b"")),
                        Ok,
                    )
                }),
                row(move |_| {
                    Row::new(
                        "the direct SYN after the reset",
                        TcIn,
                        inbound(tcp_packet(client, pod, TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                    .ct_len(0)
                }),
                // A flow's own reply entry whose forward half was lost is taken over by the flow.
                row(move |_| {
                    Row::new(
                        "another flow",
                        TcIn,
                        inbound(tcp_packet(client2, vip, TCP_SYN, b"")),
                        Ok,
                    )
                }),
                maps(move |c| {
                    c.f.ct_remove(ct_key(client2, vip, IPPROTO_TCP, ct_dir::FORWARD))
                }),
                row(move |_| {
                    Row::new(
                        "its SYN again, the forward entry lost",
                        TcIn,
                        inbound(tcp_packet(client2, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .ct_len(2)
                    .counter(Counter::NsCtClashDrop, 0)
                }),
            ]
        },
    },
    Scenario {
        desc: "a lost flow comes back to its backend and a full table is counted",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            for i in 0..3u16 {
                f.backend(i as u32 + 1, sa(pod_31(n, i), 8080), IPPROTO_TCP, true);
            }
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            f.frontend(
                sa(n.lb_vip, 80),
                IPPROTO_TCP,
                scope::EXTERNAL,
                flags,
                REV_LB,
                &[1, 2, 3],
            );
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            // The slot is the flow hash's: slot (hash % 3) + 1, backend id = slot here.
            let expected = move |client: SocketAddr| {
                let (sport, dport) = (port_to_raw(client.port()), port_to_raw(80));
                let h = match n.family {
                    Family::V4 => {
                        flow_hash_v4(raw4(client.ip()), raw4(n.lb_vip), sport, dport, IPPROTO_TCP)
                    }
                    Family::V6 => flow_hash_v6(
                        &raw6(client.ip()),
                        &raw6(n.lb_vip),
                        sport,
                        dport,
                        IPPROTO_TCP,
                    ),
                };
                sa(pod_31(n, (h % 3) as u16), 8080)
            };
            let ports = 40000..40024u16;
            let mut used = BTreeMap::new();
            let mut steps = Vec::new();
            for port in ports.clone() {
                let client = sa(n.client, port);
                let want = expected(client);
                *used.entry(want).or_insert(0) += 1;
                steps.push(row(move |_| {
                    Row::new(
                        format!("port {port}"),
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out_check(move |out| {
                        let (dst, dport) = match n.family {
                            Family::V4 => {
                                let p = parse_ipv4(out);
                                (IpAddr::V4(p.dst), p.dport)
                            }
                            Family::V6 => {
                                let p = parse_ipv6(out);
                                (IpAddr::V6(p.dst), p.dport)
                            }
                        };
                        assert_eq!(sa(dst, dport), want);
                    })
                }));
            }
            assert_eq!(used.len(), 3, "every backend serves: {used:?}");
            // Every flow's entries are lost (evicted): each flow's next segment makes it
            // again, on the backend it had, and is counted.
            steps.push(maps(|c| c.f.clear_ct()));
            let count = ports.len() as u64;
            for port in ports {
                let client = sa(n.client, port);
                let want = expected(client);
                steps.push(row(move |_| {
                    let r = Row::new(
                        format!("lost flow from port {port}"),
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_ACK, b"data")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, want, TCP_ACK, b"data")));
                    if port < 40023 {
                        return r;
                    }
                    r.counter(Counter::NsCtLostFlow, count)
                        .counter(Counter::NsNewFlowCtFull, 0)
                }));
            }
            // New flows while the agent measured the table 95 % full are counted; at 10 % not.
            steps.push(maps(|c| c.f.ct_fill(950)));
            steps.push(row(move |_| {
                Row::new(
                    "a new flow, the table 95 % full",
                    TcIn,
                    inbound(tcp_packet(sa(n.client2, 1), vip, TCP_SYN, b"")),
                    Ok,
                )
            }));
            steps.push(maps(|c| c.f.ct_fill(100)));
            steps.push(row(move |_| {
                Row::new(
                    "a new flow, the table 10 % full",
                    TcIn,
                    inbound(tcp_packet(sa(n.client2, 2), vip, TCP_SYN, b"")),
                    Ok,
                )
                .counter(Counter::NsNewFlowCtFull, 1)
                .counter(Counter::NsNewFlow, 2 * count + 2)
            }));
            steps
        },
    },
];

/// The local pods 10.244.0.31+i (fd00:244::31+i).
fn pod_31(n: &Net, i: u16) -> IpAddr {
    match n.family {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 31 + i as u8)),
        Family::V6 => v6(0xfd00, 0x244, 0, 0x31 + i),
    }
}

table_tests!(TABLE, hostile_v4: V4, hostile_v6: V6);
