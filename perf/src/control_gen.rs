//! The config directory of `zmesh-perf control`: Kubernetes YAML as a cluster would hold it
//! for ambient mode — namespaces, service accounts, services (one per ten pods), pods with the
//! node and IP a kubelet gives them, AuthorizationPolicies with selectors, principals and
//! ports — plus a handful of probe pods on the two real node proxies.
//!
//! Only the probe pods get loopback addresses (`127.X.1.x` on node-a, `127.X.2.x` on node-b);
//! every other pod sits on one of many made-up nodes with an address in 198.18.0.0/15 that
//! nobody binds: they are config only, as remote pods are to a node proxy.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;

/// Pods per application (each application has a ServiceAccount and a Service).
const PODS_PER_APP: usize = 10;
/// Made-up nodes the generated pods are spread over.
const WORKER_NODES: usize = 50;
/// The echo port of the probe servers.
pub const PROBE_PORT: u16 = 9000;

/// The shape of one generated cluster.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Shape {
    pub pods: usize,
    pub policies: usize,
    /// Second octet of every loopback address of this run (`127.X.…`).
    pub net: u8,
}

impl Shape {
    pub fn apps(&self) -> usize {
        self.pods.div_ceil(PODS_PER_APP).max(1)
    }

    /// A few namespaces, about 250 pods each, at most 8.
    pub fn namespaces(&self) -> usize {
        self.pods.div_ceil(250).clamp(1, 8)
    }

    pub fn node_ip(&self, node: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net, node, 1)
    }

    pub fn control_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net, 0, 1)
    }

    /// The probe client (on node-a) and the probe servers on node-a and node-b.
    pub fn probe_client(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net, 1, 10)
    }

    pub fn probe_servers(&self) -> [Ipv4Addr; 2] {
        [
            Ipv4Addr::new(127, self.net, 1, 20),
            Ipv4Addr::new(127, self.net, 2, 20),
        ]
    }
}

/// File names in the config directory.
pub const DENY_FILE: &str = "probe-deny.yaml";
pub const CHANGED_POD_FILE: &str = "changed-pod.yaml";

/// Writes the whole cluster into `dir` (created if missing).
pub fn write_cluster(dir: &Path, shape: &Shape) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write("namespaces.yaml", namespaces(shape))?;
    write("apps.yaml", apps(shape))?;
    write("pods.yaml", pods(shape))?;
    write("policies.yaml", policies(shape))?;
    write("probe.yaml", probe(shape))?;
    write(CHANGED_POD_FILE, changed_pod(1))?;
    Ok(())
}

/// Replaces (or creates) a file atomically, as an editor or a sync tool does.
pub fn apply(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming into {name}"))
}

fn ns_of_app(shape: &Shape, app: usize) -> String {
    format!("bench-{}", app % shape.namespaces())
}

fn namespaces(shape: &Shape) -> String {
    let mut out = String::new();
    let names = (0..shape.namespaces()).map(|i| format!("bench-{i}"));
    for name in names.chain(["probe".to_string()]) {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             istio.io/dataplane-mode: ambient\n---\n"
        );
    }
    out
}

/// Cluster IP of application `app`: 10.96.0.0/16 and up.
fn cluster_ip(app: usize) -> Ipv4Addr {
    let n = u32::try_from(app + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n)
}

/// Address of generated pod `i`: 198.18.0.1 and up (198.18.0.0/15 is for benchmarks).
fn pod_ip(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n)
}

fn apps(shape: &Shape) -> String {
    let mut out = String::new();
    for app in 0..shape.apps() {
        let ns = ns_of_app(shape, app);
        let ip = cluster_ip(app);
        let _ = write!(
            out,
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app-{app}, namespace: {ns}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: app-{app}, namespace: {ns}}}\n\
             spec:\n  selector: {{app: app-{app}}}\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  \
             ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  \
             - {{name: grpc, port: 9090, targetPort: 9090}}\n---\n"
        );
    }
    out
}

fn pods(shape: &Shape) -> String {
    let mut out = String::with_capacity(shape.pods * 600);
    for i in 0..shape.pods {
        let app = i / PODS_PER_APP;
        let ns = ns_of_app(shape, app);
        let ip = pod_ip(i);
        let node = i % WORKER_NODES;
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{app}-5d8f9c-{i}\n  namespace: {ns}\n  \
             labels: {{app: app-{app}, version: v1, pod-template-hash: 5d8f9c}}\n  ownerReferences:\n  \
             - {{apiVersion: apps/v1, kind: ReplicaSet, name: app-{app}-5d8f9c, uid: rs-{app}, controller: true}}\n\
             spec:\n  nodeName: worker-{node:03}\n  serviceAccountName: app-{app}\n  containers:\n  \
             - name: app\n    image: example.com/app:1.0\n    ports:\n    \
             - {{name: http, containerPort: 8080}}\n    - {{name: grpc, containerPort: 9090}}\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
        );
    }
    out
}

/// Policies of four realistic kinds, each on one application's pods (round robin): allow
/// named callers on the HTTP port, allow the own namespace on both ports, deny one caller
/// the gRPC port, allow two callers on any port.
fn policies(shape: &Shape) -> String {
    let apps = shape.apps();
    let sa = |app: usize| {
        let app = app % apps;
        format!("cluster.local/ns/{}/sa/app-{app}", ns_of_app(shape, app))
    };
    let mut out = String::new();
    for p in 0..shape.policies {
        let app = p % apps;
        let ns = ns_of_app(shape, app);
        let (action, rules) = match p % 4 {
            0 => (
                "ALLOW",
                format!(
                    "  - from:\n    - source:\n        principals: [\"{}\", \"{}\"]\n    to:\n    \
                     - operation:\n        ports: [\"8080\"]\n",
                    sa(app + 1),
                    sa(app + 2)
                ),
            ),
            1 => (
                "ALLOW",
                format!(
                    "  - from:\n    - source:\n        namespaces: [\"{ns}\"]\n    to:\n    \
                     - operation:\n        ports: [\"8080\", \"9090\"]\n"
                ),
            ),
            2 => (
                "DENY",
                format!(
                    "  - from:\n    - source:\n        principals: [\"{}\"]\n    to:\n    \
                     - operation:\n        ports: [\"9090\"]\n",
                    sa(app + 3)
                ),
            ),
            _ => (
                "ALLOW",
                format!(
                    "  - from:\n    - source:\n        principals: [\"{}\"]\n  \
                     - from:\n    - source:\n        principals: [\"{}\"]\n",
                    sa(app + 4),
                    sa(app + 5)
                ),
            ),
        };
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: policy-{p}, namespace: {ns}}}\nspec:\n  selector:\n    \
             matchLabels: {{app: app-{app}}}\n  action: {action}\n  rules:\n{rules}---\n"
        );
    }
    out
}

fn probe(shape: &Shape) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: probe-client, namespace: probe}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: probe-server, namespace: probe}\n---\n",
    );
    let [a, b] = shape.probe_servers();
    let pods = [
        (
            "probe-client",
            "probe-client",
            "node-a",
            shape.probe_client(),
        ),
        ("probe-server-a", "probe-server", "node-a", a),
        ("probe-server-b", "probe-server", "node-b", b),
    ];
    for (name, sa, node, ip) in pods {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: probe\n  \
             labels: {{app: {sa}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  \
             containers: [{{name: probe, image: example.com/probe}}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
        );
    }
    out
}

/// The DENY policy the propagation measurement adds and removes: the probe client's principal
/// may not reach the probe servers (on both nodes).
pub fn deny_policy() -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: deny-probe-client, namespace: probe}}\nspec:\n  selector:\n    \
         matchLabels: {{app: probe-server}}\n  action: DENY\n  rules:\n  - from:\n    - source:\n        \
         principals: [\"cluster.local/ns/probe/sa/probe-client\"]\n    to:\n    - operation:\n        \
         ports: [\"{PROBE_PORT}\"]\n"
    )
}

/// The pod of the one-pod change, in a file of its own (as one object written by one client):
/// each `revision` changes its `version` label, so its canonical revision, so its workload.
pub fn changed_pod(revision: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app-0-canary\n  namespace: bench-0\n  \
         labels: {{app: app-0, version: v{revision}}}\nspec:\n  nodeName: worker-000\n  \
         serviceAccountName: app-0\n  containers: [{{name: app, image: example.com/app:1.{revision}}}]\n\
         status:\n  phase: Running\n  podIP: 198.19.255.250\n  podIPs: [{{ip: 198.19.255.250}}]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_counts() {
        let s = Shape {
            pods: 1000,
            policies: 100,
            net: 77,
        };
        assert_eq!((s.apps(), s.namespaces()), (100, 4));
        let p = pods(&s);
        assert_eq!(p.matches("kind: Pod\n").count(), 1000);
        assert_eq!(
            policies(&s).matches("kind: AuthorizationPolicy").count(),
            100
        );
        assert_eq!(apps(&s).matches("kind: Service\n").count(), 100);
        assert!(
            p.contains("podIP: 198.18.3.232"),
            "pod 999 is 198.18.0.1 + 999"
        );
        assert!(
            !p.contains("node-a") && !p.contains("127."),
            "generated pods are config only"
        );
    }

    #[test]
    fn addresses_do_not_collide() {
        assert_eq!(pod_ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(pod_ip(65_535), Ipv4Addr::new(198, 19, 0, 0));
        assert_eq!(cluster_ip(255), Ipv4Addr::new(10, 96, 1, 0));
        assert!(pod_ip(100_000) < Ipv4Addr::new(198, 19, 255, 250));
    }
}
