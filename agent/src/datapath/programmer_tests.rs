//! The diff logic against an in-memory model of the maps that records every
//! write, so the tests can say which writes happen and in which order.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{
    AffinityKey, AffinityValue, Backend4, RevNat4, Svc4Key, SvcValue, affinity_client, maps,
    svc_flags,
};

use super::*;
use crate::{
    datapath::mem_maps::{MemMaps, Op},
    model::{BackendAddr, Cidr, Frontend, FrontendKey, FrontendKind, Protocol, Scope, ServiceName},
};

type FakeMaps = MemMaps;

fn key(ip: [u8; 4], port: u16) -> FrontendKey {
    FrontendKey {
        ip: Ipv4Addr::from(ip).into(),
        port,
        proto: Protocol::Tcp,
        scope: Scope::External,
    }
}

fn be(last: u8, port: u16) -> BackendAddr {
    BackendAddr {
        ip: Ipv4Addr::new(10, 244, 0, last).into(),
        port,
        proto: Protocol::Tcp,
    }
}

fn frontend(name: &str, backends: Vec<BackendAddr>) -> Frontend {
    Frontend {
        service: ServiceName {
            namespace: "default".into(),
            name: name.into(),
        },
        port_name: "http".into(),
        kind: FrontendKind::ClusterIP,
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

fn desired(entries: Vec<(FrontendKey, Frontend)>) -> Desired {
    Desired {
        frontends: entries.into_iter().collect(),
        ..Desired::default()
    }
}

/// The IPv4 service-map key of `k`'s slot, spelled out byte by byte here
/// rather than through the codec under test.
fn raw(k: &FrontendKey, slot: u16) -> SvcKey {
    let IpAddr::V4(ip) = k.ip else {
        panic!("an IPv4 frontend")
    };
    SvcKey::V4(Svc4Key {
        addr: u32::from_ne_bytes(ip.octets()),
        port: k.port.to_be(),
        slot,
        proto: k.proto.number(),
        scope: k.scope.number(),
        _pad: [0; 2],
    })
}

fn pos(ops: &[Op], op: &Op) -> usize {
    ops.iter()
        .position(|o| o == op)
        .unwrap_or_else(|| panic!("{op:?} not in {ops:?}"))
}

#[test]
fn programs_new_frontends_and_then_writes_nothing_when_unchanged() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (a, b) = (key([10, 96, 0, 1], 80), key([10, 96, 0, 2], 53));
    let d = desired(vec![
        (a, frontend("a", vec![be(2, 8080), be(3, 8080)])),
        (b, frontend("b", vec![be(4, 53)])),
    ]);
    let r = p.apply(&d);
    assert_eq!((r.added, r.updated, r.removed), (2, 0, 0));
    assert!(r.failed.is_empty());
    let ops = maps.take_ops();
    // Backends and slots before the frontend that makes them reachable.
    assert!(pos(&ops, &Op::PutSvc(raw(&a, 1))) < pos(&ops, &Op::PutSvc(raw(&a, 0))));
    assert!(pos(&ops, &Op::PutRevNat(1)) < pos(&ops, &Op::PutSvc(raw(&a, 0))));
    let m = maps.contents();
    // Two frontends, three slots, and each ClusterIP's mark.
    assert_eq!(m.services.len(), 2 + 3 + 2);
    assert_eq!(m.services[&raw(&a, 0)].count, 2);
    assert_eq!(m.backends.len(), 3);
    assert_eq!(m.rev_nat.len(), 2);
    drop(m);

    let r = p.apply(&d);
    assert_eq!((r.added, r.updated, r.removed, r.unchanged), (0, 0, 0, 2));
    assert_eq!(maps.take_ops(), vec![], "an unchanged state writes nothing");
}

#[test]
fn a_changed_frontend_is_rewritten_alone_in_a_safe_order() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (a, b) = (key([10, 96, 0, 1], 80), key([10, 96, 0, 2], 80));
    p.apply(&desired(vec![
        (a, frontend("a", vec![be(2, 80), be(3, 80)])),
        (b, frontend("b", vec![be(9, 80)])),
    ]));
    maps.take_ops();
    let old_id_of_3 = maps.0.borrow().contents.services[&raw(&a, 2)].backend_id;

    p.apply(&desired(vec![
        (a, frontend("a", vec![be(2, 80)])),
        (b, frontend("b", vec![be(9, 80)])),
    ]));
    let ops = maps.take_ops();
    assert!(
        ops.iter()
            .all(|o| !matches!(o, Op::PutSvc(k) | Op::DelSvc(k) if codec::frontend_key(k).map(|f| f.ip) == Some(b.ip))),
        "service b untouched: {ops:?}"
    );
    let frontend_write = pos(&ops, &Op::PutSvc(raw(&a, 0)));
    assert!(
        frontend_write < pos(&ops, &Op::DelSvc(raw(&a, 2))),
        "count shrinks before the slot goes"
    );
    assert!(frontend_write < pos(&ops, &Op::DelBackend(old_id_of_3)));
    assert_eq!(maps.0.borrow().contents.services[&raw(&a, 0)].count, 1);
}

#[test]
fn removing_a_frontend_deletes_slot_zero_first_and_frees_everything() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let a = key([10, 96, 0, 1], 80);
    p.apply(&desired(vec![(
        a,
        frontend("a", vec![be(2, 80), be(3, 80)]),
    )]));
    maps.take_ops();
    let r = p.apply(&Desired::default());
    assert_eq!(r.removed, 1);
    let ops = maps.take_ops();
    assert_eq!(ops[0], Op::DelSvc(raw(&a, 0)));
    let m = maps.contents();
    assert!(m.services.is_empty() && m.backends.is_empty() && m.rev_nat.is_empty());
}

#[test]
fn shared_backends_are_refcounted() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (a, b) = (key([10, 96, 0, 1], 80), key([10, 96, 0, 2], 80));
    p.apply(&desired(vec![
        (a, frontend("a", vec![be(2, 80)])),
        (b, frontend("b", vec![be(2, 80)])),
    ]));
    assert_eq!(maps.0.borrow().contents.backends.len(), 1);
    p.apply(&desired(vec![(b, frontend("b", vec![be(2, 80)]))]));
    assert_eq!(
        maps.0.borrow().contents.backends.len(),
        1,
        "still used by b"
    );
    p.apply(&Desired::default());
    assert!(maps.0.borrow().contents.backends.is_empty());
}

#[test]
fn a_restarted_agent_adopts_the_state_and_rewrites_nothing() {
    let maps = FakeMaps::default();
    let a = key([10, 96, 0, 1], 80);
    let mut f = frontend("a", vec![be(2, 80), be(3, 80)]);
    f.affinity_timeout = Some(10800);
    let d = desired(vec![(a, f)]);
    Programmer::adopt(maps.clone()).apply(&d);
    maps.take_ops();

    let mut second = Programmer::adopt(maps.clone());
    assert_eq!(second.frontend_count(), 1);
    let r = second.apply(&d);
    assert_eq!((r.unchanged, r.added, r.updated), (1, 0, 0));
    assert_eq!(maps.take_ops(), vec![]);
    // New ids do not collide with adopted ones.
    let b = key([10, 96, 0, 9], 80);
    let mut d2 = d.clone();
    d2.frontends.insert(b, frontend("b", vec![be(7, 80)]));
    second.apply(&d2);
    let m = maps.contents();
    assert_eq!(m.backends.len(), 3);
    assert_eq!(m.rev_nat.len(), 2);
}

#[test]
fn adoption_removes_stray_slots_and_orphans_and_repairs_incomplete_frontends() {
    let maps = FakeMaps::default();
    let a = key([10, 96, 0, 1], 80);
    let d = desired(vec![(a, frontend("a", vec![be(2, 80), be(3, 80)]))]);
    Programmer::adopt(maps.clone()).apply(&d);
    {
        let mut guard = maps.0.borrow_mut();
        let m = &mut guard.contents;
        // A slot past the count, an orphan backend, an orphan rev-NAT entry,
        // and a frontend whose second backend vanished.
        m.services.insert(
            raw(&a, 7),
            SvcValue {
                backend_id: 1,
                ..Default::default()
            },
        );
        m.backends.insert(99, BackendValue::V4(Backend4::default()));
        m.rev_nat.insert(42, RevNatValue::V4(RevNat4::default()));
        let second = m.services[&raw(&a, 2)].backend_id;
        m.backends.remove(&second);
    }
    maps.take_ops();
    let mut p = Programmer::adopt(maps.clone());
    let ops = maps.take_ops();
    assert!(ops.contains(&Op::DelSvc(raw(&a, 7))));
    assert!(ops.contains(&Op::DelBackend(99)));
    assert!(ops.contains(&Op::DelRevNat(42)));
    let r = p.apply(&d);
    assert_eq!(r.updated, 1, "the incomplete frontend is rewritten");
    let m = maps.contents();
    let ids: Vec<u32> = (1..=2)
        .map(|s| m.services[&raw(&a, s)].backend_id)
        .collect();
    assert!(ids.iter().all(|id| m.backends.contains_key(id)));
}

#[test]
fn affinity_to_a_removed_backend_is_forgotten() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let a = key([10, 96, 0, 1], 80);
    let mut f = frontend("a", vec![be(2, 80), be(3, 80)]);
    f.affinity_timeout = Some(60);
    p.apply(&desired(vec![(a, f.clone())]));
    let (rev, gone_id, kept_id) = {
        let m = maps.contents();
        (
            m.services[&raw(&a, 0)].rev_nat_id,
            m.services[&raw(&a, 2)].backend_id,
            m.services[&raw(&a, 1)].backend_id,
        )
    };
    assert_ne!(m_flags(&maps, &a) & svc_flags::AFFINITY, 0);
    for (client, id) in [(1u64, gone_id), (2, kept_id)] {
        maps.0.borrow_mut().contents.affinity.push((
            AffinityKey {
                client,
                rev_nat_id: rev,
                kind: affinity_client::NETNS_COOKIE,
                _pad: [0; 5],
            },
            AffinityValue {
                backend_id: id,
                last_used: 0,
            },
        ));
    }
    f.backends = vec![be(2, 80)];
    p.apply(&desired(vec![(a, f)]));
    let aff = maps.0.borrow().contents.affinity.clone();
    assert_eq!(aff.len(), 1);
    assert_eq!(aff[0].1.backend_id, kept_id);
}

fn m_flags(maps: &FakeMaps, k: &FrontendKey) -> u16 {
    maps.0.borrow().contents.services[&raw(k, 0)].flags
}

#[test]
fn a_frontend_too_large_is_refused_whole_and_the_rest_programmed() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (big, small) = (key([10, 96, 0, 1], 80), key([10, 96, 0, 2], 80));
    let many: Vec<BackendAddr> = (0..=u32::from(maps::MAX_BACKENDS_PER_SERVICE))
        .map(|i| BackendAddr {
            ip: Ipv4Addr::from(0x0a00_0000 + i).into(),
            port: 80,
            proto: Protocol::Tcp,
        })
        .collect();
    let r = p.apply(&desired(vec![
        (big, frontend("big", many)),
        (small, frontend("small", vec![be(2, 80)])),
    ]));
    assert_eq!(r.added, 1);
    assert_eq!(r.failed.len(), 1);
    let e = r.failed[0].1.to_string();
    assert!(e.contains("default/big"), "{e}");
    assert_eq!(r.failed[0].1.reason(), "map_full");
    let m = maps.contents();
    assert!(!m.services.contains_key(&raw(&big, 0)));
    assert!(m.services.contains_key(&raw(&small, 0)));
    assert_eq!(
        m.backends.len(),
        1,
        "nothing of the refused frontend was written"
    );
}

#[test]
fn etp_local_external_entry_is_flagged_two_scopes() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let ext = FrontendKey {
        scope: Scope::External,
        ..key([192, 0, 2, 10], 80)
    };
    let int = FrontendKey {
        scope: Scope::Internal,
        ..ext
    };
    let mut f = frontend("lb", vec![be(2, 80)]);
    f.kind = FrontendKind::LoadBalancer;
    f.etp_local = true;
    let mut g = f.clone();
    g.etp_local = false;
    g.backends.push(be(3, 80));
    p.apply(&desired(vec![(ext, f), (int, g)]));
    assert_ne!(m_flags(&maps, &ext) & svc_flags::TWO_SCOPES, 0);
    assert_eq!(m_flags(&maps, &int) & svc_flags::TWO_SCOPES, 0);
    let m = maps.contents();
    assert_eq!(
        m.services[&raw(&ext, 0)].rev_nat_id,
        m.services[&raw(&int, 0)].rev_nat_id
    );
}

fn lb(name: &str, backends: Vec<BackendAddr>) -> Frontend {
    Frontend {
        kind: FrontendKind::LoadBalancer,
        ..frontend(name, backends)
    }
}

fn cidr(a: [u8; 4], len: u8) -> Cidr {
    Cidr::new(Ipv4Addr::from(a).into(), len)
}

#[test]
fn source_ranges_follow_the_service_and_go_with_it() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let k = key([192, 0, 2, 10], 80);
    let mut f = lb("lb", vec![be(2, 80)]);
    f.source_ranges = vec![cidr([10, 0, 0, 0], 8), cidr([172, 16, 0, 0], 12)];
    p.apply(&desired(vec![(k, f.clone())]));
    let rev = maps.0.borrow().contents.services[&raw(&k, 0)].rev_nat_id;
    assert_ne!(m_flags(&maps, &k) & svc_flags::SOURCE_RANGES, 0);
    let ops = maps.take_ops();
    // Ranges are in place before the frontend that needs them.
    assert!(
        pos(&ops, &Op::PutRange(rev, cidr([10, 0, 0, 0], 8))) < pos(&ops, &Op::PutSvc(raw(&k, 0)))
    );

    f.source_ranges = vec![cidr([10, 0, 0, 0], 8)];
    p.apply(&desired(vec![(k, f.clone())]));
    let ops = maps.take_ops();
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::PutRange(..) | Op::DelRange(..)))
            .collect::<Vec<_>>(),
        vec![&Op::DelRange(rev, cidr([172, 16, 0, 0], 12))]
    );
    // A restarted agent adopts them: nothing to write.
    let mut second = Programmer::adopt(maps.clone());
    assert_eq!(second.apply(&desired(vec![(k, f)])).unchanged, 1);
    assert_eq!(maps.take_ops(), vec![]);
    second.apply(&Desired::default());
    assert!(maps.0.borrow().contents.ranges.is_empty());
}

#[test]
fn frontends_the_egress_guard_must_check_are_seen_and_adopted() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let mask = svc_flags::DROP_NO_LOCAL | svc_flags::SOURCE_RANGES;
    let k = key([192, 0, 2, 10], 80);
    let plain = lb("lb", vec![be(2, 80)]);
    p.apply(&desired(vec![(k, plain.clone())]));
    assert!(!p.any_flagged(mask), "no rule of the guard's");

    let mut ranged = plain.clone();
    ranged.source_ranges = vec![cidr([10, 0, 0, 0], 8)];
    p.apply(&desired(vec![(k, ranged)]));
    assert!(p.any_flagged(mask), "source ranges");
    // A restarted agent sees it in what it adopts.
    assert!(Programmer::adopt(maps.clone()).any_flagged(mask));

    let mut no_local = lb("lb", vec![]);
    no_local.drop_no_local = true;
    p.apply(&desired(vec![(k, no_local)]));
    assert!(
        p.any_flagged(mask),
        "a Local policy without a local endpoint"
    );

    p.apply(&desired(vec![(k, plain)]));
    assert!(!p.any_flagged(mask), "none left");
}

#[test]
fn maglev_tables_are_written_as_diffs_and_name_only_live_backends() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let k = key([192, 0, 2, 10], 80);
    let mut f = lb("lb", (2..=6).map(|i| be(i, 80)).collect());
    f.maglev = true;
    p.apply(&desired(vec![(k, f.clone())]));
    let m = maglev::MAGLEV_TABLE_SIZE as usize;
    assert_eq!(maps.0.borrow().contents.maglev.len(), m);
    assert_eq!(
        maps.take_ops()
            .iter()
            .filter(|o| **o == Op::PutMaglev)
            .count(),
        m
    );

    // Remove one of five backends: about a fifth of the table is rewritten.
    f.backends.retain(|b| *b != be(4, 80));
    p.apply(&desired(vec![(k, f.clone())]));
    let writes = maps
        .take_ops()
        .iter()
        .filter(|o| **o == Op::PutMaglev)
        .count();
    assert!(
        writes > m / 6 && writes < m / 3,
        "{writes} of {m} entries rewritten"
    );
    let live: BTreeSet<u32> = (1..=4)
        .map(|s| maps.0.borrow().contents.services[&raw(&k, s)].backend_id)
        .collect();
    assert!(
        maps.0
            .borrow()
            .contents
            .maglev
            .values()
            .all(|id| live.contains(id))
    );

    // Switching Maglev off clears the table.
    f.maglev = false;
    p.apply(&desired(vec![(k, f)]));
    assert!(maps.0.borrow().contents.maglev.is_empty());
    assert_eq!(m_flags(&maps, &k) & svc_flags::MAGLEV, 0);
}

#[test]
fn udp_backends_no_frontend_uses_are_reported_gone() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let udp = |last: u8| BackendAddr {
        proto: Protocol::Udp,
        ..be(last, 53)
    };
    let (a, b) = (key([10, 96, 0, 1], 53), key([10, 96, 0, 2], 53));
    let r = p.apply(&desired(vec![
        (a, frontend("a", vec![udp(2), udp(3)])),
        (b, frontend("b", vec![udp(3), be(4, 80)])),
    ]));
    assert!(r.gone_udp.is_empty());
    // udp(3) stays in b; TCP backends are never reported.
    let r = p.apply(&desired(vec![
        (a, frontend("a", vec![udp(2)])),
        (b, frontend("b", vec![udp(3)])),
    ]));
    assert!(r.gone_udp.is_empty(), "{:?}", r.gone_udp);
    let r = p.apply(&desired(vec![(a, frontend("a", vec![udp(3)]))]));
    assert_eq!(r.gone_udp, vec![udp(2)], "udp(3) moved to a, udp(2) left");
    let r = p.apply(&Desired::default());
    assert_eq!(r.gone_udp, vec![udp(3)]);
}

/// Everything a frontend can need: several backends, source ranges, a
/// Maglev table, affinity.
fn rich(name: &str, backends: Vec<BackendAddr>) -> Frontend {
    let mut f = lb(name, backends);
    f.source_ranges = vec![cidr([10, 0, 0, 0], 8), cidr([192, 168, 0, 0], 16)];
    f.maglev = true;
    f.affinity_timeout = Some(60);
    f
}

#[test]
fn a_write_failing_anywhere_leaves_the_maps_exactly_as_they_were() {
    let k = key([192, 0, 2, 10], 80);
    let other = key([192, 0, 2, 11], 80);
    let base = desired(vec![
        (k, rich("lb", vec![be(2, 80), be(3, 80)])),
        (other, frontend("other", vec![be(3, 80)])),
    ]);
    // The change to make: new backends, a changed shared backend, another
    // range, a new table.
    let mut next = base.clone();
    let mut f = rich("lb", vec![be(3, 80), be(4, 80), be(5, 80)]);
    f.source_ranges.push(cidr([172, 16, 0, 0], 12));
    f.terminating = true;
    next.frontends.insert(k, f);
    // A new frontend too.
    next.frontends
        .insert(key([192, 0, 2, 12], 80), rich("new", vec![be(6, 80)]));

    // How many writes a clean run takes.
    let probe = MemMaps::default();
    let mut p = Programmer::adopt(probe.clone());
    p.apply(&base);
    probe.take_ops();
    p.apply(&next);
    let writes = probe.take_ops().len();
    assert!(writes > 20, "{writes}");

    // Every early write, then samples through the Maglev table's thousands.
    let mut points: BTreeSet<usize> = (0..writes.min(48)).collect();
    points.extend((1..16).map(|i| writes * i / 16));
    points.extend(writes.saturating_sub(8)..writes);
    for n in points {
        let maps = MemMaps::default();
        let mut p = Programmer::adopt(maps.clone());
        assert!(p.apply(&base).failed.is_empty());
        let before = maps.contents();
        maps.fail_write(n);
        let r = p.apply(&next);
        assert_eq!(r.failed.len(), 1, "write {n}: one frontend fails");
        let (failed, _) = &r.failed[0];
        let after = maps.contents();
        // The failed frontend is exactly as before; the other was changed.
        let mine = |c: &crate::datapath::mem_maps::Contents| {
            let k0 = raw(failed, 0);
            let v = c.services.get(&k0).copied();
            let slots: Vec<_> = (1..=v.map_or(0, |v| v.count))
                .map(|s| c.services.get(&raw(failed, s)).copied())
                .collect();
            (v, slots)
        };
        assert_eq!(mine(&after), mine(&before), "write {n}: {failed} untouched");
        // Nothing it acquired stays behind: clearing everything empties the maps.
        let r = p.apply(&Desired::default());
        assert!(r.failed.is_empty(), "write {n}: {:?}", r.failed);
        let left = maps.contents();
        assert!(
            left.services.is_empty()
                && left.members.is_empty()
                && left.backends.is_empty()
                && left.rev_nat.is_empty()
                && left.ranges.is_empty()
                && left.maglev.is_empty(),
            "write {n}: leaked {left:?}"
        );
        // And the same change programs cleanly afterwards.
        let mut again = Programmer::adopt(maps.clone());
        assert!(again.apply(&next).failed.is_empty());
    }
}

#[test]
fn full_maps_are_refused_by_name_and_size_before_any_write() {
    let caps = Capacities {
        maglev_tables: 1,
        src_ranges: 3,
        ..Capacities::default()
    };
    let maps = MemMaps::default();
    let mut p = Programmer::adopt_with(maps.clone(), caps);
    let (a, b, c) = (
        key([192, 0, 2, 1], 80),
        key([192, 0, 2, 2], 80),
        key([192, 0, 2, 3], 80),
    );
    let mut with_ranges = lb("ranges", vec![be(4, 80)]);
    with_ranges.source_ranges = vec![cidr([10, 0, 0, 0], 8), cidr([11, 0, 0, 0], 8)];
    let mut maglev_only = lb("second", vec![be(3, 80)]);
    maglev_only.maglev = true;
    let r = p.apply(&desired(vec![
        (a, rich("first", vec![be(2, 80)])),
        (b, maglev_only),
        (c, with_ranges),
    ]));
    let errors: Vec<String> = r.failed.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(r.added, 1, "{errors:?}");
    assert_eq!(
        errors,
        [
            format!(
                "map {} is full (1 Maglev tables): cannot program default/second 192.0.2.2:80/TCP",
                maps::MAGLEV
            ),
            format!(
                "map {} is full (3 ranges): cannot program default/ranges 192.0.2.3:80/TCP",
                maps::SRC_RANGE_V4
            ),
        ]
    );
    let m = maps.contents();
    assert_eq!(m.ranges.len(), 2, "only the first service's ranges");
    assert_eq!(m.backends.len(), 1, "nothing of the refused ones");
    assert_eq!(m.rev_nat.len(), 1);
}

#[test]
fn verify_repairs_what_someone_else_changed_in_the_kernel() {
    let maps = MemMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let a = key([10, 96, 0, 1], 80);
    let d = desired(vec![(a, frontend("a", vec![be(2, 80), be(3, 80)]))]);
    p.apply(&d);
    let want = maps.contents();
    {
        let mut guard = maps.0.borrow_mut();
        let m = &mut guard.contents;
        m.services.remove(&raw(&a, 2));
        let id = m.services[&raw(&a, 1)].backend_id;
        let BackendValue::V4(b) = m.backends.get_mut(&id).unwrap() else {
            panic!("an IPv4 backend")
        };
        b.port = 1;
        m.services
            .insert(raw(&key([10, 96, 0, 9], 80), 0), SvcValue::default());
    }
    assert_eq!(p.verify(), 2, "the damaged frontend and the unknown one");
    let r = p.apply(&d);
    assert_eq!(r.updated, 1);
    assert_eq!(maps.contents(), want);
}

fn member(rev_nat_id: u16, b: &BackendAddr) -> MemberKey {
    crate::datapath::codec::member_key(rev_nat_id, b)
}

#[test]
fn exposed_frontends_list_their_backends_for_dsr_and_nothing_else_does() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (np, cip) = (key([172, 18, 0, 2], 30080), key([10, 96, 0, 1], 80));
    let internal = FrontendKey {
        scope: Scope::Internal,
        ..np
    };
    let mut node_port = frontend("web", vec![be(2, 8080), be(3, 8080)]);
    node_port.kind = FrontendKind::NodePort;
    let d = desired(vec![
        (np, node_port.clone()),
        (internal, node_port.clone()),
        (cip, frontend("web", vec![be(2, 8080), be(3, 8080)])),
    ]);
    p.apply(&d);
    let ops = maps.take_ops();
    let rev = maps.0.borrow().contents.services[&raw(&np, 0)].rev_nat_id;
    let (m2, m3) = (member(rev, &be(2, 8080)), member(rev, &be(3, 8080)));
    let members = |maps: &FakeMaps| maps.contents().members.keys().copied().collect::<Vec<_>>();
    assert_eq!(
        members(&maps),
        vec![m2, m3],
        "the NodePort's external scope only"
    );
    assert!(
        pos(&ops, &Op::PutMember(m3)) < pos(&ops, &Op::PutSvc(raw(&np, 0))),
        "members before the frontend that makes them reachable"
    );

    // A backend leaves: its membership goes after the frontend stops naming it.
    node_port.backends = vec![be(2, 8080)];
    p.apply(&desired(vec![
        (np, node_port.clone()),
        (internal, node_port.clone()),
        (cip, frontend("web", vec![be(2, 8080)])),
    ]));
    let ops = maps.take_ops();
    assert!(pos(&ops, &Op::PutSvc(raw(&np, 0))) < pos(&ops, &Op::DelMember(m3)));
    assert_eq!(members(&maps), vec![m2]);

    // A restarted agent fills an empty membership map (an older agent left
    // none) and drops strays, without touching the frontends.
    maps.0.borrow_mut().contents.members.clear();
    let stray = member(999, &be(7, 80));
    maps.0.borrow_mut().contents.members.insert(stray, 42);
    let mut second = Programmer::adopt(maps.clone());
    assert_eq!(members(&maps), vec![m2]);
    maps.take_ops();
    second.apply(&desired(vec![
        (np, node_port.clone()),
        (internal, node_port),
        (cip, frontend("web", vec![be(2, 8080)])),
    ]));
    assert_eq!(maps.take_ops(), vec![], "adopted as it is");

    // The service goes: so do its memberships.
    second.apply(&Desired::default());
    assert!(maps.contents().members.is_empty());
}

/// An IPv6 exposed frontend lists its backends as an IPv4 one does (DSR
/// carries both families): in the IPv6 membership map, before the frontend,
/// and gone with it.
#[test]
fn exposed_ipv6_frontends_list_their_backends_for_dsr() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let v6 = |last: u16| -> IpAddr { Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last).into() };
    let lb = FrontendKey {
        ip: v6(0x100),
        port: 80,
        proto: Protocol::Tcp,
        scope: Scope::External,
    };
    let cip = FrontendKey {
        ip: v6(0x200),
        ..lb
    };
    let b = |last: u16| BackendAddr {
        ip: v6(last),
        port: 8080,
        proto: Protocol::Tcp,
    };
    let mut load_balancer = frontend("web6", vec![b(2), b(3)]);
    load_balancer.kind = FrontendKind::LoadBalancer;
    p.apply(&desired(vec![
        (lb, load_balancer.clone()),
        (cip, frontend("web6", vec![b(2), b(3)])),
    ]));
    let ops = maps.take_ops();
    let members = |maps: &FakeMaps| maps.contents().members.clone();
    let have = members(&maps);
    assert_eq!(
        have.len(),
        2,
        "the LoadBalancer IP's backends only: {have:?}"
    );
    let rev = have
        .keys()
        .map(|k| codec::member_of(k).unwrap().0)
        .next()
        .unwrap();
    let (m2, m3) = (member(rev, &b(2)), member(rev, &b(3)));
    assert!(matches!(m2, MemberKey::V6(_)));
    assert_eq!(have.keys().copied().collect::<Vec<_>>(), vec![m2, m3]);
    let put_svc = ops
        .iter()
        .position(|o| matches!(o, Op::PutSvc(SvcKey::V6(k)) if k.slot == 0 && k.scope == agent_common::scope::EXTERNAL))
        .expect("the frontend written");
    assert!(
        pos(&ops, &Op::PutMember(m3)) < put_svc,
        "members before the frontend that makes them reachable"
    );

    load_balancer.backends = vec![b(2)];
    p.apply(&desired(vec![(lb, load_balancer)]));
    assert_eq!(members(&maps).keys().copied().collect::<Vec<_>>(), vec![m2]);

    p.apply(&Desired::default());
    assert!(maps.contents().members.is_empty());
}

/// kube-proxy's cluster-ips-check needs the socket layer to know every
/// ClusterIP whatever the port: one mark per address while any of its
/// ClusterIP frontends is programmed, gone with the last; adoption removes
/// marks nobody wants and writes missing ones.
#[test]
fn each_cluster_ip_is_marked_while_one_of_its_frontends_is_programmed() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let (a80, a53, b) = (
        key([10, 96, 0, 1], 80),
        key([10, 96, 0, 1], 53),
        key([10, 96, 0, 2], 80),
    );
    let marked = |m: &FakeMaps| -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = m
            .contents()
            .services
            .keys()
            .filter_map(codec::cluster_ip_of)
            .collect();
        v.sort();
        v
    };
    let fe = |n| frontend(n, vec![be(2, 8080)]);
    p.apply(&desired(vec![(a80, fe("a")), (a53, fe("a")), (b, fe("b"))]));
    assert_eq!(marked(&maps), [a80.ip, b.ip]);
    assert_eq!(
        maps.contents().services[&codec::cluster_ip_key(a80.ip)],
        codec::cluster_ip_value()
    );
    // One port of a goes: a stays marked; b goes: its mark goes.
    p.apply(&desired(vec![(a53, fe("a"))]));
    assert_eq!(marked(&maps), [a80.ip]);
    // An address that becomes an externalIP is no longer a ClusterIP.
    let external = Frontend {
        kind: FrontendKind::ExternalIP,
        ..fe("c")
    };
    p.apply(&desired(vec![(a53, external)]));
    assert!(marked(&maps).is_empty());
    p.apply(&desired(vec![(b, fe("b"))]));
    assert_eq!(marked(&maps), [b.ip]);

    // A previous agent's stale mark goes at adoption; a missing one is written.
    let mut m2 = maps.clone();
    m2.put_service(
        codec::cluster_ip_key(Ipv4Addr::new(10, 96, 9, 9).into()),
        codec::cluster_ip_value(),
    )
    .unwrap();
    m2.del_service(&codec::cluster_ip_key(b.ip)).unwrap();
    let p2 = Programmer::adopt(m2.clone());
    assert_eq!(marked(&m2), [b.ip]);
    assert_eq!(
        p2.service_entries(),
        2 + 1,
        "b's frontend, its slot and its mark"
    );
}

/// The local endpoint addresses that come and go are handed over as they change, each once,
/// whatever else is programmed (what ferry_tc_pod's devices follow, at the grain of one
/// address); a restarted agent hands over every adopted one first.
#[test]
fn local_endpoint_changes_are_handed_over_one_by_one() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let local = |name: &str, backends: Vec<BackendAddr>, local: &[BackendAddr]| {
        let mut f = frontend(name, backends);
        f.local_backends = local.iter().copied().collect();
        f
    };
    let (a, b) = (key([10, 96, 0, 1], 80), key([10, 96, 0, 2], 80));
    p.apply(&desired(vec![
        (a, local("a", vec![be(2, 80), be(3, 80)], &[be(2, 80)])),
        (b, local("b", vec![be(2, 81)], &[be(2, 81)])),
    ]));
    let ip = |last: u8| IpAddr::from(Ipv4Addr::new(10, 244, 0, last));
    assert_eq!(p.take_local_ip_changes(), (vec![ip(2)], vec![]));
    assert_eq!(p.take_local_ip_changes(), (vec![], vec![]), "nothing new");
    // b goes: 10.244.0.2 is still a's; then a's local backend moves to .4.
    p.apply(&desired(vec![(
        a,
        local("a", vec![be(2, 80), be(3, 80)], &[be(2, 80)]),
    )]));
    assert_eq!(p.take_local_ip_changes(), (vec![], vec![]));
    p.apply(&desired(vec![(
        a,
        local("a", vec![be(4, 80), be(3, 80)], &[be(4, 80)]),
    )]));
    assert_eq!(p.take_local_ip_changes(), (vec![ip(4)], vec![ip(2)]));
    // Gone and back between two calls: no change at all.
    p.apply(&Desired::default());
    p.apply(&desired(vec![(
        a,
        local("a", vec![be(4, 80), be(3, 80)], &[be(4, 80)]),
    )]));
    assert_eq!(p.take_local_ip_changes(), (vec![], vec![]));
    let mut again = Programmer::adopt(maps.clone());
    assert_eq!(
        again.take_local_ip_changes(),
        (vec![ip(4)], vec![]),
        "adopted"
    );
}

/// IPv6 frontends go to the IPv6 maps with the ids of the same spaces as
/// IPv4 ones (a backend or rev-NAT id names one entry of one family), are
/// removed from there, and are adopted by a restarted agent like IPv4 ones.
#[test]
fn ipv6_frontends_use_their_familys_maps_and_the_shared_ids() {
    let maps = FakeMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let v4 = key([10, 96, 0, 1], 80);
    let v6 = FrontendKey {
        ip: "fd00:96::1".parse().unwrap(),
        ..v4
    };
    let b6 = |last: u16| BackendAddr {
        ip: IpAddr::from([0xfd00, 0x10, 0x244, 0, 0, 0, 0, last]),
        port: 8080,
        proto: Protocol::Tcp,
    };
    let both = desired(vec![
        (v4, frontend("a", vec![be(2, 8080)])),
        (v6, frontend("a", vec![b6(2), b6(3)])),
    ]);
    let r = p.apply(&both);
    assert_eq!((r.added, r.failed.len()), (2, 0));
    let m = maps.contents();
    let v6_keys: Vec<&SvcKey> = m
        .services
        .keys()
        .filter(|k| matches!(k, SvcKey::V6(_)))
        .collect();
    assert_eq!(v6_keys.len(), 1 + 2 + 1, "frontend, two slots, the mark");
    assert_eq!(
        m.services[&codec::svc_key(&v6, 0)].count,
        2,
        "the IPv6 frontend's own entry"
    );
    let mut ids: Vec<(u32, bool)> = m
        .backends
        .iter()
        .map(|(id, b)| (*id, matches!(b, BackendValue::V6(_))))
        .collect();
    ids.sort();
    assert_eq!(ids, [(1, false), (2, true), (3, true)], "one id space");
    let rev6 = m.services[&codec::svc_key(&v6, 0)].rev_nat_id;
    assert_eq!(
        codec::rev_nat_target(&m.rev_nat[&rev6]),
        (v6.ip, 80),
        "the IPv6 rev-NAT entry restores the IPv6 ClusterIP"
    );
    assert_ne!(rev6, m.services[&codec::svc_key(&v4, 0)].rev_nat_id);
    drop(m);
    // The per-family counts the metrics read, kept as entries come and go.
    let counts = |p: &Programmer<FakeMaps>| {
        Family::ALL.map(|f| {
            (
                p.service_entries_of(f),
                p.backend_count_of(f),
                p.rev_nat_count_of(f),
            )
        })
    };
    assert_eq!(counts(&p), [(3, 1, 1), (4, 2, 1)]);

    // A restarted agent adopts both families: nothing to write.
    let mut again = Programmer::adopt(maps.clone());
    maps.take_ops();
    let r = again.apply(&both);
    assert_eq!((r.unchanged, r.added, r.updated), (2, 0, 0));
    assert_eq!(maps.take_ops(), vec![]);

    assert_eq!(counts(&again), [(3, 1, 1), (4, 2, 1)], "adopted");
    // The IPv6 frontend goes: nothing of the IPv6 family is left.
    again.apply(&desired(vec![(v4, frontend("a", vec![be(2, 8080)]))]));
    let m = maps.contents();
    assert!(m.services.keys().all(|k| matches!(k, SvcKey::V4(_))));
    assert!(
        m.backends
            .values()
            .all(|b| matches!(b, BackendValue::V4(_)))
    );
    assert!(m.rev_nat.values().all(|r| matches!(r, RevNatValue::V4(_))));
    assert_eq!(counts(&again), [(3, 1, 1), (0, 0, 0)]);
}
