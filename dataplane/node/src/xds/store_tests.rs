use super::*;
use prost::Message;
use zmesh_proto::discovery::Resource;
use zmesh_proto::prost_types::Any;
use zmesh_proto::{security as sec, workload as wl};

fn workload(uid: &str, ip: [u8; 4]) -> wl::Address {
    wl::Address {
        r#type: Some(wl::address::Type::Workload(wl::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            addresses: vec![ip.to_vec().into()],
            node: "n1".into(),
            ..Default::default()
        })),
    }
}

fn res<M: Message>(name: &str, version: &str, url: &str, m: &M) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: url.into(),
            value: m.encode_to_vec(),
        }),
        aliases: vec![],
    }
}

fn push(resources: Vec<Resource>, removed: &[&str], nonce: &str) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ADDRESS.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

#[test]
fn adds_replaces_removes_and_acks() {
    let mut s = Store::default();
    let a = s.apply(&push(
        vec![
            res("w1", "1", ADDRESS, &workload("w1", [10, 0, 0, 1])),
            res("w2", "1", ADDRESS, &workload("w2", [10, 0, 0, 2])),
        ],
        &[],
        "n1",
    ));
    assert!(a.changed && a.rejected.is_empty());
    assert_eq!(a.reply.response_nonce, "n1");
    assert!(a.reply.error_detail.is_none(), "an ACK");
    let a = s.apply(&push(
        vec![res("w1", "2", ADDRESS, &workload("w1", [10, 0, 0, 9]))],
        &["w2"],
        "n2",
    ));
    assert!(a.changed);
    let (snap, evicted) = s.snapshot();
    assert!(evicted.is_empty());
    assert_eq!(snap.workloads().count(), 1);
    let ip = "10.0.0.9".parse().unwrap();
    assert_eq!(
        snap.workload_by_ip("", ip).map(|w| w.uid.as_str()),
        Some("w1")
    );
    let reqs = s.initial_requests(&Node::default());
    assert_eq!(reqs[0].type_url, ADDRESS);
    assert_eq!(reqs[0].resource_names_subscribe, vec!["*"]);
    assert_eq!(
        reqs[0]
            .initial_resource_versions
            .get("w1")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(reqs[0].initial_resource_versions.len(), 1);
    assert!(reqs[1].initial_resource_versions.is_empty());
    // Removing something unknown changes nothing.
    assert!(!s.apply(&push(vec![], &["nope"], "n3")).changed);
}

#[test]
fn nacks_the_bad_resource_and_applies_the_good_ones() {
    let mut s = Store::default();
    let mut bad = workload("w3", [10, 0, 0, 3]);
    if let Some(wl::address::Type::Workload(w)) = &mut bad.r#type {
        w.addresses = vec![vec![1, 2].into()];
    }
    let a = s.apply(&push(
        vec![
            res("w1", "1", ADDRESS, &workload("w1", [10, 0, 0, 1])),
            res("w3", "1", ADDRESS, &bad),
            // Same address as w1: converts, but cannot join the snapshot.
            res("w4", "1", ADDRESS, &workload("w4", [10, 0, 0, 1])),
        ],
        &[],
        "n1",
    ));
    let names: Vec<&str> = a.rejected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["w3", "w4"]);
    let detail = a.reply.error_detail.expect("a NACK");
    assert!(
        detail.message.contains("w3: addresses: address of 2 bytes"),
        "{}",
        detail.message
    );
    assert!(detail.message.contains("w4: "), "{}", detail.message);
    let (snap, _) = s.snapshot();
    assert_eq!(
        snap.workloads().map(|w| w.uid.as_str()).collect::<Vec<_>>(),
        vec!["w1"]
    );
    // Once the clash is gone, the held resource joins.
    s.apply(&push(vec![], &["w1"], "n2"));
    let (snap, evicted) = s.snapshot();
    assert!(evicted.is_empty());
    assert_eq!(
        snap.workloads().map(|w| w.uid.as_str()).collect::<Vec<_>>(),
        vec!["w4"]
    );
}

#[test]
fn policies_are_keyed_and_unknown_types_nacked() {
    let mut s = Store::default();
    let p = sec::Authorization {
        name: "deny".into(),
        namespace: "demo".into(),
        action: sec::Action::Deny as i32,
        ..Default::default()
    };
    let a = s.apply(&DeltaDiscoveryResponse {
        type_url: AUTHORIZATION.into(),
        resources: vec![res("", "1", AUTHORIZATION, &p)],
        nonce: "p1".into(),
        ..Default::default()
    });
    assert!(a.changed && a.reply.error_detail.is_none());
    assert!(
        s.snapshot().0.policy_by_key("demo/deny").is_some(),
        "keyed ns/name when unnamed"
    );
    let a = s.apply(&DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/other".into(),
        nonce: "x".into(),
        ..Default::default()
    });
    assert!(a.reply.error_detail.is_some() && !a.changed);
}
