//! Istio's certificate service over real TLS on loopback: a node proxy's CSR for a pod on its
//! node is signed; every refusal carries the gRPC code a client can act on; the root survives
//! a restart.

mod common;

use common::{Control, pod, with_token, world};
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::*;
use zmesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zmesh_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn csr(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default(); // empty subject, as ztunnel sends
    params.subject_alt_names = sans;
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn uri(u: &str) -> SanType {
    SanType::URI(u.try_into().expect("ia5"))
}

fn request(csr: String, impersonate: Option<&str>, secs: i64) -> IstioCertificateRequest {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.into())),
            },
        )]
        .into(),
    });
    IstioCertificateRequest {
        csr,
        validity_duration: secs,
        metadata,
    }
}

async fn call(
    control: &Control,
    token: Option<&str>,
    req: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut client = IstioCertificateServiceClient::new(control.channel().await);
    client
        .create_certificate(with_token(tonic::Request::new(req), token))
        .await
        .map(tonic::Response::into_inner)
}

fn der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).expect("pem").into_contents()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_a_pods_identity_for_its_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(4)).await; // web-* on node-0 and node-1
    let token = control.token("node-0");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let resp = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(WEB)]), Some(WEB), 3600),
    )
    .await
    .expect("signed");

    assert_eq!(resp.cert_chain.len(), 2, "leaf first, root last");
    assert_eq!(resp.cert_chain[1], control.root_pem);
    let (leaf_der, root_der) = (der(&resp.cert_chain[0]), der(&resp.cert_chain[1]));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let (_, root) = X509Certificate::from_der(&root_der).expect("root parses");
    leaf.verify_signature(Some(root.public_key()))
        .expect("leaf is signed by the root");
    assert_eq!(leaf.issuer(), root.subject());
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(),
        "the leaf carries the CSR's key"
    );
    assert!(leaf.subject().iter().next().is_none(), "empty subject");

    let san = leaf
        .subject_alternative_name()
        .expect("san ext")
        .expect("has SAN");
    let sans = &san.value.general_names;
    assert!(
        matches!(sans[..], [GeneralName::URI(u)] if u == WEB),
        "exactly the SPIFFE URI: {sans:?}"
    );
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("has EKU")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().expect("ku").expect("has KU").value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert!(!leaf.is_ca());

    let validity = leaf.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    // Backdated by a few minutes for clock skew; valid for the hour asked.
    assert!(
        (3600..=3600 + 600).contains(&lifetime),
        "lifetime {lifetime}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((validity.not_after.timestamp() - now - 3600).abs() < 60);

    // A week asked, 24 h given.
    let resp = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(WEB)]), None, 7 * 86400),
    )
    .await
    .expect("signed");
    let leaf_der = der(&resp.cert_chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let v = leaf.validity();
    assert!(v.not_after.timestamp() - now <= 86400 + 60);
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_right_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = world(2);
    let (k, v) = pod("db", "db-0", "db", "node-1", [10, 1, 0, 1]);
    r.addresses.insert(k, v);
    let control = Control::start(dir.path(), r).await;
    let token = control.token("node-0");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let good = || request(csr(&key, vec![uri(WEB)]), Some(WEB), 3600);

    let e = call(&control, None, good()).await.expect_err("no token");
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unauthenticated, "missing bearer token")
    );
    let e = call(&control, Some("wrong"), good())
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let db = "spiffe://cluster.local/ns/db/sa/db";
    let e = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(db)]), Some(db), 60),
    )
    .await
    .expect_err("db runs on node-1, not node-0");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains(db) && e.message().contains("node-0"),
        "{}",
        e.message()
    );

    let dns = SanType::DnsName("web.demo.svc".try_into().expect("ia5"));
    let e = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(WEB), dns]), None, 60),
    )
    .await
    .expect_err("non-SPIFFE SAN");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("non-SPIFFE"), "{}", e.message());

    let other_td = "spiffe://example.org/ns/demo/sa/web";
    let e = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(other_td)]), None, 60),
    )
    .await
    .expect_err("other trust domain");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("trust domain"), "{}", e.message());

    let e = call(
        &control,
        Some(&token),
        request("not a CSR".into(), Some(WEB), 60),
    )
    .await
    .expect_err("garbage");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The same good request from the right node works (so the refusals above were not luck).
    call(&control, Some(&token), good()).await.expect("signed");
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(2)).await;
    let token = control.token("node-0");
    let root = control.root_pem.clone();
    let root_file = std::fs::read_to_string(dir.path().join("root-cert.pem")).expect("root file");
    assert_eq!(root_file, root);
    let key_file = dir.path().join("ca/ca-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).expect("ca key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    control.stop().await;

    let control = Control::start(dir.path(), world(2)).await;
    assert_eq!(control.root_pem, root, "same root after a restart");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let resp = call(
        &control,
        Some(&token),
        request(csr(&key, vec![uri(WEB)]), Some(WEB), 600),
    )
    .await
    .expect("the old token still works");
    assert_eq!(resp.cert_chain[1], root);
    control.stop().await;
}
