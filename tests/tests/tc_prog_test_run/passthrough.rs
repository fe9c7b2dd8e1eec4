//! What is not an exposed frontend's passes every program untouched: ClusterIPs (served at the
//! socket layer), ports with no frontend, ARP, neighbor discovery, echo, later fragments,
//! malformed headers.

use super::*;

/// A node device's packet to a ClusterIP (only pods' are translated per packet: pod.rs).
const CLUSTER_IP_CASE: &str = "ClusterIP on the device";

pub static TABLE: &[Scenario] = &[Scenario {
    desc: "what is not an exposed frontend passes untouched",
    families: BOTH,
    targets: TC,
    netns: no_netns,
    fixture: |f, n| {
        f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
        if is_v6(n) {
            let vip = sa(n.lb_vip, 80);
            f.frontend(
                vip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::LOAD_BALANCER,
                REV_LB,
                &[1],
            );
        }
        // A ClusterIP is served at the socket layer, and per packet only for pods (pod.rs):
        // never on the node's devices.
        let cip = sa(n.cluster_ip, 80);
        f.frontend(
            cip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            9,
            &[1],
        );
        if is_v6(n) {
            f.cluster_node(n.node);
        }
    },
    steps: |n| {
        let client1 = sa(n.client, 1);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            (
                CLUSTER_IP_CASE,
                inbound(tcp_packet(client1, sa(n.cluster_ip, 80), TCP_SYN, b"")),
            ),
            (
                "no frontend",
                inbound(tcp_packet(client1, sa(n.node, 22), TCP_SYN, b"")),
            ),
            (
                "no frontend, port in the SNAT range",
                inbound(udp_packet(client1, sa(n.node, 62000), b"x")),
            ),
        ];
        match n.family {
            Family::V4 => {
                let mut arp = ethernet([0xff; 6], PEER_MAC, 0x0806, &[0u8; 28]);
                arp.extend_from_slice(&[0u8; 18]);
                let mut later_fragment = tcp_packet(client1, sa(n.lb_vip, 80), TCP_ACK, b"tail");
                later_fragment[6..8].copy_from_slice(&0x00b9u16.to_be_bytes()); // offset 185 * 8
                later_fragment[10] = 0;
                later_fragment[11] = 0;
                let c = ferry_tests::progtest::checksum(0, &later_fragment[..20]);
                later_fragment[10..12].copy_from_slice(&c.to_be_bytes());
                cases.extend([
                    ("ARP", arp),
                    (
                        "IPv6 bytes",
                        ethernet(NODE_MAC, PEER_MAC, 0x86dd, &[0x60u8; 60]),
                    ),
                    ("later fragment", inbound(later_fragment)),
                    (
                        "ICMP echo",
                        inbound(ip_packet(
                            n.client,
                            n.lb_vip,
                            IPPROTO_ICMP,
                            &icmp(8, 0, 1, b"ping"),
                        )),
                    ),
                ]);
            }
            Family::V6 => {
                let link_local: IpAddr = "fe80::1".parse().unwrap();
                let nd = |ty: u8, dst: &str, rest: u32, body: &[u8]| {
                    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
                    let ll = ip6(link_local);
                    let opts = Ip6Opts {
                        hop_limit: 255,
                        ..Ip6Opts::default()
                    };
                    inbound(ipv6(
                        opts,
                        ll,
                        dst,
                        IPPROTO_ICMPV6,
                        &icmp6(ll, dst, ty, 0, rest, body),
                    ))
                };
                // Target address, then a link-layer address option.
                let mut target = ip6(n.node).octets().to_vec();
                target.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 1]);
                let echo = |dst: IpAddr| {
                    let (s, d) = (ip6(n.client), ip6(dst));
                    inbound(ip_packet(
                        n.client,
                        dst,
                        IPPROTO_ICMPV6,
                        &icmp6(s, d, 128, 0, 0x0001_0001, b"ping"),
                    ))
                };
                let vip = sa(n.lb_vip, 80);
                let mut v4_bytes = inbound(tcp_packet(client1, vip, TCP_SYN, b""));
                v4_bytes[ETH_HLEN] = 0x45;
                cases.extend([
                    ("router solicitation", nd(133, "ff02::1", 0, &[])),
                    (
                        "router advertisement",
                        nd(134, "ff02::1", 0x4000_0708, &[0; 8]),
                    ),
                    (
                        "neighbor solicitation",
                        nd(135, "ff02::1:ff00:2", 0, &target),
                    ),
                    (
                        "neighbor advertisement",
                        nd(136, "fe80::1", 0x6000_0000, &target),
                    ),
                    ("echo request to a frontend", echo(n.lb_vip)),
                    ("echo request to the node", echo(n.node)),
                    ("MLDv2 report", nd(143, "ff02::16", 0, &[])),
                    (
                        "UDP without a checksum (invalid in IPv6)",
                        inbound(udp_packet_nocsum(client1, sa(n.lb_vip, 80), b"x")),
                    ),
                    (
                        "ICMPv6 error about no flow",
                        inbound(icmp_error(
                            n.router,
                            n.client,
                            IcmpErr::NoRoute,
                            &tcp_packet(client1, vip, TCP_SYN, b""),
                            0,
                        )),
                    ),
                    ("IPv4 bytes in an IPv6 frame", v4_bytes),
                ]);
            }
        }
        // A pod's packet to a ClusterIP is the per-packet path's (pod.rs).
        let runs: Vec<(&str, Hook, Vec<u8>)> = cases
            .into_iter()
            .flat_map(|(what, frame)| {
                [TcIn, TcOut, TcPod]
                    .into_iter()
                    .filter(move |&h| !(what == CLUSTER_IP_CASE && h == TcPod))
                    .map(move |h| (what, h, frame.clone()))
            })
            .collect();
        let total = runs.len();
        let mut steps = Vec::new();
        for (i, (what, hook, frame)) in runs.into_iter().enumerate() {
            let last = i + 1 == total;
            steps.push(row(move |_| {
                let r = Row::new(what, hook, frame.clone(), Pass).unchanged();
                if !last {
                    return r;
                }
                r.ct_len(0)
                    .counter(Counter::NsNewFlow, 0)
                    .counter(Counter::NsIcmpTranslated, 0)
            }));
        }
        steps
    },
}];

table_tests!(TABLE, passthrough_v4: V4, passthrough_v6: V6);
