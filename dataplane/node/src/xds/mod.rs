//! The xDS client: delta ADS to the controller for Istio's `Address` and `Authorization`
//! resources. `convert` maps resources to the mesh model, `store` keeps them and answers each
//! response (sans-IO); `client` runs the stream on the control thread's runtime, reconnecting
//! with backoff while the last good snapshot keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

pub mod client;
pub mod convert;
pub mod store;

/// What the admin API and readiness show of the xDS connection.
#[derive(Debug, Default, Clone, Serialize)]
pub struct XdsStatus {
    pub address: String,
    pub connected: bool,
    /// Streams opened so far.
    pub connects: u64,
    /// Per type url: the nonce of the last response ACKed.
    pub last_acked_nonce: BTreeMap<String, String>,
    /// Per type url: the nonce and reason of the last NACK.
    pub last_nacked: BTreeMap<String, (String, String)>,
    /// Resources held per type url.
    pub resources: BTreeMap<String, usize>,
    pub last_error: Option<String>,
}

/// `istio_xds_*` counters.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    pub terminations: AtomicU64,
    /// Per type url: (messages, bytes).
    pub messages: Mutex<HashMap<String, (u64, u64)>>,
}

impl XdsMetrics {
    pub fn message(&self, type_url: &str, bytes: usize) {
        let mut m = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(type_url.to_owned()).or_default();
        e.0 += 1;
        e.1 += bytes as u64;
    }
}

/// The xDS node: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (the shape istiod expects of
/// a node proxy) and metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID, plus every
/// `ISTIO_META_*` environment variable with the prefix stripped (`ISTIO_METAJSON_*` parsed as
/// JSON).
pub fn node_id(args: &crate::config::Args) -> zmesh_proto::discovery::Node {
    use zmesh_proto::prost_types::{Struct, Value, value::Kind};
    let ns = &args.pod_namespace;
    let id = format!(
        "ztunnel~{}~{}.{ns}~{ns}.svc.cluster.local",
        args.instance_ip, args.pod_name
    );
    let mut fields: BTreeMap<String, String> = std::env::vars()
        .filter_map(|(k, v)| Some((k.strip_prefix("ISTIO_META_")?.to_owned(), v)))
        .collect();
    for (k, v) in [
        ("NAME", &args.pod_name),
        ("NAMESPACE", ns),
        ("INSTANCE_IPS", &args.instance_ip),
        ("NODE_NAME", &args.node_name),
        ("CLUSTER_ID", &args.cluster_id),
    ] {
        fields.insert(k.to_owned(), v.clone());
    }
    let mut fields: BTreeMap<String, Value> = fields
        .into_iter()
        .map(|(k, v)| {
            let v = Value {
                kind: Some(Kind::StringValue(v)),
            };
            (k, v)
        })
        .collect();
    for (k, v) in std::env::vars() {
        let Some(k) = k.strip_prefix("ISTIO_METAJSON_") else {
            continue;
        };
        match serde_json::from_str::<serde_json::Value>(&v) {
            Ok(json) => {
                fields.insert(k.to_owned(), json_value(json));
            }
            Err(e) => {
                tracing::warn!(key = k, error = %e, "ISTIO_METAJSON_ value is not JSON; ignored")
            }
        }
    }
    let metadata = Struct { fields };
    zmesh_proto::discovery::Node {
        id,
        cluster: args.cluster_id.clone(),
        metadata: Some(metadata),
        user_agent_name: "zmesh".to_owned(),
    }
}

/// JSON → protobuf `Value`.
fn json_value(j: serde_json::Value) -> zmesh_proto::prost_types::Value {
    use zmesh_proto::prost_types::{ListValue, Struct, Value, value::Kind};
    let kind = match j {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_proto::prost_types::value::Kind;

    #[test]
    fn node_id_has_istio_shape() {
        use clap::Parser;
        let args = crate::config::Args::try_parse_from([
            "zmesh-node",
            "--xds-address",
            "https://ctl:15012",
            "--node-name",
            "worker-1",
            "--pod-name",
            "zmesh-node-abc",
            "--pod-namespace",
            "zmesh-system",
            "--instance-ip",
            "10.0.0.5",
        ])
        .unwrap();
        let node = node_id(&args);
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.5~zmesh-node-abc.zmesh-system~zmesh-system.svc.cluster.local"
        );
        let md = node.metadata.unwrap().fields;
        let s = |k: &str| match &md[k].kind {
            Some(Kind::StringValue(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("NODE_NAME"), "worker-1");
        assert_eq!(s("NAME"), "zmesh-node-abc");
        assert_eq!(s("NAMESPACE"), "zmesh-system");
        assert_eq!(s("INSTANCE_IPS"), "10.0.0.5");
    }

    #[test]
    fn json_metadata_becomes_protobuf_values() {
        let v = json_value(serde_json::json!({"a": [1, true, "x"], "b": null}));
        let Some(Kind::StructValue(s)) = v.kind else {
            panic!("not a struct")
        };
        let Some(Kind::ListValue(l)) = &s.fields["a"].kind else {
            panic!("not a list")
        };
        assert_eq!(l.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert_eq!(l.values[1].kind, Some(Kind::BoolValue(true)));
        assert_eq!(s.fields["b"].kind, Some(Kind::NullValue(0)));
    }
}
