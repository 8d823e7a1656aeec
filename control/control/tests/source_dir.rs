//! The directory source: what is applied, what is reported (file, document, object, reason),
//! and that a rejected object never half-applies.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use zmesh_control::objects::{Kind, Object, ObjectKey};
use zmesh_control::source::{Diagnostic, DiagnosticKind, DirSource};

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

fn sa(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: demo}}\n"
    )
}

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, ns, name)
}

fn only(diags: &[Diagnostic]) -> &Diagnostic {
    assert_eq!(diags.len(), 1, "{diags:#?}");
    &diags[0]
}

#[test]
fn broken_document_is_reported_with_file_and_index_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: broken, namespace: demo\n";
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\n{broken}{}", sa("first"), sa("third")),
    );
    write(dir.path(), "b.yml", &sa("other-file"));
    let load = DirSource::new(dir.path()).load();
    let d = only(&load.diagnostics);
    assert_eq!(d.file, dir.path().join("a.yaml"));
    assert_eq!(d.document, Some(1));
    assert_eq!(d.kind, DiagnosticKind::Broken);
    assert!(d.line.is_some_and(|l| l >= 5), "{d}");
    assert!(!d.reason.is_empty());
    for name in ["first", "third", "other-file"] {
        assert!(
            load.store
                .get(&key(Kind::ServiceAccount, "demo", name))
                .is_some(),
            "{name}"
        );
    }
    assert_eq!(load.store.len(), 3);
}

#[test]
fn missing_fields_and_non_mappings_are_broken_documents() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "just a string\n---\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
    );
    let load = DirSource::new(dir.path()).load();
    let docs: Vec<(Option<usize>, DiagnosticKind)> = load
        .diagnostics
        .iter()
        .map(|d| (d.document, d.kind))
        .collect();
    assert_eq!(
        docs,
        vec![
            (Some(0), DiagnosticKind::Broken),
            (Some(1), DiagnosticKind::Broken),
            (Some(2), DiagnosticKind::Broken)
        ]
    );
    assert!(
        load.diagnostics[1].reason.contains("apiVersion"),
        "{}",
        load.diagnostics[1]
    );
    assert!(
        load.diagnostics[2].reason.contains("metadata.name"),
        "{}",
        load.diagnostics[2]
    );
}

#[test]
fn unknown_kinds_are_reported_once_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let cm = |n: &str| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}}}\n");
    let vs =
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n";
    write(
        dir.path(),
        "a.yaml",
        &format!("{}{}{}", cm("one"), sa("kept"), cm("two")),
    );
    write(dir.path(), "b.yaml", &format!("{}{vs}", cm("three")));
    let load = DirSource::new(dir.path()).load();
    assert_eq!(load.diagnostics.len(), 2, "{:#?}", load.diagnostics);
    let cm_diag = &load.diagnostics[0];
    assert_eq!(cm_diag.kind, DiagnosticKind::UnknownKind);
    assert_eq!(
        (cm_diag.file.clone(), cm_diag.document),
        (dir.path().join("a.yaml"), Some(0)),
        "first seen"
    );
    assert!(
        cm_diag.reason.contains("ConfigMap") && cm_diag.reason.contains("3 object"),
        "{cm_diag}"
    );
    assert!(
        load.diagnostics[1]
            .reason
            .contains("networking.istio.io/v1 VirtualService")
    );
    assert_eq!(load.store.len(), 1);
}

fn policy(name: &str, principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: demo}}
spec:
  rules: [{{from: [{{source: {{principals: ['{principal}']}}}}]}}]
"
    )
}

fn principals_of(load: &zmesh_control::source::Load, name: &str) -> Option<Vec<String>> {
    match load
        .store
        .get(&key(Kind::AuthorizationPolicy, "demo", name))?
        .as_ref()
    {
        Object::AuthorizationPolicy(p) => Some(
            p.spec.rules[0].from.as_ref()?[0]
                .source
                .as_ref()?
                .principals
                .clone(),
        ),
        _ => None,
    }
}

#[test]
fn invalid_policy_keeps_the_last_valid_version_and_new_invalid_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = DirSource::new(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &policy("allow", "cluster.local/ns/demo/sa/a"),
    );
    let first = source.load();
    assert!(first.diagnostics.is_empty());

    // A bad edit: rejected, the previous version stays in effect.
    write(
        dir.path(),
        "p.yaml",
        &format!(
            "{}---\n{}",
            policy("allow", "cluster.local/*/sa/a"),
            policy("fresh", "spiffe://cluster.local/ns/demo/sa/b")
        ),
    );
    let second = source.load();
    assert_eq!(second.diagnostics.len(), 2, "{:#?}", second.diagnostics);
    let kept = &second.diagnostics[0];
    assert_eq!(
        kept.kind,
        DiagnosticKind::Rejected {
            kept_previous: true
        }
    );
    assert_eq!(
        kept.object,
        Some(key(Kind::AuthorizationPolicy, "demo", "allow"))
    );
    assert_eq!(
        (kept.document, kept.file.clone()),
        (Some(0), dir.path().join("p.yaml"))
    );
    assert!(kept.reason.contains("wildcard"), "{kept}");
    assert_eq!(
        principals_of(&second, "allow"),
        Some(vec!["cluster.local/ns/demo/sa/a".to_owned()])
    );
    let fresh = &second.diagnostics[1];
    assert_eq!(
        fresh.kind,
        DiagnosticKind::Rejected {
            kept_previous: false
        }
    );
    assert_eq!(fresh.document, Some(1));
    assert!(fresh.reason.contains("spiffe://"), "{fresh}");
    assert_eq!(principals_of(&second, "fresh"), None);

    // Still rejected on the next load (the kept version survives more than one reload).
    let third = source.load();
    assert_eq!(
        principals_of(&third, "allow"),
        Some(vec!["cluster.local/ns/demo/sa/a".to_owned()])
    );

    // Fixed: the new version applies. Deleted: gone.
    write(
        dir.path(),
        "p.yaml",
        &policy("allow", "cluster.local/ns/demo/sa/c"),
    );
    assert_eq!(
        principals_of(&source.load(), "allow"),
        Some(vec!["cluster.local/ns/demo/sa/c".to_owned()])
    );
    fs::remove_file(dir.path().join("p.yaml")).unwrap();
    assert_eq!(principals_of(&source.load(), "allow"), None);
}

#[test]
fn every_invalid_form_is_rejected_with_its_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "spec: {rules: [{from: [{source: {principals: ['a/*/b']}}]}]}",
            "wildcard",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: ['']}}]}]}",
            "empty",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: ['spiffe://td/ns/a/sa/b']}}]}]}",
            "spiffe://",
        ),
        ("spec: {action: REJECT, rules: [{}]}", "REJECT"),
        (
            "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}",
            "CIDR",
        ),
        (
            "spec: {rules: [{from: [{source: {notIpBlocks: [not-an-ip]}}]}]}",
            "CIDR",
        ),
        (
            "spec: {rules: [{to: [{operation: {ports: ['70000']}}]}]}",
            "out of range",
        ),
        (
            "spec: {rules: [{when: [{key: destination.port, values: ['0']}]}]}",
            "out of range",
        ),
        (
            "spec: {rules: [{when: [{key: source.nope, values: [x]}]}]}",
            "unknown attribute",
        ),
        ("spec: {rules: [{from: []}]}", "must not be empty"),
        (
            "spec: {rules: [{from: [{source: {}}]}]}",
            "must not be empty",
        ),
        ("spec: {action: CUSTOM, rules: [{}]}", "provider"),
    ];
    for (spec, reason) in cases {
        let text = format!(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\n{spec}\n"
        );
        check_rejected(&text, Kind::AuthorizationPolicy, reason);
    }
    let pa_cases: &[(&str, &str)] = &[
        ("spec: {mtls: {mode: SORTA}}", "SORTA"),
        ("spec: {portLevelMtls: {8080: {mode: STRICT}}}", "selector"),
        (
            "spec: {selector: {matchLabels: {app: a}}, portLevelMtls: {70000: {mode: STRICT}}}",
            "out of range",
        ),
    ];
    for (spec, reason) in pa_cases {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: demo}}\n{spec}\n"
        );
        check_rejected(&text, Kind::PeerAuthentication, reason);
    }
}

fn check_rejected(text: &str, kind: Kind, reason: &str) {
    let load = zmesh_control::source::load_str(Path::new("inline.yaml"), text);
    let d = only(&load.diagnostics);
    assert_eq!(
        d.kind,
        DiagnosticKind::Rejected {
            kept_previous: false
        },
        "{text}"
    );
    assert_eq!(d.object, Some(key(kind, "demo", "p")));
    assert!(d.reason.contains(reason), "{text}: {d}");
    assert!(load.store.is_empty(), "{text}");
}

#[test]
fn a_broken_document_keeps_the_objects_its_file_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = DirSource::new(dir.path());
    write(dir.path(), "a.yaml", &format!("{}{}", sa("one"), sa("two")));
    assert_eq!(source.load().store.len(), 2);
    // `two` is now unreadable YAML: we cannot tell what it was, so the file's objects stay.
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\nmetadata: [\n", sa("one")),
    );
    let load = source.load();
    assert_eq!(only(&load.diagnostics).kind, DiagnosticKind::Broken);
    assert!(
        load.store
            .get(&key(Kind::ServiceAccount, "demo", "two"))
            .is_some()
    );
}

#[test]
fn files_are_found_recursively_hidden_and_other_files_skipped_duplicates_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "sub/deeper/x.yaml", &sa("deep"));
    write(dir.path(), ".hidden.yaml", &sa("hidden"));
    write(dir.path(), "..data/y.yaml", &sa("configmap-copy"));
    write(dir.path(), "notes.txt", &sa("text"));
    write(
        dir.path(),
        "z.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: deep, namespace: demo, labels: {v: '2'}}\n",
    );
    write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: no-namespace}\n",
    );
    let load = DirSource::new(dir.path()).load();
    let names: Vec<String> = load.store.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        names,
        vec!["Pod default/no-namespace", "ServiceAccount demo/deep"]
    );
    let d = only(&load.diagnostics);
    assert_eq!(
        (d.kind, d.file.clone()),
        (DiagnosticKind::Duplicate, dir.path().join("z.yaml")),
        "sorted: sub/ before z.yaml"
    );
    let Some(Object::ServiceAccount(s)) = load
        .store
        .get(&key(Kind::ServiceAccount, "demo", "deep"))
        .map(|o| o.as_ref())
    else {
        panic!("deep");
    };
    assert_eq!(
        s.metadata.labels.get("v").map(String::as_str),
        Some("2"),
        "the later file wins"
    );
}

#[test]
fn a_missing_directory_keeps_what_was_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("config");
    write(&root, "a.yaml", &sa("one"));
    let mut source = DirSource::new(&root);
    assert_eq!(source.load().store.len(), 1);
    fs::remove_dir_all(&root).unwrap();
    let load = source.load();
    assert_eq!(only(&load.diagnostics).kind, DiagnosticKind::Unreadable);
    assert_eq!(load.store.len(), 1);
}

#[test]
fn a_kubectl_list_yields_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let list = "apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: one, namespace: demo}}
- {apiVersion: v1, kind: Pod, metadata: {name: bad, namespace: demo}, spec: {hostNetwork: maybe}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: two, namespace: demo}}
";
    write(dir.path(), "dump.yaml", list);
    let load = DirSource::new(dir.path()).load();
    assert_eq!(load.store.len(), 2);
    let d = only(&load.diagnostics);
    assert_eq!(d.object, Some(key(Kind::Pod, "demo", "bad")));
    assert!(d.reason.starts_with("items[1]"), "{d}");
}
