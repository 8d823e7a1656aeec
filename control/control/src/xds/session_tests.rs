use std::collections::HashMap;

use zmesh_proto::discovery::{DeltaDiscoveryRequest, Status};
use zmesh_proto::security::Authorization;
use zmesh_proto::type_url;
use zmesh_proto::workload::{Address, Workload, address};

use super::*;
use crate::Resources;

fn pod(name: &str, node: &str) -> (String, Address) {
    let uid = format!("c//v1/Pod/ns/{name}");
    let w = Workload {
        uid: uid.clone(),
        name: name.into(),
        namespace: "ns".into(),
        node: node.into(),
        ..Default::default()
    };
    (
        uid,
        Address {
            r#type: Some(address::Type::Workload(w)),
        },
    )
}

fn resources(pods: &[(&str, &str)], policies: &[&str]) -> Resources {
    let mut r = Resources::default();
    for (name, node) in pods {
        let (k, v) = pod(name, node);
        r.addresses.insert(k, v);
    }
    for p in policies {
        r.authorizations.insert(
            format!("ns/{p}"),
            Authorization {
                name: p.to_string(),
                namespace: "ns".into(),
                ..Default::default()
            },
        );
    }
    r
}

fn subscribe(t: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.into(),
        ..Default::default()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn first_request_gets_everything_then_only_changes() {
    let s1 = Snapshot::build(&resources(&[("a", "n1"), ("b", "n2")], &["p"]), 1);
    let mut session = Session::new();
    let out = session.handle_request(&subscribe(type_url::ADDRESS), &s1);
    assert_eq!(
        out.kind,
        RequestKind::Subscribe {
            initial_versions: 0
        }
    );
    let first = out.response.expect("a first response");
    assert_eq!(first.type_url, type_url::ADDRESS);
    assert_eq!(names(&first), ["c//v1/Pod/ns/a", "c//v1/Pod/ns/b"]);
    assert!(first.removed_resources.is_empty());

    // The same resources again: nothing to send.
    assert!(session.handle_snapshot(&s1).is_empty());

    // One pod moves node: exactly that pod; the unsubscribed type sends nothing.
    let s2 = Snapshot::build(&resources(&[("a", "n1"), ("b", "n3")], &["p", "q"]), 2);
    let pushes = session.handle_snapshot(&s2);
    assert_eq!(pushes.len(), 1);
    assert_eq!(names(&pushes[0]), ["c//v1/Pod/ns/b"]);
    assert_ne!(pushes[0].nonce, first.nonce);
    assert_eq!(pushes[0].system_version_info, "2");

    // One pod removed.
    let s3 = Snapshot::build(&resources(&[("a", "n1")], &["p", "q"]), 3);
    let pushes = session.handle_snapshot(&s3);
    assert_eq!(pushes.len(), 1);
    assert!(pushes[0].resources.is_empty());
    assert_eq!(pushes[0].removed_resources, ["c//v1/Pod/ns/b"]);
}

#[test]
fn empty_type_still_gets_a_first_response() {
    // The node proxy becomes ready only once each type's first response is ACKed.
    let s = Snapshot::build(&Resources::default(), 1);
    let mut session = Session::new();
    let out = session.handle_request(&subscribe(type_url::AUTHORIZATION), &s);
    let r = out.response.expect("first response even when empty");
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert!(session.is_subscribed(type_url::AUTHORIZATION));
    assert!(!session.is_subscribed(type_url::ADDRESS));
}

#[test]
fn ack_and_nack_send_nothing_and_nack_is_not_retried() {
    let s1 = Snapshot::build(&resources(&[("a", "n1")], &[]), 1);
    let mut session = Session::new();
    let first = session
        .handle_request(&subscribe(type_url::ADDRESS), &s1)
        .response
        .expect("first");
    let nack = DeltaDiscoveryRequest {
        type_url: type_url::ADDRESS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "bad workload".into(),
            details: vec![],
        }),
        ..Default::default()
    };
    let out = session.handle_request(&nack, &s1);
    assert_eq!(
        out.kind,
        RequestKind::Nack {
            nonce: first.nonce.clone(),
            message: "bad workload".into()
        }
    );
    assert!(out.response.is_none());
    // Nothing changed since: the rejected resource is not pushed again.
    assert!(session.handle_snapshot(&s1).is_empty());
    let ack = DeltaDiscoveryRequest {
        error_detail: None,
        ..nack
    };
    let out = session.handle_request(&ack, &s1);
    assert_eq!(out.kind, RequestKind::Ack { nonce: first.nonce });
    assert!(out.response.is_none());
}

#[test]
fn reconnect_sends_only_the_difference() {
    let old = Snapshot::build(&resources(&[("a", "n1"), ("b", "n1"), ("c", "n1")], &[]), 1);
    let new = Snapshot::build(&resources(&[("a", "n1"), ("b", "n2"), ("d", "n1")], &[]), 9);
    let mut initial: HashMap<String, String> = old
        .addresses
        .entries
        .iter()
        .map(|(k, e)| (k.clone(), e.version.to_string()))
        .collect();
    initial.insert("c//v1/Pod/ns/zombie".into(), "x".into());
    let mut session = Session::new();
    let req = DeltaDiscoveryRequest {
        initial_resource_versions: initial,
        ..subscribe(type_url::ADDRESS)
    };
    let out = session.handle_request(&req, &new);
    assert_eq!(
        out.kind,
        RequestKind::Subscribe {
            initial_versions: 4
        }
    );
    let r = out.response.expect("response");
    assert_eq!(names(&r), ["c//v1/Pod/ns/b", "c//v1/Pod/ns/d"]);
    assert_eq!(
        r.removed_resources,
        ["c//v1/Pod/ns/c", "c//v1/Pod/ns/zombie"]
    );
}

#[test]
fn unknown_type_and_resubscribe_are_ignored() {
    let s = Snapshot::build(&resources(&[("a", "n1")], &[]), 1);
    let mut session = Session::new();
    let out = session.handle_request(&subscribe("type.googleapis.com/other"), &s);
    assert_eq!(out.kind, RequestKind::UnknownType);
    assert!(out.response.is_none());
    session.handle_request(&subscribe(type_url::ADDRESS), &s);
    let again = session.handle_request(&subscribe(type_url::ADDRESS), &s);
    assert_eq!(again.kind, RequestKind::Resubscribe);
    assert!(again.response.is_none());
}

#[test]
fn both_types_are_pushed_on_one_snapshot() {
    let s1 = Snapshot::build(&resources(&[("a", "n1")], &["p"]), 1);
    let mut session = Session::new();
    session.handle_request(&subscribe(type_url::ADDRESS), &s1);
    session.handle_request(&subscribe(type_url::AUTHORIZATION), &s1);
    let s2 = Snapshot::build(&resources(&[("a", "n2")], &[]), 2);
    let pushes = session.handle_snapshot(&s2);
    let types: Vec<&str> = pushes.iter().map(|p| p.type_url.as_str()).collect();
    // Policies first: a workload must not arrive before a policy it names.
    assert_eq!(types, [type_url::AUTHORIZATION, type_url::ADDRESS]);
    assert_eq!(pushes[0].removed_resources, ["ns/p"]);
}

fn apply(state: &mut HashMap<String, String>, resp: &DeltaDiscoveryResponse) {
    for r in &resp.resources {
        state.insert(r.name.clone(), r.version.clone());
    }
    for name in &resp.removed_resources {
        state.remove(name);
    }
}

fn versions(t: &TypeSnapshot) -> HashMap<String, String> {
    t.entries
        .iter()
        .map(|(k, e)| (k.clone(), e.version.to_string()))
        .collect()
}

#[test]
fn incremental_and_skipping_clients_converge_on_the_same_state() {
    // Snapshots chained with `build_after`, so each knows what changed since the previous.
    let steps = [
        resources(&[("a", "n1"), ("b", "n1"), ("c", "n1")], &["p"]),
        resources(&[("a", "n2"), ("b", "n1"), ("c", "n1")], &["p"]),
        resources(&[("a", "n2"), ("c", "n1"), ("d", "n1")], &["p", "q"]),
        resources(
            &[("a", "n1"), ("c", "n1"), ("d", "n1"), ("e", "n3")],
            &["q"],
        ),
        resources(
            &[("a", "n1"), ("c", "n1"), ("d", "n1"), ("e", "n3")],
            &["q"],
        ),
    ];
    let mut snaps = vec![Snapshot::build(&steps[0], 1)];
    for r in &steps[1..] {
        let next = Snapshot::build_after(snaps.last().expect("one"), r);
        snaps.push(next);
    }
    assert_eq!(snaps[1].base, Some(1));
    assert_eq!(
        snaps[1].addresses.touched.iter().collect::<Vec<_>>(),
        ["c//v1/Pod/ns/a"]
    );
    assert!(snaps[4].addresses.touched.is_empty());

    let (mut every, mut skipping) = (Session::new(), Session::new());
    let (mut every_state, mut skipping_state) = (HashMap::new(), HashMap::new());
    for s in [&mut every, &mut skipping] {
        let out = s.handle_request(&subscribe(type_url::ADDRESS), &snaps[0]);
        let resp = out.response.expect("first");
        apply(&mut every_state, &resp);
        apply(&mut skipping_state, &resp);
    }
    let mut pushes_every = 0;
    for snap in &snaps[1..] {
        for resp in every.handle_snapshot(snap) {
            pushes_every += 1;
            apply(&mut every_state, &resp);
        }
        assert_eq!(
            every_state,
            versions(&snap.addresses),
            "gen {}",
            snap.generation
        );
    }
    assert_eq!(pushes_every, 3, "an unchanged snapshot pushes nothing");
    // The skipping client sees generations 1 and 4 only: a full diff, same result.
    for resp in skipping.handle_snapshot(&snaps[3]) {
        apply(&mut skipping_state, &resp);
    }
    assert!(skipping.handle_snapshot(&snaps[4]).is_empty());
    assert_eq!(skipping_state, versions(&snaps[4].addresses));
}
