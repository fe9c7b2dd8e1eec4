//! Translated packets routed through the FIB: redirected to the next hop's device with its
//! MACs and the TTL / hop limit one less; what would expire is the stack's.

use super::*;

pub static TABLE: &[Scenario] = &[Scenario {
    desc: "SNAT to a remote backend is forwarded through the FIB",
    families: BOTH,
    targets: TC,
    // A next hop for pods and clients, with a resolved neighbour, and forwarding on.
    netns: |n| match n.family {
        Family::V4 => next_hop(n, None, &["10.244.1.0/24", "198.51.100.0/24"]),
        Family::V6 => next_hop(n, None, &["fd00:244:1::/64", "2001:db8:100::/64"]),
    },
    fixture: |f, n| {
        f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
        let np = sa(n.node, 30080);
        f.frontend(
            np,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
    },
    steps: |n| {
        let np = sa(n.node, 30080);
        let pod = sa(n.remote_pod, 8080);
        let client = sa(n.client, 40001);
        // The IPv6 rows run on CHECKSUM_COMPLETE skbs, the IPv4 ones on plain ones.
        let csum = move |r: Row| if is_v6(n) { r.complete() } else { r };
        let mut steps = vec![
            row(move |c| {
                csum(Row::new(
                    "SYN routed after DNAT+SNAT",
                    TcIn,
                    inbound(tcp_packet(client, np, TCP_SYN, b"")),
                    Redirect,
                ))
                .learn(if is_v6(n) {
                    Learn::Snat
                } else {
                    Learn::SnatAnyPort
                })
                .out(routed(tcp_packet(c.snat(), pod, TCP_SYN, b"")))
                .counter(Counter::NsFibPassed, 0)
            }),
            row(move |c| {
                csum(Row::new(
                    "the backend's answer routed to the client, from the NodePort",
                    TcIn,
                    inbound(tcp_packet(pod, c.snat(), TCP_SYN | TCP_ACK, b"")),
                    Redirect,
                ))
                .out(routed(tcp_packet(np, client, TCP_SYN | TCP_ACK, b"")))
            }),
        ];
        if is_v6(n) {
            steps.push(row(move |_| {
                let mut last_hop = tcp_packet(client, np, TCP_ACK, b"");
                last_hop[7] = 1;
                Row::new(
                    "a hop limit that would expire here is the stack's to answer",
                    TcIn,
                    inbound(last_hop),
                    Ok,
                )
                .out_check(|out| assert_eq!(parse_ipv6(out).hop_limit, 1))
                .counter(Counter::NsFibPassed, 1)
            }));
        }
        steps
    },
}];

table_tests!(TABLE, fib_v4: V4, fib_v6: V6);
