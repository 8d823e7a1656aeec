//! The controller's output: every resource it serves, by type and by name, at one version.
//! Translation builds it from the object store; the xDS server diffs two of them to push only
//! what changed; the CA reads which identities run on which node. Immutable once built.

use std::collections::{BTreeMap, BTreeSet};

use zmesh_proto::{security, workload};

/// Everything the controller serves, as Istio names it on the wire.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// `type.googleapis.com/istio.workload.Address`, keyed by resource name: a workload's uid
    /// (`<cluster>//v1/Pod/<ns>/<name>`) or a service's `<ns>/<hostname>`.
    pub addresses: BTreeMap<String, workload::Address>,
    /// `type.googleapis.com/istio.security.Authorization`, keyed by `<ns>/<name>`.
    pub authorizations: BTreeMap<String, security::Authorization>,
}

impl Resources {
    /// SPIFFE identities (`spiffe://td/ns/x/sa/y`) of the workloads scheduled on `node`: the
    /// only identities a node proxy on that node may ask the CA for.
    pub fn identities_on_node(&self, node: &str) -> BTreeSet<String> {
        self.addresses
            .values()
            .filter_map(|a| match &a.r#type {
                Some(workload::address::Type::Workload(w)) if w.node == node => Some(w),
                _ => None,
            })
            .map(|w| {
                let td = if w.trust_domain.is_empty() {
                    "cluster.local"
                } else {
                    &w.trust_domain
                };
                let sa = if w.service_account.is_empty() {
                    "default"
                } else {
                    &w.service_account
                };
                format!("spiffe://{td}/ns/{}/sa/{sa}", w.namespace)
            })
            .collect()
    }
}
