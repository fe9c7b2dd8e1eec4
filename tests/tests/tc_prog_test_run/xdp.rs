//! `ferry_xdp` (`--acceleration`): the north-south fast path before the skb, IPv4 and IPv6. New flows to exposed
//! frontends and packets of tracked flows are translated in place (checksums computed in the
//! program), their TTL decremented, and redirected to the FIB's next hop (XDP_REDIRECT); what
//! XDP does not handle is XDP_PASS, untouched, for `ferry_tc_in`, which continues a flow XDP
//! started (and the other way round): the same conntrack entries. IPv6: no extension header
//! (a DSR destination options header, a fragment header, hop-by-hop options), no ICMPv6, no
//! UDP checksum 0: all passed untouched.

use super::*;

/// NodePort 30080/TCP and 30053/UDP to a remote pod (SNAT), LB 80/TCP eTP Local to a local pod,
/// NodePort 30090/TCP without endpoints, LB 443 with a source range.
fn fixture(f: &mut Fixture, n: &'static Net) {
    f.backend(4, sa(n.remote_pod, 8080), IPPROTO_TCP, false);
    f.backend(5, sa(n.remote_pod, 53), IPPROTO_UDP, false);
    f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
    let np = svc_flags::NODE_PORT;
    f.frontend(
        sa(n.node, 30080),
        IPPROTO_TCP,
        scope::EXTERNAL,
        np,
        REV_NODEPORT,
        &[4],
    );
    f.frontend(sa(n.node, 30053), IPPROTO_UDP, scope::EXTERNAL, np, 9, &[5]);
    f.frontend(sa(n.node, 30090), IPPROTO_TCP, scope::EXTERNAL, np, 10, &[]);
    let lb = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL;
    f.frontend(
        sa(n.lb_vip, 80),
        IPPROTO_TCP,
        scope::EXTERNAL,
        lb,
        REV_LB,
        &[1],
    );
    let ranged = svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES;
    f.frontend(
        sa(n.lb_vip, 443),
        IPPROTO_TCP,
        scope::EXTERNAL,
        ranged,
        11,
        &[1],
    );
    f.allow_source(11, n.client2, if is_v6(n) { 128 } else { 32 });
}

/// The routes of the scenarios' next hop `d0` (see [`next_hop`]): the pods and the clients.
fn routes(n: &Net) -> &'static [&'static str] {
    if is_v6(n) {
        &["fd00:244::/32", "2001:db8:100::/48"]
    } else {
        &["10.244.0.0/16", "198.51.100.0/24"]
    }
}

fn via_d0(n: &Net) {
    next_hop(n, None, routes(n));
}

/// `p` (an IP packet) with the TTL or hop limit `ttl` (an IPv4 header checksum left as it was:
/// the row expects the packet passed untouched).
fn with_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
    if p[0] >> 4 == 6 {
        p[7] = ttl;
    } else {
        p[8] = ttl;
    }
    p
}

/// An IPv6 TCP segment `src` -> `dst` behind the extension header `ext` (of type `next`).
fn tcp6_behind(next: u8, ext: Vec<u8>, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut payload = ext;
    payload.extend_from_slice(&tcp_segment(src, dst, TCP_SYN, b""));
    ipv6(
        Ip6Opts::default(),
        ip6(src.ip()),
        ip6(dst.ip()),
        next,
        &payload,
    )
}

/// The FIB's next hop ([`next_hop`]), made one of the node's north-south devices (an address
/// in the node address map): XDP sends only there or back out of the ingress device.
fn next_hop_is_a_node_device(f: &mut Fixture, n: &'static Net) {
    // SAFETY: a NUL-terminated name.
    let d0 = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
    assert_ne!(d0, 0, "no device d0");
    f.node_addr(d0, n.node);
    fixture(f, n);
}

pub static TABLE: &[Scenario] = &[
    Scenario {
        desc: "XDP: a NodePort flow with SNAT, started by XDP, continued by XDP and by TC",
        families: BOTH,
        targets: XDP_TC,
        netns: via_d0,
        fixture: next_hop_is_a_node_device,
        steps: |n| {
            let np = sa(n.node, 30080);
            let pod = sa(n.remote_pod, 8080);
            let client = sa(n.client, 40001);
            let get = b"GET / HTTP/1.1\r\n\r\n";
            vec![
                row(move |c| {
                    Row::new(
                        "SYN: new flow, DNAT+SNAT, redirected to the next hop",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_SYN, b"")),
                        Redirect,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out(routed(tcp_packet(c.snat(), pod, TCP_SYN, b"")))
                    .counter(Counter::NsNewFlow, 1)
                    .counter(Counter::NsXdpForwarded, 1)
                    .ct(vec![
                        (
                            ct_key(client, np, IPPROTO_TCP, ct_dir::FORWARD),
                            ct_val(c.snat(), pod, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                        ),
                        (
                            ct_key(pod, c.snat(), IPPROTO_TCP, ct_dir::REPLY),
                            ct_val(np, client, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                        ),
                    ])
                }),
                row(move |c| {
                    Row::new(
                        "the backend's SYN-ACK to the SNAT port: back to the client from the \
                         NodePort",
                        Xdp,
                        inbound(tcp_packet(pod, c.snat(), TCP_SYN | TCP_ACK, b"")),
                        Redirect,
                    )
                    .out(routed(tcp_packet(np, client, TCP_SYN | TCP_ACK, b"")))
                    .counter(Counter::NsTracked, 1)
                    .counter(Counter::NsXdpForwarded, 1)
                }),
                row(move |c| {
                    Row::new(
                        "the client's next segment: tracked, same translation",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_ACK, get)),
                        Redirect,
                    )
                    .out(routed(tcp_packet(c.snat(), pod, TCP_ACK, get)))
                    .counter(Counter::NsNewFlow, 0)
                    .counter(Counter::NsTracked, 1)
                    .counter(Counter::NsXdpForwarded, 1)
                    .ct_len(2)
                }),
                row(move |c| {
                    Row::new(
                        "the same segment under TC: the flow XDP made is TC's too",
                        TcIn,
                        inbound(tcp_packet(client, np, TCP_ACK, get)),
                        Redirect,
                    )
                    .out(routed(tcp_packet(c.snat(), pod, TCP_ACK, get)))
                    .counter(Counter::NsTracked, 1)
                    .counter(Counter::NsXdpForwarded, 0)
                    .ct_len(2)
                }),
                row(move |_| {
                    let last_hop = with_ttl(tcp_packet(client, np, TCP_ACK, get), 1);
                    Row::new(
                        "a TTL / hop limit that would expire here is the stack's: passed to TC",
                        Xdp,
                        inbound(last_hop),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsXdpForwarded, 0)
                }),
            ]
        },
    },
    Scenario {
        desc: "XDP: a flow TC started continues under XDP; UDP without checksum keeps none",
        families: BOTH,
        targets: XDP_TC,
        netns: via_d0,
        fixture: next_hop_is_a_node_device,
        steps: |n| {
            let np = sa(n.node, 30080);
            let dns = sa(n.node, 30053);
            let pod = sa(n.remote_pod, 8080);
            let pod53 = sa(n.remote_pod, 53);
            let client = sa(n.client, 40002);
            let q = b"query";
            vec![
                row(move |c| {
                    Row::new(
                        "TC makes the flow",
                        TcIn,
                        inbound(tcp_packet(client, np, TCP_SYN, b"")),
                        Redirect,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out(routed(tcp_packet(c.snat(), pod, TCP_SYN, b"")))
                    .counter(Counter::NsNewFlow, 1)
                    .counter(Counter::NsXdpForwarded, 0)
                }),
                row(move |c| {
                    Row::new(
                        "XDP translates its next segment",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_ACK, b"x")),
                        Redirect,
                    )
                    .out(routed(tcp_packet(c.snat(), pod, TCP_ACK, b"x")))
                    .counter(Counter::NsXdpForwarded, 1)
                    .counter(Counter::NsNewFlow, 0)
                }),
                row(move |c| {
                    Row::new(
                        "UDP with a checksum: new flow, checksum kept right",
                        Xdp,
                        inbound(udp_packet(client, dns, q)),
                        Redirect,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out(routed(udp_packet(c.snat(), pod53, q)))
                    .counter(Counter::NsNewFlow, 1)
                    .counter(Counter::NsXdpForwarded, 1)
                }),
                row(move |c| {
                    Row::new(
                        "the backend's answer back to the client",
                        Xdp,
                        inbound(udp_packet(pod53, c.snat(), b"answer")),
                        Redirect,
                    )
                    .out(routed(udp_packet(dns, client, b"answer")))
                    .counter(Counter::NsXdpForwarded, 1)
                }),
                if is_v6(n) {
                    row(move |_| {
                        let client = sa(n.client, 40003);
                        Row::new(
                            "IPv6 UDP with checksum 0 (invalid, RFC 8200): passed, as TC's \
                             parser leaves it",
                            Xdp,
                            inbound(udp_packet_nocsum(client, dns, q)),
                            Pass,
                        )
                        .unchanged()
                        .counter(Counter::NsNewFlow, 0)
                        .counter(Counter::NsXdpForwarded, 0)
                    })
                } else {
                    row(move |c| {
                        let client = sa(n.client, 40003);
                        Row::new(
                            "UDP without checksum: translated, its checksum stays 0",
                            Xdp,
                            inbound(udp_packet_nocsum(client, dns, q)),
                            Redirect,
                        )
                        .learn(Learn::SnatAnyPort)
                        .out(routed(udp_packet_nocsum(c.snat(), pod53, q)))
                    })
                },
            ]
        },
    },
    Scenario {
        desc: "XDP: eTP Local keeps the client; source ranges drop; the rest passes to TC",
        families: BOTH,
        targets: XDP_TC,
        netns: via_d0,
        fixture: next_hop_is_a_node_device,
        steps: |n| {
            let vip = sa(n.lb_vip, 80);
            let pod = sa(n.local_pod, 8080);
            let client = sa(n.client, 40004);
            let mut rows = vec![
                row(move |_| {
                    Row::new(
                        "eTP Local: DNAT only, the client's address kept",
                        Xdp,
                        inbound(tcp_packet(client, vip, TCP_SYN, b"")),
                        Redirect,
                    )
                    .out(routed(tcp_packet(client, pod, TCP_SYN, b"")))
                    .counter(Counter::NsXdpForwarded, 1)
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
                }),
                row(move |_| {
                    Row::new(
                        "a client outside the source ranges: dropped, counted",
                        Xdp,
                        inbound(tcp_packet(client, sa(n.lb_vip, 443), TCP_SYN, b"")),
                        Shot,
                    )
                    .counter(Counter::NsSourceRangeDrop, 1)
                    .ct_len(2)
                }),
                row(move |_| {
                    Row::new(
                        "a frontend without endpoints: TC's to reject",
                        Xdp,
                        inbound(tcp_packet(client, sa(n.node, 30090), TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsRejected, 0)
                }),
                row(move |_| {
                    Row::new(
                        "no frontend: passed",
                        Xdp,
                        inbound(tcp_packet(client, sa(n.node, 22), TCP_SYN, b"")),
                        Pass,
                    )
                    .unchanged()
                }),
                row(move |_| {
                    Row::new(
                        "IP options (a DSR option) / a DSR destination options header: TC's",
                        Xdp,
                        inbound(dsr_tcp(client, sa(n.node, 30080), vip, TCP_SYN)),
                        Pass,
                    )
                    .unchanged()
                }),
            ];
            let np = sa(n.node, 30080);
            if is_v6(n) {
                rows.extend([
                    row(move |_| {
                        Row::new(
                            "IPv6: a first fragment (fragment header): TC's",
                            Xdp,
                            inbound(tcp6_behind(
                                NEXTHDR_FRAGMENT,
                                fragment_header(IPPROTO_TCP, 0, true, 7),
                                client,
                                np,
                            )),
                            Pass,
                        )
                        .unchanged()
                    }),
                    row(move |_| {
                        Row::new(
                            "IPv6: a hop-by-hop options header: TC's",
                            Xdp,
                            inbound(tcp6_behind(
                                NEXTHDR_HOP,
                                options_header(IPPROTO_TCP, &[]),
                                client,
                                np,
                            )),
                            Pass,
                        )
                        .unchanged()
                    }),
                    row(move |_| {
                        let (src, dst) = (ip6(client.ip()), ip6(vip.ip()));
                        let echo = icmp6(src, dst, 128, 0, 0x0001_0001, b"ping");
                        Row::new(
                            "ICMPv6 (an echo request to the LB IP): TC's",
                            Xdp,
                            inbound(ipv6(Ip6Opts::default(), src, dst, IPPROTO_ICMPV6, &echo)),
                            Pass,
                        )
                        .unchanged()
                        .counter(Counter::NsXdpForwarded, 0)
                        .ct_len(2)
                    }),
                ]);
            } else {
                rows.push(row(move |_| {
                    let mut frag = tcp_packet(client, np, TCP_SYN, b"");
                    frag[6] = 0x20;
                    Row::new("a first fragment: TC's", Xdp, inbound(frag), Pass).unchanged()
                }));
            }
            rows
        },
    },
    Scenario {
        desc: "XDP: a flow whose next hop is no north-south device (local pods behind a bridge) \
               is left to TC whole",
        families: BOTH,
        targets: XDP_TC,
        netns: via_d0,
        fixture,
        steps: |n| {
            let client = sa(n.client, 40006);
            vec![row(move |_| {
                Row::new(
                    "routed out of d0, which holds no node address: passed, no state",
                    Xdp,
                    inbound(tcp_packet(client, sa(n.lb_vip, 80), TCP_SYN, b"")),
                    Pass,
                )
                .unchanged()
                .ct_len(0)
                .counter(Counter::NsXdpForwarded, 0)
            })]
        },
    },
    Scenario {
        desc: "XDP: a new flow the FIB cannot route is left to TC whole (no state)",
        families: BOTH,
        targets: XDP_TC,
        netns: no_netns,
        fixture,
        steps: |n| {
            let client = sa(n.client, 40005);
            vec![row(move |_| {
                Row::new(
                    "no route: passed, no conntrack entry",
                    Xdp,
                    inbound(tcp_packet(client, sa(n.node, 30080), TCP_SYN, b"")),
                    Pass,
                )
                .unchanged()
                .ct_len(0)
                .counter(Counter::NsNewFlow, 0)
            })]
        },
    },
    Scenario {
        desc: "XDP: a packet too big for the route's MTU is TC's (IPv4: the cached next hop \
               still holds the MTU)",
        families: BOTH,
        targets: XDP_TC,
        // 1280: IPv6's minimum.
        netns: |n| next_hop(n, Some("1280"), routes(n)),
        fixture: next_hop_is_a_node_device,
        steps: |n| {
            let np = sa(n.node, 30080);
            let pod = sa(n.remote_pod, 8080);
            let client = sa(n.client, 40007);
            let big = vec![b'x'; 1300];
            vec![
                row(move |c| {
                    Row::new(
                        "SYN: new flow, its next hop resolved (and cached)",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_SYN, b"")),
                        Redirect,
                    )
                    .learn(Learn::SnatAnyPort)
                    .out(routed(tcp_packet(c.snat(), pod, TCP_SYN, b"")))
                    .counter(Counter::NsXdpForwarded, 1)
                }),
                row(move |_| {
                    Row::new(
                        "a segment larger than the route's MTU (1280): passed untouched",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_ACK, &big)),
                        Pass,
                    )
                    .unchanged()
                    .counter(Counter::NsXdpForwarded, 0)
                }),
                row(move |c| {
                    Row::new(
                        "the next segment that fits: sent (IPv4: with the cached next hop)",
                        Xdp,
                        inbound(tcp_packet(client, np, TCP_ACK, b"x")),
                        Redirect,
                    )
                    .out(routed(tcp_packet(c.snat(), pod, TCP_ACK, b"x")))
                    .counter(Counter::NsXdpForwarded, 1)
                }),
            ]
        },
    },
];

table_tests!(TABLE, xdp_v4: V4, xdp_v6: V6);

/// XDP's action for a packet sent to the next hop.
const XDP_REDIRECT: i32 = 4;

/// Binds the calling thread to the CPU it runs on: the next-hop cache is per CPU, and a run
/// on another CPU would resolve afresh (as a packet on another CPU does).
fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on this thread's own affinity, with a zeroed set.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `frame` with the Ethernet destination `mac`.
fn to_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

/// The next-hop cache (nexthop.rs): a tracked flow's packets go to the MAC the FIB gave when
/// the destination was resolved, and a neighbour's new MAC reaches them within
/// `NEXT_HOP_MAX_AGE_NS` (1 s). Right after the neighbour changes, the FIB already answers
/// the new MAC, so a packet still sent to the old one proves the cached answer was used; then
/// the runs are repeated until the new MAC comes, which must be within the bound, every frame
/// byte for byte one of the two.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn xdp_next_hop_cache_takes_a_new_neighbour_mac_within_its_age() {
    next_hop_cache_takes_a_new_neighbour_mac(Family::V4);
}

/// The same over IPv6 (`ferry_nhop6_v1`).
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn xdp6_next_hop_cache_takes_a_new_neighbour_mac_within_its_age() {
    next_hop_cache_takes_a_new_neighbour_mac(Family::V6);
}

fn next_hop_cache_takes_a_new_neighbour_mac(family: Family) {
    ferry_tests::require_root!();
    isolated(move || {
        stay_on_this_cpu();
        let n = family.net();
        via_d0(n);
        let mut f = Fixture::new(family);
        next_hop_is_a_node_device(&mut f, n);
        let age = std::time::Duration::from_nanos(agent_common::NEXT_HOP_MAX_AGE_NS);
        let np = sa(n.node, 30080);
        let pod = sa(n.remote_pod, 8080);
        let macs = [
            "02:00:00:00:aa:03",
            "02:00:00:00:aa:04",
            "02:00:00:00:aa:05",
        ];
        let mut cached_seen = false;
        // A slow VM may take longer than the age between the resolution and the run after the
        // change (then the new MAC is right, but proves nothing of the cache): a few tries.
        for (i, mac) in macs.iter().enumerate() {
            let client = sa(n.client, 41000 + i as u16);
            let syn = f.run(
                Hook::Xdp,
                &inbound(tcp_packet(client, np, TCP_SYN, b"")),
                Csum::None,
            );
            let resolved = std::time::Instant::now();
            assert_eq!(syn.verdict(), XDP_REDIRECT, "the SYN was not sent");
            let snat = sa(n.node, sport(&syn.data));
            let old = syn.data[..6].to_vec();
            assert_eq!(
                syn.data,
                to_mac(
                    routed(tcp_packet(snat, pod, TCP_SYN, b"")),
                    old[..6].try_into().unwrap()
                )
            );
            // The gateway `next_hop` set up, given a new MAC.
            let (version, gateway) = match family {
                Family::V4 => ("-4", "100.64.0.2"),
                Family::V6 => ("-6", "fd00:64::2"),
            };
            ip_cmds(&[&[
                version,
                "neigh",
                "replace",
                gateway,
                "lladdr",
                mac,
                "dev",
                "d0",
                "nud",
                "permanent",
            ]]);
            let changed = std::time::Instant::now();
            let new: [u8; 6] =
                std::array::from_fn(|k| u8::from_str_radix(&mac[k * 3..k * 3 + 2], 16).unwrap());
            assert_ne!(old, new);
            let ack = inbound(tcp_packet(client, np, TCP_ACK, b"x"));
            let sent = routed(tcp_packet(snat, pod, TCP_ACK, b"x"));
            let (want_old, want_new) = (
                to_mac(sent.clone(), old[..6].try_into().unwrap()),
                to_mac(sent, new),
            );
            let first = f.run(Hook::Xdp, &ack, Csum::None);
            assert_eq!(first.verdict(), XDP_REDIRECT);
            if resolved.elapsed() < age {
                // Within the age of the slot: the cached MAC, although the FIB has the new one.
                assert_eq!(first.data, want_old, "not the cached next hop");
                cached_seen = true;
            }
            // Until the new MAC, never any other frame; no later than the age after the change
            // (plus the coarse clock's tick and this poll's own delays).
            let deadline = changed + age + std::time::Duration::from_millis(300);
            let mut last = first;
            while last.data != want_new {
                assert_eq!(last.verdict(), XDP_REDIRECT);
                assert_eq!(last.data, want_old, "neither the old nor the new next hop");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the neighbour's new MAC not used {:?} after it changed",
                    changed.elapsed()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
                last = f.run(Hook::Xdp, &ack, Csum::None);
            }
            if cached_seen {
                return;
            }
        }
        panic!("every try took longer than the cache's age: the cache's use was not observed");
    });
}
