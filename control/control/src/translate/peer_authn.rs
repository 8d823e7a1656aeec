//! PeerAuthentication → the effective mTLS mode of each workload, served as a DENY policy:
//! node proxies never see PeerAuthentication. Precedence is workload → namespace → mesh (the
//! root namespace); among several at one level the oldest wins (then the name), as in Istio.
//! `portLevelMtls` overrides the mode per workload (target) port.
//!
//! The policy is named after the PeerAuthentication that decides the mode,
//! `<ns>/converted_peer_authentication_<name>`, scope WORKLOAD_SELECTOR, and listed in each
//! workload it applies to. Its content depends only on that PeerAuthentication and its parents,
//! which every workload it decides shares (a workload policy's parents are its namespace's).

use std::collections::{BTreeMap, HashMap};

use zmesh_proto::security::{self, Authorization, Clause, Match, Rule, Scope};

use super::MeshOptions;
use super::authz::string_match;
use crate::objects::{MtlsMode, PeerAuthentication};
use crate::store::Store;

/// Prefix of converted policies' names (`_` cannot appear in Kubernetes names: no clash).
pub(super) const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// PeerAuthentications indexed by scope.
pub(super) struct PeerAuthn<'a> {
    mesh: Option<&'a PeerAuthentication>,
    namespaces: HashMap<&'a str, &'a PeerAuthentication>,
    /// Selector policies per namespace, oldest first.
    workloads: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
}

/// What decides a workload's mode, and the policy that enforces it (if any is needed).
pub(super) struct Effective {
    pub key: String,
    pub policy: Authorization,
}

impl<'a> PeerAuthn<'a> {
    pub fn new(store: &'a Store, opts: &MeshOptions) -> Self {
        let mut all: Vec<&PeerAuthentication> = store.peer_authentications().collect();
        all.sort_by(|a, b| age(a).cmp(&age(b)));
        let mut index = PeerAuthn {
            mesh: None,
            namespaces: HashMap::new(),
            workloads: HashMap::new(),
        };
        for pa in all {
            let ns = pa.metadata.namespace.as_str();
            let root = ns == opts.root_namespace;
            // An empty selector selects nothing in particular: namespace-wide, as in Istio.
            let selector = pa
                .spec
                .selector
                .as_ref()
                .filter(|s| !s.match_labels.is_empty());
            match (selector, root) {
                (None, true) => {
                    index.mesh.get_or_insert(pa);
                }
                (None, false) => {
                    index.namespaces.entry(ns).or_insert(pa);
                }
                // Istio ignores selector policies in the root namespace.
                (Some(_), true) => {}
                (Some(_), false) => index.workloads.entry(ns).or_default().push(pa),
            }
        }
        index
    }

    /// The converted policy deciding a workload in `namespace` with `labels`, or `None` when
    /// its effective mode accepts plaintext on every port.
    pub fn effective(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Effective> {
        let workload = self.workloads.get(namespace).and_then(|list| {
            list.iter()
                .copied()
                .find(|pa| pa.spec.selector.as_ref().is_some_and(|s| s.matches(labels)))
        });
        let ns = self.namespaces.get(namespace).copied();
        let inherited = [ns, self.mesh]
            .into_iter()
            .flatten()
            .map(|p| p.spec.mode())
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive);
        let (owner, base, ports) = match workload {
            Some(w) if w.spec.mode() != MtlsMode::Unset || !w.spec.port_level_mtls.is_empty() => {
                let base = match w.spec.mode() {
                    MtlsMode::Unset => inherited,
                    m => m,
                };
                let ports = w
                    .spec
                    .port_level_mtls
                    .iter()
                    .map(|(p, m)| {
                        (
                            *p,
                            if m.mode == MtlsMode::Unset {
                                base
                            } else {
                                m.mode
                            },
                        )
                    })
                    .collect();
                (w, base, ports)
            }
            _ => {
                let owner = [ns, self.mesh]
                    .into_iter()
                    .flatten()
                    .find(|p| p.spec.mode() != MtlsMode::Unset)?;
                (owner, inherited, BTreeMap::new())
            }
        };
        let rule = deny_rule(base, &ports)?;
        let name = format!("{CONVERTED_PREFIX}{}", owner.metadata.name);
        let namespace = owner.metadata.namespace.clone();
        Some(Effective {
            key: format!("{namespace}/{name}"),
            policy: Authorization {
                name,
                namespace,
                scope: Scope::WorkloadSelector as i32,
                action: security::Action::Deny as i32,
                rules: vec![rule],
                ..Default::default()
            },
        })
    }
}

/// Denies peers without an identity: everywhere but the non-STRICT ports when the mode is
/// STRICT, only on the STRICT ports otherwise.
fn deny_rule(base: MtlsMode, ports: &BTreeMap<u32, MtlsMode>) -> Option<Rule> {
    let strict = |m: &MtlsMode| *m == MtlsMode::Strict;
    let mut m = Match {
        not_principals: vec![string_match("*")],
        ..Default::default()
    };
    if strict(&base) {
        m.not_destination_ports = ports
            .iter()
            .filter(|(_, mode)| !strict(mode))
            .map(|(p, _)| *p)
            .collect();
    } else {
        m.destination_ports = ports
            .iter()
            .filter(|(_, mode)| strict(mode))
            .map(|(p, _)| *p)
            .collect();
        if m.destination_ports.is_empty() {
            return None;
        }
    }
    Some(Rule {
        clauses: vec![Clause { matches: vec![m] }],
    })
}

/// Oldest first; objects without a creation time (written by hand) after dated ones, by name.
fn age(pa: &PeerAuthentication) -> (bool, &str, &str, &str) {
    let t = pa.metadata.creation_timestamp.as_deref();
    (
        t.is_none(),
        t.unwrap_or(""),
        &pa.metadata.namespace,
        &pa.metadata.name,
    )
}
