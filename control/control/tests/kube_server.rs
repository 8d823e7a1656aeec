//! The server in Kubernetes mode, end to end over TLS on loopback: the CA comes from the
//! Secret and node proxies authenticate with ServiceAccount tokens (TokenReview), both served
//! by a loopback API double; a node proxy still gets certificates only for its node's pods.

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

mod common;
mod kube_support;

use std::sync::Arc;

use common::{Control, with_token, world};
use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::{Value, json};
use zmesh_control::ca_secret::CaSecret;
use zmesh_control::k8s_auth::TokenReviewAuth;
use zmesh_control::server::{ServeOptions, Server};
use zmesh_hbone::ca::DevCa;
use zmesh_proto::ca::IstioCertificateRequest;
use zmesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn api(secret: Value) -> impl Fn(&kube_support::Seen) -> (u16, Value) {
    move |req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/v1/namespaces/istio-system/secrets/zmesh-ca") => (200, secret.clone()),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let (user, node) = match req.body["spec"]["token"].as_str().unwrap_or("") {
                "ztunnel-node-0" => ("system:serviceaccount:istio-system:ztunnel", "node-0"),
                "ztunnel-node-7" => ("system:serviceaccount:istio-system:ztunnel", "node-7"),
                "web-pod" => ("system:serviceaccount:demo:web", "node-0"),
                _ => return (201, json!({"status": {"authenticated": false}})),
            };
            let extra = json!({"authentication.kubernetes.io/node-name": [node]});
            (
                201,
                json!({"status": {"authenticated": true, "user": {"username": user, "extra": extra}}}),
            )
        }
        other => panic!("unexpected request {other:?}"),
    }
}

fn csr_request(id: &str) -> IstioCertificateRequest {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let metadata = prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.into())),
            },
        )]
        .into(),
    };
    IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(metadata),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_with_the_secrets_root_for_reviewed_node_proxies_only() {
    let theirs = DevCa::generate("cluster.local").unwrap();
    // What a real API server returns: base64 `data`.
    let b64 =
        |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "zmesh-ca", "namespace": "istio-system"},
        "data": {"ca-key.pem": b64(&theirs.key_pem()), "ca-cert.pem": b64(theirs.root_pem())}
    });
    let double = kube_support::ApiDouble::start(api(secret)).await;
    let (ca, _) = CaSecret::new(double.client.clone(), "istio-system", "zmesh-ca")
        .load_or_create("cluster.local")
        .await
        .unwrap();
    let sa = "istio-system/ztunnel".parse().unwrap();
    let auth = TokenReviewAuth::new(double.client.clone(), &[sa], vec!["istio-ca".into()]);
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions::new("127.0.0.1:0".parse().unwrap(), dir.path());
    let server = Server::bind_with_ca(opts, ca)
        .await
        .unwrap()
        .with_authenticator(Arc::new(auth));
    let control = Control::from_server(server, dir.path(), world(4)); // web-* on node-0, node-1
    assert_eq!(
        control.root_pem,
        theirs.root_pem(),
        "serves the Secret's root"
    );

    let mut client = IstioCertificateServiceClient::new(control.channel().await);
    let mut call = async |token: &str| {
        client
            .create_certificate(with_token(
                tonic::Request::new(csr_request(WEB)),
                Some(token),
            ))
            .await
            .map(tonic::Response::into_inner)
    };
    let signed = call("ztunnel-node-0").await.unwrap();
    assert_eq!(signed.cert_chain.last().unwrap(), theirs.root_pem());

    let code = |r: Result<_, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(call("ztunnel-node-7").await),
        tonic::Code::PermissionDenied,
        "no web pod there"
    );
    assert_eq!(
        code(call("web-pod").await),
        tonic::Code::PermissionDenied,
        "not a node proxy"
    );
    assert_eq!(code(call("forged").await), tonic::Code::Unauthenticated);
    control.stop().await;
}
