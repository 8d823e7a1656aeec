//! AuthorizationPolicy → `istio.security.Authorization`, as istiod does for ztunnel: only L4
//! attributes can be enforced by a node proxy. A rule that needs HTTP attributes fails safe:
//! dropped from an ALLOW policy (it can match nothing), enforced without its HTTP parts in a
//! DENY policy (it denies more). Either way the user is told a waypoint is needed.

use std::collections::{BTreeMap, HashMap};

use zmesh_proto::security::{
    self, Authorization, Clause, Match, Rule as L4Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match::MatchType,
};

use super::service::ip_bytes;
use super::{MeshOptions, Warning};
use crate::objects::{
    Action, AuthorizationPolicy, Condition, Kind, ObjectKey, Operation, Rule, Source,
    WorkloadSelector,
};
use crate::store::Store;

/// `when` keys a node proxy can evaluate.
const L4_WHEN_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// Translated policies, and the selector ones indexed by namespace for workloads.
#[derive(Debug, Default)]
pub(super) struct Policies {
    resources: BTreeMap<String, Authorization>,
    /// Namespace → (policy key, selector) of WORKLOAD_SELECTOR policies.
    selectors: HashMap<String, Vec<(String, WorkloadSelector)>>,
    root_namespace: String,
}

impl Policies {
    /// Keys of the selector policies that apply to a workload: those of its namespace and of
    /// the root namespace whose selector matches its labels, sorted.
    pub fn selecting(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut keys: Vec<String> = [namespace, self.root_namespace.as_str()]
            .iter()
            .enumerate()
            .filter(|(i, ns)| *i == 0 || **ns != namespace)
            .filter_map(|(_, ns)| self.selectors.get(*ns))
            .flatten()
            .filter(|(_, sel)| sel.matches(labels))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    pub fn into_resources(self) -> BTreeMap<String, Authorization> {
        self.resources
    }
}

pub(super) fn translate(
    store: &Store,
    opts: &MeshOptions,
    warnings: &mut Vec<Warning>,
) -> Policies {
    let mut policies = Policies {
        root_namespace: opts.root_namespace.clone(),
        ..Default::default()
    };
    for p in store.authorization_policies() {
        let Some(auth) = convert(p, opts, warnings) else {
            continue;
        };
        let key = format!("{}/{}", auth.namespace, auth.name);
        if let Some(sel) = &p.spec.selector {
            policies
                .selectors
                .entry(p.metadata.namespace.clone())
                .or_default()
                .push((key.clone(), sel.clone()));
        }
        policies.resources.insert(key, auth);
    }
    policies
}

/// One policy, or `None` when node proxies do not enforce it.
pub(super) fn convert(
    p: &AuthorizationPolicy,
    opts: &MeshOptions,
    warnings: &mut Vec<Warning>,
) -> Option<Authorization> {
    let meta = &p.metadata;
    let key = || {
        ObjectKey::new(
            Kind::AuthorizationPolicy,
            meta.namespace.clone(),
            meta.name.clone(),
        )
    };
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        return None; // bound to a waypoint or gateway, which enforces it
    }
    let action = match p.spec.action {
        Action::Allow => security::Action::Allow,
        Action::Deny => security::Action::Deny,
        Action::Audit | Action::Custom => {
            let name = if p.spec.action == Action::Audit {
                "AUDIT"
            } else {
                "CUSTOM"
            };
            let reason = format!("{name} policies are not enforced by node proxies; skipped");
            warnings.push(Warning::new(key(), reason));
            return None;
        }
    };
    let scope = match (&p.spec.selector, meta.namespace == opts.root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let mut http_fields: Vec<String> = Vec::new();
    let rules = p
        .spec
        .rules
        .iter()
        .filter_map(|r| convert_rule(action, r, &meta.namespace, &mut http_fields))
        .collect();
    if !http_fields.is_empty() {
        http_fields.sort();
        http_fields.dedup();
        let effect = match action {
            security::Action::Allow => {
                "rules using them are dropped (they match nothing), which allows less"
            }
            _ => "the policy is enforced without them, which denies more",
        };
        let reason = format!(
            "HTTP attributes ({}) cannot be enforced by node proxies: {effect}; a waypoint is needed to enforce them",
            http_fields.join(", ")
        );
        warnings.push(Warning::new(key(), reason));
    }
    Some(Authorization {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        rules,
        ..Default::default()
    })
}

/// A rule's clauses: `to` (any operation), `from` (any source), then one per `when`. An entry
/// that constrains nothing at L4 makes its whole clause match anything, so the clause is left
/// out (an empty match would instead match nothing).
fn convert_rule(
    action: security::Action,
    rule: &Rule,
    namespace: &str,
    http: &mut Vec<String>,
) -> Option<L4Rule> {
    let before = http.len();
    let mut clauses = Vec::new();
    if let Some(to) = &rule.to {
        let matches = to
            .iter()
            .filter_map(|t| t.operation.as_ref())
            .map(|op| operation(op, http));
        push_clause(&mut clauses, matches);
    }
    if let Some(from) = &rule.from {
        let matches = from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .map(|s| source(s, namespace, http));
        push_clause(&mut clauses, matches);
    }
    for c in rule.when.iter().flatten() {
        if L4_WHEN_KEYS.contains(&c.key.as_str()) {
            push_clause(&mut clauses, std::iter::once(condition(c)));
        } else {
            http.push(format!("when {}", c.key));
        }
    }
    if action == security::Action::Allow && http.len() > before {
        return None;
    }
    Some(L4Rule { clauses })
}

fn push_clause(clauses: &mut Vec<Clause>, matches: impl Iterator<Item = Match>) {
    let mut list = Vec::new();
    for m in matches {
        if m == Match::default() {
            return; // this alternative accepts anything: so does the clause
        }
        list.push(m);
    }
    clauses.push(Clause { matches: list });
}

fn operation(op: &Operation, http: &mut Vec<String>) -> Match {
    let l7 = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    http.extend(
        l7.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| (*n).to_owned()),
    );
    Match {
        destination_ports: ports(&op.ports),
        not_destination_ports: ports(&op.not_ports),
        ..Default::default()
    }
}

fn source(s: &Source, namespace: &str, http: &mut Vec<String>) -> Match {
    // remote.ip comes from X-Forwarded-For: an HTTP attribute, as in istiod.
    let l7 = [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    http.extend(
        l7.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| (*n).to_owned()),
    );
    Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        service_accounts: service_accounts(&s.service_accounts, namespace),
        not_service_accounts: service_accounts(&s.not_service_accounts, namespace),
        source_ips: cidrs(&s.ip_blocks),
        not_source_ips: cidrs(&s.not_ip_blocks),
        ..Default::default()
    }
}

fn condition(c: &Condition) -> Match {
    let (pos, neg) = (&c.values, &c.not_values);
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => (m.source_ips, m.not_source_ips) = (cidrs(pos), cidrs(neg)),
        "source.namespace" => (m.namespaces, m.not_namespaces) = (strings(pos), strings(neg)),
        "source.principal" => (m.principals, m.not_principals) = (strings(pos), strings(neg)),
        "destination.ip" => (m.destination_ips, m.not_destination_ips) = (cidrs(pos), cidrs(neg)),
        "destination.port" => {
            (m.destination_ports, m.not_destination_ports) = (ports(pos), ports(neg))
        }
        _ => {}
    }
    m
}

/// Istio's string forms: `*` = present, `*x` = suffix, `x*` = prefix, else exact.
pub fn string_match(v: &str) -> StringMatch {
    let t = if v == "*" {
        MatchType::Presence(())
    } else if let Some(s) = v.strip_prefix('*') {
        MatchType::Suffix(s.to_owned())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchType::Prefix(p.to_owned())
    } else {
        MatchType::Exact(v.to_owned())
    };
    StringMatch {
        match_type: Some(t),
    }
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

/// Validated before: every value parses.
fn ports(values: &[String]) -> Vec<u32> {
    values
        .iter()
        .filter_map(|v| crate::objects::validate_port(v).ok())
        .map(u32::from)
        .collect()
}

/// Validated before: every value parses.
fn cidrs(values: &[String]) -> Vec<security::Address> {
    values
        .iter()
        .filter_map(|v| crate::objects::validate_cidr(v).ok())
        .map(|(ip, len)| security::Address {
            address: ip_bytes(ip),
            length: u32::from(len),
        })
        .collect()
}

/// `sa` (in the policy's namespace) or `ns/sa`.
fn service_accounts(values: &[String], namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| {
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v));
            ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            }
        })
        .collect()
}
