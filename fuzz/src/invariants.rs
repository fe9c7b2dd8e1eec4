//! What must hold for any input, besides not panicking. A broken rule panics with what broke,
//! which libFuzzer reports as a crash and saves the input of.

use ferry::{
    model::{
        Config, Diagnostic, Family, FrontendKey, Objects, Scope,
        names::{self, NameRule},
    },
    source::Loaded,
};

use crate::entry;

/// A diagnostic is one line that names its object's kind and says what is wrong.
fn check_diagnostic(d: &Diagnostic, kinds: &[&str]) {
    assert!(
        kinds.contains(&d.kind),
        "diagnostic of kind {:?}: {d}",
        d.kind
    );
    assert!(
        !d.reason.trim().is_empty(),
        "diagnostic without a reason: {d:?}"
    );
    assert!(
        !d.reason.contains('\n'),
        "diagnostic on several lines: {d:?}"
    );
    assert!(
        !d.to_string().contains(['\n', '\r']),
        "diagnostic shown on several lines: {d:?}"
    );
}

/// One read of a manifest file: diagnostics are proper; an object whose namespace or name the
/// API server would have refused is held only as broken (never proxied) and says why.
pub fn check_loaded(loaded: &Loaded) {
    const KINDS: &[&str] = &["manifest", "Service", "EndpointSlice", "Node"];
    for d in &loaded.diagnostics {
        check_diagnostic(d, KINDS);
    }
    let o = &loaded.objects;
    for (key, svc) in &o.services {
        assert_eq!(*key, svc.name, "Service key");
        svc.diags.iter().for_each(|d| check_diagnostic(d, KINDS));
        let named = names::check(&key.namespace, NameRule::Dns1123Label).is_ok()
            && names::check(&key.name, NameRule::Dns1035Label).is_ok();
        assert!(
            named || (svc.spec.is_none() && !svc.diags.is_empty()),
            "Service {key:?} with a bad name proxied or unreported: {svc:?}"
        );
    }
    for (key, slice) in &o.slices {
        assert_eq!(*key, slice.key, "EndpointSlice key");
        slice.diags.iter().for_each(|d| check_diagnostic(d, KINDS));
        let named = names::check(&key.namespace, NameRule::Dns1123Label).is_ok()
            && names::check(&key.name, NameRule::Dns1123Subdomain).is_ok();
        assert!(
            named || (slice.service.is_none() && !slice.diags.is_empty()),
            "EndpointSlice {key:?} with a bad name used or unreported: {slice:?}"
        );
    }
    for (name, node) in &o.nodes {
        assert_eq!(*name, node.name, "Node key");
        node.diags.iter().for_each(|d| check_diagnostic(d, KINDS));
        let named = names::check(name, NameRule::Dns1123Subdomain).is_ok();
        assert!(
            named || (node.ips.is_empty() && !node.diags.is_empty()),
            "Node {name:?} with a bad name used or unreported: {node:?}"
        );
    }
}

/// Reads `bytes` on node "node-a" (and again on the first Node read, when there is one and it
/// is another), checks each read, checks that the same bytes read the same way twice, then
/// translates what was read and checks that. Returns the last read.
pub fn read_and_translate(bytes: &[u8]) -> Loaded {
    let mut node = "node-a".to_owned();
    let mut loaded = entry::read_manifest(bytes, &node);
    check_loaded(&loaded);
    if let Some(first) = loaded.objects.nodes.keys().next()
        && *first != node
    {
        node = first.clone();
        loaded = entry::read_manifest(bytes, &node);
        check_loaded(&loaded);
    }
    let again = entry::read_manifest(bytes, &node);
    assert!(
        again.diagnostics == loaded.diagnostics
            && again.objects.services == loaded.objects.services
            && again.objects.slices == loaded.objects.slices
            && again.objects.nodes == loaded.objects.nodes,
        "two reads of the same bytes differ"
    );
    let cfg = Config {
        node_name: node,
        ..Config::default()
    };
    translate_and_check(&loaded.objects, &cfg);
    loaded
}

/// Translates `objects` with `cfg` twice, from the same value and from a copy (same output: the
/// translation is deterministic), and checks the result against the objects.
pub fn translate_and_check(objects: &Objects, cfg: &Config) {
    let (desired, diags) = entry::translate(objects, cfg);
    let (again, again_diags) = entry::translate(&objects.clone(), cfg);
    assert!(
        desired == again,
        "two translations of the same inputs differ"
    );
    assert!(
        diags == again_diags,
        "two translations gave different diagnostics"
    );

    for d in &diags {
        check_diagnostic(d, &["Service", "EndpointSlice", "Node"]);
    }
    for (key, fe) in &desired.frontends {
        assert!(
            objects
                .services
                .get(&fe.service)
                .is_some_and(|s| s.spec.is_some()),
            "{key}: of no Service ({})",
            fe.service
        );
        assert_ne!(key.port, 0, "{key}: port 0");
        assert!(
            fe.backends.windows(2).all(|w| w[0] < w[1]),
            "{key}: backends not sorted and deduplicated: {:?}",
            fe.backends
        );
        let family = Family::of(&key.ip);
        assert!(
            fe.source_ranges.iter().all(|c| c.family() == family),
            "{key}: source ranges of the other family: {:?}",
            fe.source_ranges
        );
        assert!(
            !matches!(key.ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()),
            "{key}: an IPv4-mapped frontend (the datapath looks those up as IPv4)"
        );
        for b in &fe.backends {
            assert_eq!(
                Family::of(&b.ip),
                family,
                "{key}: backend {b} of the other family"
            );
            assert_eq!(b.proto, key.proto, "{key}: backend {b} of another protocol");
            assert_ne!(b.port, 0, "{key}: backend {b} with port 0");
        }
        assert!(
            fe.local_backends
                .iter()
                .all(|b| fe.backends.binary_search(b).is_ok()),
            "{key}: local backends {:?} not among the backends {:?}",
            fe.local_backends,
            fe.backends
        );
        assert!(
            !fe.terminating || !fe.backends.is_empty(),
            "{key}: terminating and empty"
        );
        if fe.etp_local {
            let twin = FrontendKey {
                scope: Scope::Internal,
                ..*key
            };
            assert_eq!(
                key.scope,
                Scope::External,
                "{key}: eTP Local on the internal entry"
            );
            assert!(
                desired.frontends.contains_key(&twin),
                "{key}: eTP Local without {twin}"
            );
        }
        if key.scope == Scope::Internal {
            let twin = FrontendKey {
                scope: Scope::External,
                ..*key
            };
            let ext = desired.frontends.get(&twin);
            assert!(
                ext.is_some_and(|e| e.etp_local),
                "{key}: internal entry without eTP twin"
            );
        }
    }
    for (svc, hc) in &desired.health_checks {
        assert!(
            objects.services.contains_key(svc),
            "health check of no Service {svc}"
        );
        assert_ne!(hc.node_port, 0, "health check node port 0 for {svc}");
    }
}
