//! Manifest files built from fuzzer bytes, for the manifest_doc target: well-formed Services,
//! EndpointSlices, Nodes and Lists of them, edited where the fuzzer says (a value replaced by
//! any JSON value, a key removed or added), then written as JSON or as YAML with the features
//! a hand-written file may use (yaml_emit.rs). Byte mutations mostly break the syntax; edited
//! trees reach the object decoding behind it with every type in every field.

use arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::{Map, Value, json};

use crate::yaml_emit;

/// At most this many documents in a List, edits per file, items per generated array/object.
const MAX_ITEMS: usize = 6;
/// Generated values nest at most this deep (the decoder's own limit is higher: depth is not
/// what this target is after).
const MAX_DEPTH: u32 = 4;

/// Keys that mean something somewhere in the three kinds.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "type",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "ports",
    "port",
    "nodePort",
    "protocol",
    "targetPort",
    "sessionAffinity",
    "sessionAffinityConfig",
    "clientIP",
    "timeoutSeconds",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "healthCheckNodePort",
    "loadBalancerSourceRanges",
    "loadBalancer",
    "ingress",
    "ip",
    "ipMode",
    "addressType",
    "endpoints",
    "addresses",
    "conditions",
    "ready",
    "serving",
    "terminating",
    "nodeName",
    "hints",
    "forZones",
    "forNodes",
    "items",
    "address",
    "trafficDistribution",
];

const STRINGS: &[&str] = &[
    "v1",
    "discovery.k8s.io/v1",
    "discovery.k8s.io/v1beta1",
    "Service",
    "EndpointSlice",
    "Node",
    "List",
    "ServiceList",
    "web",
    "default",
    "TCP",
    "UDP",
    "SCTP",
    "IPv4",
    "IPv6",
    "10.96.0.10",
    "10.244.0.5",
    "172.18.0.2",
    "fd00::1",
    "None",
    "LoadBalancer",
    "NodePort",
    "Local",
    "ClientIP",
    "InternalIP",
    "kubernetes.io/service-name",
    "",
    "node-a",
];

fn templates(pick: u8) -> Value {
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"ferry.io/lb-algorithm": "maglev"}},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "externalIPs": ["192.0.2.50"], "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32088, "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "loadBalancerSourceRanges": ["198.51.100.0/24"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}}
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": ["10.244.0.5"], "nodeName": "node-a", "conditions": {"ready": true},
             "hints": {"forZones": [{"name": "zone-1"}]}},
            {"addresses": ["10.244.1.9"], "nodeName": "node-b",
             "conditions": {"ready": false, "serving": true, "terminating": true}}
        ]
    });
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": "node-a"}]}
    });
    match pick % 4 {
        0 => service,
        1 => slice,
        2 => node,
        _ => json!({"apiVersion": "v1", "kind": "List", "items": [service, slice, node]}),
    }
}

/// A JSON value of any type, small.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let kinds = if depth >= MAX_DEPTH { 6 } else { 8 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => json!(u.arbitrary::<f64>()?),
        4 => json!(STRINGS[u.choose_index(STRINGS.len())?]),
        5 => Value::String(u.arbitrary()?),
        6 => {
            let n = u.int_in_range(0..=MAX_ITEMS)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=MAX_ITEMS)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(key(u)?, value(u, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

fn key(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(if u.ratio(7, 8)? {
        KEYS[u.choose_index(KEYS.len())?].to_owned()
    } else {
        u.arbitrary()?
    })
}

/// One change to the tree, at the place `path` leads to (each step picks a child by index).
#[derive(Debug)]
enum Edit {
    Replace(Vec<u8>, Value),
    Remove(Vec<u8>),
    Insert(Vec<u8>, String, Value),
}

impl<'a> Arbitrary<'a> for Edit {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let path = (0..u.int_in_range(0..=MAX_DEPTH + 2)?)
            .map(|_| u.arbitrary())
            .collect::<Result<_>>()?;
        Ok(match u.int_in_range(0..=2)? {
            0 => Edit::Replace(path, value(u, 0)?),
            1 => Edit::Remove(path),
            _ => Edit::Insert(path, key(u)?, value(u, 0)?),
        })
    }
}

/// The value `path` leads to: each step picks a child of an object or array by index
/// (modulo its length), stopping early at a leaf.
fn walk<'v>(root: &'v mut Value, path: &[u8]) -> &'v mut Value {
    let mut at = root;
    for &step in path {
        let len = match &*at {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 {
            break;
        }
        let i = step as usize % len;
        at = match at {
            Value::Object(m) => m.values_mut().nth(i).expect("index below len"),
            Value::Array(a) => &mut a[i],
            _ => unreachable!("len is 0 for leaves"),
        };
    }
    at
}

/// A manifest file: the tree of its document (a template, edited) and the file's bytes.
pub struct Manifest {
    pub tree: Value,
    pub bytes: Vec<u8>,
}

/// The file as text (what `cargo fuzz fmt` shows of a crash).
impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "manifest file:\n{}",
            String::from_utf8_lossy(&self.bytes)
        )
    }
}

impl<'a> Arbitrary<'a> for Manifest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut tree = templates(u.arbitrary()?);
        for _ in 0..u.int_in_range(0..=MAX_ITEMS)? {
            edit(&mut tree, Edit::arbitrary(u)?);
        }
        let bytes = match u.int_in_range(0..=3)? {
            0 => serde_json::to_vec(&tree).expect("a serde_json::Value always serializes"),
            1 => serde_json::to_vec_pretty(&tree).expect("a serde_json::Value always serializes"),
            _ => yaml_emit::file(u, &tree)?,
        };
        Ok(Manifest { tree, bytes })
    }
}

fn edit(tree: &mut Value, e: Edit) {
    match e {
        Edit::Replace(path, v) => *walk(tree, &path) = v,
        Edit::Remove(path) => {
            let (last, parent) = path.split_last().map_or((0, &[][..]), |(l, p)| (*l, p));
            match walk(tree, parent) {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(last as usize % m.len()).cloned();
                    k.map(|k| m.remove(&k));
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(last as usize % a.len());
                }
                _ => {}
            }
        }
        Edit::Insert(path, k, v) => match walk(tree, &path) {
            Value::Object(m) => {
                m.insert(k, v);
            }
            Value::Array(a) => a.push(v),
            other => *other = v,
        },
    }
}

impl Manifest {
    /// The objects of kinds ferry reads, in versions it reads, with a non-empty name: the
    /// document itself, or the items of (nested) Lists, as the reader expands them. Each must
    /// come out of the reader as an object or be named in a diagnostic.
    pub fn named_objects(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        collect(&self.tree, &mut out);
        out
    }
}

fn collect(doc: &Value, out: &mut Vec<(&'static str, String)>) {
    let (Some(api_version), Some(kind)) = (doc["apiVersion"].as_str(), doc["kind"].as_str()) else {
        return;
    };
    if kind.ends_with("List")
        && let Some(items) = doc["items"].as_array()
    {
        for item in items {
            collect(item, out);
        }
        return;
    }
    let kind = match (api_version, kind) {
        ("v1", "Service") => "Service",
        ("discovery.k8s.io/v1", "EndpointSlice") => "EndpointSlice",
        ("v1", "Node") => "Node",
        _ => return,
    };
    if let Some(name) = doc["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        out.push((kind, name.to_owned()));
    }
}
