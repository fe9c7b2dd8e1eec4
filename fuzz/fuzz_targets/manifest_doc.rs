//! Kubernetes documents built as trees and written as JSON or as YAML with tags, anchors,
//! aliases and both styles (see doc.rs, yaml_emit.rs). Besides the manifest_yaml checks: a
//! file that parses as YAML loses no object silently (every Service, EndpointSlice and Node
//! with a name comes out as an object or is named in a diagnostic); one that does not parses
//! is reported and gives no object.
#![no_main]

use ferry_fuzz::{doc::Manifest, invariants};
use serde::Deserialize as _;

libfuzzer_sys::fuzz_target!(|manifest: Manifest| {
    let loaded = invariants::read_and_translate(&manifest.bytes);
    let parses = serde_yaml::Deserializer::from_slice(&manifest.bytes)
        .all(|doc| serde_yaml::Value::deserialize(doc).is_ok());
    if !parses {
        let o = &loaded.objects;
        let objects = o.services.len() + o.slices.len() + o.nodes.len();
        assert_eq!(
            objects, 0,
            "objects read from a file that is not YAML: {loaded:?}"
        );
        assert!(
            loaded.diagnostics.iter().any(|d| d.kind == "manifest"),
            "a file that is not YAML, not reported: {loaded:?}"
        );
        return;
    }
    for (kind, name) in manifest.named_objects() {
        let read = match kind {
            "Service" => loaded.objects.services.keys().any(|k| k.name == name),
            "EndpointSlice" => loaded.objects.slices.keys().any(|k| k.name == name),
            _ => loaded.objects.nodes.contains_key(&name),
        };
        let reported = loaded
            .diagnostics
            .iter()
            .any(|d| d.kind == kind && d.name == name);
        assert!(
            read || reported,
            "{kind} {name:?} neither read nor reported: {loaded:?}"
        );
    }
});
