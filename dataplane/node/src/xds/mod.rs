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
/// `ISTIO_META_*` environment variable with the prefix stripped.
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
    let metadata = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Value {
                        kind: Some(Kind::StringValue(v)),
                    },
                )
            })
            .collect(),
    };
    zmesh_proto::discovery::Node {
        id,
        cluster: args.cluster_id.clone(),
        metadata: Some(metadata),
        user_agent_name: "zmesh".to_owned(),
    }
}
