//! Kubernetes mode authentication against an API double answering TokenReviews: valid node
//! proxy tokens name their node, anything else is refused with a reason, and positive
//! answers are cached.

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

mod kube_support;

use std::time::Duration;

use serde_json::{Value, json};
use zmesh_control::auth::{AuthError, Authenticator};
use zmesh_control::k8s_auth::{ServiceAccountRef, TokenReviewAuth};

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn review_answer(req: &kube_support::Seen) -> (u16, Value) {
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", REVIEWS));
    let token = req.body["spec"]["token"].as_str().unwrap_or("");
    let ztunnel = "system:serviceaccount:istio-system:ztunnel";
    let node = |n: &str| json!({"authentication.kubernetes.io/node-name": [n]});
    let status = match token {
        "good-a" => {
            json!({"authenticated": true, "user": {"username": ztunnel, "extra": node("node-a")}})
        }
        "good-b" => {
            json!({"authenticated": true, "user": {"username": ztunnel, "extra": node("node-b")}})
        }
        "other-sa" => json!({"authenticated": true,
            "user": {"username": "system:serviceaccount:demo:web", "extra": node("node-a")}}),
        "no-node" => json!({"authenticated": true, "user": {"username": ztunnel}}),
        _ => json!({"authenticated": false, "error": "token expired"}),
    };
    let mut answer = req.body.clone();
    answer["status"] = status;
    (201, answer)
}

fn auth(client: kube::Client) -> TokenReviewAuth {
    let sa: ServiceAccountRef = "istio-system/ztunnel".parse().unwrap();
    TokenReviewAuth::new(client, &[sa], vec!["istio-ca".to_string()])
}

fn reviews_of(api: &kube_support::ApiDouble, token: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.body["spec"]["token"] == token)
        .count()
}

#[tokio::test]
async fn accepts_node_proxy_tokens_and_names_their_node() {
    let api = kube_support::ApiDouble::start(review_answer).await;
    let auth = auth(api.client.clone());
    assert_eq!(auth.authenticate("good-a").await.unwrap().node, "node-a");
    assert_eq!(auth.authenticate("good-b").await.unwrap().node, "node-b");
    let sent = &api.requests()[0].body;
    assert_eq!(sent["kind"], "TokenReview");
    assert_eq!(sent["spec"]["audiences"], json!(["istio-ca"]));
}

#[tokio::test]
async fn refuses_invalid_foreign_and_unbound_tokens_with_a_reason() {
    let api = kube_support::ApiDouble::start(review_answer).await;
    let auth = auth(api.client.clone());

    let e = auth.authenticate("expired").await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Rejected(why) if why.contains("token expired")),
        "{e}"
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unauthenticated);

    let e = auth.authenticate("other-sa").await.unwrap_err();
    assert!(
        e.to_string().contains("system:serviceaccount:demo:web"),
        "{e}"
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);

    let e = auth.authenticate("no-node").await.unwrap_err();
    assert!(e.to_string().contains("node-name"), "{e}");
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);

    // Refusals are not cached: a fixed token works at once.
    auth.authenticate("expired").await.unwrap_err();
    assert_eq!(reviews_of(&api, "expired"), 2);
}

#[tokio::test]
async fn caches_positive_reviews_for_a_while() {
    let api = kube_support::ApiDouble::start(review_answer).await;
    let auth = auth(api.client.clone());
    for _ in 0..5 {
        assert_eq!(auth.authenticate("good-a").await.unwrap().node, "node-a");
    }
    assert_eq!(reviews_of(&api, "good-a"), 1, "a burst costs one review");

    let short = self::auth(api.client.clone()).with_cache(Duration::from_millis(50), 10);
    short.authenticate("good-b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    short.authenticate("good-b").await.unwrap();
    assert_eq!(
        reviews_of(&api, "good-b"),
        2,
        "expired entries are reviewed again"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable_not_unauthenticated() {
    let api =
        kube_support::ApiDouble::start(|_| (500, kube_support::status(500, "InternalError"))).await;
    let e = auth(api.client.clone())
        .authenticate("good-a")
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::Unavailable(_)), "{e}");
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
}
