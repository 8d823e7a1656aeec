//! The sample directory in `testdata/sample`: a realistic ambient namespace (a Deployment on two
//! nodes behind a Service, a client, an ALLOW policy for the client's identity, STRICT mTLS),
//! loaded from disk and translated; every served resource is checked field by field.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use zmesh_control::source::DirSource;
use zmesh_control::translate::{MeshOptions, translate};
use zmesh_proto::security::{
    self, Authorization, Clause, Match, Rule, Scope, StringMatch, string_match::MatchType,
};
use zmesh_proto::workload::{
    Address, AppProtocol, IpFamilies, NetworkAddress, Port, PortList, Service, TunnelProtocol,
    Workload, WorkloadStatus, WorkloadType, address,
};

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sample")
}

const SVC_KEY: &str = "shop/reviews.shop.svc.cluster.local";
const PEER_KEY: &str = "shop/converted_peer_authentication_default";

fn reviews_pod(name: &str, node: &str, ip: [u8; 4]) -> Workload {
    Workload {
        uid: format!("Kubernetes//v1/Pod/shop/{name}"),
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        addresses: vec![ip.to_vec().into()],
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        trust_domain: "cluster.local".to_owned(),
        service_account: "reviews".to_owned(),
        node: node.to_owned(),
        canonical_name: "reviews".to_owned(),
        canonical_revision: "v1".to_owned(),
        workload_type: WorkloadType::Deployment as i32,
        workload_name: "reviews".to_owned(),
        services: BTreeMap::from([(
            SVC_KEY.to_owned(),
            PortList {
                ports: vec![Port {
                    service_port: 9080,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        authorization_policies: vec!["shop/reviews-from-sleep".to_owned(), PEER_KEY.to_owned()],
        status: WorkloadStatus::Healthy as i32,
        cluster_id: "Kubernetes".to_owned(),
        ..Default::default()
    }
}

fn expected_workloads() -> Vec<Workload> {
    let sleep = Workload {
        uid: "Kubernetes//v1/Pod/shop/sleep".to_owned(),
        name: "sleep".to_owned(),
        service_account: "sleep".to_owned(),
        addresses: vec![vec![10u8, 244, 1, 20].into()],
        canonical_name: "sleep".to_owned(),
        canonical_revision: "latest".to_owned(),
        workload_type: WorkloadType::Pod as i32,
        workload_name: "sleep".to_owned(),
        services: BTreeMap::new(),
        authorization_policies: vec![PEER_KEY.to_owned()],
        ..reviews_pod("sleep", "node-a", [10, 244, 1, 20])
    };
    vec![
        reviews_pod("reviews-6d8f7c9b5-7xk2p", "node-a", [10, 244, 1, 11]),
        reviews_pod("reviews-6d8f7c9b5-q9m4d", "node-b", [10, 244, 2, 12]),
        sleep,
    ]
}

fn expected_service() -> Service {
    Service {
        name: "reviews".to_owned(),
        namespace: "shop".to_owned(),
        hostname: "reviews.shop.svc.cluster.local".to_owned(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10u8, 96, 12, 34],
            length: None,
        }],
        // Named target port: 0 here, resolved per pod in its services map.
        ports: vec![Port {
            service_port: 9080,
            target_port: 0,
            app_protocol: AppProtocol::Http11 as i32,
        }],
        ip_families: IpFamilies::Ipv4Only as i32,
        canonical: true,
        ..Default::default()
    }
}

fn expected_policies() -> Vec<(String, Authorization)> {
    let principal = |m| StringMatch {
        match_type: Some(m),
    };
    let allow = Authorization {
        name: "reviews-from-sleep".to_owned(),
        namespace: "shop".to_owned(),
        scope: Scope::WorkloadSelector as i32,
        action: security::Action::Allow as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    principals: vec![principal(MatchType::Exact(
                        "cluster.local/ns/shop/sa/sleep".to_owned(),
                    ))],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let strict = Authorization {
        name: "converted_peer_authentication_default".to_owned(),
        namespace: "shop".to_owned(),
        scope: Scope::WorkloadSelector as i32,
        action: security::Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![principal(MatchType::Presence(()))],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    vec![
        ("shop/reviews-from-sleep".to_owned(), allow),
        (PEER_KEY.to_owned(), strict),
    ]
}

#[test]
fn sample_directory_translates_to_the_expected_resources() {
    let load = DirSource::new(sample_dir()).load();
    assert!(load.diagnostics.is_empty(), "{:#?}", load.diagnostics);
    assert_eq!(
        load.store.len(),
        10,
        "namespace, 2 SAs, deployment, service, 3 pods, 2 policies"
    );
    let t = translate(&load.store, &MeshOptions::default());
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);

    let mut expected = std::collections::BTreeMap::new();
    for w in expected_workloads() {
        expected.insert(
            w.uid.clone(),
            Address {
                r#type: Some(address::Type::Workload(w)),
            },
        );
    }
    expected.insert(
        SVC_KEY.to_owned(),
        Address {
            r#type: Some(address::Type::Service(expected_service())),
        },
    );
    for (key, got) in &t.resources.addresses {
        assert_eq!(Some(got), expected.get(key), "{key}");
    }
    assert_eq!(t.resources.addresses.len(), expected.len());
    assert_eq!(
        t.resources.authorizations,
        expected_policies().into_iter().collect()
    );

    // The CA may sign each identity only for the node its pods run on.
    let on_a: Vec<String> = t
        .resources
        .identities_on_node("node-a")
        .into_iter()
        .collect();
    assert_eq!(
        on_a,
        vec![
            "spiffe://cluster.local/ns/shop/sa/reviews",
            "spiffe://cluster.local/ns/shop/sa/sleep"
        ]
    );
    let on_b: Vec<String> = t
        .resources
        .identities_on_node("node-b")
        .into_iter()
        .collect();
    assert_eq!(on_b, vec!["spiffe://cluster.local/ns/shop/sa/reviews"]);
}

#[test]
fn mesh_options_change_uids_identities_and_hostnames() {
    let load = DirSource::new(sample_dir()).load();
    let opts = MeshOptions {
        trust_domain: "example.org".to_owned(),
        cluster_id: "east".to_owned(),
        network: "net1".to_owned(),
        cluster_domain: "corp.local".to_owned(),
        ..MeshOptions::default()
    };
    let t = translate(&load.store, &opts);
    let Some(address::Type::Workload(w)) = t.resources.addresses["east//v1/Pod/shop/sleep"]
        .r#type
        .as_ref()
    else {
        panic!("sleep workload");
    };
    assert_eq!(
        (
            w.trust_domain.as_str(),
            w.network.as_str(),
            w.cluster_id.as_str()
        ),
        ("example.org", "net1", "east")
    );
    let Some(address::Type::Service(s)) = t.resources.addresses["shop/reviews.shop.svc.corp.local"]
        .r#type
        .as_ref()
    else {
        panic!("service");
    };
    assert_eq!(s.addresses[0].network, "net1");
}
