use rcgen::{CertificateParams, KeyPair, SanType};
use zmesh_proto::workload::{Address, Workload, address};

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .serialize_request(&key)
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
            IMPERSONATED_IDENTITY.to_string(),
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

fn world() -> Resources {
    let mut r = Resources::default();
    let w = Workload {
        uid: "c//v1/Pod/demo/web-1".into(),
        namespace: "demo".into(),
        service_account: "web".into(),
        node: "node-a".into(),
        ..Default::default()
    };
    r.addresses.insert(
        w.uid.clone(),
        Address {
            r#type: Some(address::Type::Workload(w)),
        },
    );
    r
}

fn policy() -> CaPolicy {
    CaPolicy {
        trust_domain: "cluster.local".into(),
        max_ttl: DEFAULT_MAX_TTL,
    }
}

fn check(req: &IstioCertificateRequest, node: &str) -> Result<Approved, Refusal> {
    let caller = Caller { node: node.into() };
    check_request(req, &caller, &world(), &policy())
}

fn invalid(r: Result<Approved, Refusal>) -> String {
    match r {
        Err(Refusal::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn approves_the_identity_of_a_pod_on_the_callers_node() {
    let ok = check(&request(csr(vec![uri(WEB)]), Some(WEB), 3600), "node-a").expect("ok");
    assert_eq!(ok.identity.to_uri(), WEB);
    assert_eq!(ok.ttl, Duration::from_secs(3600));
    // Dedicated mode: no metadata, identity from the CSR. TTL capped at 24 h; 0 means the max.
    let ok = check(&request(csr(vec![uri(WEB)]), None, 7 * 86400), "node-a").expect("ok");
    assert_eq!(ok.ttl, DEFAULT_MAX_TTL);
    let ok = check(&request(csr(vec![uri(WEB)]), None, 0), "node-a").expect("ok");
    assert_eq!(ok.ttl, DEFAULT_MAX_TTL);
    // A CSR with no SAN is fine when the identity comes from the metadata.
    check(&request(csr(vec![]), Some(WEB), 60), "node-a").expect("ok");
}

#[test]
fn refuses_an_identity_not_on_the_callers_node() {
    let r = check(&request(csr(vec![uri(WEB)]), Some(WEB), 60), "node-b");
    let Err(Refusal::PermissionDenied(m)) = r else {
        panic!("expected PermissionDenied, got {r:?}");
    };
    assert!(m.contains(WEB) && m.contains("node-b"), "{m}");
}

#[test]
fn refuses_bad_sans() {
    let dns = SanType::DnsName("web.demo.svc".try_into().expect("ia5"));
    let m = invalid(check(
        &request(csr(vec![uri(WEB), dns]), None, 60),
        "node-a",
    ));
    assert!(m.contains("non-SPIFFE"), "{m}");
    let m = invalid(check(
        &request(csr(vec![uri("https://example.com/x")]), None, 60),
        "node-a",
    ));
    assert!(m.contains("CSR SAN"), "{m}");
    let other_td = "spiffe://evil.example/ns/demo/sa/web";
    let m = invalid(check(
        &request(csr(vec![uri(other_td)]), None, 60),
        "node-a",
    ));
    assert!(m.contains("trust domain"), "{m}");
    let other = "spiffe://cluster.local/ns/demo/sa/db";
    let m = invalid(check(
        &request(csr(vec![uri(WEB), uri(other)]), None, 60),
        "node-a",
    ));
    assert!(m.contains("two identities"), "{m}");
    let m = invalid(check(
        &request(csr(vec![uri(other)]), Some(WEB), 60),
        "node-a",
    ));
    assert!(m.contains("does not match"), "{m}");
    let m = invalid(check(&request(csr(vec![]), None, 60), "node-a"));
    assert!(m.contains("no identity"), "{m}");
    let m = invalid(check(&request("garbage".into(), Some(WEB), 60), "node-a"));
    assert!(m.contains("invalid CSR"), "{m}");
}
