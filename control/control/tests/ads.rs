//! Delta ADS over real TLS on loopback, with tonic's generated client speaking as Istio's node
//! proxy does: wildcard subscription per type, ACK/NACK by nonce, reconnect with
//! `initial_resource_versions`.

mod common;

use std::collections::HashMap;

use common::{Ads, Control, names, pod, world};
use prost::Message;
use zmesh_proto::discovery::{DeltaDiscoveryRequest, Status};
use zmesh_proto::type_url::{ADDRESS, AUTHORIZATION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_set_then_only_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(100)).await;
    let token = control.token("node-0");
    let mut ads = Ads::open(&control, Some(&token)).await.expect("stream");

    ads.subscribe(ADDRESS).await;
    let first = ads.next().await;
    assert_eq!(first.type_url, ADDRESS);
    assert_eq!(first.resources.len(), 100, "first response = every address");
    ads.subscribe(AUTHORIZATION).await;
    let authz = ads.next().await;
    assert_eq!(authz.type_url, AUTHORIZATION);
    assert_eq!(names(&authz), ["demo/allow-web"]);
    ads.ack(&first).await;
    ads.ack(&authz).await;
    ads.quiet().await; // an ACK is not answered and nothing is resent

    // One pod moves to another node: exactly that pod is pushed.
    let before = control.stats.snapshot();
    let mut r = world(100);
    let (uid, moved) = pod("demo", "web-7", "web", "node-9", [10, 0, 0, 8]);
    r.addresses.insert(uid.clone(), moved.clone());
    control.set(r.clone());
    let push = ads.next().await;
    assert_eq!(push.type_url, ADDRESS);
    assert_eq!(names(&push), [uid.as_str()]);
    assert!(push.removed_resources.is_empty());
    let body = push.resources[0].resource.as_ref().expect("body");
    assert_eq!(body.type_url, ADDRESS);
    assert_eq!(
        zmesh_proto::workload::Address::decode(body.value.as_slice()).expect("decodes"),
        moved
    );
    ads.ack(&push).await;
    ads.quiet().await;
    let delta = control.stats.snapshot().since(&before);
    assert_eq!(
        (delta.responses, delta.resources, delta.removals),
        (1, 1, 0)
    );
    assert_eq!(delta.bytes, push.encoded_len() as u64);
    assert!(
        delta.bytes * 20 < first.encoded_len() as u64,
        "a one-pod push ({} B) must be far smaller than the full set ({} B)",
        delta.bytes,
        first.encoded_len()
    );
    eprintln!(
        "bytes pushed for a one-pod change: {} (full set of 100: {})",
        delta.bytes,
        first.encoded_len()
    );

    // One pod removed: a removal, no resources.
    r.addresses.remove(&uid);
    control.set(r.clone());
    let push = ads.next().await;
    assert!(push.resources.is_empty());
    assert_eq!(push.removed_resources, [uid.as_str()]);

    // A NACK is logged, not answered by a resend loop; later changes still arrive.
    ads.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: push.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "rejected for the test".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    ads.quiet().await;
    let nacks = control.stats.snapshot().nacks;
    assert_eq!(nacks, 1);
    r.authorizations.clear();
    control.set(r);
    let push = ads.next().await;
    assert_eq!(push.type_url, AUTHORIZATION);
    assert_eq!(push.removed_resources, ["demo/allow-web"]);
    drop(ads);
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_gets_only_the_difference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(50)).await;
    let token = control.token("node-1");
    let mut ads = Ads::open(&control, Some(&token)).await.expect("stream");
    ads.subscribe(ADDRESS).await;
    let first = ads.next().await;
    let known: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(ads);

    // While disconnected: one changed, one removed, one added.
    let mut r = world(50);
    let (changed, p) = pod("demo", "web-3", "web", "node-5", [10, 0, 0, 4]);
    r.addresses.insert(changed.clone(), p);
    let removed = "Kubernetes//Pod/demo/web-4".to_string();
    r.addresses.remove(&removed);
    let (added, p) = pod("demo", "new", "web", "node-1", [10, 9, 9, 9]);
    r.addresses.insert(added.clone(), p);
    control.set(r);

    let mut ads = Ads::open(&control, Some(&token)).await.expect("stream");
    ads.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: known,
        ..Default::default()
    })
    .await;
    let resp = ads.next().await;
    let mut got = names(&resp);
    got.sort();
    let mut want = vec![added.as_str(), changed.as_str()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(resp.removed_resources, [removed]);
    ads.ack(&resp).await;
    ads.quiet().await;
    drop(ads);
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_are_independent_and_a_slow_one_gets_the_latest_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), padded(0)).await;
    let (ta, tb) = (control.token("node-0"), control.token("node-1"));
    let mut slow = Ads::open(&control, Some(&ta)).await.expect("stream a");
    let mut fast = Ads::open(&control, Some(&tb)).await.expect("stream b");
    slow.subscribe(ADDRESS).await;
    fast.subscribe(ADDRESS).await;
    assert_eq!(fast.next().await.resources.len(), PODS);

    // Every pod changes, ROUNDS times; `slow` reads nothing meanwhile, `fast` keeps up.
    let mut last = padded(0);
    for round in 1..=ROUNDS {
        last = padded(round);
        control.set(last.clone());
        let push = fast.next().await;
        assert_eq!(push.resources.len(), PODS, "round {round}");
    }

    // Now the slow client drains: fewer messages than changes, ending at the latest state.
    let want = final_versions(&last);
    let mut versions: HashMap<String, String> = HashMap::new();
    let mut messages = 0;
    while versions.len() < PODS || versions.values().any(|v| !want.contains(v)) {
        let resp = slow.next().await;
        messages += 1;
        for r in resp.resources {
            versions.insert(r.name, r.version);
        }
        assert!(
            messages <= ROUNDS + 1,
            "slow client got every change, not coalesced"
        );
    }
    assert!(
        messages < ROUNDS + 1,
        "changes coalesce for a slow client ({messages} messages)"
    );
    eprintln!("slow client: {messages} messages for {ROUNDS} changes");
    drop((slow, fast));
    control.stop().await;
}

const PODS: usize = 2000;
const ROUNDS: usize = 10;

/// Pods with 1 KiB host names, so that a push (about 2 MiB) overflows the HTTP/2 windows of a
/// client that does not read.
fn padded(round: usize) -> zmesh_control::Resources {
    let mut r = world(PODS);
    for (_, a) in r.addresses.iter_mut() {
        if let Some(zmesh_proto::workload::address::Type::Workload(w)) = &mut a.r#type {
            w.hostname = format!("{round}-{}", "x".repeat(1024));
        }
    }
    r
}

fn final_versions(r: &zmesh_control::Resources) -> std::collections::HashSet<String> {
    let snap = zmesh_control::xds::Snapshot::build(r, 0);
    snap.addresses
        .entries
        .values()
        .map(|e| e.version.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_both_get_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(10)).await;
    let mut clients = Vec::new();
    for node in ["node-0", "node-1"] {
        let ads = Ads::open(&control, Some(&control.token(node)))
            .await
            .expect("stream");
        ads.subscribe(AUTHORIZATION).await;
        clients.push(ads);
    }
    for c in &mut clients {
        let first = c.next().await;
        assert_eq!(names(&first), ["demo/allow-web"]);
        c.ack(&first).await;
    }
    let mut r = world(10);
    r.authorizations
        .get_mut("demo/allow-web")
        .expect("policy")
        .action = 1;
    control.set(r);
    for c in &mut clients {
        let push = c.next().await;
        assert_eq!(names(&push), ["demo/allow-web"]);
    }
    drop(clients);
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_valid_token_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(1)).await;
    control.token("node-0");
    let err = Ads::open(&control, None).await.err().expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "missing bearer token");
    let err = Ads::open(&control, Some("0000"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(3)).await;
    let token = control.token("node-0");
    let mut ads = Ads::open(&control, Some(&token)).await.expect("stream");
    ads.subscribe(ADDRESS).await;
    let first = ads.next().await;
    ads.ack(&first).await;
    control.stop().await;
    // The node proxy sees its stream end (and will reconnect), rather than hang.
    let end = tokio::time::timeout(common::WAIT, ads.rx.message())
        .await
        .expect("stream ends in time");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}
