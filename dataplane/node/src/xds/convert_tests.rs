use super::*;
use zmesh_proto::prost_types::Any;

fn any<M: Message>(url: &str, m: &M) -> Any {
    Any {
        type_url: url.to_owned(),
        value: m.encode_to_vec(),
    }
}

fn pod() -> wl::Workload {
    let mut services = std::collections::BTreeMap::new();
    services.insert(
        "demo/web.demo.svc.cluster.local".to_owned(),
        wl::PortList {
            ports: vec![
                wl::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                },
                wl::Port {
                    service_port: 443,
                    target_port: 0,
                    app_protocol: 0,
                },
            ],
        },
    );
    wl::Workload {
        uid: "c1//v1/Pod/demo/web-1".into(),
        name: "web-1".into(),
        namespace: "demo".into(),
        addresses: vec![
            vec![10, 0, 0, 7].into(),
            "fd00::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec()
                .into(),
        ],
        network: "net1".into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: "web".into(),
        node: "node-a".into(),
        workload_type: wl::WorkloadType::Pod as i32,
        services,
        authorization_policies: vec!["demo/allow-web".into()],
        status: wl::WorkloadStatus::Unhealthy as i32,
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "demo".into(),
                    hostname: "wp.demo.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn workload_with_named_port_and_waypoint() {
    let a = wl::Address {
        r#type: Some(wl::address::Type::Workload(pod())),
    };
    let AddressResource::Workload(w) = address(&any(zmesh_proto::type_url::ADDRESS, &a)).unwrap()
    else {
        panic!("not a workload");
    };
    assert_eq!(w.uid, "c1//v1/Pod/demo/web-1");
    assert_eq!(
        w.workload_ips,
        vec![
            "10.0.0.7".parse::<IpAddr>().unwrap(),
            "fd00::7".parse().unwrap()
        ]
    );
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(w.status, WorkloadStatus::Unhealthy);
    assert_eq!(w.workload_type, "pod");
    assert_eq!(
        w.identity().to_uri(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    let ports = &w.services["demo/web.demo.svc.cluster.local"];
    assert_eq!(ports.get(&80), Some(&8080));
    assert_eq!(
        ports.get(&443),
        Some(&0),
        "named port stays 0, resolved per endpoint"
    );
    let wp = w.waypoint.unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008, "0 means the HBONE port");
    assert!(
        matches!(wp.destination, GatewayDestination::Hostname { ref hostname, .. } if hostname == "wp.demo.svc.cluster.local")
    );
    // The bare Workload type is accepted too.
    let bare = any("type.googleapis.com/istio.workload.Workload", &pod());
    assert!(matches!(address(&bare), Ok(AddressResource::Workload(_))));
}

#[test]
fn service_vips_ports_sans_waypoint() {
    let s = wl::Service {
        name: "web".into(),
        namespace: "demo".into(),
        hostname: "web.demo.svc.cluster.local".into(),
        addresses: vec![wl::NetworkAddress {
            network: "".into(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/demo/sa/web".into()],
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(
                wl::NetworkAddress {
                    network: "".into(),
                    address: vec![10, 0, 0, 9],
                    length: None,
                },
            )),
            hbone_mtls_port: 15009,
        }),
        ..Default::default()
    };
    let a = wl::Address {
        r#type: Some(wl::address::Type::Service(s)),
    };
    let AddressResource::Service(s) = address(&any(zmesh_proto::type_url::ADDRESS, &a)).unwrap()
    else {
        panic!("not a service");
    };
    assert_eq!(s.key(), "demo/web.demo.svc.cluster.local");
    assert_eq!(s.vips[0].address, "10.96.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(s.ports.get(&80), Some(&8080));
    assert_eq!(s.subject_alt_names.len(), 1);
    let wp = s.waypoint.unwrap();
    assert_eq!(wp.hbone_mtls_port, 15009);
    assert_eq!(
        wp.destination,
        GatewayDestination::Address("".into(), "10.0.0.9".parse().unwrap())
    );
}

fn sm(t: sec::string_match::MatchType) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(t),
    }
}

#[test]
fn authorization_with_every_match_field() {
    use sec::string_match::MatchType as T;
    let cidr = |a: [u8; 4], l| sec::Address {
        address: a.to_vec(),
        length: l,
    };
    let sa = |n: &str, s: &str| sec::ServiceAccountMatch {
        namespace: n.into(),
        service_account: s.into(),
    };
    let m = sec::Match {
        namespaces: vec![sm(T::Exact("a".into()))],
        not_namespaces: vec![sm(T::Prefix("kube-".into()))],
        principals: vec![sm(T::Suffix("/sa/web".into()))],
        not_principals: vec![sm(T::Presence(()))],
        source_ips: vec![cidr([10, 0, 0, 0], 8)],
        not_source_ips: vec![cidr([10, 1, 0, 0], 16)],
        destination_ips: vec![cidr([10, 2, 0, 1], 32)],
        not_destination_ips: vec![cidr([10, 3, 0, 0], 24)],
        destination_ports: vec![80],
        not_destination_ports: vec![9090],
        service_accounts: vec![sa("a", "web")],
        not_service_accounts: vec![sa("b", "db")],
        extensions: vec![],
    };
    let p = sec::Authorization {
        name: "p".into(),
        namespace: "demo".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause { matches: vec![m] }],
        }],
        dry_run: true,
        extensions: vec![],
    };
    let p = authorization(&any(zmesh_proto::type_url::AUTHORIZATION, &p)).unwrap();
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (Scope::WorkloadSelector, Action::Deny, true)
    );
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(m.namespaces, vec![StringMatch::Exact("a".into())]);
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("kube-".into())]);
    assert_eq!(m.principals, vec![StringMatch::Suffix("/sa/web".into())]);
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(m.source_ips, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(
        m.not_source_ips,
        vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        m.destination_ips,
        vec!["10.2.0.1/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        m.not_destination_ips,
        vec!["10.3.0.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        (m.destination_ports.clone(), m.not_destination_ports.clone()),
        (vec![80], vec![9090])
    );
    assert_eq!(m.service_accounts[0].service_account, "web");
    assert_eq!(m.not_service_accounts[0].namespace, "b");
}

#[test]
fn bad_resources_name_the_reason() {
    let mut w = pod();
    w.addresses = vec![vec![1, 2, 3].into()];
    assert_eq!(
        workload(w),
        Err(ConvertError::IpLength {
            field: "addresses",
            len: 3
        })
    );
    let mut w = pod();
    w.services.values_mut().next().unwrap().ports[0].target_port = 70000;
    assert!(matches!(
        workload(w),
        Err(ConvertError::Port { port: 70000, .. })
    ));
    let p = sec::Authorization {
        name: "p".into(),
        namespace: "demo".into(),
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    source_ips: vec![sec::Address {
                        address: vec![10, 0, 0, 0],
                        length: 33,
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let err = policy(p).unwrap_err();
    assert!(err.to_string().contains("prefix length 33"), "{err}");
    let wrong = any("type.googleapis.com/other", &pod());
    assert!(matches!(address(&wrong), Err(ConvertError::TypeUrl(_))));
    let garbage = Any {
        type_url: zmesh_proto::type_url::ADDRESS.into(),
        value: vec![0xff, 0xff],
    };
    assert!(matches!(
        address(&garbage),
        Err(ConvertError::Decode { .. })
    ));
}
