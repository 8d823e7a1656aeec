//! Scale: 10,000 pods behind 1,000 services in 100 namespaces with 100 policies and mTLS, loaded
//! from disk and translated. Asserts what is served; prints how long each step took (a
//! measurement for the report, not a timed assertion). Reload of one changed file is measured
//! too: unchanged files are not parsed again.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use zmesh_control::source::DirSource;
use zmesh_control::translate::{MeshOptions, translate};

const NAMESPACES: usize = 100;
const SERVICES_PER_NS: usize = 10;
const PODS_PER_SERVICE: usize = 10;

fn namespace_yaml(ns: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n"
    );
    for s in 0..SERVICES_PER_NS {
        let _ = write!(
            y,
            "---
apiVersion: v1
kind: Service
metadata: {{name: svc{s}, namespace: ns{ns}}}
spec:
  selector: {{app: app{s}}}
  clusterIP: 10.96.{ns}.{s}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: grpc, port: 9090}}]
"
        );
        for p in 0..PODS_PER_SERVICE {
            let _ = write!(
                y,
                "---
apiVersion: v1
kind: Pod
metadata:
  name: app{s}-abc-{p}
  namespace: ns{ns}
  labels: {{app: app{s}, version: v1, pod-template-hash: abc}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: app{s}-abc, controller: true}}]
spec:
  nodeName: node{p}
  serviceAccountName: app{s}
  containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]
status:
  phase: Running
  podIP: 10.{ns}.{s}.{p}
  conditions: [{{type: Ready, status: 'True'}}]
"
            );
        }
    }
    let _ = write!(
        y,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-callers, namespace: ns{ns}}}
spec:
  selector: {{matchLabels: {{app: app0}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/ns{ns}/sa/app1, 'cluster.local/ns/ops/*']}}}}]
    to: [{{operation: {{ports: ['8080']}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: ns{ns}}}
spec: {{mtls: {{mode: STRICT}}}}
"
    );
    y
}

/// CPU time this thread has used: wall-clock time means little on a shared 2-core machine.
fn cpu() -> Duration {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

struct Timer(Instant, Duration);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), cpu())
    }
    fn stop(self) -> String {
        format!("{:?} ({:?} CPU)", self.0.elapsed(), cpu() - self.1)
    }
}

#[test]
fn ten_thousand_pods() {
    let dir = tempfile::tempdir().unwrap();
    for ns in 0..NAMESPACES {
        fs::write(
            dir.path().join(format!("ns{ns:03}.yaml")),
            namespace_yaml(ns),
        )
        .unwrap();
    }
    let mut source = DirSource::new(dir.path());
    let t0 = Timer::start();
    let load = source.load();
    let parse = t0.stop();
    assert!(
        load.diagnostics.is_empty(),
        "{:?}",
        load.diagnostics.first()
    );
    let t1 = Timer::start();
    let t = translate(&load.store, &MeshOptions::default());
    let translate_time = t1.stop();
    let pods = NAMESPACES * SERVICES_PER_NS * PODS_PER_SERVICE;
    let services = NAMESPACES * SERVICES_PER_NS;
    assert_eq!(t.resources.addresses.len(), pods + services);
    // 100 policies and 100 converted STRICT policies.
    assert_eq!(t.resources.authorizations.len(), 2 * NAMESPACES);

    // One file changes: only it is parsed again.
    let f = dir.path().join("ns050.yaml");
    fs::write(&f, namespace_yaml(50).replace("sa/app1", "sa/app2")).unwrap();
    let t2 = Timer::start();
    let reload = source.load();
    let reload_time = t2.stop();
    let t3 = Timer::start();
    let again = translate(&reload.store, &MeshOptions::default());
    let retranslate = t3.stop();
    let t4 = Timer::start();
    let differs = again.resources != t.resources;
    let compare = t4.stop();
    assert!(differs);
    eprintln!(
        "{pods} pods, {services} services: first load {parse}, translate {translate_time}; \
         one file changed: reload {reload_time}, translate {retranslate}, compare {compare}"
    );
}
