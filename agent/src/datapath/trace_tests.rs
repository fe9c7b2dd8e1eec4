//! The trace's decisions over maps the real programmer wrote (the in-memory
//! model), each against what the kernel code would do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{
    AffinityKey, Ct4Key, Ct4Value, affinity_client, ct_dir, ct_flags, maglev_key, net::ip4_to_raw,
};

use super::*;
use crate::{
    datapath::{Programmer, mem_maps::MemMaps},
    model::{BackendAddr, Cidr, Frontend, FrontendKind, ServiceName},
};

/// The maps the programmer wrote, plus what only the kernel writes
/// (conntrack, affinity) and the node's settings.
#[derive(Default)]
struct Mem {
    maps: MemMaps,
    ct: Vec<(CtLookupKey, CtLookupValue)>,
    node_flags: u32,
    node_addrs: Vec<IpAddr>,
    /// Addresses and the device the node routes them through.
    routes: Vec<(IpAddr, u32)>,
}

impl Tables for Mem {
    fn service(&self, key: &SvcKey) -> Option<SvcValue> {
        self.maps.contents().services.get(key).copied()
    }
    fn backend(&self, id: u32, family: Family) -> Option<BackendValue> {
        self.maps
            .contents()
            .backends
            .get(&id)
            .copied()
            .filter(|b| b.family() == family)
    }
    fn maglev(&self, key: u32) -> Option<u32> {
        self.maps.contents().maglev.get(&key).copied()
    }
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        let c = self.maps.contents();
        c.affinity.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    fn affinity_of(&self, rev_nat_id: u16, kind: u8) -> Vec<(u64, AffinityValue)> {
        let c = self.maps.contents();
        c.affinity
            .iter()
            .filter(|(k, _)| k.rev_nat_id == rev_nat_id && k.kind == kind)
            .map(|(k, v)| (k.client, *v))
            .collect()
    }
    fn in_source_ranges(&self, rev_nat_id: u16, ip: IpAddr) -> bool {
        let c = self.maps.contents();
        c.ranges
            .iter()
            .any(|(r, cidr)| *r == rev_nat_id && cidr.contains(ip))
    }
    fn conntrack(&self, key: &CtLookupKey) -> Option<CtLookupValue> {
        self.ct.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    fn node_flags(&self) -> u32 {
        self.node_flags
    }
    fn is_node(&self, ip: IpAddr) -> bool {
        self.node_addrs.contains(&ip)
    }
    fn node_addrs(&self) -> Vec<IpAddr> {
        self.node_addrs.clone()
    }
    fn ns_devices(&self) -> Vec<u32> {
        vec![2]
    }
    fn route_device(&self, ip: IpAddr) -> Option<u32> {
        self.routes.iter().find(|(a, _)| *a == ip).map(|(_, d)| *d)
    }
    fn local_backend_ips(&self) -> Vec<IpAddr> {
        let c = self.maps.contents();
        c.backends
            .values()
            .filter(|b| b.flags() & backend_flags::LOCAL != 0)
            .filter_map(|b| codec::backend_addr(b).map(|a| a.ip))
            .collect()
    }
}

const NOW: u32 = 100_000;
const LB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);

fn be(ip: IpAddr) -> BackendAddr {
    BackendAddr {
        ip,
        port: 8080,
        proto: Protocol::Tcp,
    }
}

fn pods(n: u8) -> Vec<BackendAddr> {
    (1..=n)
        .map(|i| be(Ipv4Addr::new(10, 244, 1, i).into()))
        .collect()
}

fn fe(kind: FrontendKind, backends: Vec<BackendAddr>) -> Frontend {
    Frontend {
        service: ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: "http".into(),
        kind,
        backends,
        local_backends: Default::default(),
        terminating: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        maglev: false,
        etp_local: false,
        itp_local: false,
        drop_no_local: false,
    }
}

fn fkey(ip: impl Into<IpAddr>, port: u16, scope: Scope) -> FrontendKey {
    FrontendKey {
        ip: ip.into(),
        port,
        proto: Protocol::Tcp,
        scope,
    }
}

/// Programs `frontends` with the real programmer.
fn programmed(frontends: &[(FrontendKey, Frontend)]) -> Mem {
    let mem = Mem::default();
    let mut p = Programmer::adopt(mem.maps.clone());
    for (k, f) in frontends {
        p.upsert(k, f).expect("programmed");
    }
    mem
}

fn flow(src: impl Into<IpAddr>, sport: Option<u16>, dst: impl Into<IpAddr>, dport: u16) -> Flow {
    Flow {
        src: src.into(),
        sport,
        dst: dst.into(),
        dport,
        proto: Protocol::Tcp,
    }
}

fn from(o: Origin) -> Client {
    Client {
        from: o,
        inferred: false,
        netns_cookie: None,
    }
}

fn run(m: &Mem, f: Flow, o: Origin) -> Trace {
    trace(m, f, from(o), NOW)
}

#[test]
fn an_address_that_is_no_frontend_passes_at_both_layers() {
    let m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(2)),
    )]);
    let other = Ipv4Addr::new(10, 1, 2, 3);
    for o in [Origin::Pod, Origin::External] {
        let t = run(&m, flow(CLIENT, Some(40000), other, 80), o);
        assert_eq!(t.verdict.action, Action::Pass, "{o:?}: {t:?}");
        assert!(t.frontend.is_none());
    }
}

#[test]
fn a_clusterip_from_a_pod_goes_to_one_of_its_backends_at_random() {
    let m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(3)),
    )]);
    let t = run(&m, flow(CLIENT, None, CIP, 80), Origin::Pod);
    assert_eq!(t.verdict.action, Action::Translate);
    assert_eq!(t.verdict.by.as_deref(), Some("random"));
    assert_eq!(
        t.verdict.candidates,
        ["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"]
    );
    assert_eq!(t.frontend.as_ref().unwrap().kind, "ClusterIP");
    assert_eq!(t.layer, "socket");
    // An undefined port of the ClusterIP is refused (cluster-ips-check).
    let t = run(&m, flow(CLIENT, None, CIP, 81), Origin::Pod);
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    // From outside, without --external-cluster-ip, it passes untouched.
    let t = run(&m, flow(CLIENT, Some(1), CIP, 80), Origin::External);
    assert_eq!(t.verdict.action, Action::Pass, "{t:?}");
    let mut m = m;
    m.node_flags = node_flags::EXTERNAL_CLUSTER_IP;
    let t = run(&m, flow(CLIENT, Some(1), CIP, 80), Origin::External);
    assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
}

#[test]
fn no_endpoints_is_a_reject_at_both_layers() {
    let m = programmed(&[(
        fkey(LB, 80, Scope::External),
        fe(FrontendKind::LoadBalancer, Vec::new()),
    )]);
    for o in [Origin::Host, Origin::External] {
        let t = run(&m, flow(CLIENT, Some(40000), LB, 80), o);
        assert_eq!(t.verdict.action, Action::Reject, "{o:?}: {t:?}");
        assert_eq!(t.verdict.reason, None);
    }
}

#[test]
fn local_policies_without_local_endpoints_drop() {
    let mut etp = fe(FrontendKind::LoadBalancer, Vec::new());
    etp.etp_local = true;
    etp.drop_no_local = true;
    let mut itp = fe(FrontendKind::ClusterIP, Vec::new());
    itp.itp_local = true;
    itp.drop_no_local = true;
    let m = programmed(&[
        (fkey(LB, 80, Scope::External), etp),
        (fkey(CIP, 80, Scope::External), itp),
    ]);
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    assert_eq!(t.verdict.action, Action::Drop);
    assert_eq!(t.verdict.reason.as_deref(), Some("no_local_endpoint"));
    let t = run(&m, flow(CLIENT, None, CIP, 80), Origin::Pod);
    assert_eq!(t.verdict.action, Action::Drop, "{t:?}");
    assert_eq!(t.verdict.reason.as_deref(), Some("guard_no_local"));
}

#[test]
fn source_ranges_are_an_lpm_lookup_of_the_client() {
    let mut f = fe(FrontendKind::LoadBalancer, pods(2));
    f.source_ranges = vec![Cidr::new(CLIENT.into(), 32), "10.9.0.0/16".parse().unwrap()];
    let m = programmed(&[(fkey(LB, 80, Scope::External), f)]);
    let inside = Ipv4Addr::new(10, 9, 200, 1);
    for src in [CLIENT, inside] {
        let t = run(&m, flow(src, Some(40000), LB, 80), Origin::External);
        assert_eq!(t.verdict.action, Action::Translate, "{src}: {t:?}");
        assert!(t.source_range.as_ref().unwrap().allowed);
    }
    let outside = Ipv4Addr::new(172, 18, 0, 101);
    let t = run(&m, flow(outside, Some(40000), LB, 80), Origin::External);
    assert_eq!(t.verdict.action, Action::Drop);
    assert_eq!(t.verdict.reason.as_deref(), Some("source_range"));
    assert!(!t.source_range.unwrap().allowed);
    // A pod outside the ranges dialling the LB IP: the egress guard drops.
    let t = run(&m, flow(outside, None, LB, 80), Origin::Pod);
    assert_eq!(t.verdict.reason.as_deref(), Some("guard_source_range"));
}

/// The backend the kernel's select.rs places a flow on, computed here
/// independently of the trace: agent-common's hash over the raw fields,
/// then the Maglev table the programmer wrote.
fn kernel_maglev_choice(m: &Mem, rev_nat_id: u16, sport: u16) -> u32 {
    let h = agent_common::flow_hash_v4(
        ip4_to_raw(CLIENT.octets()),
        ip4_to_raw(LB.octets()),
        sport.to_be(),
        80u16.to_be(),
        agent_common::proto::TCP,
    );
    m.maps.contents().maglev[&maglev_key(rev_nat_id, h % MAGLEV_TABLE_SIZE)]
}

#[test]
fn maglev_names_the_table_entry_of_the_flow_hash() {
    let mut f = fe(FrontendKind::LoadBalancer, pods(4));
    f.maglev = true;
    let m = programmed(&[(fkey(LB, 80, Scope::External), f)]);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40040 {
        let t = run(&m, flow(CLIENT, Some(sport), LB, 80), Origin::External);
        let rev = t.frontend.as_ref().unwrap().rev_nat_id;
        assert_eq!(t.verdict.by.as_deref(), Some("maglev"));
        assert_eq!(
            t.verdict.backend_id,
            Some(kernel_maglev_choice(&m, rev, sport))
        );
        seen.insert(t.verdict.backend.clone().unwrap());
    }
    assert!(seen.len() >= 3, "40 flows spread: {seen:?}");
    // Without the source port: it depends on it.
    let t = run(&m, flow(CLIENT, None, LB, 80), Origin::External);
    assert!(t.verdict.depends_on_source_port);
    assert_eq!(t.verdict.candidates.len(), 4);
}

#[test]
fn the_slot_choice_is_the_flow_hash_modulo_the_count() {
    let m = programmed(&[(
        fkey(LB, 80, Scope::External),
        fe(FrontendKind::LoadBalancer, pods(3)),
    )]);
    for sport in [40000u16, 40001, 40002, 50000] {
        let t = run(&m, flow(CLIENT, Some(sport), LB, 80), Origin::External);
        let h = t.verdict.flow_hash.unwrap();
        let slot = (h % 3) as u16 + 1;
        let want = m.service(&codec::svc_key(&fkey(LB, 80, Scope::External), slot));
        assert_eq!(t.verdict.by.as_deref(), Some("slot"));
        assert_eq!(t.verdict.backend_id, want.map(|s| s.backend_id));
        assert_eq!(t.verdict.mode.as_deref(), Some("snat"));
    }
}

#[test]
fn a_live_affinity_entry_decides_and_an_expired_one_does_not() {
    let mut f = fe(FrontendKind::LoadBalancer, pods(3));
    f.affinity_timeout = Some(600);
    let m = programmed(&[(fkey(LB, 80, Scope::External), f)]);
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    let rev = t.frontend.unwrap().rev_nat_id;
    let id = *m.maps.contents().backends.keys().nth(2).unwrap();
    let entry = |age: u32| {
        m.maps.0.borrow_mut().contents.affinity = vec![(
            AffinityKey {
                client: u64::from(ip4_to_raw(CLIENT.octets())),
                rev_nat_id: rev,
                kind: affinity_client::IPV4,
                _pad: [0; 5],
            },
            AffinityValue {
                backend_id: id,
                last_used: NOW - age,
            },
        )];
    };
    entry(30);
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    assert_eq!(t.verdict.by.as_deref(), Some("affinity"));
    assert_eq!(t.verdict.backend_id, Some(id));
    let a = t.affinity.unwrap();
    assert!(a.live && a.age_seconds == 30 && a.timeout_seconds == 600);
    entry(601);
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    assert_ne!(t.verdict.by.as_deref(), Some("affinity"));
    assert!(!t.affinity.unwrap().live);
}

#[test]
fn the_socket_layer_keys_affinity_on_the_network_namespace() {
    let mut f = fe(FrontendKind::ClusterIP, pods(3));
    f.affinity_timeout = Some(10800);
    let mut m = programmed(&[(fkey(CIP, 80, Scope::External), f)]);
    let rev = run(&m, flow(CLIENT, None, CIP, 80), Origin::Pod)
        .frontend
        .unwrap()
        .rev_nat_id;
    let id = *m.maps.contents().backends.keys().next().unwrap();
    m.maps.0.borrow_mut().contents.affinity = vec![(
        AffinityKey {
            client: 4242,
            rev_nat_id: rev,
            kind: affinity_client::NETNS_COOKIE,
            _pad: [0; 5],
        },
        AffinityValue {
            backend_id: id,
            last_used: NOW,
        },
    )];
    let client = Client {
        netns_cookie: Some(4242),
        ..from(Origin::Pod)
    };
    let t = trace(&m, flow(CLIENT, None, CIP, 80), client, NOW);
    assert_eq!(t.verdict.by.as_deref(), Some("affinity"), "{t:?}");
    assert_eq!(t.verdict.backend_id, Some(id));
    // Another namespace has no entry: random.
    let other = Client {
        netns_cookie: Some(1),
        ..client
    };
    let t = trace(&m, flow(CLIENT, None, CIP, 80), other, NOW);
    assert_eq!(t.verdict.by.as_deref(), Some("random"));
    m.node_flags = 0;
}

#[test]
fn a_tracked_flow_keeps_its_backend_while_it_exists() {
    let m = programmed(&[(
        fkey(LB, 80, Scope::External),
        fe(FrontendKind::LoadBalancer, pods(3)),
    )]);
    let mut m = m;
    let (id, b) = {
        let c = m.maps.contents();
        let (id, b) = c.backends.iter().nth(1).map(|(i, b)| (*i, *b)).unwrap();
        (id, b)
    };
    let BackendValue::V4(b4) = b else {
        panic!("IPv4")
    };
    let key = Ct4Key {
        saddr: ip4_to_raw(CLIENT.octets()),
        daddr: ip4_to_raw(LB.octets()),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: agent_common::proto::TCP,
        dir: ct_dir::FORWARD,
        _pad: [0; 2],
    };
    let val = |daddr| Ct4Value {
        nat_saddr: ip4_to_raw([172, 18, 0, 1]),
        nat_daddr: daddr,
        nat_sport: 40000u16.to_be(),
        nat_dport: b4.port,
        backend_id: id,
        rev_nat_id: 1,
        flags: ct_flags::SNAT,
        tcp_flags: 0,
        last_seen: NOW - 5,
    };
    m.ct = vec![(CtLookupKey::V4(key), CtLookupValue::V4(val(b4.addr)))];
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    assert_eq!(t.verdict.by.as_deref(), Some("conntrack"));
    assert_eq!(t.verdict.backend_id, Some(id));
    assert_eq!(t.conntrack.as_ref().unwrap().idle_seconds, 5);
    // The entry names an address the backend no longer has: a new flow.
    m.ct = vec![(
        CtLookupKey::V4(key),
        CtLookupValue::V4(val(ip4_to_raw([10, 0, 0, 99]))),
    )];
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    assert_eq!(t.verdict.by.as_deref(), Some("slot"));
    assert!(!t.conntrack.unwrap().backend_still_there);
}

#[test]
fn ipv6_frontends_and_ipv4_mapped_destinations() {
    let cip6: Ipv6Addr = "fd00:96::a".parse().unwrap();
    let b6 = vec![be("fd00:10:244:1::5".parse::<Ipv6Addr>().unwrap().into())];
    let m = programmed(&[
        (
            fkey(cip6, 80, Scope::External),
            fe(FrontendKind::ClusterIP, b6),
        ),
        (
            fkey(CIP, 80, Scope::External),
            fe(FrontendKind::ClusterIP, pods(1)),
        ),
    ]);
    let src6: Ipv6Addr = "fd00:10:244:1::9".parse().unwrap();
    let t = run(&m, flow(src6, None, cip6, 80), Origin::Pod);
    assert_eq!(t.maps, "IPv6");
    assert_eq!(t.verdict.candidates, ["[fd00:10:244:1::5]:8080"]);
    // A dual-stack socket dialling ::ffff:10.96.0.10 reads the IPv4 maps.
    let mapped = CIP.to_ipv6_mapped();
    let t = run(&m, flow(src6, None, mapped, 80), Origin::Pod);
    assert!(t.maps.starts_with("IPv4"), "{}", t.maps);
    assert_eq!(t.verdict.candidates, ["10.244.1.1:8080"]);
}

#[test]
fn the_origin_is_inferred_from_the_route_to_the_source() {
    let mut f = fe(FrontendKind::ClusterIP, pods(2));
    f.local_backends = [pods(1)[0]].into();
    let mut m = programmed(&[(fkey(CIP, 80, Scope::External), f)]);
    m.node_addrs = vec![Ipv4Addr::new(172, 18, 0, 1).into()];
    let any: IpAddr = CLIENT.into();
    // The route decides: local, a north-south device (ifindex 2 here), another device.
    assert_eq!(infer_from(&m, any, Some(Route::Local)), Origin::Host);
    assert_eq!(
        infer_from(&m, any, Some(Route::Device(2))),
        Origin::External
    );
    assert_eq!(infer_from(&m, any, Some(Route::Device(7))), Origin::Pod);
    // Without one: the node's addresses, the local endpoints, else outside.
    let host = Ipv4Addr::new(172, 18, 0, 1).into();
    assert_eq!(infer_from(&m, host, None), Origin::Host);
    let pod = Ipv4Addr::new(10, 244, 1, 1).into();
    assert_eq!(infer_from(&m, pod, Some(Route::None)), Origin::Pod);
    assert_eq!(infer_from(&m, any, None), Origin::External);
}

#[test]
fn the_text_report_says_the_verdict() {
    let m = programmed(&[(
        fkey(LB, 80, Scope::External),
        fe(FrontendKind::LoadBalancer, pods(2)),
    )]);
    let t = run(&m, flow(CLIENT, Some(40000), LB, 80), Origin::External);
    let text = render(&t);
    println!("{text}");
    assert!(text.contains("LoadBalancer"), "{text}");
    assert!(text.contains("verdict   TRANSLATE -> 10.244.1."), "{text}");
}

#[test]
fn a_syn_straight_to_a_pod_that_a_live_flow_answers_for_is_a_clash() {
    let mut m = programmed(&[(
        fkey(LB, 80, Scope::External),
        fe(FrontendKind::LoadBalancer, pods(1)),
    )]);
    let pod = Ipv4Addr::new(10, 244, 1, 1);
    // A translated flow's REPLY entry: the pod's packets to the client's port 40000.
    let rkey = Ct4Key {
        saddr: ip4_to_raw(pod.octets()),
        daddr: ip4_to_raw(CLIENT.octets()),
        sport: 8080u16.to_be(),
        dport: 40000u16.to_be(),
        proto: agent_common::proto::TCP,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    let rev = |tcp_flags| Ct4Value {
        nat_saddr: ip4_to_raw(LB.octets()),
        nat_daddr: ip4_to_raw(CLIENT.octets()),
        nat_sport: 80u16.to_be(),
        nat_dport: 40000u16.to_be(),
        backend_id: 1,
        rev_nat_id: 1,
        flags: ct_flags::LOCAL,
        tcp_flags,
        last_seen: NOW - 1,
    };
    m.ct = vec![(CtLookupKey::V4(rkey), CtLookupValue::V4(rev(0)))];
    let direct = flow(CLIENT, Some(40000), pod, 8080);
    let t = run(&m, direct, Origin::External);
    assert_eq!(t.verdict.reason.as_deref(), Some("ct_clash"), "{t:?}");
    // Once that flow is over (a FIN seen), the SYN goes through.
    m.ct = vec![(
        CtLookupKey::V4(rkey),
        CtLookupValue::V4(rev(agent_common::tcp_flags::FIN)),
    )];
    assert_eq!(
        run(&m, direct, Origin::External).verdict.action,
        Action::Pass
    );
    // Another source port: no clash.
    m.ct = vec![(CtLookupKey::V4(rkey), CtLookupValue::V4(rev(0)))];
    let t = run(&m, flow(CLIENT, Some(40001), pod, 8080), Origin::External);
    assert_eq!(t.verdict.action, Action::Pass);
}

/// pod_lb.rs's choice for a pod's packet (its flow hash over the internal
/// entry when there is one, else the frontend's): the backend id of the slot.
fn kernel_pod_choice(m: &Mem, src: IpAddr, sport: u16, key: &FrontendKey) -> u32 {
    let svc = m.service(&codec::svc_key(key, 0)).unwrap();
    let hash = codec::flow_hash(
        std::net::SocketAddr::new(src, sport),
        std::net::SocketAddr::new(key.ip, key.port),
        key.proto,
    )
    .unwrap();
    let slot = (hash % u32::from(svc.count)) as u16 + 1;
    m.service(&codec::svc_key(key, slot)).unwrap().backend_id
}

#[test]
fn a_pods_packet_to_a_clusterip_takes_the_per_packet_path() {
    let pod: IpAddr = Ipv4Addr::new(10, 244, 0, 9).into();
    let m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(3)),
    )]);
    for sport in [40000u16, 40001, 50000] {
        let t = run(&m, flow(pod, Some(sport), CIP, 80), Origin::PodPacket);
        assert_eq!(t.layer, "pod");
        assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
        assert_eq!(t.verdict.by.as_deref(), Some("slot"));
        assert_eq!(
            t.verdict.backend_id,
            Some(kernel_pod_choice(
                &m,
                pod,
                sport,
                &fkey(CIP, 80, Scope::External)
            ))
        );
        // DNAT only: the pod's address is kept.
        assert_eq!(t.verdict.mode.as_deref(), Some("dnat"));
    }
    // Without a source port: which one depends on it.
    let t = run(&m, flow(pod, None, CIP, 80), Origin::PodPacket);
    assert!(t.verdict.depends_on_source_port, "{t:?}");
    // A port no Service defines, and a ClusterIP without endpoints: port unreachable.
    let t = run(&m, flow(pod, Some(1), CIP, 81), Origin::PodPacket);
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    // Not a ClusterIP: untouched.
    let t = run(&m, flow(pod, Some(1), LB, 80), Origin::PodPacket);
    assert_eq!(t.verdict.action, Action::Pass, "{t:?}");
    assert!(t.frontend.is_none());
    let text = render(&t);
    assert!(
        text.contains("a pod's device (TC ingress, per packet)"),
        "{text}"
    );
}

#[test]
fn a_pod_that_is_its_own_backend_is_masqueraded() {
    let pod = Ipv4Addr::new(10, 244, 1, 1);
    let m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(1)),
    )]);
    let t = run(&m, flow(pod, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
    assert_eq!(t.verdict.backend.as_deref(), Some("10.244.1.1:8080"));
    assert_eq!(t.verdict.mode.as_deref(), Some("masquerade"));
    assert!(t.verdict.detail.contains("hairpin"), "{}", t.verdict.detail);
    // Another pod: DNAT.
    let t = run(&m, flow(CLIENT, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.mode.as_deref(), Some("dnat"));
}

#[test]
fn a_local_backend_on_the_clients_bridge_is_masqueraded() {
    let client = Ipv4Addr::new(10, 244, 1, 9);
    let backend = be(Ipv4Addr::new(10, 244, 1, 1).into());
    let mut f = fe(FrontendKind::ClusterIP, vec![backend]);
    f.local_backends = [backend].into_iter().collect();
    let mut m = programmed(&[(fkey(CIP, 80, Scope::External), f.clone())]);
    // Both behind the bridge (device 3): masqueraded.
    m.routes = vec![(client.into(), 3), (backend.ip, 3)];
    let t = run(&m, flow(client, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
    assert_eq!(t.verdict.mode.as_deref(), Some("masquerade"));
    assert!(t.verdict.detail.contains("bridge"), "{}", t.verdict.detail);
    // Each behind a device of its own (routed veths): DNAT.
    m.routes = vec![(client.into(), 3), (backend.ip, 4)];
    let t = run(&m, flow(client, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.mode.as_deref(), Some("dnat"));
    // A backend not flagged local: DNAT (the kernel looks the route up for local ones only).
    let mut m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, vec![backend]),
    )]);
    m.routes = vec![(client.into(), 3), (backend.ip, 3)];
    let t = run(&m, flow(client, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.mode.as_deref(), Some("dnat"));
}

#[test]
fn pods_take_the_per_packet_path_under_socket_lb_host_netns_only() {
    let mut m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, Vec::new()),
    )]);
    let t = run(&m, flow(CLIENT, Some(40000), CIP, 80), Origin::Pod);
    assert_eq!(t.layer, "socket");
    m.node_flags = node_flags::SOCK_HOSTNS_ONLY;
    let t = run(&m, flow(CLIENT, Some(40000), CIP, 80), Origin::Pod);
    assert_eq!(t.layer, "pod");
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains("--socket-lb-host-netns-only")),
        "{t:?}"
    );
    // The host's own processes keep the socket layer.
    let t = run(&m, flow(CLIENT, Some(40000), CIP, 80), Origin::Host);
    assert_eq!(t.layer, "socket");
}

#[test]
fn a_tracked_pod_flow_keeps_its_backend_and_other_flows_are_left_alone() {
    let pod = Ipv4Addr::new(10, 244, 0, 9);
    let mut m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(3)),
    )]);
    let (id, b4) = {
        let c = m.maps.contents();
        let (id, b) = c.backends.iter().nth(2).map(|(i, b)| (*i, *b)).unwrap();
        let BackendValue::V4(b4) = b else {
            panic!("IPv4")
        };
        (id, b4)
    };
    let key = Ct4Key {
        saddr: ip4_to_raw(pod.octets()),
        daddr: ip4_to_raw(CIP.octets()),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: agent_common::proto::TCP,
        dir: ct_dir::FORWARD,
        _pad: [0; 2],
    };
    let val = |flags| Ct4Value {
        nat_saddr: ip4_to_raw(pod.octets()),
        nat_daddr: b4.addr,
        nat_sport: 40000u16.to_be(),
        nat_dport: b4.port,
        backend_id: id,
        rev_nat_id: 1,
        flags,
        tcp_flags: 0,
        last_seen: NOW - 2,
    };
    m.ct = vec![(
        CtLookupKey::V4(key),
        CtLookupValue::V4(val(ct_flags::POD | ct_flags::LOCAL)),
    )];
    let t = run(&m, flow(pod, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.by.as_deref(), Some("conntrack"), "{t:?}");
    assert_eq!(t.verdict.backend_id, Some(id));
    assert_eq!(t.verdict.mode.as_deref(), Some("dnat"));
    assert!(t.conntrack.as_ref().unwrap().pod);
    // A flow of another path holds the tuple: ferry_tc_pod passes the packet.
    m.ct = vec![(CtLookupKey::V4(key), CtLookupValue::V4(val(ct_flags::SNAT)))];
    let t = run(&m, flow(pod, Some(40000), CIP, 80), Origin::PodPacket);
    assert_eq!(t.verdict.action, Action::Pass, "{t:?}");
}

#[test]
fn the_text_report_names_the_service_port() {
    let m = programmed(&[(
        fkey(CIP, 80, Scope::External),
        fe(FrontendKind::ClusterIP, pods(1)),
    )]);
    let mut t = run(&m, flow(CLIENT, None, CIP, 80), Origin::Pod);
    let fe = t.frontend.as_mut().unwrap();
    fe.service = Some("default/web".into());
    fe.port_name = Some("http".into());
    let text = render(&t);
    assert!(text.contains("default/web port http"), "{text}");
}
