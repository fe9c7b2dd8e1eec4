//! The per-packet ClusterIP path (agent-ebpf/src/pod_lb.rs): a pod's packet to a ClusterIP
//! on `ferry_tc_pod` (DNAT, the pod's address kept, POD conntrack entries), the backend's
//! reply on `ferry_tc_pod_out` (the ClusterIP back as its source), what is no pod flow's.
//! IPv4 (the path's only family so far).

use super::*;

/// The ClusterIP's rev-NAT id.
const REV_CIP: u16 = 9;

pub static TABLE: &[Scenario] = &[Scenario {
    desc: "a pod's flow to a ClusterIP, translated per packet",
    families: V4,
    targets: TC,
    netns: no_netns,
    fixture: |f, n| {
        f.backend(1, sa(n.local_pod, 8080), IPPROTO_TCP, true);
        f.frontend(
            sa(n.cluster_ip, 80),
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            REV_CIP,
            &[1],
        );
        // The agent's marker of every ClusterIP (port 0, protocol 0).
        f.frontend(
            sa(n.cluster_ip, 0),
            0,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            0,
            &[],
        );
    },
    steps: |n| {
        let cip = sa(n.cluster_ip, 80);
        let backend = sa(n.local_pod, 8080);
        let pod: SocketAddr = "10.244.0.9:40000".parse().unwrap();
        let flags = ct_flags::POD | ct_flags::LOCAL;
        vec![
            row(move |_| {
                Row::new(
                    "a pod's SYN to the ClusterIP: DNAT, its address kept",
                    TcPod,
                    inbound(tcp_packet(pod, cip, TCP_SYN, b"")),
                    Ok,
                )
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
                Row::new(
                    "the backend's SYN-ACK to the pod leaves from the ClusterIP",
                    TcPodOut,
                    outbound(tcp_packet(backend, pod, TCP_SYN | TCP_ACK, b"")),
                    Ok,
                )
                .out(outbound(tcp_packet(cip, pod, TCP_SYN | TCP_ACK, b"")))
                .counter(Counter::PodRevNat, 1)
            }),
            row(move |_| {
                Row::new(
                    "the pod's ACK: tracked, to the same backend",
                    TcPod,
                    inbound(tcp_packet(pod, cip, TCP_ACK, b"hi")),
                    Ok,
                )
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
        ]
    },
}];

table_tests!(TABLE, pod_v4: V4);
