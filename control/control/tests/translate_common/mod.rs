//! Helpers shared by the translation tests: YAML builders and lookups in the output.

#![allow(dead_code)]

use std::path::Path;

use zmesh_control::source::load_str;
use zmesh_control::translate::{MeshOptions, Translation, translate};
use zmesh_proto::security::{
    Authorization, Clause, Match, Rule, StringMatch, string_match::MatchType,
};
use zmesh_proto::workload::{Service, Workload, address};

pub const AMBIENT_NS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
";

pub fn run(yaml: &str) -> Translation {
    let load = load_str(Path::new("test.yaml"), yaml);
    assert!(load.diagnostics.is_empty(), "{:#?}", load.diagnostics);
    translate(&load.store, &MeshOptions::default())
}

pub fn pod(name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, labels: {{{labels}}}}}
spec:
  nodeName: node-a
  serviceAccountName: {name}-sa
  containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]
status: {{phase: Running, podIP: {ip}}}
"
    )
}

pub fn workload<'a>(t: &'a Translation, ns: &str, name: &str) -> Option<&'a Workload> {
    let uid = format!("Kubernetes//v1/Pod/{ns}/{name}");
    match t.resources.addresses.get(&uid)?.r#type.as_ref()? {
        address::Type::Workload(w) => Some(w),
        address::Type::Service(_) => None,
    }
}

pub fn service<'a>(t: &'a Translation, key: &str) -> &'a Service {
    match t
        .resources
        .addresses
        .get(key)
        .and_then(|a| a.r#type.as_ref())
    {
        Some(address::Type::Service(s)) => s,
        other => panic!("no service {key}: {other:?}"),
    }
}

pub fn policy<'a>(t: &'a Translation, key: &str) -> &'a Authorization {
    t.resources
        .authorizations
        .get(key)
        .unwrap_or_else(|| panic!("no policy {key}: {:?}", t.resources.authorizations.keys()))
}

pub fn sm(t: MatchType) -> StringMatch {
    StringMatch {
        match_type: Some(t),
    }
}

pub fn rule(matches_per_clause: Vec<Vec<Match>>) -> Rule {
    Rule {
        clauses: matches_per_clause
            .into_iter()
            .map(|matches| Clause { matches })
            .collect(),
    }
}

pub fn pa(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}
