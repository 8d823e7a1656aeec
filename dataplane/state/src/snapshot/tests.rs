use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;
use crate::model::{
    Action, Clause, GatewayAddress, GatewayDestination, Match, NetworkAddress, Rule,
    TunnelProtocol, WorkloadStatus,
};

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn wl(name: &str, ips: &[&str]) -> Workload {
    Workload {
        uid: format!("cluster1//v1/Pod/default/{name}"),
        name: name.to_owned(),
        namespace: "default".to_owned(),
        service_account: name.to_owned(),
        workload_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        protocol: TunnelProtocol::Hbone,
        ..Workload::default()
    }
}

/// Makes `w` an endpoint of `default/<host>` with the given port overrides.
fn serves(mut w: Workload, host: &str, ports: &[(u16, u16)]) -> Workload {
    let ports: BTreeMap<u16, u16> = ports.iter().copied().collect();
    w.services.insert(format!("default/{host}"), ports);
    w
}

fn svc(host: &str, vips: &[&str], ports: &[(u16, u16)]) -> Service {
    Service {
        name: host.split('.').next().unwrap_or(host).to_owned(),
        namespace: "default".to_owned(),
        hostname: host.to_owned(),
        vips: vips
            .iter()
            .map(|v| NetworkAddress {
                network: String::new(),
                address: v.parse().unwrap(),
            })
            .collect(),
        ports: ports.iter().copied().collect(),
        ..Service::default()
    }
}

fn snap(workloads: Vec<Workload>, services: Vec<Service>) -> Snapshot {
    Snapshot::new(workloads, services, vec![]).unwrap()
}

fn id(sa: &str) -> Identity {
    Identity::new("", "default", sa)
}

/// `(peer workload name, hbone_addr, target, identities)` of an HBONE resolution.
fn hbone(r: Result<Resolution, ResolveError>) -> (String, String, String, Vec<Identity>) {
    match r.unwrap() {
        Resolution::Hbone {
            workload,
            hbone_addr,
            target,
            identities,
            ..
        } => (
            workload.name.clone(),
            hbone_addr.to_string(),
            target.to_string(),
            identities,
        ),
        other => panic!("expected HBONE, got {other:?}"),
    }
}

#[test]
fn pod_ip_direct() {
    let s = snap(vec![wl("a", &["10.0.0.1"])], vec![]);
    let r = s.resolve("", sock("10.0.0.1:8080"), 0);
    assert_eq!(
        hbone(r),
        (
            "a".into(),
            "10.0.0.1:15008".into(),
            "10.0.0.1:8080".into(),
            vec![id("a")]
        )
    );
}

#[test]
fn unknown_destination_passes_through() {
    let s = snap(vec![wl("a", &["10.0.0.1"])], vec![]);
    let dst = sock("1.2.3.4:443");
    let want = Resolution::Passthrough { target: dst };
    assert_eq!(s.resolve("", dst, 0), Ok(want.clone()));
    // Addresses are per network.
    let dst = sock("10.0.0.1:80");
    assert_eq!(
        s.resolve("other", dst, 0),
        Ok(Resolution::Passthrough { target: dst })
    );
    assert_eq!(
        Snapshot::empty().resolve("", dst, 7),
        Ok(Resolution::Passthrough { target: dst })
    );
}

#[test]
fn plain_workload() {
    let mut w = wl("legacy", &["10.0.0.9"]);
    w.protocol = TunnelProtocol::None;
    let s = snap(vec![w], vec![]);
    match s.resolve("", sock("10.0.0.9:80"), 0).unwrap() {
        Resolution::Plain {
            workload: Some(w),
            service: None,
            target,
        } => {
            assert_eq!(w.name, "legacy");
            assert_eq!(target, sock("10.0.0.9:80"));
        }
        other => panic!("{other:?}"),
    }
}

fn two_endpoint_service() -> Snapshot {
    let mut service = svc("web.default.svc", &["10.96.0.10"], &[(80, 8080)]);
    service.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/web-san".into()];
    snap(
        vec![
            serves(wl("web-1", &["10.0.1.1"]), "web.default.svc", &[]),
            serves(wl("web-2", &["10.0.1.2"]), "web.default.svc", &[]),
            wl("other", &["10.0.1.3"]),
        ],
        vec![service],
    )
}

#[test]
fn service_vip_translates_port_and_balances() {
    let s = two_endpoint_service();
    assert_eq!(s.endpoints("default/web.default.svc").len(), 2);
    let (name0, addr0, target0, ids0) = hbone(s.resolve("", sock("10.96.0.10:80"), 0));
    let (name1, _, target1, _) = hbone(s.resolve("", sock("10.96.0.10:80"), 1));
    let (name2, ..) = hbone(s.resolve("", sock("10.96.0.10:80"), 2));
    assert_eq!((name0.as_str(), name1.as_str()), ("web-1", "web-2"));
    assert_eq!(name2, name0);
    assert_eq!(addr0, "10.0.1.1:15008");
    assert_eq!(target0, "10.0.1.1:8080");
    assert_eq!(target1, "10.0.1.2:8080");
    assert_eq!(ids0, vec![id("web-1"), id("web-san")]);
}

#[test]
fn service_port_not_exposed() {
    let s = two_endpoint_service();
    let err = s.resolve("", sock("10.96.0.10:81"), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service default/web.default.svc does not expose port 81"
    );
}

#[test]
fn unhealthy_endpoints_are_skipped() {
    let mut down = serves(wl("web-1", &["10.0.1.1"]), "web", &[]);
    down.status = WorkloadStatus::Unhealthy;
    let up = serves(wl("web-2", &["10.0.1.2"]), "web", &[]);
    let s = snap(
        vec![down.clone(), up],
        vec![svc("web", &["10.96.0.1"], &[(80, 80)])],
    );
    for pick in 0..4 {
        assert_eq!(hbone(s.resolve("", sock("10.96.0.1:80"), pick)).0, "web-2");
    }
    // A pod is still reachable by its own IP while unhealthy.
    assert_eq!(hbone(s.resolve("", sock("10.0.1.1:80"), 0)).0, "web-1");

    let s = snap(vec![down], vec![svc("web", &["10.96.0.1"], &[(80, 80)])]);
    let err = s.resolve("", sock("10.96.0.1:80"), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service default/web has no healthy endpoint"
    );
}

#[test]
fn named_port_resolves_per_endpoint() {
    let service = svc("web", &["10.96.0.1"], &[(80, 0)]);
    let with = serves(wl("with", &["10.0.1.1"]), "web", &[(80, 9090)]);
    let without = serves(wl("without", &["10.0.1.2"]), "web", &[]);
    let s = snap(vec![with, without.clone()], vec![service.clone()]);
    for pick in 0..4 {
        let (name, _, target, _) = hbone(s.resolve("", sock("10.96.0.1:80"), pick));
        assert_eq!((name.as_str(), target.as_str()), ("with", "10.0.1.1:9090"));
    }
    let s = snap(vec![without], vec![service]);
    assert_eq!(
        s.resolve("", sock("10.96.0.1:80"), 0),
        Err(ResolveError::NamedPortUnresolved {
            service: "default/web".into(),
            port: 80
        })
    );
}

#[test]
fn endpoint_port_mapping_overrides_service_target() {
    let service = svc("web", &["10.96.0.1"], &[(80, 8080)]);
    let w = serves(wl("w", &["10.0.1.1"]), "web", &[(80, 7070)]);
    let s = snap(vec![w], vec![service]);
    assert_eq!(
        hbone(s.resolve("", sock("10.96.0.1:80"), 0)).2,
        "10.0.1.1:7070"
    );
}

#[test]
fn plain_service_endpoint() {
    let mut w = serves(wl("legacy", &["10.0.1.1"]), "web", &[]);
    w.protocol = TunnelProtocol::None;
    let s = snap(vec![w], vec![svc("web", &["10.96.0.1"], &[(80, 8080)])]);
    match s.resolve("", sock("10.96.0.1:80"), 0).unwrap() {
        Resolution::Plain {
            workload: Some(w),
            service: Some(svc),
            target,
        } => {
            assert_eq!((w.name.as_str(), svc.hostname.as_str()), ("legacy", "web"));
            assert_eq!(target, sock("10.0.1.1:8080"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ipv6_service_picks_same_family_endpoint_ip() {
    let w = serves(wl("dual", &["10.0.1.1", "fd00::1:1"]), "web", &[]);
    let service = svc("web", &["10.96.0.1", "fd00:96::1"], &[(80, 8080)]);
    let s = snap(vec![w], vec![service]);
    let (_, addr, target, _) = hbone(s.resolve("", sock("[fd00:96::1]:80"), 0));
    assert_eq!(addr, "[fd00::1:1]:15008");
    assert_eq!(target, "[fd00::1:1]:8080");
    let (_, addr, ..) = hbone(s.resolve("", sock("10.96.0.1:80"), 0));
    assert_eq!(addr, "10.0.1.1:15008");
    let (_, addr, target, _) = hbone(s.resolve("", sock("[fd00::1:1]:80"), 0));
    assert_eq!(
        (addr.as_str(), target.as_str()),
        ("[fd00::1:1]:15008", "[fd00::1:1]:80")
    );
}

/// A waypoint deployment behind its own service, plus a service and a pod that use it.
fn with_waypoint() -> Snapshot {
    let by_name = GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "default".into(),
            hostname: "waypoint.default.svc".into(),
        },
        hbone_mtls_port: 15008,
    };
    let by_ip = GatewayAddress {
        destination: GatewayDestination::Address(String::new(), "10.0.2.1".parse().unwrap()),
        hbone_mtls_port: 15008,
    };
    let mut waypoint_svc = svc("waypoint.default.svc", &["10.96.0.99"], &[(15008, 15008)]);
    waypoint_svc.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/wp-san".into()];
    let mut web = svc("web", &["10.96.0.1"], &[(80, 8080)]);
    web.waypoint = Some(by_name);
    let mut pod = serves(wl("web-1", &["10.0.1.1"]), "web", &[]);
    pod.waypoint = Some(by_ip);
    let waypoint = serves(wl("waypoint", &["10.0.2.1"]), "waypoint.default.svc", &[]);
    snap(vec![pod, waypoint], vec![web, waypoint_svc])
}

#[test]
fn service_waypoint_gets_original_vip() {
    let s = with_waypoint();
    let r = s.resolve("", sock("10.96.0.1:80"), 3);
    let Ok(Resolution::Hbone { service, .. }) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(service.as_ref().map(|s| s.hostname.as_str()), Some("web"));
    assert_eq!(
        hbone(r),
        (
            "waypoint".into(),
            "10.0.2.1:15008".into(),
            "10.96.0.1:80".into(),
            vec![id("waypoint"), id("wp-san")]
        )
    );
}

#[test]
fn workload_waypoint_gets_original_pod_address() {
    let s = with_waypoint();
    assert_eq!(
        hbone(s.resolve("", sock("10.0.1.1:8080"), 0)),
        (
            "waypoint".into(),
            "10.0.2.1:15008".into(),
            "10.0.1.1:8080".into(),
            vec![id("waypoint")]
        )
    );
    // Addressing the waypoint itself does not loop through it.
    assert_eq!(
        hbone(s.resolve("", sock("10.0.2.1:15008"), 0)).2,
        "10.0.2.1:15008"
    );
}

#[test]
fn unknown_waypoint_is_an_error() {
    let mut w = wl("a", &["10.0.0.1"]);
    w.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "default".into(),
            hostname: "missing".into(),
        },
        hbone_mtls_port: 15008,
    });
    let uid = w.uid.clone();
    let s = snap(vec![w], vec![]);
    assert_eq!(
        s.resolve("", sock("10.0.0.1:80"), 0)
            .unwrap_err()
            .to_string(),
        format!("waypoint default/missing of {uid} is not known")
    );
}

#[test]
fn lookups() {
    let s = two_endpoint_service();
    let ip = "10.0.1.2".parse().unwrap();
    assert_eq!(s.workload_by_ip("", ip).unwrap().name, "web-2");
    assert!(s.workload_by_ip("net2", ip).is_none());
    let uid = "cluster1//v1/Pod/default/web-1";
    assert_eq!(s.workload_by_uid(uid).unwrap().name, "web-1");
    let vip = "10.96.0.10".parse().unwrap();
    assert_eq!(
        s.service_by_vip("", vip).unwrap().key(),
        "default/web.default.svc"
    );
    assert!(s.service_by_key("default/web.default.svc").is_some());
    assert!(s.endpoints("default/nope").is_empty());
    assert_eq!((s.workloads().count(), s.services().count()), (3, 1));
}

fn rejects(workloads: Vec<Workload>, services: Vec<Service>) -> String {
    Snapshot::new(workloads, services, vec![])
        .unwrap_err()
        .to_string()
}

#[test]
fn validation_errors_are_clear() {
    let a = wl("a", &["10.0.0.1"]);
    assert_eq!(
        rejects(vec![a.clone(), a.clone()], vec![]),
        "workload \"cluster1//v1/Pod/default/a\": duplicate uid"
    );
    let mut b = wl("b", &["10.0.0.1"]);
    assert_eq!(
        rejects(vec![a.clone(), b.clone()], vec![]),
        "workload \"cluster1//v1/Pod/default/b\": address /10.0.0.1 is already used by \
         workload \"cluster1//v1/Pod/default/a\""
    );
    b.network = "net2".into();
    assert!(Snapshot::new(vec![a.clone(), b], vec![], vec![]).is_ok());
    let mut c = wl("c", &["10.0.0.3"]);
    c.namespace = String::new();
    assert_eq!(
        rejects(vec![c], vec![]),
        "workload \"cluster1//v1/Pod/default/c\": empty namespace"
    );
    let mut d = wl("d", &["10.0.0.4"]);
    d.service_account = "x/y".into();
    assert!(rejects(vec![d], vec![]).contains("bad identity"));
    let e = serves(wl("e", &["10.0.0.5"]), "", &[]);
    assert!(rejects(vec![e], vec![]).contains("is not of the form namespace/name"));

    let mut bad_san = svc("web", &["10.96.0.1"], &[(80, 80)]);
    bad_san.subject_alt_names = vec!["spiffe://cluster.local/ns/default".into()];
    assert!(rejects(vec![], vec![bad_san]).starts_with("service default/web: subjectAltNames:"));
    let vip_clash = svc("web", &["10.0.0.1"], &[(80, 80)]);
    assert_eq!(
        rejects(vec![a], vec![vip_clash]),
        "service default/web: VIP /10.0.0.1 is already used by workload \
         \"cluster1//v1/Pod/default/a\""
    );
    let s1 = svc("web", &["10.96.0.1"], &[]);
    let s2 = svc("web2", &["10.96.0.1"], &[]);
    assert_eq!(
        rejects(vec![], vec![s1.clone(), s1.clone()]),
        "service default/web: duplicate service (namespace/hostname)"
    );
    let err = Snapshot::new(vec![], vec![s1, s2], vec![]).unwrap_err();
    assert_eq!(err.item(), Item::Service(1));
}

fn pol(ns: &str, name: &str, scope: Scope, port: u16) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action: Action::Deny,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![port],
                    ..Match::default()
                }],
            }],
        }],
    }
}

#[test]
fn duplicate_policy_is_rejected() {
    let p = pol("default", "p", Scope::Namespace, 1);
    let err = Snapshot::new(vec![], vec![], vec![p.clone(), p]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy default/p: duplicate policy (namespace/name)"
    );
    assert_eq!(err.item(), Item::Policy(1));
}

#[test]
fn authorize_applies_namespace_global_and_selected_policies() {
    let mut dst = wl("dst", &["10.0.0.1"]);
    dst.authorization_policies = vec!["default/selected".into(), "default/missing".into()];
    let policies = vec![
        pol("default", "ns-wide", Scope::Namespace, 1),
        pol("istio-system", "global", Scope::Global, 2),
        pol("default", "selected", Scope::WorkloadSelector, 3),
        pol("other", "other-ns", Scope::Namespace, 4),
        pol("default", "not-selected", Scope::WorkloadSelector, 5),
    ];
    let s = Snapshot::new(vec![dst.clone()], vec![], policies).unwrap();
    let dst = s.workload_by_uid(&dst.uid).unwrap();
    let decide = |port| {
        let conn = Connection {
            src_ip: "10.0.0.2".parse().unwrap(),
            src_identity: None,
            dst_ip: "10.0.0.1".parse().unwrap(),
            dst_port: port,
        };
        s.authorize(dst, &conn)
    };
    let denied = |key: &str| Decision::Deny { policy: key.into() };
    assert_eq!(decide(1), denied("default/ns-wide"));
    assert_eq!(decide(2), denied("istio-system/global"));
    assert_eq!(decide(3), denied("default/selected"));
    assert_eq!(decide(4), Decision::Allow);
    assert_eq!(decide(5), Decision::Allow);
}

#[test]
fn snapshot_is_shareable_across_shards() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Snapshot>();
    shareable::<Resolution>();
}
