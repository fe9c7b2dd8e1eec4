//! Direct server return (`--lb-mode dsr`): node A (the one the client reached) DNATs, keeps the
//! client's address and carries the frontend in an IP option (IPv4) or a destination options
//! header (IPv6, Cilium's `dsr_opt_v6`); node B (the backend's) records the reply translation
//! from it and removes it. The rows run with node B's address on the device where they are
//! node B's.

use super::*;

fn dsr_lb_80(f: &mut Fixture, n: &'static Net) {
    dsr_mode(f);
    f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
    let vip = sa(n.lb_vip, 80);
    f.frontend(
        vip,
        IPPROTO_TCP,
        scope::EXTERNAL,
        svc_flags::LOAD_BALANCER,
        REV_LB,
        &[4],
    );
}

/// Node B: DSR mode, its own address on the device.
fn node_b(f: &mut Fixture, n: &'static Net) {
    dsr_mode(f);
    f.node_addr(IFINDEX, n.node_b);
}

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "DSR TCP to a remote backend keeps the client and carries the frontend",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: dsr_lb_80,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.remote_pod, 8080);
            let client = sa(n.client, 40000);
            let get: &'static [u8] = if is_v6(n) {
                b"GET /"
            } else {
                b"GET / HTTP/1.1\r\n\r\n"
            };
            let want = inbound(dsr_tcp(client, pod, vip, TCP_SYN));
            vec![
                row({
                    let want = want.clone();
                    move |_| {
                        let want = want.clone();
                        // No route in the namespace: handed to the stack, which forwards it.
                        Row::new(
                            "SYN with the DSR option",
                            TcIn,
                            inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                            Ok,
                        )
                        .out_check(move |out| {
                            assert_frame(out, &want, "SYN with the DSR option");
                            spelled_out(n, out);
                        })
                        .counter(Counter::NsFibPassed, 1)
                        // A FORWARD entry only: the replies do not come back through here.
                        .ct(vec![(
                            ct_key(client, vip, IPPROTO_TCP, ct_dir::FORWARD),
                            ct_val(client, pod, 4, REV_LB, ct_flags::DSR, TCP_SYN),
                        )])
                        .counter(Counter::NsNewFlow, 1)
                    }
                }),
                row(move |_| {
                    Row::new(
                        "later segments: DNAT only, no option",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_ACK, get)),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, pod, TCP_ACK, get)))
                }),
                row(move |_| {
                    Row::new(
                        "a retransmitted SYN carries it again",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(want.clone())
                    .counter(Counter::NsTracked, 2)
                    .counter(Counter::NsNewFlow, 0)
                    .ct_len(1)
                }),
                row(move |_| {
                    let client2 = sa(n.client, 40001);
                    Row::new(
                        "SYN with the option, CHECKSUM_COMPLETE",
                        TcIn,
                        inbound(tcp_packet(client2, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .complete()
                    .out(inbound(dsr_tcp(client2, pod, vip, TCP_SYN)))
                }),
                // Local backends are unaffected by the mode: DNAT, both entries, no option.
                maps(move |c| {
                    c.f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
                    let vip2 = sa(n.lb_vip, 81);
                    c.f.frontend(
                        vip2,
                        IPPROTO_TCP,
                        scope::EXTERNAL,
                        svc_flags::LOAD_BALANCER,
                        REV_LB + 1,
                        &[1],
                    );
                }),
                row(move |_| {
                    Row::new(
                        "a local backend in DSR mode",
                        TcIn,
                        inbound(tcp_packet(client, sa(n.lb_vip, 81), TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(
                        client,
                        sa(n.local_pod, 8080),
                        TCP_SYN,
                        b"",
                    )))
                    .ct_len(4)
                    .counter(Counter::NsDsrFallback, 0)
                }),
                // UDP: every datagram carries it.
                maps(move |c| {
                    c.f.backend(5, sa(n.remote_pod, 5353), IPPROTO_UDP, false);
                    let uvip = sa(n.lb_vip, 53);
                    c.f.frontend(
                        uvip,
                        IPPROTO_UDP,
                        scope::EXTERNAL,
                        svc_flags::LOAD_BALANCER,
                        REV_LB + 2,
                        &[5],
                    );
                }),
                row(move |_| udp_with_header(n, client, false)),
                row(move |_| udp_with_header(n, client, true)),
            ]
        },
    },
    Scenario {
        desc: "DSR UDP carries the option on every datagram",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            dsr_mode(f);
            f.backend(4, sa(n.remote_pod, 5353), IPPROTO_UDP, false);
            let ext = sa(n.external_ip, 53);
            f.frontend(
                ext,
                IPPROTO_UDP,
                scope::EXTERNAL,
                svc_flags::EXTERNAL_IP,
                REV_LB,
                &[4],
            );
        },
        steps: |n| {
            let ext = sa(n.external_ip, 53);
            let pod = sa(n.remote_pod, 5353);
            let client = sa(n.client, 5300);
            let mut steps: Vec<Step> = [&b"first"[..], b"second", b"third and odd"]
                .into_iter()
                .enumerate()
                .map(|(i, payload)| {
                    row(move |_| {
                        let r = Row::new(
                            format!("datagram {i}"),
                            TcIn,
                            inbound(udp_packet(client, ext, payload)),
                            Ok,
                        )
                        .out(inbound(dsr_udp(client, pod, ext, payload)));
                        if i < 2 {
                            return r;
                        }
                        r.complete()
                            .ct(vec![(
                                ct_key(client, ext, IPPROTO_UDP, ct_dir::FORWARD),
                                ct_val(client, pod, 4, REV_LB, ct_flags::DSR, 0),
                            )])
                            .counter(Counter::NsNewFlow, 1)
                            .counter(Counter::NsTracked, 2)
                    })
                })
                .collect();
            steps.push(row(move |_| {
                let d = udp_datagram(client, pod, b"nocsum", false);
                Row::new(
                    "a datagram without a checksum keeps having none",
                    TcIn,
                    inbound(udp_packet_nocsum(client, ext, b"nocsum")),
                    Ok,
                )
                .out(inbound(dsr_packet(client, pod, ext, IPPROTO_UDP, &d)))
            }));
            // The client's port unreachable about a reply (which node B sent from the frontend)
            // comes to this node, the frontend's: it goes on to the pod, quoting what the pod
            // sent.
            steps.push(row(move |_| {
                let pu = IcmpErr::PortUnreachable;
                let reply = udp_packet(ext, client, b"late answer");
                let err = icmp_error(n.client, n.external_ip, pu, &reply, 3);
                let to_pod = udp_packet(pod, client, b"late answer");
                Row::new("the client's error towards the pod", TcIn, inbound(err), Ok)
                    .out(inbound(icmp_error(n.client, n.remote_pod, pu, &to_pod, 3)))
                    .counter(Counter::NsIcmpTranslated, 1)
            }));
            steps
        },
    },
    Scenario {
        desc: "a DSR option for a local backend is stripped and the reply leaves from the frontend",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        // Node A first (no route here yet: the packet leaves A unrouted, TTL unchanged).
        fixture: dsr_lb_80,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.remote_pod, 8080);
            let client = sa(n.client, 40000);
            vec![
                row(move |_| {
                    Row::new(
                        "node A makes the packet",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(dsr_tcp(client, pod, vip, TCP_SYN)))
                }),
                // Node B: the same services (programmed by its own agent: the pod is local).
                maps(move |c| {
                    pods_behind_p0(n);
                    c.f = Fixture::new(n.family);
                    c.reset_counters();
                    node_b(&mut c.f, n);
                    c.f.backend(4, pod, IPPROTO_TCP, true);
                    c.f.frontend(
                        vip,
                        IPPROTO_TCP,
                        scope::EXTERNAL,
                        svc_flags::LOAD_BALANCER,
                        REV_LB,
                        &[4],
                    );
                    c.f.member(n.family, REV_LB, 4);
                }),
                row(move |c| {
                    // Exactly the DNATed SYN without the option (lengths, checksums).
                    Row::new("node B removes the option", TcIn, c.last.clone(), Ok)
                        .out(inbound(tcp_packet(client, pod, TCP_SYN, b"")))
                        .ct(vec![(
                            ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                            ct_val(
                                vip,
                                client,
                                0,
                                REV_LB,
                                ct_flags::DSR | ct_flags::LOCAL,
                                TCP_SYN,
                            ),
                        )])
                        .counter(Counter::NsDsrReceived, 1)
                        .counter(Counter::NsNewFlow, 0)
                }),
                row(move |_| {
                    Row::new(
                        "the pod's SYN-ACK leaves B from the frontend",
                        TcOut,
                        outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b"")),
                        Ok,
                    )
                    .out(outbound(tcp_packet(vip, client, TCP_SYN | TCP_ACK, b"")))
                    .counter(Counter::NsTracked, 1)
                }),
                row(move |_| {
                    Row::new(
                        "the client's next segments (no option) reach the pod untouched",
                        TcIn,
                        inbound(tcp_packet(client, pod, TCP_ACK, b"data")),
                        Pass,
                    )
                    .unchanged()
                    .ct_len(1)
                }),
                row(move |_| {
                    let client2 = sa(n.client, 40002);
                    Row::new(
                        "strip, CHECKSUM_COMPLETE",
                        TcIn,
                        inbound(dsr_tcp(client2, pod, vip, TCP_SYN)),
                        Ok,
                    )
                    .complete()
                    .out(inbound(tcp_packet(client2, pod, TCP_SYN, b"")))
                    .counter(Counter::NsDsrReceived, 1)
                }),
                // UDP through a NodePort of node A (a cluster node's address).
                maps(move |c| {
                    let upod = sa(n.remote_pod, 5353);
                    c.f.backend(6, upod, IPPROTO_UDP, true);
                    let np_b = sa(n.node_b, 30053);
                    c.f.frontend(
                        np_b,
                        IPPROTO_UDP,
                        scope::EXTERNAL,
                        svc_flags::NODE_PORT,
                        REV_NODEPORT,
                        &[6],
                    );
                    c.f.member(n.family, REV_NODEPORT, 6);
                    c.f.cluster_node(n.node);
                }),
                row(move |_| {
                    let upod = sa(n.remote_pod, 5353);
                    let np_a = sa(n.node, 30053);
                    Row::new(
                        "UDP stripped",
                        TcIn,
                        inbound(dsr_udp(client, upod, np_a, b"q")),
                        Ok,
                    )
                    .out(inbound(udp_packet(client, upod, b"q")))
                }),
                row(move |_| {
                    let upod = sa(n.remote_pod, 5353);
                    let np_a = sa(n.node, 30053);
                    Row::new(
                        "the UDP answer from A's NodePort",
                        TcOut,
                        outbound(udp_packet(upod, client, b"a")),
                        Ok,
                    )
                    .out(outbound(udp_packet(np_a, client, b"a")))
                    .counter(Counter::NsDsrReceived, 1)
                }),
            ]
        },
    },
    Scenario {
        desc: "DSR UDP on the backend node refreshes one entry and translates the pod's errors",
        families: BOTH,
        targets: TC,
        netns: pods_behind_p0,
        fixture: |f, n| {
            node_b(f, n);
            f.backend(4, sa(n.remote_pod, 5353), IPPROTO_UDP, true);
            let ext = sa(n.external_ip, 53);
            f.frontend(
                ext,
                IPPROTO_UDP,
                scope::EXTERNAL,
                svc_flags::EXTERNAL_IP,
                REV_LB,
                &[4],
            );
            f.member(n.family, REV_LB, 4);
        },
        steps: |n| {
            let ext = sa(n.external_ip, 53);
            let pod = sa(n.remote_pod, 5353);
            let client = sa(n.client, 5300);
            let mut steps: Vec<Step> = (0..2)
                .map(|i| {
                    row(move |_| {
                        let r = Row::new(
                            "a datagram without the option",
                            TcIn,
                            inbound(dsr_udp(client, pod, ext, b"anybody?")),
                            Ok,
                        )
                        .out(inbound(udp_packet(client, pod, b"anybody?")));
                        if i == 0 {
                            return r;
                        }
                        r.ct(vec![(
                            ct_key(pod, client, IPPROTO_UDP, ct_dir::REPLY),
                            ct_val(ext, client, 0, REV_LB, ct_flags::DSR | ct_flags::LOCAL, 0),
                        )])
                        .counter(Counter::NsDsrReceived, 2)
                    })
                })
                .collect();
            steps.push(row(move |_| {
                Row::new(
                    "the answer leaves from the frontend",
                    TcOut,
                    outbound(udp_packet(pod, client, b"yes")),
                    Ok,
                )
                .out(outbound(udp_packet(ext, client, b"yes")))
            }));
            // The pod's port unreachable quotes the datagram as it got it (no option): the
            // client gets it from the frontend, quoting what it sent, as for a local backend.
            steps.push(row(move |_| {
                let pu = IcmpErr::PortUnreachable;
                let delivered = udp_packet(client, pod, b"anybody?");
                let sent = udp_packet(client, ext, b"anybody?");
                let err = icmp_error(n.remote_pod, n.client, pu, &delivered, 0x77);
                Row::new("the pod's port unreachable", TcOut, outbound(err), Ok)
                    .out(outbound(icmp_error(
                        n.external_ip,
                        n.client,
                        pu,
                        &sent,
                        0x77,
                    )))
                    .counter(Counter::NsIcmpTranslated, 1)
            }));
            steps
        },
    },
    Scenario {
        desc: "a DSR option not for this node passes untouched",
        families: V4,
        targets: TC,
        netns: |n| {
            pods_behind_p0(n);
            // Another node's pods, behind a gateway.
            ip_cmds(&[
                &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                &["link", "set", "d1", "up"],
                &["link", "set", "d0", "up"],
                &["addr", "add", "100.64.0.1/24", "dev", "d0"],
                &[
                    "route",
                    "add",
                    "10.244.2.0/24",
                    "via",
                    "100.64.0.2",
                    "dev",
                    "d0",
                ],
            ]);
        },
        fixture: |f, n| {
            node_b(f, n);
            f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, true);
            f.backend(5, sa(n.node_b, 9090), IPPROTO_TCP, true);
            let vip = sa(n.lb_vip, 80);
            f.frontend(
                vip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::LOAD_BALANCER,
                REV_LB,
                &[4, 5],
            );
            f.member(n.family, REV_LB, 4);
            f.member(n.family, REV_LB, 5);
            let cip = sa(n.cluster_ip, 80);
            f.frontend(
                cip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::CLUSTER_IP,
                REV_LB + 1,
                &[4],
            );
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let cip = sa(n.cluster_ip, 80);
            let pod = sa(n.remote_pod, 8080);
            let host = sa(n.node_b, 9090);
            let elsewhere = sa("10.244.2.9".parse().unwrap(), 8080);
            let nowhere = sa("10.250.0.9".parse().unwrap(), 8080);
            let client = sa(n.client, 40000);
            let client2 = sa(n.client2, 40000);
            let with = move |dst: SocketAddr, options: &[u8]| {
                inbound(syn_with_options(client, dst, options))
            };
            let mut nops_first = vec![1u8, 1, 1, 1];
            nops_first.extend_from_slice(&dsr_option(vip));
            let mut wrong_len = dsr_option(vip);
            wrong_len[1] = 6;
            let cases = [
                (
                    "to another node's pod (via a gateway)",
                    with(elsewhere, &dsr_option(vip)),
                ),
                (
                    "to an address without a route",
                    with(nowhere, &dsr_option(vip)),
                ),
                (
                    "naming a frontend this node does not have",
                    with(pod, &dsr_option(sa("203.0.113.77".parse().unwrap(), 80))),
                ),
                (
                    "naming another port of the frontend",
                    with(pod, &dsr_option(sa(n.lb_vip, 81))),
                ),
                ("naming a ClusterIP", with(pod, &dsr_option(cip))),
                ("another option (NOPs)", with(pod, &[1, 1, 1, 1])),
                ("the option not first", with(pod, &nops_first)),
                ("a wrong length", with(pod, &wrong_len)),
            ];
            let count = cases.len();
            let mut steps: Vec<Step> = cases
                .into_iter()
                .enumerate()
                .map(|(i, (what, frame))| {
                    row(move |_| {
                        let r = Row::new(what, TcIn, frame.clone(), Pass).unchanged();
                        if i + 1 < count {
                            return r;
                        }
                        // The ones carrying ferry's option (the first five) are counted.
                        r.ct_len(0)
                            .counter(Counter::NsDsrReceived, 0)
                            .counter(Counter::NsDsrIgnored, 5)
                    })
                })
                .collect();
            // The positive controls of the same setup.
            steps.push(row(move |_| {
                Row::new(
                    "the frontend, to the local pod",
                    TcIn,
                    with(pod, &dsr_option(vip)),
                    Ok,
                )
                .out(inbound(tcp_packet(client, pod, TCP_SYN, b"")))
            }));
            // A NodePort names node A's address (a cluster node's): B knows the port on its
            // own address.
            steps.push(maps(move |c| {
                c.f.cluster_node(n.node);
                let np_b = sa(n.node_b, 30080);
                c.f.frontend(
                    np_b,
                    IPPROTO_TCP,
                    scope::EXTERNAL,
                    svc_flags::NODE_PORT,
                    REV_NODEPORT,
                    &[4],
                );
                c.f.member(n.family, REV_NODEPORT, 4);
            }));
            steps.push(row(move |_| {
                let np_a = sa(n.node, 30080);
                Row::new(
                    "a NodePort of node A",
                    TcIn,
                    inbound(dsr_tcp(client2, pod, np_a, TCP_SYN)),
                    Ok,
                )
                .out(inbound(tcp_packet(client2, pod, TCP_SYN, b"")))
            }));
            steps.push(row(move |_| {
                let np_a = sa(n.node, 30080);
                let reply = |fe: SocketAddr, cl: SocketAddr, rev: u16| {
                    ct_val(fe, cl, 0, rev, ct_flags::DSR | ct_flags::LOCAL, TCP_SYN)
                };
                Row::new(
                    "a hostNetwork backend: the node's own address",
                    TcIn,
                    inbound(dsr_tcp(client, host, vip, TCP_SYN)),
                    Ok,
                )
                .out(inbound(tcp_packet(client, host, TCP_SYN, b"")))
                .ct(vec![
                    (
                        ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                        reply(vip, client, REV_LB),
                    ),
                    (
                        ct_key(pod, client2, IPPROTO_TCP, ct_dir::REPLY),
                        reply(np_a, client2, REV_NODEPORT),
                    ),
                    (
                        ct_key(host, client, IPPROTO_TCP, ct_dir::REPLY),
                        reply(vip, client, REV_LB),
                    ),
                ])
                .counter(Counter::NsDsrReceived, 3)
            }));
            steps
        },
    },
    Scenario {
        desc: "DSR is routed through the FIB and falls back when the option does not fit (IPv4)",
        families: V4,
        targets: TC,
        // The route to the backends: a next hop with a resolved neighbour, MTU 1000.
        netns: |n| next_hop(n, Some("1000"), &["10.244.1.0/24"]),
        fixture: dsr_udp_53,
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.remote_pod, 5353);
            let client = sa(n.client, 5300);
            let client2 = sa(n.client2, 5300);
            // 20 + 8 + payload: 992 bytes grow to exactly the MTU, 993 would not fit.
            let fits = [0x66u8; 964];
            let too_big = [0x67u8; 965];
            let tvip = sa(n.lb_vip, 80);
            let tpod = sa(n.remote_pod, 8080);
            vec![
                row(move |_| {
                    let want = routed(dsr_udp(client, pod, vip, &fits));
                    assert_eq!(want.len(), ETH_HLEN + 1000);
                    Row::new(
                        "a datagram that fits with the option: routed, TTL 63",
                        TcIn,
                        inbound(udp_packet(client, vip, &fits)),
                        Redirect,
                    )
                    .out(want)
                    .counter(Counter::NsDsrFallback, 0)
                }),
                row(move |_| {
                    Row::new(
                        "the same flow's bigger datagram goes without the option (B knows the flow)",
                        TcIn,
                        inbound(udp_packet(client, vip, &too_big)),
                        Redirect,
                    )
                    .out(routed(udp_packet(client, pod, &too_big)))
                    .counter(Counter::NsDsrFallback, 1)
                }),
                row(move |c| {
                    let snat = c.snat();
                    Row::new(
                        "a new flow whose first datagram is too big: SNAT for the whole flow",
                        TcIn,
                        inbound(udp_packet(client2, vip, &too_big)),
                        Redirect,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out(routed(udp_packet(snat, pod, &too_big)))
                    .counter(Counter::NsDsrFallback, 1)
                    .check(move |f| {
                        let ct = f.ct();
                        let fwd = ct[&ct_key(client2, vip, IPPROTO_UDP, ct_dir::FORWARD)];
                        assert_eq!(fwd.flags, ct_flags::SNAT);
                        assert!(ct.contains_key(&ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY)));
                    })
                }),
                row(move |c| {
                    Row::new(
                        "its later small datagrams stay SNATed",
                        TcIn,
                        inbound(udp_packet(client2, vip, b"small")),
                        Redirect,
                    )
                    .out(routed(udp_packet(c.snat(), pod, b"small")))
                }),
                // TCP: the SYN is routed with the option.
                maps(move |c| {
                    c.f.backend(5, tpod, IPPROTO_TCP, false);
                    c.f.frontend(
                        tvip,
                        IPPROTO_TCP,
                        scope::EXTERNAL,
                        svc_flags::LOAD_BALANCER,
                        REV_LB + 1,
                        &[5],
                    );
                }),
                row(move |_| {
                    let tclient = sa(n.client, 40000);
                    Row::new(
                        "a SYN routed with the option",
                        TcIn,
                        inbound(tcp_packet(tclient, tvip, TCP_SYN, b"")),
                        Redirect,
                    )
                    .out(routed(dsr_tcp(tclient, tpod, tvip, TCP_SYN)))
                }),
                row(move |_| {
                    // A full-size segment that starts a flow (this node lost it): DSR all the
                    // same, without the option; the backend's node may still know the flow.
                    let tclient2 = sa(n.client2, 40000);
                    let seg = [0x68u8; 953]; // 20 + 20 + 953 + 8 > 1000
                    Row::new(
                        "a mid-flow segment without the option",
                        TcIn,
                        inbound(tcp_packet(tclient2, tvip, TCP_ACK, &seg)),
                        Redirect,
                    )
                    .out(routed(tcp_packet(tclient2, tpod, TCP_ACK, &seg)))
                    .check(move |f| {
                        let fwd = f.ct()[&ct_key(tclient2, tvip, IPPROTO_TCP, ct_dir::FORWARD)];
                        assert_eq!(fwd.flags, ct_flags::DSR);
                    })
                    .counter(Counter::NsDsrFallback, 1)
                    .counter(Counter::NsFibPassed, 0)
                }),
            ]
        },
    },
    Scenario {
        desc: "DSR is routed through the FIB and falls back to SNAT when the header does not fit \
               (IPv6)",
        families: V6,
        targets: TC,
        // The route to the backends: a next hop with a resolved neighbour, MTU 1280.
        netns: |n| next_hop(n, Some("1280"), &["fd00:244:1::/64"]),
        fixture: dsr_udp_53,
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.remote_pod, 5353);
            let client = sa(n.client, 40000);
            // 40 + 24 + 8 + payload: 1208 bytes of payload grow to exactly the MTU.
            let fits = [0x55u8; 1208];
            let big = [0x55u8; 1209];
            vec![
                row(move |_| {
                    Row::new(
                        "a DSR datagram of exactly the MTU",
                        TcIn,
                        inbound(udp_packet(client, vip, &fits)),
                        Redirect,
                    )
                    .complete()
                    .out(routed(dsr_udp(client, pod, vip, &fits)))
                    .counter(Counter::NsDsrFallback, 0)
                }),
                row(move |c| {
                    // The header would not fit, so the flow is masqueraded for its whole life
                    // (what IPv4 does; no Packet Too Big to the client).
                    let client2 = sa(n.client, 40001);
                    Row::new(
                        "one byte more on a new flow: SNAT",
                        TcIn,
                        inbound(udp_packet(client2, vip, &big)),
                        Redirect,
                    )
                    .learn(Learn::Snat)
                    .out(routed(udp_packet(c.snat(), pod, &big)))
                    .counter(Counter::NsDsrFallback, 1)
                    .check(|f| {
                        let flags: Vec<u8> = f.ct().values().map(|v| v.flags).collect();
                        let snat = flags.iter().filter(|&&fl| fl & ct_flags::SNAT != 0).count();
                        assert_eq!(snat, 2, "{flags:?}");
                    })
                }),
                row(move |_| {
                    Row::new(
                        "a later datagram of the DSR flow that no longer fits: DNAT only",
                        TcIn,
                        inbound(udp_packet(client, vip, &big)),
                        Redirect,
                    )
                    .out(routed(udp_packet(client, pod, &big)))
                    .counter(Counter::NsDsrFallback, 1)
                }),
            ]
        },
    },
];

fn dsr_udp_53(f: &mut Fixture, n: &'static Net) {
    dsr_mode(f);
    f.backend(4, sa(n.remote_pod, 5353), IPPROTO_UDP, false);
    let vip = sa(n.lb_vip, 53);
    f.frontend(
        vip,
        IPPROTO_UDP,
        scope::EXTERNAL,
        svc_flags::LOAD_BALANCER,
        REV_LB,
        &[4],
    );
}

/// A UDP query to the DSR frontend on port 53 of the first scenario: the header on every
/// datagram.
fn udp_with_header(n: &'static Net, client: SocketAddr, last: bool) -> Row {
    let uvip = sa(n.lb_vip, 53);
    let upod = sa(n.remote_pod, 5353);
    let r = Row::new(
        "a UDP datagram with the option",
        TcIn,
        inbound(udp_packet(client, uvip, b"query")),
        Ok,
    )
    .out(inbound(dsr_udp(client, upod, uvip, b"query")));
    if last {
        r.counter(Counter::NsDsrFallback, 0)
    } else {
        r
    }
}

/// The DSR SYN's option / header spelled out byte for byte, and its TCP checksum from scratch
/// over the client -> backend pseudo-header.
fn spelled_out(n: &Net, out: &[u8]) {
    let ip = &out[ETH_HLEN..];
    match n.family {
        Family::V4 => {
            // IHL 7, total length 20 + 8 + 20, the option right after the fixed header.
            assert_eq!(ip[0], 0x47);
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 48);
            assert_eq!(&ip[20..28], &[0x9a, 8, 0, 80, 203, 0, 113, 10]);
            let seg = &ip[28..];
            let ps = pseudo_sum(ip4(n.client), ip4(n.remote_pod), IPPROTO_TCP, seg.len());
            assert_eq!(fold(sum(ps, seg)), 0xffff);
        }
        Family::V6 => {
            // Next header 60, payload length 24 + 20, the header right after the fixed one.
            assert_eq!(ip[6], NEXTHDR_DEST);
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 44);
            let mut h = vec![IPPROTO_TCP, 2, 0x1b, 20];
            h.extend_from_slice(&ip6(n.lb_vip).octets());
            h.extend_from_slice(&[0, 80, 0, 0]);
            assert_eq!(&ip[40..64], &h[..]);
            let seg = &ip[64..];
            let ps = pseudo_sum_v6(ip6(n.client), ip6(n.remote_pod), IPPROTO_TCP, seg.len());
            assert_eq!(fold(sum(ps, seg)), 0xffff);
        }
    }
}

table_tests!(TABLE, dsr_v4: V4, dsr_v6: V6);
