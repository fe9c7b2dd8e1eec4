//! The Kubernetes objects as ferry reads them off the wire or a file: only
//! the fields it uses, the rest skipped by the parser without being built.
//! Both sources deserialize into these (the API source through kube-rs's
//! watcher, which they serve as [`kube::Resource`]s), then convert them to
//! the compact objects the tracker keeps ([`super::objects`]).
//!
//! Against the full k8s-openapi types this skips what a real cluster sends
//! and ferry never reads: managedFields, the `last-applied-configuration`
//! annotation (a copy of the whole object), status conditions, Node images.
//! Field names are the API's, so a parse error names the field path as the
//! API would (`spec.ports[0].port: invalid type...`).

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer, Serialize};

use super::objects::{
    HEADLESS_LABEL, LB_ALGORITHM_ANNOTATION, PROXY_NAME_LABEL, SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION, ZONE_LABEL,
};

/// The labels and annotations ferry reads; others are dropped as they are
/// parsed.
const LABELS: &[&str] = &[
    SERVICE_NAME_LABEL,
    PROXY_NAME_LABEL,
    HEADLESS_LABEL,
    ZONE_LABEL,
];
const ANNOTATIONS: &[&str] = &[LB_ALGORITHM_ANNOTATION, TRIGGER_TIME_ANNOTATION];

/// metadata, keeping what ferry and the watcher use (names, uid, the
/// resourceVersion the watch resumes from, creation and deletion times, the
/// labels and annotations above).
fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Lean {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        creation_timestamp: Option<Time>,
        deletion_timestamp: Option<Time>,
        #[serde(deserialize_with = "kept")]
        labels: Option<BTreeMap<String, String>>,
        #[serde(deserialize_with = "kept_annotations")]
        annotations: Option<BTreeMap<String, String>>,
    }
    let l = Option::<Lean>::deserialize(d)?.unwrap_or_default();
    Ok(ObjectMeta {
        name: l.name,
        namespace: l.namespace,
        uid: l.uid,
        resource_version: l.resource_version,
        creation_timestamp: l.creation_timestamp,
        deletion_timestamp: l.deletion_timestamp,
        labels: l.labels,
        annotations: l.annotations,
        ..ObjectMeta::default()
    })
}

/// A string map, keeping only `keep`'s keys (others are read and dropped).
fn filtered<'de, D: Deserializer<'de>>(
    d: D,
    keep: &'static [&'static str],
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct V(&'static [&'static str]);
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                if self.0.contains(&&*k) {
                    let v: String = m.next_value()?;
                    out.insert(k.into_owned(), v);
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V(keep))
}

fn kept<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    filtered(d, LABELS)
}

fn kept_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    filtered(d, ANNOTATIONS)
}

/// Implements kube-rs's Resource for a lean type (what its watcher needs:
/// the API's kind, group, version and plural, and the metadata).
macro_rules! resource {
    ($t:ty, $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Service

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDoc {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ServiceSpecDoc>,
    #[serde(default)]
    pub status: Option<ServiceStatusDoc>,
}
resource!(
    ServiceDoc,
    "Service",
    "",
    "v1",
    "services",
    k8s_openapi::NamespaceResourceScope
);

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpecDoc {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    pub ports: Option<Vec<ServicePortDoc>>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<SessionAffinityConfigDoc>,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub load_balancer_source_ranges: Option<Vec<String>>,
    pub health_check_node_port: Option<i32>,
    pub traffic_distribution: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePortDoc {
    pub name: Option<String>,
    pub protocol: Option<String>,
    /// Required by the API: a document without it is refused.
    #[serde(default)]
    pub port: i32,
    pub node_port: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionAffinityConfigDoc {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfigDoc>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientIpConfigDoc {
    pub timeout_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceStatusDoc {
    pub load_balancer: Option<LoadBalancerStatusDoc>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerStatusDoc {
    pub ingress: Option<Vec<IngressDoc>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressDoc {
    pub ip: Option<String>,
    pub ip_mode: Option<String>,
}

// ---------------------------------------------------------------------------
// EndpointSlice

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceDoc {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    /// Required by the API.
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub ports: Option<Vec<SlicePortDoc>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<EndpointDoc>,
}
resource!(
    SliceDoc,
    "EndpointSlice",
    "discovery.k8s.io",
    "v1",
    "endpointslices",
    k8s_openapi::NamespaceResourceScope
);

/// `endpoints: null` is an empty list (as the API's own types read it).
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SlicePortDoc {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointDoc {
    pub addresses: Vec<String>,
    pub conditions: Option<ConditionsDoc>,
    pub node_name: Option<String>,
    pub hints: Option<HintsDoc>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConditionsDoc {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HintsDoc {
    pub for_zones: Option<Vec<NameDoc>>,
    pub for_nodes: Option<Vec<NameDoc>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct NameDoc {
    pub name: String,
}

// ---------------------------------------------------------------------------
// Node

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDoc {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<NodeSpecDoc>,
    #[serde(default)]
    pub status: Option<NodeStatusDoc>,
}
resource!(
    NodeDoc,
    "Node",
    "",
    "v1",
    "nodes",
    k8s_openapi::ClusterResourceScope
);

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpecDoc {
    pub taints: Option<Vec<TaintDoc>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaintDoc {
    pub key: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatusDoc {
    pub addresses: Option<Vec<NodeAddressDoc>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeAddressDoc {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

/// The lean form of a full k8s-openapi object (tests and tools that build
/// objects in code): through its JSON, as the API would send it.
pub fn from_k8s<T: Serialize, D: serde::de::DeserializeOwned>(obj: &T) -> D {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .expect("a k8s-openapi object reads as its lean form")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_labels_and_annotations_are_dropped() {
        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop",
            "resourceVersion":"7","managedFields":[{"manager":"kubectl"}],
            "labels":{"app":"web","service.kubernetes.io/service-proxy-name":"other"},
            "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{...}","ferry.io/lb-algorithm":"maglev"}},
            "spec":{"clusterIP":"10.96.0.1","ports":[{"port":80,"targetPort":"http","appProtocol":"h2c"}],"selector":{"app":"web"}}}"#;
        let d: ServiceDoc = serde_json::from_str(json).unwrap();
        assert_eq!(d.metadata.resource_version.as_deref(), Some("7"));
        assert!(d.metadata.managed_fields.is_none());
        let labels = d.metadata.labels.unwrap();
        assert_eq!(labels.keys().collect::<Vec<_>>(), [PROXY_NAME_LABEL]);
        let ann = d.metadata.annotations.unwrap();
        assert_eq!(ann.keys().collect::<Vec<_>>(), [LB_ALGORITHM_ANNOTATION]);
        assert_eq!(d.spec.unwrap().ports.unwrap()[0].port, 80);
    }
}
