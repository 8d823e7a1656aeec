//! Translation of pods and services, one behaviour per test, from YAML a user would write.

#![allow(clippy::unwrap_used)]

mod translate_common;

use translate_common::*;
use zmesh_proto::workload::{Port, WorkloadStatus, WorkloadType};

#[test]
fn workload_fields_follow_istiod() {
    let t = run(&format!(
        "{AMBIENT_NS}{}",
        pod("web", "app: web, version: v2", "10.0.0.5")
    ));
    let w = workload(&t, "demo", "web").expect("workload");
    assert_eq!(w.uid, "Kubernetes//v1/Pod/demo/web");
    assert_eq!(w.addresses, vec![vec![10u8, 0, 0, 5]]);
    assert_eq!(w.service_account, "web-sa");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.node, "node-a");
    assert_eq!(
        w.tunnel_protocol,
        zmesh_proto::workload::TunnelProtocol::Hbone as i32
    );
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("web", "v2")
    );
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type),
        ("web", WorkloadType::Pod as i32)
    );
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    assert_eq!(w.cluster_id, "Kubernetes");
}

#[test]
fn canonical_labels_take_precedence_and_revision_defaults_to_latest() {
    let labels = "service.istio.io/canonical-name: shop, app.kubernetes.io/name: web, app: x";
    let t = run(&format!("{AMBIENT_NS}{}", pod("web", labels, "10.0.0.5")));
    let w = workload(&t, "demo", "web").expect("workload");
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("shop", "latest")
    );
}

#[test]
fn enrollment_labels_and_skipped_pods() {
    let other_ns = "---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: outside, namespace: plain}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
status: {podIP: 10.0.1.2}
";
    let special = "---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: demo}
spec: {hostNetwork: true}
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: demo}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: demo}
status: {phase: Succeeded, podIP: 10.0.0.10}
";
    let yaml = format!(
        "{AMBIENT_NS}{}{}{other_ns}{special}",
        pod("in", "app: a", "10.0.0.1"),
        pod("out", "istio.io/dataplane-mode: none", "10.0.0.2")
    );
    let t = run(&yaml);
    assert!(workload(&t, "demo", "in").is_some());
    assert!(workload(&t, "demo", "out").is_none(), "opt-out label");
    assert!(
        workload(&t, "plain", "outside").is_none(),
        "namespace not ambient"
    );
    assert!(
        workload(&t, "plain", "opted-in").is_some(),
        "pod label enrolls"
    );
    for skipped in ["host", "pending", "done"] {
        assert!(workload(&t, "demo", skipped).is_none(), "{skipped}");
    }
}

#[test]
fn status_follows_ready_condition() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata: {{name: starting, namespace: demo}}
status:
  podIPs: [{{ip: 10.0.0.7}}, {{ip: 'fd00::7'}}]
  conditions: [{{type: Ready, status: 'False'}}, {{type: PodScheduled, status: 'True'}}]
"
    );
    let t = run(&yaml);
    let w = workload(&t, "demo", "starting").expect("workload");
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    assert_eq!(w.addresses.len(), 2, "dual stack");
    assert_eq!(w.addresses[1].len(), 16);
}

#[test]
fn workload_name_from_replicaset_or_matching_deployment() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata:
  name: api-5f7c9d-x1
  namespace: demo
  labels: {{app: api, pod-template-hash: 5f7c9d}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: api-5f7c9d, controller: true}}]
status: {{podIP: 10.0.0.3}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: front, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: front}}}}
  template: {{metadata: {{labels: {{app: front}}}}}}
{}",
        pod("front-by-hand", "app: front", "10.0.0.4")
    );
    let t = run(&yaml);
    let api = workload(&t, "demo", "api-5f7c9d-x1").expect("api");
    assert_eq!(
        (api.workload_name.as_str(), api.workload_type),
        ("api", WorkloadType::Deployment as i32)
    );
    assert_eq!(api.canonical_name, "api");
    let front = workload(&t, "demo", "front-by-hand").expect("front");
    assert_eq!(
        (front.workload_name.as_str(), front.workload_type),
        ("front", WorkloadType::Deployment as i32)
    );
}

#[test]
fn services_with_named_and_numbered_target_ports() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  selector: {{app: web}}
  clusterIP: 10.96.0.10
  ports:
  - {{name: http-web, port: 80, targetPort: http}}
  - {{name: admin, port: 9000, targetPort: 9001}}
  - {{name: plain, port: 7000}}
  - {{name: metrics, port: 9090, targetPort: metrics}}
{}{}",
        pod("web-1", "app: web", "10.0.0.1"),
        pod("other", "app: other", "10.0.0.2")
    );
    let t = run(&yaml);
    let key = "demo/web.demo.svc.cluster.local";
    let s = service(&t, key);
    assert_eq!(s.hostname, "web.demo.svc.cluster.local");
    assert_eq!(s.addresses[0].address[..], [10u8, 96, 0, 10]);
    let ports: Vec<(u32, u32)> = s
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![(80, 0), (9000, 9001), (7000, 7000), (9090, 0)],
        "named → 0"
    );
    assert_eq!(
        s.ports[0].app_protocol,
        zmesh_proto::workload::AppProtocol::Http11 as i32
    );

    let w = workload(&t, "demo", "web-1").expect("web-1");
    let list = &w.services.get(key).expect("selected").ports;
    let port = |s: u32, t: u32| Port {
        service_port: s,
        target_port: t,
        app_protocol: 0,
    };
    // `metrics` is not a container port of this pod: left out, as istiod does.
    assert_eq!(
        list,
        &vec![port(80, 8080), port(9000, 9001), port(7000, 7000)]
    );
    assert!(
        workload(&t, "demo", "other")
            .expect("other")
            .services
            .is_empty()
    );
}

#[test]
fn services_without_selector_or_cluster_ip_are_not_served() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Service
metadata: {{name: external, namespace: demo}}
spec: {{clusterIP: 10.96.0.11, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: headless, namespace: demo}}
spec: {{selector: {{app: web}}, clusterIP: None, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: no-ip, namespace: demo}}
spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}
"
    );
    let t = run(&yaml);
    assert!(
        t.resources.addresses.is_empty(),
        "{:?}",
        t.resources.addresses.keys()
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(t.warnings[0].reason.contains("no clusterIP"));
}

#[test]
fn service_account_defaults_and_dual_stack_services() {
    let yaml = format!(
        "{AMBIENT_NS}---
apiVersion: v1
kind: Pod
metadata: {{name: legacy-sa, namespace: demo}}
spec: {{serviceAccount: old-style}}
status: {{podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: no-sa, namespace: demo}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: demo}}
spec:
  selector: {{app: x}}
  clusterIPs: [10.96.0.1, 'fd00::1']
  ports: [{{port: 443, appProtocol: kubernetes.io/h2c}}]
"
    );
    let t = run(&yaml);
    assert_eq!(
        workload(&t, "demo", "legacy-sa")
            .expect("legacy")
            .service_account,
        "old-style"
    );
    assert_eq!(
        workload(&t, "demo", "no-sa")
            .expect("no-sa")
            .service_account,
        "default"
    );
    let s = service(&t, "demo/dual.demo.svc.cluster.local");
    assert_eq!(
        s.ip_families,
        zmesh_proto::workload::IpFamilies::Dual as i32
    );
    assert_eq!(s.addresses.len(), 2);
    assert_eq!(
        s.ports[0].app_protocol,
        zmesh_proto::workload::AppProtocol::Http2 as i32
    );
}

#[test]
fn translation_is_deterministic() {
    let yaml = format!(
        "{AMBIENT_NS}{}{}{}",
        pa("default", "demo", "  mtls: {mode: STRICT}"),
        pod("a", "app: a", "10.0.0.1"),
        pod("b", "app: b", "10.0.0.2")
    );
    assert_eq!(run(&yaml), run(&yaml));
}

#[test]
fn non_mesh_pods_are_served_without_tunnel_when_asked() {
    let yaml = "---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: outside, namespace: plain}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: on-host, namespace: plain}
spec: {hostNetwork: true}
status: {podIP: 10.0.1.2}
";
    let load = zmesh_control::source::load_str(std::path::Path::new("t.yaml"), yaml);
    let opts = zmesh_control::translate::MeshOptions {
        serve_non_mesh_pods: true,
        ..Default::default()
    };
    let t = zmesh_control::translate::translate(&load.store, &opts);
    let w = workload(&t, "plain", "outside").expect("served");
    assert_eq!(
        w.tunnel_protocol,
        zmesh_proto::workload::TunnelProtocol::None as i32
    );
    assert!(w.authorization_policies.is_empty());
    assert!(workload(&t, "plain", "on-host").is_none());
    assert!(
        workload(&run(yaml), "plain", "outside").is_none(),
        "off by default"
    );
}
