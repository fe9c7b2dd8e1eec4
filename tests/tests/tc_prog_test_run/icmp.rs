//! ICMP and ICMPv6 errors about translated flows: the quote is translated back to what its
//! receiver sent, the addresses follow the flow (fragmentation needed / packet too big keep
//! their MTU, parameter problems their pointer); errors about no flow pass.

use super::*;

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "errors about a local backend's flow are translated both ways",
        families: BOTH,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 1053), IPPROTO_UDP, true);
            let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
            f.frontend(
                sa(n.lb_vip, 53),
                IPPROTO_UDP,
                scope::EXTERNAL,
                flags,
                REV_LB,
                &[1],
            );
        },
        steps: |n| {
            let vip = sa(n.lb_vip, 53);
            let pod = sa(n.local_pod, 1053);
            let client = sa(n.client, 5353);
            let sent = udp_packet(client, vip, b"is anybody there?");
            let delivered = udp_packet(client, pod, b"is anybody there?");
            // The shortest quote: the IP header and 8 bytes (RFC 792, RFC 4443).
            let short = if is_v6(n) { IPV6_HLEN + 8 } else { 28 };
            let pu = IcmpErr::PortUnreachable;
            vec![
                row({
                    let (sent, delivered) = (sent.clone(), delivered.clone());
                    move |_| {
                        Row::new("the datagram to the pod", TcIn, inbound(sent.clone()), Ok)
                            .out(inbound(delivered.clone()))
                    }
                }),
                row({
                    let (sent, delivered) = (sent.clone(), delivered.clone());
                    move |_| {
                        // The pod has no socket on the port: Linux quotes the whole (small)
                        // datagram; the client gets it from the VIP, quoting exactly what it
                        // sent (UDP checksum included).
                        let err = icmp_error(n.local_pod, n.client, pu, &delivered, 0x4242);
                        Row::new(
                            "the pod's port unreachable, translated",
                            TcOut,
                            outbound(err),
                            Ok,
                        )
                        .out(outbound(icmp_error(n.lb_vip, n.client, pu, &sent, 0x4242)))
                        .counter(Counter::NsIcmpTranslated, 1)
                    }
                }),
                row({
                    let (sent, delivered) = (sent.clone(), delivered.clone());
                    move |_| {
                        let err = icmp_error(n.local_pod, n.client, pu, &delivered[..short], 1);
                        Row::new("a short quote", TcOut, outbound(err), Ok).out(outbound(
                            icmp_error(n.lb_vip, n.client, pu, &sent[..short], 1),
                        ))
                    }
                }),
                row(move |_| {
                    let reply = udp_packet(vip, client, b"late answer");
                    let err = icmp_error(n.client, n.lb_vip, pu, &reply, 2);
                    let to_pod = udp_packet(pod, client, b"late answer");
                    Row::new(
                        "the client's port unreachable about a reply goes to the pod",
                        TcIn,
                        inbound(err),
                        Ok,
                    )
                    .out(inbound(icmp_error(
                        n.client,
                        n.local_pod,
                        pu,
                        &to_pod,
                        2,
                    )))
                }),
                row(move |_| {
                    let stranger = udp_packet(sa(n.local_pod, 9999), client, b"x");
                    let err = icmp_error(n.local_pod, n.client, pu, &stranger, 3);
                    Row::new(
                        "an error about a flow ferry does not know",
                        TcOut,
                        outbound(err),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsIcmpTranslated, 2)
                }),
            ]
        },
    },
    Scenario {
        desc: "fragmentation needed is translated both ways",
        families: V4,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            // A local backend; the node (as the pods' router) cannot forward the client's big
            // segment to it and tells the client, quoting the DNAT'd segment (576 bytes at most).
            f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
            let vip = sa(n.external_ip, 80);
            f.frontend(
                vip,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::EXTERNAL_IP,
                REV_LB,
                &[1],
            );
        },
        steps: |n| too_big_rows(n, 0x0000_0578, 600, 576 - 20 - 8),
    },
    Scenario {
        desc: "packet too big is translated both ways with its MTU",
        families: V6,
        targets: TC,
        netns: no_netns,
        fixture: |f, n| {
            f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
            let vip = sa(n.external_ip, 80);
            let flags = svc_flags::EXTERNAL_IP | svc_flags::ETP_LOCAL;
            f.frontend(vip, IPPROTO_TCP, scope::EXTERNAL, flags, REV_LB, &[1]);
        },
        // An ICMPv6 error quotes as much as fits in 1280 bytes.
        steps: |n| too_big_rows(n, 1400, 1300, 1280 - IPV6_HLEN - 8),
    },
];

/// A big segment to a local backend and one through a NodePort to a remote backend behind
/// SNAT; the "too big" errors about each (MTU `mtu`, quoting `quote` bytes) and the remote
/// backend's own port unreachable reach the client quoting what it sent. IPv6 adds time
/// exceeded and parameter problem (its pointer kept).
fn too_big_rows(n: &'static Net, mtu: u32, payload: usize, quote: usize) -> Vec<Step> {
    let vip = sa(n.external_ip, 80);
    let pod = sa(n.local_pod, 8080);
    let np = sa(n.node, 30080);
    let rpod = sa(n.remote_pod, 8080);
    let client = sa(n.client, 40000);
    let payload = vec![0x61u8; payload];
    let sent = tcp_packet(client, vip, TCP_ACK, &payload);
    let sent2 = tcp_packet(client, np, TCP_ACK, &payload);
    let big = IcmpErr::TooBig(mtu);
    let mut steps = vec![
        row({
            let (sent, payload) = (sent.clone(), payload.clone());
            move |_| {
                let r = Row::new(
                    "the client's big segment to the local pod",
                    TcIn,
                    inbound(sent.clone()),
                    Ok,
                );
                if is_v6(n) {
                    r.out(inbound(tcp_packet(client, pod, TCP_ACK, &payload)))
                } else {
                    r
                }
            }
        }),
        row({
            let sent = sent.clone();
            move |c| {
                let delivered = c.last_ip();
                let err = icmp_error(n.local_router, n.client, big, &delivered[..quote], 7);
                // The router keeps its own address; the quote becomes what the client sent.
                Row::new("too big on egress", TcOut, outbound(err), Ok).out(outbound(icmp_error(
                    n.local_router,
                    n.client,
                    big,
                    &sent[..quote],
                    7,
                )))
            }
        }),
        // A remote backend behind SNAT; a router on the way to it answers the node.
        maps(move |c| {
            c.f.backend(4, rpod, IPPROTO_TCP, false);
            c.f.frontend(
                np,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::NODE_PORT,
                REV_NODEPORT,
                &[4],
            );
        }),
        row({
            let (sent2, payload) = (sent2.clone(), payload.clone());
            move |c| {
                Row::new(
                    "the client's big segment through the NodePort",
                    TcIn,
                    inbound(sent2.clone()),
                    Ok,
                )
                .learn(if is_v6(n) {
                    Learn::Snat
                } else {
                    Learn::SnatAnyPort
                })
                .out(inbound(tcp_packet(c.snat(), rpod, TCP_ACK, &payload)))
            }
        }),
        row({
            let (sent2, payload) = (sent2.clone(), payload.clone());
            move |c| {
                let forwarded = tcp_packet(c.snat(), rpod, TCP_ACK, &payload);
                let err = icmp_error(n.router, n.node, big, &forwarded[..quote], 8);
                Row::new("too big on ingress, behind SNAT", TcIn, inbound(err), Ok).out(inbound(
                    icmp_error(n.router, n.client, big, &sent2[..quote], 8),
                ))
            }
        }),
        row({
            let (sent2, payload) = (sent2.clone(), payload.clone());
            move |c| {
                let short = if is_v6(n) { IPV6_HLEN + 8 } else { 28 };
                let forwarded = tcp_packet(c.snat(), rpod, TCP_ACK, &payload);
                let pu = IcmpErr::PortUnreachable;
                let err = icmp_error(n.remote_pod, n.node, pu, &forwarded[..short], 9);
                Row::new(
                    "the remote backend's own error: from the NodePort",
                    TcIn,
                    inbound(err),
                    Ok,
                )
                .out(inbound(icmp_error(
                    n.node,
                    n.client,
                    pu,
                    &sent2[..short],
                    9,
                )))
                .counter(Counter::NsIcmpTranslated, 3)
            }
        }),
    ];
    if is_v6(n) {
        for (what, err) in [
            ("time exceeded", IcmpErr::TimeExceeded),
            ("parameter problem", IcmpErr::ParamProblem(7)),
        ] {
            let (sent2, payload) = (sent2.clone(), payload.clone());
            let last = what == "parameter problem";
            steps.push(row(move |c| {
                let forwarded = tcp_packet(c.snat(), rpod, TCP_ACK, &payload);
                let e = icmp_error(n.router, n.node, err, &forwarded[..200], 0);
                let r = Row::new(what, TcIn, inbound(e), Ok).out(inbound(icmp_error(
                    n.router,
                    n.client,
                    err,
                    &sent2[..200],
                    0,
                )));
                if last {
                    r.counter(Counter::NsIcmpTranslated, 2)
                } else {
                    r
                }
            }));
        }
    }
    steps
}

table_tests!(TABLE, icmp_v4: V4, icmp_v6: V6);
