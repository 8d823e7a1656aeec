use std::io::Write;

use super::*;
use crate::model::{GatewayDestination, StringMatch, TunnelProtocol};
use crate::rbac::{Connection, Decision};

/// The example of the interop reference, section 4.
const EXAMPLE: &str = r#"
workloads:                      # LocalWorkload = Workload fields + services map
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE               # HBONE | TCP
  node: local
  network: ""
  services:                     # "ns/hostname": {servicePort: targetPort}
    "default/example.com": {80: 8080}
policies:                       # Authorization: rules = [rule][clause][match]
- name: deny-9999
  namespace: default
  scope: Namespace              # Global | Namespace | WorkloadSelector
  action: Allow                 # Allow | Deny
  dryRun: false
  rules:
  - - - notDestinationPorts: [9999]
services:
- name: local
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1"]         # "network/IP"
  ports: {80: 8080}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/local"]
  canonical: true
"#;

fn err(yaml: &str) -> String {
    parse_local_config(yaml, "config.yaml")
        .unwrap_err()
        .to_string()
}

#[test]
fn reference_example_parses() {
    let s = parse_local_config(EXAMPLE, "config.yaml").unwrap();
    let w = s.workload_by_uid("cluster1//v1/Pod/default/local").unwrap();
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        w.identity().to_uri(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(s.endpoints("default/example.com").len(), 1);
    let svc = s.service_by_vip("", "127.10.0.1".parse().unwrap()).unwrap();
    assert_eq!(svc.ports.get(&80), Some(&8080));
    let p = s.policy_by_key("default/deny-9999").unwrap();
    assert_eq!(
        p.rules[0].clauses[0].matches[0].not_destination_ports,
        [9999]
    );
    let r = s.resolve("", "127.10.0.1:80".parse().unwrap(), 0).unwrap();
    let crate::Resolution::Hbone { target, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(target.to_string(), "127.0.0.1:8080");
    // The ALLOW policy admits every port but 9999.
    let conn = |port| Connection {
        src_ip: "127.0.0.2".parse().unwrap(),
        src_identity: None,
        dst_ip: "127.0.0.1".parse().unwrap(),
        dst_port: port,
    };
    assert_eq!(s.authorize(w, &conn(8080)), Decision::Allow);
    assert!(!s.authorize(w, &conn(9999)).is_allow());
}

#[test]
fn blank_file_is_an_empty_mesh() {
    for text in ["", "\n  \n", "# nothing yet\n"] {
        let s = parse_local_config(text, "config.yaml").unwrap();
        assert_eq!(s.workloads().count(), 0);
    }
}

#[test]
fn loads_from_file_and_names_missing_file() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(EXAMPLE.as_bytes()).unwrap();
    let s = load_local_config(f.path()).unwrap();
    assert_eq!(s.services().count(), 1);

    let missing = f.path().with_extension("missing");
    let e = load_local_config(&missing).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: ", missing.display())), "{e}");
}

#[test]
fn unknown_field_names_file_line_column() {
    let e = err("workloads:\n- uid: a\n  namespace: default\n  workloadIP: [\"10.0.0.1\"]\n");
    assert!(
        e.starts_with("config.yaml:4:3: unknown field `workloadIP`, expected one of uid, name,"),
        "{e}"
    );
    let e = err("workload: []\n");
    assert!(
        e.starts_with("config.yaml:1:1: unknown field `workload`"),
        "{e}"
    );
}

#[test]
fn bad_ip_names_line() {
    let e = err("workloads:\n- uid: a\n  namespace: default\n  workloadIps: [\"10.0.0.300\"]\n");
    assert_eq!(e, "config.yaml:4:17: invalid IP address syntax");
    let e = err(
        "services:\n- name: s\n  namespace: default\n  hostname: s\n  vips: [\"net/10.0.0.x\"]\n",
    );
    assert_eq!(
        e,
        "config.yaml:5:10: invalid network address \"net/10.0.0.x\" \
         (expected \"network/IP\", e.g. \"/10.0.0.1\")"
    );
}

const POLICY_HEAD: &str = "policies:\n- name: p\n  namespace: default\n  scope: Global\n";

#[test]
fn bad_cidr_names_line() {
    let e = err(&format!(
        "{POLICY_HEAD}  action: Deny\n  rules:\n  - - - sourceIps: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"
    ));
    assert!(e.starts_with("config.yaml:7:"), "{e}");
    assert!(
        e.ends_with(
            ": invalid CIDR \"10.0.0.0/33\" (expected an address/prefix length like 10.0.0.0/8)"
        ),
        "{e}"
    );
}

#[test]
fn wrong_enum_value_names_line() {
    let e = err(&format!("{POLICY_HEAD}  action: Allowed\n"));
    assert!(
        e.starts_with("config.yaml:5:11: unknown variant `Allowed`"),
        "{e}"
    );
    assert!(e.contains("Allow") && e.contains("Deny"), "{e}");
    let e = err("workloads:\n- uid: a\n  namespace: default\n  protocol: hbone\n");
    assert!(
        e.starts_with("config.yaml:4:13: unknown variant `hbone`"),
        "{e}"
    );
}

#[test]
fn duplicate_uid_names_the_second_item() {
    let e = err(
        "workloads:\n- uid: a\n  namespace: default\n- uid: b\n  namespace: default\n\
         - uid: a\n  namespace: other\n",
    );
    assert_eq!(e, "config.yaml:6:3: workload \"a\": duplicate uid");
}

#[test]
fn bad_principal_names_line() {
    let e = err(&format!(
        "{POLICY_HEAD}  action: Allow\n  rules:\n  - - - principals:\n        - Exact: \"spiffe:/bad\"\n"
    ));
    assert!(e.starts_with("config.yaml:8:"), "{e}");
    assert!(
        e.contains("principal \"spiffe:/bad\" must not include the spiffe:// scheme"),
        "{e}"
    );
    let e = err(&format!(
        "{POLICY_HEAD}  action: Allow\n  rules:\n  - - - principals: [{{Exact: \"td/ns/x\"}}]\n"
    ));
    assert!(
        e.contains("principal \"td/ns/x\" is not of the form"),
        "{e}"
    );
}

#[test]
fn unknown_references_name_the_workload() {
    let e = err(
        "workloads:\n- uid: a\n  namespace: default\n  authorizationPolicies: [default/nope]\n",
    );
    assert_eq!(
        e,
        "config.yaml:2:3: workload \"a\": authorization policy \"default/nope\" is not defined"
    );
    let e = err("workloads:\n- uid: a\n  namespace: default\n  services: {\"default/x\": {}}\n");
    assert!(e.contains("service \"default/x\" is not defined"), "{e}");
}

#[test]
fn bad_san_points_at_the_service() {
    let e =
        err("services:\n- name: s\n  namespace: default\n  hostname: s\n  subjectAltNames: [x]\n");
    assert!(
        e.starts_with(
            "config.yaml:2:3: service default/s: subjectAltNames: invalid SPIFFE id \"x\""
        ),
        "{e}"
    );
}

#[test]
fn syntax_error_names_line() {
    let e = err("workloads:\n- uid: [a\n");
    assert!(e.starts_with("config.yaml:2:"), "{e}");
}

#[test]
fn string_matches_and_presence_forms() {
    let s = parse_local_config(
        &format!(
            "{POLICY_HEAD}  action: Deny\n  rules:\n  - - - namespaces: \
             [{{Exact: a}}, {{Prefix: b}}, {{Suffix: c}}, {{Presence: []}}, {{Presence: {{}}}}, \
             {{Presence: null}}, {{Presence: }}]\n        principals: [{{Prefix: \"td/ns/a/\"}}]\n\
             \x20       serviceAccounts: [{{namespace: n, serviceAccount: s}}]\n\
             \x20       destinationIps: [\"10.0.0.1\", \"fd00::/8\"]\n"
        ),
        "config.yaml",
    )
    .unwrap();
    let m = &s.policy_by_key("default/p").unwrap().rules[0].clauses[0].matches[0];
    assert_eq!(
        m.namespaces,
        [
            StringMatch::Exact("a".into()),
            StringMatch::Prefix("b".into()),
            StringMatch::Suffix("c".into()),
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Presence,
        ]
    );
    assert_eq!(m.principals, [StringMatch::Prefix("td/ns/a/".into())]);
    assert_eq!(m.service_accounts[0].service_account, "s");
    assert_eq!(m.destination_ips[0].to_string(), "10.0.0.1/32");
    let e = err(&format!(
        "{POLICY_HEAD}  action: Deny\n  rules:\n  - - - namespaces: [{{Presence: [x]}}]\n"
    ));
    assert!(e.starts_with("config.yaml:7:"), "{e}");
}

#[test]
fn waypoint_forms() {
    let s = parse_local_config(
        "workloads:\n\
         - uid: a\n  namespace: default\n  workloadIps: [\"10.0.0.1\"]\n\
         \x20 waypoint: {destination: \"/10.0.0.2\"}\n\
         - uid: b\n  namespace: default\n  workloadIps: [\"10.0.0.3\"]\n\
         \x20 waypoint: {destination: {namespace: default, hostname: wp}, hboneMtlsPort: 15009}\n\
         - uid: c\n  namespace: default\n  workloadIps: [\"10.0.0.4\"]\n\
         \x20 waypoint: {destination: \"net/10.0.0.2\", hbone_mtls_port: 15010}\n",
        "config.yaml",
    )
    .unwrap();
    let wp = |uid: &str| s.workload_by_uid(uid).unwrap().waypoint.clone().unwrap();
    assert_eq!(
        (wp("a").destination, wp("a").hbone_mtls_port),
        (
            GatewayDestination::Address(String::new(), "10.0.0.2".parse().unwrap()),
            15008
        )
    );
    assert_eq!(
        (wp("b").destination, wp("b").hbone_mtls_port),
        (
            GatewayDestination::Hostname {
                namespace: "default".into(),
                hostname: "wp".into()
            },
            15009
        )
    );
    assert_eq!(
        wp("c").destination,
        GatewayDestination::Address("net".into(), "10.0.0.2".parse().unwrap())
    );
}
