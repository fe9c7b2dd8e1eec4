//! What must hold for any input, besides not panicking. A broken rule panics with what broke,
//! which libFuzzer reports as a crash and saves the input of.

use ferry::{
    model::{Diagnostic, FrontendKey, Inputs, Scope},
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
}

/// One read of a manifest file: diagnostics are proper, every object sits under its own name
/// (and namespace, which the reader fills in).
pub fn check_loaded(loaded: &Loaded) {
    for d in &loaded.diagnostics {
        check_diagnostic(d, &["manifest", "Service", "EndpointSlice", "Node"]);
    }
    for ((ns, name), svc) in &loaded.services {
        assert!(!name.is_empty(), "Service read without a name");
        assert_eq!(
            svc.metadata.name.as_deref(),
            Some(name.as_str()),
            "Service key"
        );
        assert_eq!(
            svc.metadata.namespace.as_deref(),
            Some(ns.as_str()),
            "Service key"
        );
    }
    for ((ns, name), slice) in &loaded.slices {
        assert!(!name.is_empty(), "EndpointSlice read without a name");
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some(name.as_str()),
            "slice key"
        );
        assert_eq!(
            slice.metadata.namespace.as_deref(),
            Some(ns.as_str()),
            "slice key"
        );
    }
    for (name, node) in &loaded.nodes {
        assert!(!name.is_empty(), "Node read without a name");
        assert_eq!(
            node.metadata.name.as_deref(),
            Some(name.as_str()),
            "Node key"
        );
    }
}

/// Reads `bytes`, checks the read, then translates what was read on the first Node's name (or
/// "node-a") and checks that. Returns what was read.
pub fn read_and_translate(bytes: &[u8]) -> Loaded {
    let loaded = entry::read_manifest(bytes);
    check_loaded(&loaded);
    let node = loaded.nodes.keys().next().cloned();
    let inputs = entry::manifest_inputs(loaded.clone(), node.as_deref().unwrap_or("node-a"));
    translate_and_check(&inputs);
    loaded
}

/// Translates `inputs` twice, from the same value and from a copy (same output: the
/// translation is deterministic), and checks the result against the inputs.
pub fn translate_and_check(inputs: &Inputs) {
    let (desired, diags) = entry::translate(inputs);
    let (again, again_diags) = entry::translate(&inputs.clone());
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
        let owner = (fe.service.namespace.clone(), fe.service.name.clone());
        assert!(
            inputs.services.contains_key(&owner),
            "{key}: of no Service ({})",
            fe.service
        );
        assert_ne!(key.port, 0, "{key}: port 0");
        assert!(
            fe.backends.windows(2).all(|w| w[0] < w[1]),
            "{key}: backends not sorted and deduplicated: {:?}",
            fe.backends
        );
        for b in &fe.backends {
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
        let owner = (svc.namespace.clone(), svc.name.clone());
        assert!(
            inputs.services.contains_key(&owner),
            "health check of no Service {svc}"
        );
        assert_ne!(hc.node_port, 0, "health check node port 0 for {svc}");
    }
}
