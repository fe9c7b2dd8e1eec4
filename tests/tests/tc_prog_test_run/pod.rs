//! The per-packet ClusterIP path (agent-ebpf/src/pod_lb.rs): a pod's packet to a ClusterIP
//! on `ferry_tc_pod` (DNAT, the pod's address kept, POD conntrack entries), the backend's
//! reply on `ferry_tc_pod_out` (the ClusterIP back as its source), what is no pod flow's, a
//! ClusterIP port no Service defines (a port unreachable back to the pod), and hairpin (the
//! pod is its own backend: masqueraded to the FIB's source towards it, routed), and ICMP errors
//! about pod flows (a backend's to the client pod on `ferry_tc_pod_out`, the client pod's about
//! a reply on `ferry_tc_pod`, the quote translated back; hostile ones untouched). Both
//! families, from the same rows.

use super::*;

/// The ClusterIP's rev-NAT id.
const REV_CIP: u16 = 9;

/// The client pod of the rows (10.244.0.9 / fd00:244::9).
fn client_pod(n: &Net) -> SocketAddr {
    match n.family {
        Family::V4 => "10.244.0.9:40000".parse().unwrap(),
        Family::V6 => sa(v6(0xfd00, 0x244, 0, 9), 40000),
    }
}

/// A ClusterIP (port 80/TCP) with `backends`, and the agent's marker of every ClusterIP
/// (port 0, protocol 0).
fn cluster_ip(f: &mut Fixture, n: &Net, backends: &[u32]) {
    f.frontend(
        sa(n.cluster_ip, 80),
        IPPROTO_TCP,
        scope::EXTERNAL,
        svc_flags::CLUSTER_IP,
        REV_CIP,
        backends,
    );
    f.frontend(
        sa(n.cluster_ip, 0),
        0,
        scope::EXTERNAL,
        svc_flags::CLUSTER_IP,
        0,
        &[],
    );
}

/// The hairpin rows' routes: the pods behind `d0` (a resolved gateway), reached with the
/// node's address as the preferred source (held on `lo`), which the masquerade takes.
fn pods_with_node_source(n: &Net) {
    next_hop(n, None, &[]);
    if is_v6(n) {
        ip_cmds(&[
            &["-6", "addr", "add", "fd00:18::2/128", "dev", "lo", "nodad"],
            &[
                "-6",
                "route",
                "add",
                "fd00:244:1::/64",
                "via",
                "fd00:64::2",
                "dev",
                "d0",
                "src",
                "fd00:18::2",
            ],
        ]);
    } else {
        ip_cmds(&[
            &["addr", "add", "172.18.0.2/32", "dev", "lo"],
            &[
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "100.64.0.2",
                "dev",
                "d0",
                "src",
                "172.18.0.2",
            ],
        ]);
    }
}

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "a pod's flow to a ClusterIP, translated per packet",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
            cluster_ip(f, n, &[1]);
        },
        steps: |n| {
            let cip = sa(n.cluster_ip, 80);
            let backend = sa(n.local_pod, 8080);
            let pod = client_pod(n);
            let flags = ct_flags::POD | ct_flags::LOCAL;
            // The IPv6 rows run on CHECKSUM_COMPLETE skbs, the IPv4 ones on plain ones.
            let csum = move |r: Row| if is_v6(n) { r.complete() } else { r };
            vec![
                row(move |_| {
                    csum(Row::new(
                        "a pod's SYN to the ClusterIP: DNAT, its address kept",
                        TcPod,
                        inbound(tcp_packet(pod, cip, TCP_SYN, b"")),
                        Ok,
                    ))
                    .out(inbound(tcp_packet(pod, backend, TCP_SYN, b"")))
                    .ct(vec![
                        (
                            ct_key(pod, cip, IPPROTO_TCP, ct_dir::FORWARD),
                            ct_val(pod, backend, 1, REV_CIP, flags, TCP_SYN),
                        ),
                        (
                            ct_key(backend, pod, IPPROTO_TCP, ct_dir::REPLY),
                            ct_val(cip, pod, 1, REV_CIP, flags, TCP_SYN),
                        ),
                    ])
                    .counter(Counter::PodNewFlow, 1)
                }),
                row(move |_| {
                    csum(Row::new(
                        "the backend's SYN-ACK to the pod leaves from the ClusterIP",
                        TcPodOut,
                        outbound(tcp_packet(backend, pod, TCP_SYN | TCP_ACK, b"")),
                        Ok,
                    ))
                    .out(outbound(tcp_packet(cip, pod, TCP_SYN | TCP_ACK, b"")))
                    .counter(Counter::PodRevNat, 1)
                }),
                row(move |_| {
                    csum(Row::new(
                        "the pod's ACK: tracked, to the same backend",
                        TcPod,
                        inbound(tcp_packet(pod, cip, TCP_ACK, b"hi")),
                        Ok,
                    ))
                    .out(inbound(tcp_packet(pod, backend, TCP_ACK, b"hi")))
                    .counter(Counter::PodTracked, 1)
                    .counter(Counter::PodNewFlow, 0)
                }),
                row(move |_| {
                    Row::new(
                        "a pod's packet to a pod passes",
                        TcPod,
                        inbound(tcp_packet(pod, backend, TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "a packet to a pod of no pod flow passes its device's egress",
                        TcPodOut,
                        outbound(udp_packet(sa(n.client, 53), pod, b"x")),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::PodRevNat, 0)
                }),
                row(move |_| {
                    let syn = inbound(tcp_packet(pod, sa(n.cluster_ip, 81), TCP_SYN, b""));
                    let want = port_unreachable(&syn, n.cluster_ip, pod.ip());
                    Row::new(
                        "a ClusterIP port no Service defines: a port unreachable back to the pod",
                        TcPod,
                        syn,
                        Redirect,
                    )
                    .out(want)
                    .counter(Counter::NsRejected, 1)
                    .counter(Counter::PodNewFlow, 0)
                }),
            ]
        },
    },
    Scenario {
        desc: "hairpin: a pod that is its ClusterIP's backend is masqueraded",
        families: BOTH,
        targets: TC,
        netns: pods_with_node_source,
        fixture: |f, n| {
            f.backend(2, sa(n.remote_pod, 8080), IPPROTO_TCP, true);
            cluster_ip(f, n, &[2]);
        },
        steps: |n| {
            let cip = sa(n.cluster_ip, 80);
            let pod = sa(n.remote_pod, 40000);
            let backend = sa(n.remote_pod, 8080);
            let csum = move |r: Row| if is_v6(n) { r.complete() } else { r };
            vec![
                row(move |c| {
                    csum(Row::new(
                        "the pod's SYN to its own ClusterIP: SNAT to the node's source, routed",
                        TcPod,
                        inbound(tcp_packet(pod, cip, TCP_SYN, b"")),
                        Redirect,
                    ))
                    .learn(Learn::Snat)
                    .out(routed(tcp_packet(c.snat(), backend, TCP_SYN, b"")))
                    .counter(Counter::PodNewFlow, 1)
                }),
                row(move |c| {
                    csum(Row::new(
                        "its answer to the node's address: from the ClusterIP, to the pod",
                        TcPod,
                        inbound(tcp_packet(backend, c.snat(), TCP_SYN | TCP_ACK, b"")),
                        Redirect,
                    ))
                    .out(routed(tcp_packet(cip, pod, TCP_SYN | TCP_ACK, b"")))
                    .counter(Counter::PodNewFlow, 0)
                }),
                row(move |c| {
                    csum(Row::new(
                        "the pod's ACK: tracked, masqueraded alike",
                        TcPod,
                        inbound(tcp_packet(pod, cip, TCP_ACK, b"hi")),
                        Redirect,
                    ))
                    .out(routed(tcp_packet(c.snat(), backend, TCP_ACK, b"hi")))
                    .counter(Counter::PodTracked, 1)
                }),
            ]
        },
    },
    Scenario {
        desc: "the pods' egress looks nothing up until the node made a per-packet flow",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
            cluster_ip(f, n, &[1]);
        },
        steps: |n| {
            let cip = sa(n.cluster_ip, 80);
            let backend = sa(n.local_pod, 8080);
            let pod = client_pod(n);
            let other = sa(pod.ip(), 40001);
            let flags = ct_flags::POD | ct_flags::LOCAL;
            let csum = move |r: Row| if is_v6(n) { r.complete() } else { r };
            let reply = move |to: SocketAddr| outbound(tcp_packet(backend, to, TCP_ACK, b"ok"));
            vec![
                // A pod flow's REPLY entry that no program of this node made (the map is the
                // only witness): the egress program, still off, must not look.
                maps(move |c| {
                    c.f.ct_put(
                        ct_key(backend, other, IPPROTO_TCP, ct_dir::REPLY),
                        ct_val(cip, other, 1, REV_CIP, flags, TCP_ACK),
                    )
                }),
                row(move |_| {
                    Row::new(
                        "before any per-packet flow, a backend's packet to a pod passes unread",
                        TcPodOut,
                        reply(other),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::PodRevNat, 0)
                }),
                row(move |_| {
                    csum(Row::new(
                        "the node's first per-packet flow turns the egress program on",
                        TcPod,
                        inbound(tcp_packet(pod, cip, TCP_SYN, b"")),
                        Ok,
                    ))
                    .out(inbound(tcp_packet(pod, backend, TCP_SYN, b"")))
                    .counter(Counter::PodNewFlow, 1)
                }),
                row(move |_| {
                    csum(Row::new(
                        "then every pod flow's reply is reversed, the older one too",
                        TcPodOut,
                        reply(other),
                        Ok,
                    ))
                    .out(outbound(tcp_packet(cip, other, TCP_ACK, b"ok")))
                    .counter(Counter::PodRevNat, 1)
                }),
                row(move |_| {
                    csum(Row::new("and the new flow's", TcPodOut, reply(pod), Ok))
                        .out(outbound(tcp_packet(cip, pod, TCP_ACK, b"ok")))
                        .counter(Counter::PodRevNat, 1)
                }),
            ]
        },
    },
    Scenario {
        desc: "ICMP errors about a pod's flows are translated on its device",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            // UDP 53 to a local backend that will not listen, TCP 80 to a remote one.
            f.backend(1, sa(n.local_pod, 5353), IPPROTO_UDP, true);
            f.frontend(
                sa(n.cluster_ip, 53),
                IPPROTO_UDP,
                scope::EXTERNAL,
                svc_flags::CLUSTER_IP,
                REV_CIP,
                &[1],
            );
            f.backend(2, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
            cluster_ip(f, n, &[2]);
        },
        steps: pod_icmp_rows,
    },
];

/// The rows of the ICMP scenario: a pod's UDP flow to a local backend and TCP flow to a remote
/// one, then errors about them (and forged ones) on the pod's device, each with the
/// NsIcmpTranslated it moves. Every ICMP row runs on a CHECKSUM_COMPLETE skb.
fn pod_icmp_rows(n: &'static Net) -> Vec<Step> {
    let pod = client_pod(n);
    let cip_dns = sa(n.cluster_ip, 53);
    let backend = sa(n.local_pod, 5353);
    let cip = sa(n.cluster_ip, 80);
    let rbackend = sa(n.remote_pod, 8080);
    let csum = move |r: Row| if is_v6(n) { r.complete() } else { r };
    let sent = udp_packet(pod, cip_dns, b"is anybody there?");
    let delivered = udp_packet(pod, backend, b"is anybody there?");
    let hlen = if is_v6(n) { IPV6_HLEN } else { 20 };
    let pu = IcmpErr::PortUnreachable;
    // An ICMP error row on `hook` that is translated to `out` (or untouched).
    let icmp_row = move |desc: &str, hook: Hook, input: Vec<u8>, out: Option<Vec<u8>>| {
        let (input, out) = match hook {
            TcPod => (inbound(input), out.map(inbound)),
            _ => (outbound(input), out.map(outbound)),
        };
        let r = match out {
            Some(o) => Row::new(desc, hook, input, Ok)
                .out(o)
                .counter(Counter::NsIcmpTranslated, 1),
            None => Row::new(desc, hook, input, Pass)
                .unchanged()
                .counter(Counter::NsIcmpTranslated, 0),
        };
        r.complete()
    };
    // The backend's port unreachable to the pod quoting the first `len` bytes of `quoted`.
    let unreach = move |to: IpAddr, quoted: &[u8], len: usize, id: u16| {
        icmp_error(n.local_pod, to, pu, &quoted[..len.min(quoted.len())], id)
    };
    let mut steps = vec![
        row({
            let (sent, delivered) = (sent.clone(), delivered.clone());
            move |_| {
                csum(Row::new(
                    "a pod's datagram to the ClusterIP: DNAT to the backend",
                    TcPod,
                    inbound(sent.clone()),
                    Ok,
                ))
                .out(inbound(delivered.clone()))
                .counter(Counter::PodNewFlow, 1)
            }
        }),
        // The backend has no socket on the port: Linux quotes the whole (small) datagram.
        // The pod gets it from the ClusterIP, quoting exactly what it sent (UDP checksum
        // included), so its connected socket takes the refusal.
        row({
            let (sent, delivered) = (sent.clone(), delivered.clone());
            move |_| {
                icmp_row(
                    "the backend's port unreachable: from the ClusterIP, quoting it",
                    TcPodOut,
                    unreach(pod.ip(), &delivered, usize::MAX, 0x4242),
                    Some(icmp_error(n.cluster_ip, pod.ip(), pu, &sent, 0x4242)),
                )
            }
        }),
        row({
            let (sent, delivered) = (sent.clone(), delivered.clone());
            move |_| {
                // The shortest quote an error must carry: the IP header and 8 bytes.
                icmp_row(
                    "a quote of the header and 8 bytes",
                    TcPodOut,
                    unreach(pod.ip(), &delivered, hlen + 8, 1),
                    Some(icmp_error(n.cluster_ip, pod.ip(), pu, &sent[..hlen + 8], 1)),
                )
            }
        }),
        row({
            let (sent, delivered) = (sent.clone(), delivered.clone());
            move |_| {
                icmp_row(
                    "a quote of the ports only: translated, no L4 checksum to mend",
                    TcPodOut,
                    unreach(pod.ip(), &delivered, hlen + 4, 2),
                    Some(icmp_error(n.cluster_ip, pod.ip(), pu, &sent[..hlen + 4], 2)),
                )
            }
        }),
    ];
    // Truncated quotes: too short for the ports, or for the quoted IP header itself.
    for (what, len) in [
        ("a quote cut inside the ports: untouched", hlen + 3),
        ("a quote cut inside its IP header: untouched", hlen - 8),
    ] {
        let delivered = delivered.clone();
        steps.push(row(move |_| {
            icmp_row(what, TcPodOut, unreach(pod.ip(), &delivered, len, 3), None)
        }));
    }
    steps.extend([
        row({
            let delivered = delivered.clone();
            move |_| {
                // The flow's packet, but the error goes to another pod.
                icmp_row(
                    "an error about the flow to a pod that is not its client: untouched",
                    TcPodOut,
                    unreach(n.remote_pod2, &delivered, usize::MAX, 4),
                    None,
                )
            }
        }),
        row(move |_| {
            let stranger = udp_packet(sa(pod.ip(), 40001), backend, b"x");
            icmp_row(
                "an error quoting no flow: untouched",
                TcPodOut,
                unreach(pod.ip(), &stranger, usize::MAX, 5),
                None,
            )
        }),
        // The same backend's REPLY entries of a north-south flow to (what looks like) the
        // pod, and of a masqueraded pod flow: not the egress program's.
        maps(move |c| {
            for (port, flags) in [
                (40002, ct_flags::LOCAL),
                (40003, ct_flags::POD | ct_flags::SNAT),
            ] {
                let to = sa(pod.ip(), port);
                c.f.ct_put(
                    ct_key(backend, to, IPPROTO_UDP, ct_dir::REPLY),
                    ct_val(cip_dns, to, 1, REV_CIP, flags, 0),
                );
            }
        }),
        row(move |_| {
            let ns = udp_packet(sa(pod.ip(), 40002), backend, b"x");
            icmp_row(
                "an error quoting a north-south flow: untouched",
                TcPodOut,
                unreach(pod.ip(), &ns, usize::MAX, 6),
                None,
            )
        }),
        row(move |_| {
            let masq = udp_packet(sa(pod.ip(), 40003), backend, b"x");
            icmp_row(
                "an error quoting a masqueraded pod flow: untouched here",
                TcPodOut,
                unreach(pod.ip(), &masq, usize::MAX, 7),
                None,
            )
        }),
        // The other way: the pod has closed its socket when the answer comes, and tells the
        // ClusterIP; the backend must get it quoting its own datagram.
        row(move |_| {
            let reply = udp_packet(cip_dns, pod, b"late answer");
            let from_backend = udp_packet(backend, pod, b"late answer");
            icmp_row(
                "the pod's port unreachable about a reply goes to the backend, quoting it",
                TcPod,
                icmp_error(pod.ip(), n.cluster_ip, pu, &reply, 8),
                Some(icmp_error(pod.ip(), n.local_pod, pu, &from_backend, 8)),
            )
        }),
        // A north-south flow's FORWARD entry: a pod's error quoting its replies is not a pod
        // flow's.
        maps(move |c| {
            let client = sa(pod.ip(), 40004);
            c.f.ct_put(
                ct_key(client, sa(n.lb_vip, 53), IPPROTO_UDP, ct_dir::FORWARD),
                ct_val(client, backend, 1, REV_CIP, ct_flags::LOCAL, 0),
            );
        }),
        row(move |_| {
            let reply = udp_packet(sa(n.lb_vip, 53), sa(pod.ip(), 40004), b"x");
            icmp_row(
                "a pod's error about a north-south flow's reply: untouched",
                TcPod,
                icmp_error(pod.ip(), n.lb_vip, pu, &reply, 9),
                None,
            )
        }),
    ]);
    // TCP to the remote backend: a big segment, then the "too big" and "time exceeded" of
    // routers on the way, quoting as much as an error may (IPv4: 576 bytes in all; IPv6: 1280),
    // which includes the TCP checksum. The routers keep their addresses, the MTU its value.
    let (mtu, payload, quote) = if is_v6(n) {
        (1400, 1300, 1280 - IPV6_HLEN - 8)
    } else {
        (1400, 600, 576 - 20 - 8)
    };
    let payload = vec![0x61u8; payload];
    let sent = tcp_packet(pod, cip, TCP_ACK, &payload);
    let forwarded = tcp_packet(pod, rbackend, TCP_ACK, &payload);
    steps.push(row({
        let (sent, forwarded) = (sent.clone(), forwarded.clone());
        move |_| {
            csum(Row::new(
                "the pod's big segment to the ClusterIP: DNAT to the remote backend",
                TcPod,
                inbound(sent.clone()),
                Ok,
            ))
            .out(inbound(forwarded.clone()))
        }
    }));
    for (what, from, err) in [
        (
            "the node's own too big (as the pod's router): the quote translated, MTU kept",
            n.local_router,
            IcmpErr::TooBig(mtu),
        ),
        (
            "a router's time exceeded: the router's address kept",
            n.router,
            IcmpErr::TimeExceeded,
        ),
    ] {
        let (sent, forwarded) = (sent.clone(), forwarded.clone());
        steps.push(row(move |_| {
            icmp_row(
                what,
                TcPodOut,
                icmp_error(from, pod.ip(), err, &forwarded[..quote], 10),
                Some(icmp_error(from, pod.ip(), err, &sent[..quote], 10)),
            )
        }));
    }
    steps
}

table_tests!(TABLE, pod_v4: V4, pod_v6: V6);
