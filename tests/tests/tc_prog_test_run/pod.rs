//! The per-packet ClusterIP path (agent-ebpf/src/pod_lb.rs): a pod's packet to a ClusterIP
//! on `ferry_tc_pod` (DNAT, the pod's address kept, POD conntrack entries), the backend's
//! reply on `ferry_tc_pod_out` (the ClusterIP back as its source), what is no pod flow's, a
//! ClusterIP port no Service defines (a port unreachable back to the pod), and hairpin (the
//! pod is its own backend: masqueraded to the FIB's source towards it, routed). Both
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
];

table_tests!(TABLE, pod_v4: V4, pod_v6: V6);
