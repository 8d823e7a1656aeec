//! Translation: the object store in, Istio's workload API resources out, the way istiod builds
//! them for ambient mode. Sans-IO and deterministic: a pure function of the store and the mesh
//! options, so the same YAML always yields the same resources.
//!
//! Cost is O(pods × (services + selector policies) in the pod's namespace): services and
//! policies are indexed by namespace once per translation.

mod authz;
mod peer_authn;
mod service;
mod workload;

use std::collections::BTreeMap;
use std::fmt;

use zmesh_proto::workload::{Address, address};

use crate::objects::ObjectKey;
use crate::resources::Resources;
use crate::store::Store;

pub use self::authz::string_match;

/// Mesh-wide settings translation needs (istiod's mesh config and environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshOptions {
    /// SPIFFE trust domain of every workload identity.
    pub trust_domain: String,
    /// Policies here apply mesh-wide (Istio's `istio-system` by default).
    pub root_namespace: String,
    /// Prefix of workload uids; ztunnel's `CLUSTER_ID`.
    pub cluster_id: String,
    /// Network of every workload and VIP (empty: the default network).
    pub network: String,
    /// Service hostnames are `<name>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Also serve pods outside the mesh (tunnel protocol NONE, no policies), as istiod does.
    /// Off by default: only enrolled pods are workloads.
    pub serve_non_mesh_pods: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            trust_domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            network: String::new(),
            cluster_domain: "cluster.local".to_owned(),
            serve_non_mesh_pods: false,
        }
    }
}

/// The resources to serve, and what could not be translated as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    pub resources: Resources,
    pub warnings: Vec<Warning>,
}

/// Something the user wrote that is served differently from how it reads (or not at all).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Warning {
    pub object: ObjectKey,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

impl Warning {
    pub(crate) fn new(object: ObjectKey, reason: impl Into<String>) -> Self {
        Warning {
            object,
            reason: reason.into(),
        }
    }

    /// Logs the warning with structured fields.
    pub fn log(&self) {
        tracing::warn!(object = %self.object, reason = %self.reason, "translation");
    }
}

/// Translates every object in `store` into the resources node proxies are served.
pub fn translate(store: &Store, opts: &MeshOptions) -> Translation {
    let mut warnings = Vec::new();
    let services = service::translate(store, opts, &mut warnings);
    let policies = authz::translate(store, opts, &mut warnings);
    let peer = peer_authn::PeerAuthn::new(store, opts);
    let ctx = workload::Context {
        store,
        opts,
        services: &services,
        policies: &policies,
        peer: &peer,
    };
    let (workloads, converted) = ctx.translate(&mut warnings);

    let mut addresses = BTreeMap::new();
    for w in workloads {
        addresses.insert(
            w.uid.clone(),
            Address {
                r#type: Some(address::Type::Workload(w)),
            },
        );
    }
    for s in services.into_resources() {
        let key = format!("{}/{}", s.namespace, s.hostname);
        addresses.insert(
            key,
            Address {
                r#type: Some(address::Type::Service(s)),
            },
        );
    }
    let mut authorizations = policies.into_resources();
    for a in converted {
        authorizations.insert(format!("{}/{}", a.namespace, a.name), a);
    }
    Translation {
        resources: Resources {
            addresses,
            authorizations,
        },
        warnings,
    }
}
