//! The Kubernetes API source's event handling (the watch streams themselves need an API
//! server): lists replace a kind atomically, applies and deletes update it, rejected objects
//! keep their last valid version, and nothing counts as complete before every kind is listed.

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::json;
use zmesh_control::objects::{Kind, Object, ObjectKey};
use zmesh_control::source::DiagnosticKind;
use zmesh_control::source::k8s::{KubeState, api_resources};
use zmesh_control::translate::{MeshOptions, translate};

fn obj(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn pod(name: &str, ip: &str) -> DynamicObject {
    obj(json!({
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "web"},
        "status": {"phase": "Running", "podIP": ip}
    }))
}

fn policy(principal: &str) -> DynamicObject {
    obj(json!({
        "metadata": {"name": "allow", "namespace": "demo"},
        "spec": {"rules": [{"from": [{"source": {"principals": [principal]}}]}]}
    }))
}

fn list(state: &mut KubeState, kind: Kind, objects: Vec<DynamicObject>) {
    assert!(state.apply(kind, Event::Init).is_empty());
    for o in objects {
        assert!(state.apply(kind, Event::InitApply(o)).is_empty());
    }
    assert!(state.apply(kind, Event::InitDone).is_empty());
}

#[test]
fn lists_applies_deletes_and_rejections() {
    let mut state = KubeState::default();
    let ns = obj(
        json!({"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    for (kind, _) in api_resources() {
        assert!(!state.is_complete());
        let objects = match kind {
            Kind::Namespace => vec![ns.clone()],
            Kind::Pod => vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.2")],
            Kind::AuthorizationPolicy => vec![policy("cluster.local/ns/demo/sa/client")],
            _ => vec![],
        };
        list(&mut state, kind, objects);
    }
    assert!(state.is_complete());
    let t = translate(state.store(), &MeshOptions::default());
    assert!(
        t.resources
            .addresses
            .contains_key("Kubernetes//v1/Pod/demo/a")
    );
    assert!(t.resources.authorizations.contains_key("demo/allow"));

    // A relist replaces the kind: `b` is gone, `c` is new.
    list(
        &mut state,
        Kind::Pod,
        vec![pod("a", "10.0.0.1"), pod("c", "10.0.0.3")],
    );
    let pods: Vec<String> = state
        .store()
        .pods()
        .map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(pods, vec!["a", "c"]);

    assert!(
        state
            .apply(Kind::Pod, Event::Delete(pod("a", "10.0.0.1")))
            .is_empty()
    );
    assert!(
        state
            .apply(Kind::Pod, Event::Apply(pod("d", "10.0.0.4")))
            .is_empty()
    );
    let pods: Vec<String> = state
        .store()
        .pods()
        .map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(pods, vec!["c", "d"]);

    // An invalid update is rejected; the last valid version stays, also across a relist.
    let diags = state.apply(
        Kind::AuthorizationPolicy,
        Event::Apply(policy("spiffe://x/ns/a/sa/b")),
    );
    assert_eq!(diags.len(), 1);
    assert_eq!(
        diags[0].kind,
        DiagnosticKind::Rejected {
            kept_previous: true
        }
    );
    state.apply(Kind::AuthorizationPolicy, Event::Init);
    state.apply(Kind::AuthorizationPolicy, Event::InitApply(policy("a/*/b")));
    state.apply(Kind::AuthorizationPolicy, Event::InitDone);
    let key = ObjectKey::new(Kind::AuthorizationPolicy, "demo", "allow");
    let Some(Object::AuthorizationPolicy(p)) = state.store().get(&key).map(|o| o.as_ref()) else {
        panic!("policy kept");
    };
    let principals = &p.spec.rules[0].from.as_ref().unwrap()[0]
        .source
        .as_ref()
        .unwrap()
        .principals;
    assert_eq!(
        principals,
        &vec!["cluster.local/ns/demo/sa/client".to_owned()]
    );
}
