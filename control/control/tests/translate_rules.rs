//! Translation rules, one behaviour per test, from YAML a user would write.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use zmesh_control::source::load_str;
use zmesh_control::translate::{MeshOptions, Translation, translate};
use zmesh_proto::security::{
    self, Authorization, Clause, Match, Rule, Scope, StringMatch, string_match::MatchType,
};
use zmesh_proto::workload::{Port, Service, Workload, WorkloadStatus, WorkloadType, address};

const AMBIENT_NS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
";

fn run(yaml: &str) -> Translation {
    let load = load_str(Path::new("test.yaml"), yaml);
    assert!(load.diagnostics.is_empty(), "{:#?}", load.diagnostics);
    translate(&load.store, &MeshOptions::default())
}

fn pod(name: &str, labels: &str, ip: &str) -> String {
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

fn workload<'a>(t: &'a Translation, ns: &str, name: &str) -> Option<&'a Workload> {
    let uid = format!("Kubernetes//v1/Pod/{ns}/{name}");
    match t.resources.addresses.get(&uid)?.r#type.as_ref()? {
        address::Type::Workload(w) => Some(w),
        address::Type::Service(_) => None,
    }
}

fn service<'a>(t: &'a Translation, key: &str) -> &'a Service {
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

fn policy<'a>(t: &'a Translation, key: &str) -> &'a Authorization {
    t.resources
        .authorizations
        .get(key)
        .unwrap_or_else(|| panic!("no policy {key}: {:?}", t.resources.authorizations.keys()))
}

fn sm(t: MatchType) -> StringMatch {
    StringMatch {
        match_type: Some(t),
    }
}

fn rule(matches_per_clause: Vec<Vec<Match>>) -> Rule {
    Rule {
        clauses: matches_per_clause
            .into_iter()
            .map(|matches| Clause { matches })
            .collect(),
    }
}

#[test]
fn workload_fields_follow_istiod() {
    let t = run(&format!(
        "{AMBIENT_NS}{}",
        pod("web", "app: web, version: v2", "10.0.0.5")
    ));
    let w = workload(&t, "demo", "web").expect("workload");
    assert_eq!(w.uid, "Kubernetes//v1/Pod/demo/web");
    assert_eq!(w.addresses, vec![vec![10u8, 0, 0, 5]]);
    assert_eq!(w.service_account, "web-sa");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.node, "node-a");
    assert_eq!(
        w.tunnel_protocol,
        zmesh_proto::workload::TunnelProtocol::Hbone as i32
    );
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("web", "v2")
    );
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type),
        ("web", WorkloadType::Pod as i32)
    );
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    assert_eq!(w.cluster_id, "Kubernetes");
}

#[test]
fn canonical_labels_take_precedence_and_revision_defaults_to_latest() {
    let labels = "service.istio.io/canonical-name: shop, app.kubernetes.io/name: web, app: x";
    let t = run(&format!("{AMBIENT_NS}{}", pod("web", labels, "10.0.0.5")));
    let w = workload(&t, "demo", "web").expect("workload");
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("shop", "latest")
    );
}

#[test]
fn enrollment_labels_and_skipped_pods() {
    let other_ns = "---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: outside, namespace: plain}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
status: {podIP: 10.0.1.2}
";
    let special = "---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: demo}
spec: {hostNetwork: true}
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: demo}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: demo}
status: {phase: Succeeded, podIP: 10.0.0.10}
";
    let yaml = format!(
        "{AMBIENT_NS}{}{}{other_ns}{special}",
        pod("in", "app: a", "10.0.0.1"),
        pod("out", "istio.io/dataplane-mode: none", "10.0.0.2")
    );
    let t = run(&yaml);
    assert!(workload(&t, "demo", "in").is_some());
    assert!(workload(&t, "demo", "out").is_none(), "opt-out label");
    assert!(
        workload(&t, "plain", "outside").is_none(),
        "namespace not ambient"
    );
    assert!(
        workload(&t, "plain", "opted-in").is_some(),
        "pod label enrolls"
    );
    for skipped in ["host", "pending", "done"] {
        assert!(workload(&t, "demo", skipped).is_none(), "{skipped}");
    }
}

#[test]
fn status_follows_ready_condition() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata: {{name: starting, namespace: demo}}
status:
  podIPs: [{{ip: 10.0.0.7}}, {{ip: 'fd00::7'}}]
  conditions: [{{type: Ready, status: 'False'}}, {{type: PodScheduled, status: 'True'}}]
"
    );
    let t = run(&yaml);
    let w = workload(&t, "demo", "starting").expect("workload");
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    assert_eq!(w.addresses.len(), 2, "dual stack");
    assert_eq!(w.addresses[1].len(), 16);
}

#[test]
fn workload_name_from_replicaset_or_matching_deployment() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata:
  name: api-5f7c9d-x1
  namespace: demo
  labels: {{app: api, pod-template-hash: 5f7c9d}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: api-5f7c9d, controller: true}}]
status: {{podIP: 10.0.0.3}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: front, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: front}}}}
  template: {{metadata: {{labels: {{app: front}}}}}}
{}",
        pod("front-by-hand", "app: front", "10.0.0.4")
    );
    let t = run(&yaml);
    let api = workload(&t, "demo", "api-5f7c9d-x1").expect("api");
    assert_eq!(
        (api.workload_name.as_str(), api.workload_type),
        ("api", WorkloadType::Deployment as i32)
    );
    assert_eq!(api.canonical_name, "api");
    let front = workload(&t, "demo", "front-by-hand").expect("front");
    assert_eq!(
        (front.workload_name.as_str(), front.workload_type),
        ("front", WorkloadType::Deployment as i32)
    );
}

#[test]
fn services_with_named_and_numbered_target_ports() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  selector: {{app: web}}
  clusterIP: 10.96.0.10
  ports:
  - {{name: http-web, port: 80, targetPort: http}}
  - {{name: admin, port: 9000, targetPort: 9001}}
  - {{name: plain, port: 7000}}
  - {{name: metrics, port: 9090, targetPort: metrics}}
{}{}",
        pod("web-1", "app: web", "10.0.0.1"),
        pod("other", "app: other", "10.0.0.2")
    );
    let t = run(&yaml);
    let key = "demo/web.demo.svc.cluster.local";
    let s = service(&t, key);
    assert_eq!(s.hostname, "web.demo.svc.cluster.local");
    assert_eq!(s.addresses[0].address[..], [10u8, 96, 0, 10]);
    let ports: Vec<(u32, u32)> = s
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![(80, 0), (9000, 9001), (7000, 7000), (9090, 0)],
        "named → 0"
    );
    assert_eq!(
        s.ports[0].app_protocol,
        zmesh_proto::workload::AppProtocol::Http11 as i32
    );

    let w = workload(&t, "demo", "web-1").expect("web-1");
    let list = &w.services.get(key).expect("selected").ports;
    let port = |s: u32, t: u32| Port {
        service_port: s,
        target_port: t,
        app_protocol: 0,
    };
    // `metrics` is not a container port of this pod: left out, as istiod does.
    assert_eq!(
        list,
        &vec![port(80, 8080), port(9000, 9001), port(7000, 7000)]
    );
    assert!(
        workload(&t, "demo", "other")
            .expect("other")
            .services
            .is_empty()
    );
}

#[test]
fn services_without_selector_or_cluster_ip_are_not_served() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Service
metadata: {{name: external, namespace: demo}}
spec: {{clusterIP: 10.96.0.11, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: headless, namespace: demo}}
spec: {{selector: {{app: web}}, clusterIP: None, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: no-ip, namespace: demo}}
spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}
"
    );
    let t = run(&yaml);
    assert!(
        t.resources.addresses.is_empty(),
        "{:?}",
        t.resources.addresses.keys()
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(t.warnings[0].reason.contains("no clusterIP"));
}

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

fn pa(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
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
fn service_account_defaults_and_dual_stack_services() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata: {{name: legacy-sa, namespace: demo}}
spec: {{serviceAccount: old-style}}
status: {{podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: no-sa, namespace: demo}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: demo}}
spec:
  selector: {{app: x}}
  clusterIPs: [10.96.0.1, 'fd00::1']
  ports: [{{port: 443, appProtocol: kubernetes.io/h2c}}]
"
    );
    let t = run(&yaml);
    assert_eq!(
        workload(&t, "demo", "legacy-sa")
            .expect("legacy")
            .service_account,
        "old-style"
    );
    assert_eq!(
        workload(&t, "demo", "no-sa")
            .expect("no-sa")
            .service_account,
        "default"
    );
    let s = service(&t, "demo/dual.demo.svc.cluster.local");
    assert_eq!(
        s.ip_families,
        zmesh_proto::workload::IpFamilies::Dual as i32
    );
    assert_eq!(s.addresses.len(), 2);
    assert_eq!(
        s.ports[0].app_protocol,
        zmesh_proto::workload::AppProtocol::Http2 as i32
    );
}

#[test]
fn translation_is_deterministic() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}",
        pa("default", "demo", "  mtls: {mode: STRICT}"),
        pod("a", "app: a", "10.0.0.1"),
        pod("b", "app: b", "10.0.0.2")
    );
    assert_eq!(run(&yaml), run(&yaml));
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
