//! Translation of AuthorizationPolicy and PeerAuthentication, one behaviour per test.

#![allow(clippy::unwrap_used)]

mod translate_common;

use translate_common::*;
use zmesh_proto::security::{self, Match, Rule, Scope, string_match::MatchType};

fn ap(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

#[test]
fn principal_forms_become_string_matches() {
    let spec = "  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/a/sa/b, cluster.local/ns/a/*, '*/sa/b', '*']
        notNamespaces: [kube-*]";
    let t = run(&format!("{AMBIENT_NS}{}", ap("p", "demo", spec)));
    let p = policy(&t, "demo/p");
    let m = Match {
        principals: vec![
            sm(MatchType::Exact("cluster.local/ns/a/sa/b".into())),
            sm(MatchType::Prefix("cluster.local/ns/a/".into())),
            sm(MatchType::Suffix("/sa/b".into())),
            sm(MatchType::Presence(())),
        ],
        not_namespaces: vec![sm(MatchType::Prefix("kube-".into()))],
        ..Default::default()
    };
    assert_eq!(p.rules, vec![rule(vec![vec![m]])]);
    assert!(t.warnings.is_empty());
}

#[test]
fn scopes_and_selector_policies_listed_on_matching_workloads() {
    let root_ns = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n";
    let sel = "  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{to: [{operation: {ports: ['9999']}}]}]";
    let yaml = format!(
        "{AMBIENT_NS}{root_ns}{}{}{}{}{}{}",
        ap(
            "mesh",
            "istio-system",
            "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]"
        ),
        ap("mesh-web", "istio-system", sel),
        ap("ns", "demo", "  rules: [{}]"),
        ap("web-only", "demo", sel),
        pod("web", "app: web", "10.0.0.1"),
        pod("db", "app: db", "10.0.0.2")
    );
    let t = run(&yaml);
    assert_eq!(policy(&t, "istio-system/mesh").scope, Scope::Global as i32);
    assert_eq!(policy(&t, "demo/ns").scope, Scope::Namespace as i32);
    assert_eq!(
        policy(&t, "demo/web-only").scope,
        Scope::WorkloadSelector as i32
    );
    assert_eq!(
        policy(&t, "istio-system/mesh-web").scope,
        Scope::WorkloadSelector as i32
    );
    let web = workload(&t, "demo", "web").expect("web");
    assert_eq!(
        web.authorization_policies,
        vec!["demo/web-only", "istio-system/mesh-web"]
    );
    assert!(
        workload(&t, "demo", "db")
            .expect("db")
            .authorization_policies
            .is_empty()
    );
    let deny = policy(&t, "istio-system/mesh");
    assert_eq!(deny.action, security::Action::Deny as i32);
    assert_eq!(deny.rules[0].clauses[0].matches[0].source_ips[0].length, 24);
}

#[test]
fn empty_spec_allows_nothing_and_empty_rule_matches_everything() {
    let t = run(&format!(
        "{AMBIENT_NS}{}{}",
        ap("deny-all", "demo", "  {}"),
        ap("allow-all", "demo", "  rules: [{}]")
    ));
    let deny_all = policy(&t, "demo/deny-all");
    assert_eq!(deny_all.action, security::Action::Allow as i32);
    assert!(
        deny_all.rules.is_empty(),
        "ALLOW with no rules: nothing is allowed"
    );
    assert_eq!(
        policy(&t, "demo/allow-all").rules,
        vec![Rule { clauses: vec![] }]
    );
}

#[test]
fn http_rules_in_allow_are_dropped_with_a_waypoint_warning() {
    let spec = "  rules:
  - to: [{operation: {methods: [GET], ports: ['8080']}}]
  - from: [{source: {namespaces: [ops]}}]
  - when: [{key: 'request.headers[x-user]', values: [admin]}]";
    let t = run(&format!("{AMBIENT_NS}{}", ap("mixed", "demo", spec)));
    let p = policy(&t, "demo/mixed");
    let only_l4 = Match {
        namespaces: vec![sm(MatchType::Exact("ops".into()))],
        ..Default::default()
    };
    assert_eq!(
        p.rules,
        vec![rule(vec![vec![only_l4]])],
        "HTTP rules match nothing"
    );
    assert_eq!(t.warnings.len(), 1);
    let w = &t.warnings[0].reason;
    assert!(
        w.contains("waypoint") && w.contains("methods") && w.contains("request.headers"),
        "{w}"
    );
}

#[test]
fn http_parts_of_deny_are_dropped_so_it_denies_more() {
    let spec = "  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/bad]}}]
    to: [{operation: {paths: [/admin]}}]
  - from: [{source: {requestPrincipals: ['*']}}]";
    let t = run(&format!("{AMBIENT_NS}{}", ap("deny-admin", "demo", spec)));
    let p = policy(&t, "demo/deny-admin");
    let bad = Match {
        principals: vec![sm(MatchType::Exact("cluster.local/ns/demo/sa/bad".into()))],
        ..Default::default()
    };
    // First rule: the principal alone denies (every path). Second: nothing left, denies all.
    assert_eq!(
        p.rules,
        vec![rule(vec![vec![bad]]), Rule { clauses: vec![] }]
    );
    assert!(
        t.warnings[0].reason.contains("denies more"),
        "{:?}",
        t.warnings
    );
}

#[test]
fn l4_when_conditions_and_ports_become_matches() {
    let spec = "  rules:
  - to: [{operation: {ports: ['80', '443'], notPorts: ['8443']}}]
    when:
    - {key: source.ip, values: [10.1.0.0/16], notValues: [10.1.2.3]}
    - {key: destination.port, values: ['80']}
    - {key: source.principal, notValues: ['*/sa/blocked']}
    from: [{source: {serviceAccounts: [client, other/sa2]}}]";
    let t = run(&format!("{AMBIENT_NS}{}", ap("l4", "demo", spec)));
    let p = policy(&t, "demo/l4");
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let clauses = &p.rules[0].clauses;
    assert_eq!(clauses.len(), 5);
    assert_eq!(clauses[0].matches[0].destination_ports, vec![80, 443]);
    assert_eq!(clauses[0].matches[0].not_destination_ports, vec![8443]);
    let sas: Vec<(&str, &str)> = clauses[1].matches[0]
        .service_accounts
        .iter()
        .map(|s| (s.namespace.as_str(), s.service_account.as_str()))
        .collect();
    assert_eq!(sas, vec![("demo", "client"), ("other", "sa2")]);
    let ip = &clauses[2].matches[0];
    assert_eq!(
        (ip.source_ips[0].address.as_slice(), ip.source_ips[0].length),
        (&[10u8, 1, 0, 0][..], 16)
    );
    assert_eq!(ip.not_source_ips[0].length, 32);
    assert_eq!(clauses[3].matches[0].destination_ports, vec![80]);
    assert_eq!(
        clauses[4].matches[0].not_principals,
        vec![sm(MatchType::Suffix("/sa/blocked".into()))]
    );
}

#[test]
fn audit_custom_and_waypoint_policies_are_not_served() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}",
        ap("audit", "demo", "  action: AUDIT\n  rules: [{}]"),
        ap(
            "ext",
            "demo",
            "  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]"
        ),
        ap(
            "at-waypoint",
            "demo",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  rules: [{}]"
        )
    );
    let t = run(&yaml);
    assert!(t.resources.authorizations.is_empty());
    let reasons: Vec<&str> = t.warnings.iter().map(|w| w.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("AUDIT") && reasons[1].starts_with("CUSTOM"),
        "{reasons:?}"
    );
}

fn deny_plaintext(ports: Vec<u32>, except: Vec<u32>) -> Vec<Rule> {
    vec![rule(vec![vec![Match {
        not_principals: vec![sm(MatchType::Presence(()))],
        destination_ports: ports,
        not_destination_ports: except,
        ..Default::default()
    }]])]
}

#[test]
fn peer_authentication_mesh_strict_becomes_a_deny_on_every_workload() {
    let t = run(&format!(
        "{AMBIENT_NS}{}{}",
        pa("default", "istio-system", "  mtls: {mode: STRICT}"),
        pod("web", "app: web", "10.0.0.1")
    ));
    let key = "istio-system/converted_peer_authentication_default";
    let p = policy(&t, key);
    assert_eq!(
        (p.action, p.scope),
        (
            security::Action::Deny as i32,
            Scope::WorkloadSelector as i32
        )
    );
    assert_eq!(p.rules, deny_plaintext(vec![], vec![]));
    assert_eq!(
        workload(&t, "demo", "web")
            .expect("web")
            .authorization_policies,
        vec![key]
    );
}

#[test]
fn peer_authentication_precedence_workload_namespace_mesh() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}{}{}",
        pa("mesh", "istio-system", "  mtls: {mode: STRICT}"),
        pa("ns", "demo", "  mtls: {mode: PERMISSIVE}"),
        pa(
            "db-strict",
            "demo",
            "  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}"
        ),
        pod("web", "app: web", "10.0.0.1"),
        pod("db", "app: db", "10.0.0.2")
    );
    let t = run(&yaml);
    // Namespace PERMISSIVE overrides mesh STRICT: nothing to enforce for web.
    assert!(
        workload(&t, "demo", "web")
            .expect("web")
            .authorization_policies
            .is_empty()
    );
    // The workload policy overrides the namespace.
    let db = workload(&t, "demo", "db").expect("db");
    assert_eq!(
        db.authorization_policies,
        vec!["demo/converted_peer_authentication_db-strict"]
    );
    assert!(
        !t.resources
            .authorizations
            .contains_key("istio-system/converted_peer_authentication_mesh"),
        "unused"
    );
}

#[test]
fn peer_authentication_unset_inherits_and_port_exceptions() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}{}{}",
        pa("ns", "demo", "  mtls: {mode: STRICT}"),
        pa(
            "web-ports",
            "demo",
            "  selector: {matchLabels: {app: web}}\n  portLevelMtls: {9090: {mode: PERMISSIVE}, 9091: {mode: DISABLE}, 8080: {mode: STRICT}}"
        ),
        pa(
            "db-ports",
            "demo",
            "  selector: {matchLabels: {app: db}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {8443: {mode: STRICT}}"
        ),
        pod("web", "app: web", "10.0.0.1"),
        pod("db", "app: db", "10.0.0.2")
    );
    let t = run(&yaml);
    let web = policy(&t, "demo/converted_peer_authentication_web-ports");
    assert_eq!(
        web.rules,
        deny_plaintext(vec![], vec![9090, 9091]),
        "STRICT inherited, exceptions"
    );
    let db = policy(&t, "demo/converted_peer_authentication_db-ports");
    assert_eq!(
        db.rules,
        deny_plaintext(vec![8443], vec![]),
        "PERMISSIVE, one STRICT port"
    );
    assert_eq!(
        workload(&t, "demo", "db")
            .expect("db")
            .authorization_policies,
        vec!["demo/converted_peer_authentication_db-ports"]
    );
}

#[test]
fn peer_authentication_conflicts_oldest_wins_and_root_selectors_are_ignored() {
    let dated = |name: &str, ts: &str, mode: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: '{ts}'}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}{}",
        dated("newer", "2026-02-01T00:00:00Z", "PERMISSIVE"),
        dated("older", "2025-01-01T00:00:00Z", "STRICT"),
        pa(
            "root-selector",
            "istio-system",
            "  selector: {matchLabels: {app: web}}\n  mtls: {mode: DISABLE}"
        ),
        pod("web", "app: web", "10.0.0.1")
    );
    let t = run(&yaml);
    let w = workload(&t, "demo", "web").expect("web");
    assert_eq!(
        w.authorization_policies,
        vec!["demo/converted_peer_authentication_older"]
    );
}

#[test]
fn peer_authentication_with_an_empty_selector_is_namespace_wide() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}",
        pa("all", "demo", "  selector: {}\n  mtls: {mode: STRICT}"),
        pod("web", "app: web", "10.0.0.1")
    );
    let t = run(&yaml);
    let w = workload(&t, "demo", "web").expect("web");
    assert_eq!(
        w.authorization_policies,
        vec!["demo/converted_peer_authentication_all"]
    );
}
