//! Messages built byte by byte from the interop reference's field numbers, decoded with the
//! generated types: if a `.proto` file drifts from Istio's wire format, these fail.

use prost::Message;
use zmesh_proto::{ca, discovery, security, workload};

/// A minimal protobuf writer, independent of prost, so the test checks field numbers and wire
/// types rather than prost against itself.
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn tag(&mut self, field: u64, wire_type: u64) -> &mut Self {
        self.varint(field << 3 | wire_type)
    }
    fn uint(&mut self, field: u64, v: u64) -> &mut Self {
        self.tag(field, 0).varint(v)
    }
    fn bytes(&mut self, field: u64, b: &[u8]) -> &mut Self {
        self.tag(field, 2).varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, field: u64, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u64, m: &Wire) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

fn w() -> Wire {
    Wire::default()
}

#[test]
fn workload_address_fields() {
    let mut port = w();
    port.uint(1, 80).uint(2, 8080);
    let mut ports = w();
    ports.msg(1, &port);
    let mut entry = w(); // map entry: key=1, value=2
    entry
        .str(1, "demo/echo.demo.svc.cluster.local")
        .msg(2, &ports);
    let mut locality = w();
    locality.str(1, "eu").str(2, "eu-1a").str(3, "rack7");
    let mut wl = w();
    wl.str(20, "Kubernetes//v1/Pod/demo/echo-0")
        .str(1, "echo-0")
        .str(2, "demo")
        .bytes(3, &[198, 18, 1, 10])
        .str(21, "echo-0.demo")
        .str(4, "net1")
        .uint(5, 1)
        .str(6, "cluster.local")
        .str(7, "echo")
        .str(9, "node-a")
        .str(10, "echo")
        .str(11, "v1")
        .uint(12, 2)
        .str(13, "echo")
        .msg(22, &entry)
        .str(16, "demo/allow-client")
        .uint(17, 1)
        .str(18, "Kubernetes")
        .msg(24, &locality)
        .uint(25, 1);
    let mut cap = w();
    cap.uint(1, 3);
    wl.msg(27, &cap);
    let mut addr = w();
    addr.msg(1, &wl);

    let decoded = workload::Address::decode(addr.0.as_slice()).expect("decodes");
    let Some(workload::address::Type::Workload(wl)) = decoded.r#type else {
        panic!("field 1 of Address is the workload: {decoded:?}");
    };
    assert_eq!(wl.uid, "Kubernetes//v1/Pod/demo/echo-0");
    assert_eq!(
        (wl.name.as_str(), wl.namespace.as_str()),
        ("echo-0", "demo")
    );
    assert_eq!(
        wl.addresses,
        vec![bytes::Bytes::from_static(&[198, 18, 1, 10])]
    );
    assert_eq!(wl.hostname, "echo-0.demo");
    assert_eq!(wl.network, "net1");
    assert_eq!(wl.tunnel_protocol(), workload::TunnelProtocol::Hbone);
    assert_eq!(wl.trust_domain, "cluster.local");
    assert_eq!(wl.service_account, "echo");
    assert_eq!(wl.node, "node-a");
    assert_eq!(
        (wl.canonical_name.as_str(), wl.canonical_revision.as_str()),
        ("echo", "v1")
    );
    assert_eq!(wl.workload_type(), workload::WorkloadType::Pod);
    assert_eq!(wl.workload_name, "echo");
    let ports = &wl.services["demo/echo.demo.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert_eq!(wl.authorization_policies, vec!["demo/allow-client"]);
    assert_eq!(wl.status(), workload::WorkloadStatus::Unhealthy);
    assert_eq!(wl.cluster_id, "Kubernetes");
    let loc = wl.locality.clone().expect("locality");
    assert_eq!(
        (loc.region.as_str(), loc.zone.as_str(), loc.subzone.as_str()),
        ("eu", "eu-1a", "rack7")
    );
    assert_eq!(wl.network_mode(), workload::NetworkMode::HostNetwork);
    assert_eq!(wl.capacity, Some(3));
}

#[test]
fn service_address_fields() {
    let mut vip = w();
    vip.str(1, "").bytes(2, &[198, 19, 0, 1]);
    let mut port = w();
    port.uint(1, 80).uint(2, 0).uint(3, 1);
    let mut wp_addr = w();
    wp_addr.str(1, "").bytes(2, &[198, 18, 9, 9]);
    let mut waypoint = w();
    waypoint.msg(2, &wp_addr).uint(3, 15008);
    let mut svc = w();
    svc.str(1, "echo")
        .str(2, "demo")
        .str(3, "echo.demo.svc.cluster.local")
        .msg(4, &vip)
        .msg(5, &port)
        .str(6, "spiffe://cluster.local/ns/demo/sa/echo")
        .msg(7, &waypoint)
        .uint(9, 3)
        .uint(11, 1)
        .uint(14, 1);
    let mut addr = w();
    addr.msg(2, &svc);

    let decoded = workload::Address::decode(addr.0.as_slice()).expect("decodes");
    let Some(workload::address::Type::Service(svc)) = decoded.r#type else {
        panic!("field 2 of Address is the service: {decoded:?}");
    };
    assert_eq!(svc.hostname, "echo.demo.svc.cluster.local");
    assert_eq!(svc.addresses[0].address.as_slice(), &[198, 19, 0, 1]);
    assert_eq!(svc.ports[0].service_port, 80);
    assert_eq!(svc.ports[0].target_port, 0, "0 means a named port");
    assert_eq!(svc.ports[0].app_protocol(), workload::AppProtocol::Http11);
    assert_eq!(
        svc.subject_alt_names,
        vec!["spiffe://cluster.local/ns/demo/sa/echo"]
    );
    let wp = svc.waypoint.clone().expect("waypoint");
    assert_eq!(wp.hbone_mtls_port, 15008);
    let Some(workload::gateway_address::Destination::Address(a)) = wp.destination else {
        panic!("field 2 of GatewayAddress is a network address");
    };
    assert_eq!(a.address.as_slice(), &[198, 18, 9, 9]);
    assert_eq!(svc.ip_families(), workload::IpFamilies::Dual);
    assert!(svc.canonical);
    assert_eq!(svc.visibility(), workload::Visibility::Namespace);
}

#[test]
fn authorization_fields() {
    let mut presence = w();
    presence.bytes(4, &[]);
    let mut principal = w();
    principal.str(1, "cluster.local/ns/demo/sa/client");
    let mut cidr = w();
    cidr.bytes(1, &[198, 18, 0, 0]).uint(2, 15);
    let mut sa = w();
    sa.str(1, "demo").str(2, "client");
    let mut m = w();
    m.msg(3, &principal)
        .msg(4, &presence)
        .msg(5, &cidr)
        .uint(9, 8080)
        .uint(10, 9090)
        .msg(11, &sa);
    let mut clause = w();
    clause.msg(2, &m);
    let mut rule = w();
    rule.msg(1, &clause);
    let mut authz = w();
    authz
        .str(1, "allow-client")
        .str(2, "demo")
        .uint(3, 2)
        .uint(4, 1)
        .msg(5, &rule)
        .uint(6, 1);

    let p = security::Authorization::decode(authz.0.as_slice()).expect("decodes");
    assert_eq!(
        (p.name.as_str(), p.namespace.as_str()),
        ("allow-client", "demo")
    );
    assert_eq!(p.scope(), security::Scope::WorkloadSelector);
    assert_eq!(p.action(), security::Action::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0].clauses[0].matches[0];
    use security::string_match::MatchType;
    assert_eq!(
        m.principals[0].match_type,
        Some(MatchType::Exact("cluster.local/ns/demo/sa/client".into()))
    );
    assert_eq!(
        m.not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
    assert_eq!(
        (m.source_ips[0].address.as_slice(), m.source_ips[0].length),
        (&[198u8, 18, 0, 0][..], 15)
    );
    assert_eq!(m.destination_ports, vec![8080]);
    assert_eq!(m.not_destination_ports, vec![9090]);
    assert_eq!(
        (
            m.service_accounts[0].namespace.as_str(),
            m.service_accounts[0].service_account.as_str()
        ),
        ("demo", "client")
    );
}

#[test]
fn delta_discovery_and_ca_fields() {
    let mut status = w();
    status.uint(1, 3).str(2, "bad resource");
    let mut versions = w();
    versions.str(1, "demo/p").str(2, "7");
    let mut node = w();
    node.str(
        1,
        "ztunnel~198.18.0.1~zt.istio-system~istio-system.svc.cluster.local",
    );
    let mut req = w();
    req.msg(1, &node)
        .str(2, zmesh_proto::type_url::ADDRESS)
        .str(3, "*")
        .str(4, "gone")
        .msg(5, &versions)
        .str(6, "nonce-1")
        .msg(7, &status);
    let r = discovery::DeltaDiscoveryRequest::decode(req.0.as_slice()).expect("decodes");
    assert!(r.node.expect("node").id.starts_with("ztunnel~"));
    assert_eq!(r.type_url, zmesh_proto::type_url::ADDRESS);
    assert_eq!(
        (r.resource_names_subscribe, r.resource_names_unsubscribe),
        (vec!["*".into()], vec!["gone".into()])
    );
    assert_eq!(r.initial_resource_versions["demo/p"], "7");
    assert_eq!(r.response_nonce, "nonce-1");
    assert_eq!(r.error_detail.expect("nack").message, "bad resource");

    let mut any = w();
    any.str(1, zmesh_proto::type_url::AUTHORIZATION)
        .bytes(2, b"\x0a\x01p");
    let mut res = w();
    res.str(1, "v7").msg(2, &any).str(3, "demo/p");
    let mut resp = w();
    resp.str(1, "sys")
        .msg(2, &res)
        .str(4, zmesh_proto::type_url::AUTHORIZATION)
        .str(5, "n2")
        .str(6, "demo/old");
    let r = discovery::DeltaDiscoveryResponse::decode(resp.0.as_slice()).expect("decodes");
    assert_eq!(
        (
            r.resources[0].name.as_str(),
            r.resources[0].version.as_str()
        ),
        ("demo/p", "v7")
    );
    assert_eq!(
        r.resources[0].resource.as_ref().expect("any").type_url,
        zmesh_proto::type_url::AUTHORIZATION
    );
    assert_eq!(
        (r.nonce.as_str(), r.removed_resources[0].as_str()),
        ("n2", "demo/old")
    );

    let mut csr = w();
    csr.str(1, "-----BEGIN CERTIFICATE REQUEST-----")
        .uint(3, 86400);
    let c = ca::IstioCertificateRequest::decode(csr.0.as_slice()).expect("decodes");
    assert_eq!(
        (c.csr.as_str(), c.validity_duration),
        ("-----BEGIN CERTIFICATE REQUEST-----", 86400)
    );
    let mut chain = w();
    chain.str(1, "leaf").str(1, "root");
    let c = ca::IstioCertificateResponse::decode(chain.0.as_slice()).expect("decodes");
    assert_eq!(c.cert_chain, vec!["leaf", "root"]);
}
