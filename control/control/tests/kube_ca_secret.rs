//! Kubernetes mode CA persistence against an API double holding Secrets: the first start
//! creates the Secret, later starts sign with the same root, and a controller that loses the
//! race to create uses the winner's CA.

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

mod kube_support;

use std::sync::{Arc, Mutex};

use serde_json::Value;
use zmesh_control::ca_secret::{CaSecret, Origin};
use zmesh_hbone::ca::DevCa;

const ONE: &str = "/api/v1/namespaces/istio-system/secrets/zmesh-ca";
const ALL: &str = "/api/v1/namespaces/istio-system/secrets";

/// A Secret store: GET the one Secret (404 when absent), POST creates it (409 when present).
fn store(secret: Arc<Mutex<Option<Value>>>) -> impl Fn(&kube_support::Seen) -> (u16, Value) {
    move |req| {
        let mut secret = secret.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", ONE) => match &*secret {
                Some(s) => (200, s.clone()),
                None => (404, kube_support::status(404, "NotFound")),
            },
            ("POST", ALL) if secret.is_some() => (409, kube_support::status(409, "AlreadyExists")),
            ("POST", ALL) => {
                *secret = Some(req.body.clone());
                (201, req.body.clone())
            }
            other => panic!("unexpected request {other:?}"),
        }
    }
}

#[tokio::test]
async fn first_start_creates_the_secret_and_restarts_keep_the_root() {
    let held = Arc::new(Mutex::new(None));
    let api = kube_support::ApiDouble::start(store(held.clone())).await;
    let secret = CaSecret::new(api.client.clone(), "istio-system", "zmesh-ca");

    let (first, origin) = secret.load_or_create("cluster.local").await.unwrap();
    assert_eq!(origin, Origin::Created);
    let stored = held.lock().unwrap().clone().unwrap();
    assert_eq!(stored["metadata"]["name"], "zmesh-ca");
    assert!(stored["data"]["ca-key.pem"].is_string());
    assert!(stored["data"]["ca-cert.pem"].is_string());

    let (second, origin) = secret.load_or_create("cluster.local").await.unwrap();
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(
        second.root_pem(),
        first.root_pem(),
        "a restart keeps the root"
    );
    assert_eq!(second.key_pem(), first.key_pem());
    let methods: Vec<_> = api.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["GET", "POST", "GET"]);
}

#[tokio::test]
async fn losing_the_race_to_create_uses_the_winners_ca() {
    let theirs = DevCa::generate("cluster.local").unwrap();
    let their_secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "zmesh-ca", "namespace": "istio-system"},
        "data": {
            "ca-key.pem": b64(theirs.key_pem().as_bytes()),
            "ca-cert.pem": b64(theirs.root_pem().as_bytes()),
        }
    });
    // Our GET sees nothing; by our POST, the other controller has created it.
    let gets = Arc::new(Mutex::new(0));
    let api =
        kube_support::ApiDouble::start(move |req| match (req.method.as_str(), req.path.as_str()) {
            ("GET", ONE) => {
                let mut n = gets.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    (404, kube_support::status(404, "NotFound"))
                } else {
                    (200, their_secret.clone())
                }
            }
            ("POST", ALL) => (409, kube_support::status(409, "AlreadyExists")),
            other => panic!("unexpected request {other:?}"),
        })
        .await;
    let (ca, origin) = CaSecret::new(api.client.clone(), "istio-system", "zmesh-ca")
        .load_or_create("cluster.local")
        .await
        .unwrap();
    assert_eq!(origin, Origin::LostRace);
    assert_eq!(ca.root_pem(), theirs.root_pem());
}

#[tokio::test]
async fn an_incomplete_secret_is_an_error_not_a_new_ca() {
    let held = Arc::new(Mutex::new(Some(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "zmesh-ca", "namespace": "istio-system"},
        "data": {"ca-cert.pem": b64(b"not a cert")}
    }))));
    let api = kube_support::ApiDouble::start(store(held)).await;
    let e = CaSecret::new(api.client.clone(), "istio-system", "zmesh-ca")
        .load_or_create("cluster.local")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ca-key.pem"), "{e}");
    assert!(
        api.requests().iter().all(|r| r.method == "GET"),
        "nothing overwritten"
    );
}

/// Standard base64 (what Secret `data` holds), written here to avoid a dependency.
fn b64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
