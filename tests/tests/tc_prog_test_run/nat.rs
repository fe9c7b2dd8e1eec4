//! Translation of flows to frontends: DNAT keeping the client (eTP Local), DNAT + SNAT
//! (NodePorts, masquerade to local backends), conntrack, backend choice (flow hash, Maglev,
//! affinity), source ranges, eTP Local drops, SNAT failures, checksum states.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use super::*;

/// A local pod numbered `i` (10.244.0.i, fd00:244::i).
fn local_pod_n(n: &Net, i: u16) -> IpAddr {
    match n.family {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, i as u8)),
        Family::V6 => v6(0xfd00, 0x244, 0, i),
    }
}

/// An LB frontend `vip` of `proto` with `flags` and backends `ids`, rev-NAT `rev`.
fn lb(f: &mut Fixture, vip: SocketAddr, proto: u8, flags: u16, rev: u16, ids: &[u32]) {
    f.frontend(vip, proto, scope::EXTERNAL, flags, rev, ids);
}

fn etp_local_tcp_80(f: &mut Fixture, n: &'static Net) {
    f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
    let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
    lb(f, sa(n.lb_vip, 80), IPPROTO_TCP, flags, REV_LB, &[1]);
}

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "eTP Local LB, local backend: DNAT keeps the client, the reply leaves from the \
               frontend, a finished flow is forgotten",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: etp_local_tcp_80,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40000);
            let get = b"GET / HTTP/1.1\r\n\r\n";
            vec![
                row(move |_| {
                    Row::new(
                        "SYN after DNAT",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, pod, TCP_SYN, b"")))
                    .ct(vec![
                        (
                            ct_key(client, vip, IPPROTO_TCP, ct_dir::FORWARD),
                            ct_val(client, pod, 1, REV_LB, ct_flags::LOCAL, TCP_SYN),
                        ),
                        (
                            ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                            ct_val(vip, client, 1, REV_LB, ct_flags::LOCAL, TCP_SYN),
                        ),
                    ])
                    .counter(Counter::NsNewFlow, 1)
                }),
                row(move |_| {
                    Row::new(
                        "the backend's SYN-ACK leaves from the VIP",
                        TcOut,
                        outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b"")),
                        Ok,
                    )
                    .out(outbound(tcp_packet(vip, client, TCP_SYN | TCP_ACK, b"")))
                    .counter(Counter::NsTracked, 1)
                }),
                row(move |_| {
                    Row::new(
                        "the next segment hits conntrack: same translation, no new flow",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_ACK, get)),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, pod, TCP_ACK, get)))
                    .counter(Counter::NsNewFlow, 0)
                    .counter(Counter::NsTracked, 1)
                    .ct_len(2)
                }),
                row(move |_| {
                    Row::new(
                        "not the flow's: passes untouched on egress",
                        TcOut,
                        outbound(tcp_packet(sa(n.local_pod, 8081), client, TCP_ACK, b"")),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "the flow ends",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_FIN | TCP_ACK, b"")),
                        Ok,
                    )
                }),
                row(move |_| {
                    Row::new(
                        "the same client port straight to the pod: not rewritten, the finished \
                         flow forgotten",
                        TcIn,
                        inbound(tcp_packet(client, pod, TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                    .ct_len(0)
                }),
            ]
        },
    },
    Scenario {
        desc: "a direct connection reusing a finished flow's port is not rewritten",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: etp_local_tcp_80,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40001);
            vec![
                row(move |_| {
                    Row::new(
                        "SYN",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .ct_len(2)
                }),
                row(move |_| {
                    Row::new(
                        "the client's FIN through the frontend",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_FIN | TCP_ACK, b"")),
                        Ok,
                    )
                }),
                row(move |_| {
                    Row::new(
                        "the same client port straight to the pod",
                        TcIn,
                        inbound(tcp_packet(client, pod, TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                    .ct_len(0)
                }),
                row(move |_| {
                    Row::new(
                        "the pod's answer to it leaves untouched, not as the old frontend",
                        TcOut,
                        outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b"")),
                        Pass,
                    )
                    .unchanged()
                }),
            ]
        },
    },
    Scenario {
        desc: "UDP to a NodePort with a remote backend is SNATed and the answer comes back",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(4, sa(n.remote_pod, 53), IPPROTO_UDP, false);
            let np = sa(n.node, 30053);
            let flags = svc_flags::NODE_PORT;
            f.frontend(np, IPPROTO_UDP, scope::EXTERNAL, flags, REV_NODEPORT, &[4]);
        },
        steps: |n| {
            let np = sa(n.node, 30053);
            let pod = sa(n.remote_pod, 53);
            let client = sa(n.client, 5353);
            vec![
                row(move |c| {
                    let snat = c.snat();
                    // No route in the namespace: handed to the stack after translation.
                    Row::new(
                        "query after DNAT+SNAT",
                        TcIn,
                        inbound(udp_packet(client, np, b"query")),
                        Ok,
                    )
                    .learn(Learn::Snat)
                    .counter(Counter::NsFibPassed, 1)
                    .out(inbound(udp_packet(snat, pod, b"query")))
                    .ct(vec![
                        (
                            ct_key(client, np, IPPROTO_UDP, ct_dir::FORWARD),
                            ct_val(snat, pod, 4, REV_NODEPORT, ct_flags::SNAT, 0),
                        ),
                        (
                            ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY),
                            ct_val(np, client, 4, REV_NODEPORT, ct_flags::SNAT, 0),
                        ),
                    ])
                }),
                row(move |c| {
                    Row::new(
                        "the answer at the SNAT port: to the client, from the NodePort",
                        TcIn,
                        inbound(udp_packet(pod, c.snat(), b"answer")),
                        Ok,
                    )
                    .out(inbound(udp_packet(np, client, b"answer")))
                }),
                row(move |c| {
                    Row::new(
                        "the same flow again: the same port, no new flow",
                        TcIn,
                        inbound(udp_packet(client, np, b"query")),
                        Ok,
                    )
                    .out(inbound(udp_packet(c.snat(), pod, b"query")))
                    .counter(Counter::NsNewFlow, 1)
                    .counter(Counter::NsTracked, 2)
                    .ct_len(2)
                }),
                row(move |_| {
                    let client2 = sa(n.client2, 62000);
                    Row::new(
                        "a client port inside the SNAT range is kept when free",
                        TcIn,
                        inbound(udp_packet(client2, np, b"q2")),
                        Ok,
                    )
                    .out(inbound(udp_packet(sa(n.node, 62000), pod, b"q2")))
                    .ct_len(4)
                }),
            ]
        },
    },
    Scenario {
        desc: "TCP to a NodePort is DNATed and SNATed and the reply comes back",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
            let np = sa(n.node, 30080);
            let flags = svc_flags::NODE_PORT;
            f.frontend(np, IPPROTO_TCP, scope::EXTERNAL, flags, REV_NODEPORT, &[4]);
        },
        steps: |n| {
            let np = sa(n.node, 30080);
            let pod = sa(n.remote_pod, 8080);
            let client = sa(n.client, 40000);
            let get = b"GET / HTTP/1.1\r\n\r\n";
            vec![
                row(move |c| {
                    let snat = c.snat();
                    Row::new(
                        "SYN after DNAT+SNAT",
                        TcIn,
                        inbound(tcp_packet(client, np, TCP_SYN, b"")),
                        Ok,
                    )
                    .learn(Learn::Snat)
                    .counter(Counter::NsFibPassed, 1)
                    .out(inbound(tcp_packet(snat, pod, TCP_SYN, b"")))
                    .ct(vec![
                        (
                            ct_key(client, np, IPPROTO_TCP, ct_dir::FORWARD),
                            ct_val(snat, pod, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                        ),
                        (
                            ct_key(pod, snat, IPPROTO_TCP, ct_dir::REPLY),
                            ct_val(np, client, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                        ),
                    ])
                    .counter(Counter::NsNewFlow, 1)
                }),
                row(move |c| {
                    Row::new(
                        "the remote backend's SYN-ACK: to the client, from the NodePort",
                        TcIn,
                        inbound(tcp_packet(pod, c.snat(), TCP_SYN | TCP_ACK, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(
                        np,
                        client,
                        TCP_SYN | TCP_ACK,
                        b"",
                    )))
                }),
                row(move |c| {
                    Row::new(
                        "the next segment: the same translation, no new flow",
                        TcIn,
                        inbound(tcp_packet(client, np, TCP_ACK, get)),
                        Ok,
                    )
                    .out(inbound(tcp_packet(c.snat(), pod, TCP_ACK, get)))
                    .counter(Counter::NsNewFlow, 0)
                    .counter(Counter::NsTracked, 2)
                    .ct_len(2)
                }),
                row(move |_| {
                    let client2 = sa(n.client2, 62000);
                    Row::new(
                        "a client port inside the SNAT range is kept when free",
                        TcIn,
                        inbound(tcp_packet(client2, np, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(sa(n.node, 62000), pod, TCP_SYN, b"")))
                    .ct_len(4)
                }),
            ]
        },
    },
    Scenario {
        desc: "a local backend is masqueraded (eTP Cluster) and answers through the pod program",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 1053), IPPROTO_UDP, true);
            // externalTrafficPolicy Cluster: kube-proxy masquerades even to a local endpoint.
            let flags = svc_flags::LOAD_BALANCER;
            lb(f, sa(n.lb_vip, 53), IPPROTO_UDP, flags, REV_LB, &[1]);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.local_pod, 1053);
            let client = sa(n.client, 5353);
            let client2 = sa(n.client2, 62000);
            let masq = ct_flags::SNAT | ct_flags::LOCAL;
            vec![
                row(move |c| {
                    let snat = c.snat();
                    Row::new(
                        "query after DNAT and masquerade",
                        TcIn,
                        inbound(udp_packet(client, vip, b"query")),
                        Ok,
                    )
                    .learn(Learn::Snat)
                    .out(inbound(udp_packet(snat, pod, b"query")))
                    .ct(vec![
                        (
                            ct_key(client, vip, IPPROTO_UDP, ct_dir::FORWARD),
                            ct_val(snat, pod, 1, REV_LB, masq, 0),
                        ),
                        (
                            ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY),
                            ct_val(vip, client, 1, REV_LB, masq, 0),
                        ),
                    ])
                }),
                row(move |c| {
                    Row::new(
                        "the pod answers the node address: to the client, from the VIP",
                        TcPod,
                        inbound(udp_packet(pod, c.snat(), b"answer")),
                        Ok,
                    )
                    .out(inbound(udp_packet(vip, client, b"answer")))
                    .counter(Counter::NsTracked, 1)
                }),
                row(move |c| {
                    let delivered = udp_packet(c.snat(), pod, b"query");
                    let query = udp_packet(client, vip, b"query");
                    let err =
                        icmp_error(n.local_pod, n.node, IcmpErr::PortUnreachable, &delivered, 7);
                    Row::new(
                        "its port unreachable reaches the client quoting what it sent",
                        TcPod,
                        inbound(err),
                        Ok,
                    )
                    .out(inbound(icmp_error(
                        n.lb_vip,
                        n.client,
                        IcmpErr::PortUnreachable,
                        &query,
                        7,
                    )))
                    .counter(Counter::NsIcmpTranslated, 1)
                }),
                maps(move |c| {
                    let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
                    lb(
                        &mut c.f,
                        sa(n.lb_vip, 54),
                        IPPROTO_UDP,
                        flags,
                        REV_LB + 1,
                        &[1],
                    );
                }),
                row(move |_| {
                    Row::new(
                        "eTP Local keeps the client, even on a port inside the SNAT range",
                        TcIn,
                        inbound(udp_packet(client2, sa(n.lb_vip, 54), b"q")),
                        Ok,
                    )
                    .out(inbound(udp_packet(client2, pod, b"q")))
                }),
                row(move |_| {
                    Row::new(
                        "a pod to the client's port (no flow of ours owns it) passes",
                        TcPod,
                        inbound(udp_packet(pod, client, b"direct")),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "a kept-client flow's reply passes the pod device (the node device \
                         translates it)",
                        TcPod,
                        inbound(udp_packet(pod, client2, b"kept-client reply")),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |c| {
                    Row::new(
                        "a pod to a port of the node that is no flow's passes",
                        TcPod,
                        inbound(udp_packet(
                            sa(n.local_pod, 9),
                            c.snat(),
                            b"not the flow's port",
                        )),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsTracked, 0)
                }),
                maps(|c| dsr_mode(&mut c.f)),
                row(move |_| {
                    let client3 = sa(n.client2, 40003);
                    Row::new(
                        "DSR mode: a local backend keeps the client, eTP Cluster or not",
                        TcIn,
                        inbound(udp_packet(client3, vip, b"q3")),
                        Ok,
                    )
                    .out(inbound(udp_packet(client3, pod, b"q3")))
                }),
            ]
        },
    },
    Scenario {
        desc: "Maglev places the same flow on the same backend",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            for i in 0..3u16 {
                f.backend(
                    i as u32 + 1,
                    sa(local_pod_n(n, 11 + i), 8080),
                    IPPROTO_TCP,
                    true,
                );
            }
            let flags = svc_flags::LOAD_BALANCER | svc_flags::MAGLEV;
            lb(f, sa(n.lb_vip, 80), IPPROTO_TCP, flags, REV_LB, &[1, 2, 3]);
            // A table whose entries reveal the index: backend (i % 3) + 1.
            f.maglev_table(REV_LB, |i| i % 3 + 1);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let expected = move |client: SocketAddr| {
                let h = flow_hash_v4(
                    raw4(client.ip()),
                    raw4(n.lb_vip),
                    port_to_raw(client.port()),
                    port_to_raw(80),
                    IPPROTO_TCP,
                );
                sa(
                    local_pod_n(n, 11 + ((h % MAGLEV_TABLE_SIZE) % 3) as u16),
                    8080,
                )
            };
            let mut seen = BTreeMap::new();
            let mut steps = Vec::new();
            for round in 0..2 {
                for port in 40000..40060u16 {
                    let client = sa(n.client, port);
                    *seen.entry(expected(client)).or_insert(0) += 1;
                    let last = round == 1 && port == 40059;
                    steps.push(row(move |_| {
                        let want = expected(client);
                        let r = Row::new(
                            format!("flow from port {port}, round {round}: the table's backend"),
                            TcIn,
                            inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                            Ok,
                        )
                        .out_check(move |out| {
                            let p = parse_ipv4(out);
                            assert_eq!(sa(IpAddr::V4(p.dst), p.dport), want);
                        });
                        if last {
                            r.counter(Counter::NsNewFlow, 120)
                        } else {
                            r
                        }
                    }));
                }
                // Forget every flow: the choice must not come from conntrack.
                steps.push(maps(|c| c.f.clear_ct()));
            }
            assert_eq!(seen.len(), 3, "all backends used: {seen:?}");
            steps
        },
    },
    Scenario {
        desc: "session affinity keeps a client on its backend",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            for i in 0..4u16 {
                f.backend(
                    i as u32 + 1,
                    sa(local_pod_n(n, 21 + i), 8080),
                    IPPROTO_TCP,
                    true,
                );
            }
            let flags = svc_flags::LOAD_BALANCER | svc_flags::AFFINITY;
            lb(
                f,
                sa(n.lb_vip, 80),
                IPPROTO_TCP,
                flags,
                REV_LB,
                &[1, 2, 3, 4],
            );
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let chosen: Rc<RefCell<Vec<SocketAddr>>> = Rc::default();
            let mut steps = Vec::new();
            for port in 41000..41012u16 {
                let chosen = chosen.clone();
                steps.push(row(move |_| {
                    let chosen = chosen.clone();
                    Row::new(
                        format!("SYN from port {port}"),
                        TcIn,
                        inbound(tcp_packet(sa(n.client, port), vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out_check(move |out| {
                        let p = parse_ipv4(out);
                        chosen.borrow_mut().push(sa(IpAddr::V4(p.dst), p.dport));
                    })
                }));
            }
            steps.push(maps(move |c| {
                let chosen = chosen.borrow();
                assert!(
                    chosen.iter().all(|x| *x == chosen[0]),
                    "one backend for the client: {chosen:?}"
                );
                let id = (0..4u16)
                    .position(|i| sa(local_pod_n(n, 21 + i), 8080) == chosen[0])
                    .unwrap() as u32
                    + 1;
                let aff = c.f.affinity();
                let entry = aff
                    .get(&(raw4(n.client) as u64, REV_LB, affinity_client::IPV4))
                    .expect("affinity entry keyed by the client IPv4");
                assert_eq!(entry.backend_id, id);
                assert_eq!(c.f.counter(Counter::AffinityHit), 11);
            }));
            steps
        },
    },
    Scenario {
        desc: "flows are placed by the IPv6 flow hash",
        families: V6,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            for i in 0..3u16 {
                f.backend(
                    i as u32 + 1,
                    sa(local_pod_n(n, 0x31 + i), 8080),
                    IPPROTO_TCP,
                    true,
                );
            }
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            lb(f, sa(n.lb_vip, 80), IPPROTO_TCP, flags, REV_LB, &[1, 2, 3]);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let mut used = BTreeMap::new();
            let mut steps = Vec::new();
            for port in 40000..40024u16 {
                let client = sa(n.client, port);
                let h = flow_hash_v6(
                    &raw6(n.client),
                    &raw6(n.lb_vip),
                    port_to_raw(port),
                    port_to_raw(80),
                    IPPROTO_TCP,
                );
                let want = sa(local_pod_n(n, 0x31 + (h % 3) as u16), 8080);
                *used.entry(want).or_insert(0) += 1;
                steps.push(row(move |_| {
                    Row::new(
                        format!("port {port}"),
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, want, TCP_SYN, b"")))
                }));
            }
            assert_eq!(used.len(), 3, "every backend serves: {used:?}");
            steps
        },
    },
    Scenario {
        desc: "a flow whose backend is gone moves to a live one",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(local_pod_n(n, 31), 53), IPPROTO_UDP, true);
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            lb(f, sa(n.lb_vip, 53), IPPROTO_UDP, flags, REV_LB, &[1]);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let old = sa(local_pod_n(n, 31), 53);
            let new = sa(local_pod_n(n, 32), 53);
            let client = sa(n.client, 5353);
            vec![
                row(move |_| {
                    Row::new(
                        "first backend",
                        TcIn,
                        inbound(udp_packet(client, vip, b"q")),
                        Ok,
                    )
                    .out(inbound(udp_packet(client, old, b"q")))
                }),
                // The endpoint is replaced (the pod cycled): the UDP "flow" follows.
                maps(move |c| {
                    c.f.backend(2, new, IPPROTO_UDP, true);
                    let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
                    lb(&mut c.f, vip, IPPROTO_UDP, flags, REV_LB, &[2]);
                    c.f.remove_backend(n.family, 1);
                }),
                row(move |_| {
                    Row::new(
                        "live backend",
                        TcIn,
                        inbound(udp_packet(client, vip, b"q")),
                        Ok,
                    )
                    .out(inbound(udp_packet(client, new, b"q")))
                    .ct(vec![
                        (
                            ct_key(client, vip, IPPROTO_UDP, ct_dir::FORWARD),
                            ct_val(client, new, 2, REV_LB, ct_flags::LOCAL, 0),
                        ),
                        (
                            ct_key(new, client, IPPROTO_UDP, ct_dir::REPLY),
                            ct_val(vip, client, 2, REV_LB, ct_flags::LOCAL, 0),
                        ),
                    ])
                }),
            ]
        },
    },
    Scenario {
        desc: "source ranges drop outsiders before any state and admit insiders",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 8443), IPPROTO_TCP, true);
            let mut flags =
                svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES | svc_flags::ETP_LOCAL;
            if is_v6(n) {
                // The IPv6 row checks the admitted client's affinity entry too.
                flags |= svc_flags::AFFINITY;
            }
            lb(f, sa(n.lb_vip, 443), IPPROTO_TCP, flags, REV_LB, &[1]);
            // Another service's range must not admit anyone here.
            match n.family {
                Family::V4 => {
                    f.allow_source(REV_LB, "198.51.100.0".parse().unwrap(), 24);
                    f.allow_source(REV_LB + 1, "203.0.113.0".parse().unwrap(), 24);
                }
                Family::V6 => {
                    f.allow_source(REV_LB, v6(0x2001, 0xdb8, 0x100, 0), 40);
                    f.allow_source(REV_LB + 1, v6(0x2001, 0xdb8, 0x200, 0), 48);
                }
            }
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 443);
            let pod = sa(n.local_pod, 8443);
            let client = sa(n.client, 1234);
            vec![
                row(move |_| {
                    Row::new(
                        "an outsider's SYN: dropped, no state",
                        TcIn,
                        inbound(tcp_packet(sa(n.outsider, 1234), vip, TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsSourceRangeDrop, 1)
                    .ct_len(0)
                    .check(|f| assert!(f.affinity().is_empty()))
                }),
                row(move |_| {
                    let r = Row::new(
                        "an admitted client",
                        TcIn,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Ok,
                    )
                    .out(inbound(tcp_packet(client, pod, TCP_SYN, b"")))
                    .ct_len(2);
                    if !is_v6(n) {
                        return r;
                    }
                    // Its session affinity is keyed on its IPv6 address.
                    r.check(move |f| {
                        let aff = f.affinity();
                        assert_eq!(aff.len(), 1);
                        let (&(id, rev, kind), v) = aff.iter().next().unwrap();
                        assert_eq!(
                            (id, rev, kind, v.backend_id),
                            (
                                affinity_id_v6(&raw6(n.client)),
                                REV_LB,
                                affinity_client::IPV6,
                                1
                            )
                        );
                    })
                }),
            ]
        },
    },
    Scenario {
        desc: "eTP Local without a local endpoint drops",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            let vip = sa(n.lb_vip, 80);
            f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL | svc_flags::TWO_SCOPES;
            // External scope: this node's endpoints (none), flagged as the agent flags a Local
            // policy with endpoints elsewhere; internal: all of them.
            let ext_flags = flags | svc_flags::DROP_NO_LOCAL;
            f.frontend(vip, IPPROTO_TCP, scope::EXTERNAL, ext_flags, REV_LB, &[]);
            f.frontend(vip, IPPROTO_TCP, scope::INTERNAL, flags, REV_LB, &[4]);
        },
        steps: |n| {
            vec![row(move |_| {
                Row::new(
                    "SYN from outside",
                    TcIn,
                    inbound(tcp_packet(
                        sa(n.client, 1234),
                        sa(n.lb_vip, 80),
                        TCP_SYN,
                        b"",
                    )),
                    Shot,
                )
                .counter(Counter::NsNoLocalDrop, 1)
                .counter(Counter::NsRejected, 0)
                .ct_len(0)
            })]
        },
    },
    Scenario {
        desc: "SNAT fails closed without a node address or a free port",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(4, sa(n.remote_pod2, 8080), IPPROTO_TCP, false);
            let np = sa(n.node, 30080);
            f.frontend(
                np,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::NODE_PORT,
                REV_NODEPORT,
                &[4],
            );
            // One SNAT port only.
            f.node_config(NodeConfig {
                snat_port_min: 61000,
                snat_port_max: 61000,
                ..NodeConfig::default()
            });
        },
        steps: |n| {
            let np = sa(n.node, 30080);
            vec![
                row(move |_| {
                    Row::new(
                        "the first flow takes the port",
                        TcIn,
                        inbound(tcp_packet(sa(n.client, 1000), np, TCP_SYN, b"")),
                        Ok,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out_check(|out| assert_eq!(sport(out), 61000))
                }),
                row(move |_| {
                    Row::new(
                        "no port left",
                        TcIn,
                        inbound(tcp_packet(sa(n.client2, 1000), np, TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsNatFailed, 1)
                    .ct_len(2)
                }),
                // No address for the ingress device: nothing to SNAT to.
                maps(move |c| c.f.remove_node_addr(n.family, IFINDEX)),
                row(move |_| {
                    Row::new(
                        "no node address",
                        TcIn,
                        inbound(tcp_packet(sa(n.client, 1001), np, TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsNatFailed, 1)
                    .ct_len(2)
                }),
            ]
        },
    },
    Scenario {
        desc: "checksums stay right for CHECKSUM_COMPLETE skbs and zero UDP checksums (IPv4)",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: checksum_fixture,
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.local_pod, 1053);
            let client = sa(n.client, 5353);
            let client2 = sa(n.client2, 5353);
            let mut steps = checksum_rows(n);
            steps.push(row(move |_| {
                let err = icmp_error(
                    n.client,
                    n.lb_vip,
                    IcmpErr::PortUnreachable,
                    &udp_packet(vip, client, b"r"),
                    5,
                );
                Row::new(
                    "an error about a reply, CHECKSUM_COMPLETE",
                    TcIn,
                    inbound(err),
                    Ok,
                )
                .complete()
                .counter(Counter::NsIcmpTranslated, 1)
            }));
            steps.push(row(move |_| {
                Row::new(
                    "a UDP datagram without a checksum keeps having none",
                    TcIn,
                    inbound(udp_packet_nocsum(client2, vip, b"nocsum")),
                    Ok,
                )
                .out(inbound(udp_packet_nocsum(client2, pod, b"nocsum")))
            }));
            steps
        },
    },
    Scenario {
        desc: "checksums stay right for CHECKSUM_COMPLETE skbs (IPv6)",
        families: V6,
        targets: TC,
        netns: no_netns,
        fixture: checksum_fixture,
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.local_pod, 1053);
            let client = sa(n.client, 5353);
            let rpod = sa(n.remote_pod, 53);
            let mut steps = checksum_rows(n);
            steps.push(row(move |_| {
                Row::new(
                    "egress, CHECKSUM_COMPLETE",
                    TcOut,
                    outbound(udp_packet(pod, client, b"out")),
                    Ok,
                )
                .complete()
                .out(outbound(udp_packet(vip, client, b"out")))
            }));
            steps.push(row(move |_| {
                let err = icmp_error(
                    n.client,
                    n.lb_vip,
                    IcmpErr::PortUnreachable,
                    &udp_packet(vip, client, b"r"),
                    0,
                );
                Row::new(
                    "an error about a reply, CHECKSUM_COMPLETE",
                    TcIn,
                    inbound(err),
                    Ok,
                )
                .complete()
            }));
            steps.push(row(move |c| {
                let err = icmp_error(
                    n.router,
                    n.node,
                    IcmpErr::TooBig(1280),
                    &udp_packet(c.snat(), rpod, b"snat"),
                    0,
                );
                Row::new(
                    "packet too big behind SNAT, CHECKSUM_COMPLETE",
                    TcIn,
                    inbound(err),
                    Ok,
                )
                .complete()
                .counter(Counter::NsIcmpTranslated, 2)
            }));
            // TCP too, with the hop-by-hop header.
            steps.push(maps(move |c| {
                c.f.backend(2, sa(n.local_pod, 8080), IPPROTO_TCP, true);
                let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
                lb(
                    &mut c.f,
                    sa(n.lb_vip, 80),
                    IPPROTO_TCP,
                    flags,
                    REV_LB + 1,
                    &[2],
                );
            }));
            steps.push(row(move |_| {
                let hbh = |src: SocketAddr, dst: SocketAddr| {
                    let mut p = options_header(IPPROTO_TCP, &[5, 2, 0, 0]);
                    p.extend(tcp_segment(src, dst, TCP_SYN, b"x"));
                    inbound(ip_packet(src.ip(), dst.ip(), NEXTHDR_HOP, &p))
                };
                Row::new(
                    "TCP past a hop-by-hop header, CHECKSUM_COMPLETE",
                    TcIn,
                    hbh(client, sa(n.lb_vip, 80)),
                    Ok,
                )
                .complete()
                .out(hbh(client, sa(n.local_pod, 8080)))
            }));
            steps
        },
    },
    Scenario {
        desc: "extension headers before TCP are walked and kept",
        families: V6,
        targets: TC,
        netns: no_netns,
        fixture: etp_local_tcp_80,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40000);
            // Hop-by-hop options (a router alert), then destination options (a PadN), then TCP.
            let with_options = |src: SocketAddr, dst: SocketAddr| {
                let mut p = options_header(NEXTHDR_DEST, &[5, 2, 0, 0]);
                p.extend(options_header(IPPROTO_TCP, &[1, 4, 0, 0, 0, 0]));
                p.extend(tcp_segment(src, dst, TCP_SYN, b""));
                inbound(ip_packet(src.ip(), dst.ip(), NEXTHDR_HOP, &p))
            };
            vec![
                row(move |_| {
                    Row::new(
                        "DNAT past two extension headers",
                        TcIn,
                        with_options(client, vip),
                        Ok,
                    )
                    .out(with_options(client, pod))
                    .ct_len(2)
                }),
                row(move |_| {
                    // A routing header with segments left: not at its final destination.
                    let mut p = routing_header(IPPROTO_TCP, 4, 1, &[ip6(n.remote_pod)]);
                    p.extend(tcp_segment(sa(n.client, 40001), vip, TCP_SYN, b""));
                    Row::new(
                        "a routing header with segments left: not ours",
                        TcIn,
                        inbound(ip_packet(n.client, n.lb_vip, NEXTHDR_ROUTING, &p)),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    let mut deep = Vec::new();
                    for _ in 0..4 {
                        deep.extend(options_header(NEXTHDR_DEST, &[]));
                    }
                    deep.extend(options_header(IPPROTO_TCP, &[]));
                    deep.extend(tcp_segment(sa(n.client, 40002), vip, TCP_SYN, b""));
                    Row::new(
                        "five extension headers: more than ferry walks, passed",
                        TcIn,
                        inbound(ip_packet(n.client, n.lb_vip, NEXTHDR_DEST, &deep)),
                        Pass,
                    )
                    .unchanged()
                    .ct_len(2)
                }),
            ]
        },
    },
    Scenario {
        desc: "a first fragment is translated on its ports and later ones pass",
        families: V6,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 1053), IPPROTO_UDP, true);
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            lb(f, sa(n.lb_vip, 53), IPPROTO_UDP, flags, REV_LB, &[1]);
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.local_pod, 1053);
            let client = sa(n.client, 5353);
            // One datagram of 8 + 1600 bytes in two fragments: 1200 bytes, then the rest.
            let fragments = |src: SocketAddr, dst: SocketAddr| {
                let datagram = udp_datagram(src, dst, &[0x5au8; 1600], true);
                let mut first = fragment_header(IPPROTO_UDP, 0, true, 0xfeed);
                first.extend_from_slice(&datagram[..1200]);
                let mut later = fragment_header(IPPROTO_UDP, 1200 / 8, false, 0xfeed);
                later.extend_from_slice(&datagram[1200..]);
                let packet = |p: &[u8]| inbound(ip_packet(src.ip(), dst.ip(), NEXTHDR_FRAGMENT, p));
                (packet(&first), packet(&later))
            };
            vec![
                row(move |_| {
                    // Its UDP checksum (over the whole datagram) follows the new pseudo-header.
                    Row::new(
                        "the first fragment carries the ports: translated",
                        TcIn,
                        fragments(client, vip).0,
                        Ok,
                    )
                    .out(fragments(client, pod).0)
                    .ct_len(2)
                }),
                row(move |_| {
                    Row::new(
                        "a later fragment has no ports: untouched",
                        TcIn,
                        fragments(client, vip).1,
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsTracked, 0)
                }),
            ]
        },
    },
    Scenario {
        desc: "IPv4: a backend in the backend map whose array slot is still empty (just \
               added): a new flow reads the map",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            etp_local_tcp_80(f, n);
            let mut live: aya::maps::Array<&mut aya::maps::MapData, agent_common::Backend4> =
                aya::maps::Array::try_from(f.map(agent_common::maps::BACKEND_LIVE_V4)).unwrap();
            live.set(1, &agent_common::Backend4::default(), 0).unwrap();
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40100);
            vec![row(move |_| {
                Row::new(
                    "SYN after DNAT to the map's backend",
                    TcIn,
                    inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                    Ok,
                )
                .out(inbound(tcp_packet(client, pod, TCP_SYN, b"")))
                .counter(Counter::NsNewFlow, 1)
                .ct_len(2)
            })]
        },
    },
];

fn checksum_fixture(f: &mut Fixture, n: &'static Net) {
    f.backend(1, sa(n.local_pod, 1053), IPPROTO_UDP, true);
    f.backend(4, sa(n.remote_pod, 53), IPPROTO_UDP, false);
    let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
    lb(f, sa(n.lb_vip, 53), IPPROTO_UDP, flags, REV_LB, &[1]);
    let np = sa(n.node, 30053);
    f.frontend(
        np,
        IPPROTO_UDP,
        scope::EXTERNAL,
        svc_flags::NODE_PORT,
        REV_NODEPORT,
        &[4],
    );
}

/// DNAT, DNAT+SNAT and reverse NAT of CHECKSUM_COMPLETE skbs, as many NICs deliver them: the
/// kernel fails the run if the program leaves skb->csum inconsistent with the bytes.
fn checksum_rows(n: &'static Net) -> Vec<Step> {
    let vip = sa(n.lb_vip, 53);
    let pod = sa(n.local_pod, 1053);
    let np = sa(n.node, 30053);
    let rpod = sa(n.remote_pod, 53);
    let client = sa(n.client, 5353);
    vec![
        row(move |_| {
            Row::new(
                "DNAT, CHECKSUM_COMPLETE",
                TcIn,
                inbound(udp_packet(client, vip, b"dnat")),
                Ok,
            )
            .complete()
            .out(inbound(udp_packet(client, pod, b"dnat")))
        }),
        row(move |c| {
            Row::new(
                "DNAT+SNAT, CHECKSUM_COMPLETE",
                TcIn,
                inbound(udp_packet(client, np, b"snat")),
                Ok,
            )
            .complete()
            .learn(Learn::Snat)
            .out(inbound(udp_packet(c.snat(), rpod, b"snat")))
        }),
        row(move |c| {
            Row::new(
                "reverse NAT, CHECKSUM_COMPLETE",
                TcIn,
                inbound(udp_packet(rpod, c.snat(), b"back")),
                Ok,
            )
            .complete()
            .out(inbound(udp_packet(np, client, b"back")))
        }),
    ]
}

table_tests!(TABLE, nat_v4: V4, nat_v6: V6);
