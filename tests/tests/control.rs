//! The controller end to end: a real `zmesh-control` serving a directory of Istio-style YAML,
//! two real node proxies taking config (delta ADS) and certificates (CA) from it, real `curl`
//! clients and HTTP servers standing in for pods.
//!
//! Test ids 80–89 (addresses 127.T.x.y).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use zmesh_tests::control::ControlledMesh;
use zmesh_tests::{Driver, NodeOpts, curl, http_server, netns, socks5_connect};

/// A namespace enrolled in ambient mode, an HTTP server Deployment (two pods, one per node)
/// with its ServiceAccount and Service, a client and a third workload. Pods carry the node and
/// IP a kubelet would have given them.
const SAMPLE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: intruder, namespace: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  replicas: 2
  selector:
    matchLabels: {app: server}
  template:
    metadata:
      labels: {app: server}
    spec:
      serviceAccountName: server
      containers:
      - name: http
        image: example.com/http-echo
        ports:
        - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  clusterIP: 127.{T}.200.1
  clusterIPs: [127.{T}.200.1]
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata:
  name: server-7c9d-a1
  namespace: demo
  labels: {app: server}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: server-7c9d, uid: rs-1, controller: true}
spec:
  nodeName: node-a
  serviceAccountName: server
  containers:
  - name: http
    image: example.com/http-echo
    ports:
    - {name: http, containerPort: 8080}
status:
  phase: Running
  podIP: 127.{T}.1.10
  podIPs: [{ip: 127.{T}.1.10}]
---
apiVersion: v1
kind: Pod
metadata:
  name: server-7c9d-b2
  namespace: demo
  labels: {app: server}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: server-7c9d, uid: rs-1, controller: true}
spec:
  nodeName: node-b
  serviceAccountName: server
  containers:
  - name: http
    image: example.com/http-echo
    ports:
    - {name: http, containerPort: 8080}
status:
  phase: Running
  podIP: 127.{T}.2.10
  podIPs: [{ip: 127.{T}.2.10}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
  labels: {app: client}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers: [{name: curl, image: example.com/curl}]
status:
  phase: Running
  podIP: 127.{T}.1.11
---
apiVersion: v1
kind: Pod
metadata:
  name: intruder
  namespace: demo
  labels: {app: intruder}
spec:
  nodeName: node-a
  serviceAccountName: intruder
  containers: [{name: curl, image: example.com/curl}]
status:
  phase: Running
  podIP: 127.{T}.1.12
"#;

/// Only the client's principal may reach the server pods.
const ALLOW_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-allow-client, namespace: demo}
spec:
  selector:
    matchLabels: {app: server}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
"#;

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec:
  mtls: {mode: STRICT}
"#;

/// Client, server pods and the service address of the sample for test id `t`.
struct Sample {
    client: std::net::IpAddr,
    intruder: std::net::IpAddr,
    servers: [SocketAddr; 2],
    url: String,
}

fn sample(mesh: &ControlledMesh) -> Sample {
    Sample {
        client: mesh.ip(1, 11),
        intruder: mesh.ip(1, 12),
        servers: [
            SocketAddr::new(mesh.ip(1, 10), 8080),
            SocketAddr::new(mesh.ip(2, 10), 8080),
        ],
        url: format!("http://{}/", mesh.ip(200, 1)),
    }
}

fn start(test_id: u8, node_args: &[&str]) -> ControlledMesh {
    let mut opts = NodeOpts::new(Driver::IoUring);
    for a in node_args {
        opts = opts.arg(*a);
    }
    ControlledMesh::start(
        test_id,
        &[("sample.yaml", SAMPLE)],
        &["node-a", "node-b"],
        &opts,
    )
}

/// Polls `probe` every 20 ms until it returns true; returns how long that took. Fails the
/// test after `limit` (a hang guard, many times the expected time).
async fn time_until<F, Fut>(limit: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `curl` from `src` (through node-a) to each server pod, then to the service address. Pods
/// are tried one by one so that every node's policy is exercised.
async fn reach(mesh: &ControlledMesh, s: &Sample, src: std::net::IpAddr) -> Vec<zmesh_tests::Curl> {
    let socks = mesh.node("node-a").socks5();
    let mut out = Vec::new();
    for url in s
        .servers
        .iter()
        .map(|pod| format!("http://{pod}/"))
        .chain([s.url.clone()])
    {
        out.push(curl(Some(socks), src, &url).await);
    }
    out
}

/// True when every server pod and the service refuse `src` (the service by a SOCKS5 refusal,
/// curl's exit 97, not a timeout).
async fn refused_everywhere(mesh: &ControlledMesh, s: &Sample, src: std::net::IpAddr) -> bool {
    let r = reach(mesh, s, src).await;
    r.iter().all(|c| c.status != 200) && r.last().is_some_and(|c| c.exit == 97)
}

/// True when every server pod and the service answer `src` with 200.
async fn served_everywhere(mesh: &ControlledMesh, s: &Sample, src: std::net::IpAddr) -> bool {
    reach(mesh, s, src).await.iter().all(|c| c.status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_app_serves_then_a_policy_blocks_and_unblocks_without_restart() {
    let mesh = start(80, &[]);
    let s = sample(&mesh);
    let (_a, served_a) = http_server(s.servers[0], "server-a").await;
    let (_b, served_b) = http_server(s.servers[1], "server-b").await;
    let socks = mesh.node("node-a").socks5();

    // The client reaches the service through the mesh; both replicas serve.
    for _ in 0..8 {
        let r = curl(Some(socks), s.client, &s.url).await;
        assert_eq!((r.exit, r.status), (0, 200), "client → service: {r:?}");
    }
    let (a, b) = (
        served_a.load(std::sync::atomic::Ordering::SeqCst),
        served_b.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert_eq!(a + b, 8, "every request reached a server pod");
    assert!(
        served_everywhere(&mesh, &s, s.intruder).await,
        "no policy yet: everyone is served"
    );

    // The cross-node hop was mutual TLS with the client's identity from the controller's CA.
    let b_metrics = mesh.node("node-b").metric(
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert!(b_metrics >= 1.0, "node-b saw the client over mTLS");

    mesh.apply("policy.yaml", ALLOW_CLIENT);
    let took = time_until(
        Duration::from_secs(10),
        "policy applied on both nodes",
        || refused_everywhere(&mesh, &s, s.intruder),
    )
    .await;
    eprintln!("policy → third workload refused on every node after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "policy took {took:?} to apply (must be within a second)"
    );
    let r = curl(Some(socks), s.client, &s.url).await;
    assert_eq!(r.status, 200, "the allowed client is still served: {r:?}");
    let denied = mesh.node("node-a").metric(
        "istio_tcp_connections_failed_total",
        &["response_flags=\"DENY\""],
    ) + mesh.node("node-b").metric(
        "istio_tcp_connections_failed_total",
        &["response_flags=\"DENY\""],
    );
    assert!(
        denied >= 3.0,
        "denials are counted with response_flags=DENY ({denied})"
    );

    mesh.control.delete("policy.yaml");
    let took = time_until(
        Duration::from_secs(10),
        "policy removed on both nodes",
        || served_everywhere(&mesh, &s, s.intruder),
    )
    .await;
    eprintln!("policy deleted → third workload served again after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "deletion took {took:?} to apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_serving_without_the_controller_and_resync_when_it_returns() {
    let mut mesh = start(81, &[]);
    let s = sample(&mesh);
    let (_a, _) = http_server(s.servers[0], "server-a").await;
    let (_b, _) = http_server(s.servers[1], "server-b").await;
    let echo = SocketAddr::new(mesh.ip(2, 10), 9000);
    let _echo = zmesh_tests::echo_server(echo).await;
    let socks = mesh.node("node-a").socks5();

    // A long-lived connection across nodes, open before the controller goes away.
    let mut open = socks5_connect(socks, s.client, echo)
        .await
        .expect("tunnel to echo");
    ping(&mut open, 1).await;

    mesh.control.stop();
    ping(&mut open, 2).await;
    let r = curl(Some(socks), s.client, &s.url).await;
    assert_eq!(
        r.status, 200,
        "new connections work with the last config: {r:?}"
    );
    assert!(served_everywhere(&mesh, &s, s.intruder).await);

    // A change made while they are apart arrives once the controller is back.
    mesh.apply("policy.yaml", ALLOW_CLIENT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        served_everywhere(&mesh, &s, s.intruder).await,
        "no controller, no change yet"
    );
    mesh.control.restart();
    let took = time_until(
        Duration::from_secs(30),
        "resync after the controller returns",
        || refused_everywhere(&mesh, &s, s.intruder),
    )
    .await;
    eprintln!("controller back → change applied after {took:?}");
    ping(&mut open, 3).await;
    let r = curl(Some(socks), s.client, &s.url).await;
    assert_eq!(r.status, 200, "the client is still allowed: {r:?}");
}

/// Sends a numbered 64 KiB message on an echo connection and checks it comes back whole.
async fn ping(s: &mut tokio::net::TcpStream, n: u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let msg = vec![n; 64 << 10];
    s.write_all(&msg)
        .await
        .expect("write on the open connection");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo within 5s")
        .expect("read on the open connection");
    assert!(back == msg, "echo {n} intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_during_a_long_transfer() {
    // 10 s certificates: the node proxies renew at half-life, so a 14 s transfer spans at least
    // two renewals of every identity involved.
    let mesh = start(82, &["--secret-ttl", "10s"]);
    let s = sample(&mesh);
    let echo = SocketAddr::new(mesh.ip(2, 10), 9000);
    let _echo = zmesh_tests::echo_server(echo).await;
    let socks = mesh.node("node-a").socks5();
    let serials = |node: &str| cert_serials(&mesh, node);
    let before = (serials("node-a"), serials("node-b"));

    let mut open = socks5_connect(socks, s.client, echo)
        .await
        .expect("tunnel to echo");
    let start = Instant::now();
    let mut n = 0u8;
    while start.elapsed() < Duration::from_secs(14) {
        n = n.wrapping_add(1);
        ping(&mut open, n).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = (serials("node-a"), serials("node-b"));
    assert_ne!(before.0, after.0, "node-a renewed its certificates");
    assert_ne!(before.1, after.1, "node-b renewed its certificates");
    // New connections use the renewed certificates.
    let mut fresh = socks5_connect(socks, s.client, echo)
        .await
        .expect("new tunnel");
    ping(&mut fresh, 7).await;
}

/// The serial numbers of a node's workload certificates, from its admin config dump.
fn cert_serials(mesh: &ControlledMesh, node: &str) -> Vec<String> {
    let (status, body) =
        zmesh_tests::http_get(mesh.node(node).admin(), "/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
    let mut serials: Vec<String> = dump["certificates"]
        .as_array()
        .expect("config_dump lists certificates")
        .iter()
        .map(|c| c["serial"].to_string())
        .collect();
    assert!(
        !serials.is_empty(),
        "node {node} holds certificates: {body}"
    );
    serials.sort();
    serials
}

/// Plaintext to a mesh pod is captured (nftables DNAT to the node's 15006 listener, in a
/// private network namespace) and authorized without an identity: PERMISSIVE lets it in,
/// STRICT PeerAuthentication refuses it, while mesh traffic keeps flowing.
#[test]
fn strict_peer_authentication_rejects_plaintext() {
    netns::enter_private_netns();
    // The node proxy marks its own sockets 0x539, so its connection to the app is not captured.
    netns::nft(
        "table ip zmesh_capture {
           chain output {
             type nat hook output priority -100;
             ip daddr 127.83.2.10 tcp dport != 15008 meta mark != 0x539 dnat to 127.83.2.10:15006
           }
         }",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mesh = start(83, &[]);
        let s = sample(&mesh);
        let (_b, served) = http_server(s.servers[1], "server-b").await;
        let outsider = mesh.ip(9, 9);
        let direct = format!("http://{}/", s.servers[1]);

        let r = curl(None, outsider, &direct).await;
        assert_eq!(
            r.status, 200,
            "PERMISSIVE: plaintext from outside the mesh is served: {r:?}"
        );
        let captured = mesh.node("node-b").metric(
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"unknown\"",
            ],
        );
        assert!(
            captured >= 1.0,
            "the plaintext connection went through node-b's 15006"
        );

        mesh.apply("strict.yaml", STRICT);
        let took = time_until(Duration::from_secs(10), "STRICT applied", || async {
            curl(None, outsider, &direct).await.status != 200
        })
        .await;
        eprintln!("STRICT applied after {took:?}");
        let before = served.load(std::sync::atomic::Ordering::SeqCst);
        let r = curl(None, outsider, &direct).await;
        assert_ne!(r.exit, 0, "STRICT: plaintext refused: {r:?}");
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "the app never saw it"
        );
        let r = curl(Some(mesh.node("node-a").socks5()), s.client, &direct).await;
        assert_eq!(r.status, 200, "mTLS from the client still served: {r:?}");
    });
}

/// One file with a good object, a broken document, two objects of a kind the controller does
/// not read, and an AuthorizationPolicy with an unknown action.
const MIXED: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: extra, namespace: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: demo
  data: [unclosed
---
apiVersion: v1
kind: ConfigMap
metadata: {name: one, namespace: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: two, namespace: demo}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everyone, namespace: demo}
spec:
  action: MAYBE
  rules: [{}]
"#;

/// The allow-client policy with its principal written as a URI, which Istio rejects.
const ALLOW_CLIENT_BROKEN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-allow-client, namespace: demo}
spec:
  selector:
    matchLabels: {app: server}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["spiffe://cluster.local/ns/demo/sa/client"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_reported_and_the_rest_still_applies() {
    let mesh = ControlledMesh::start(
        84,
        &[("sample.yaml", SAMPLE), ("mixed.yaml", MIXED)],
        &["node-a", "node-b"],
        &NodeOpts::new(Driver::Epoll),
    );
    let s = sample(&mesh);
    let (_a, _) = http_server(s.servers[0], "server-a").await;
    let (_b, _) = http_server(s.servers[1], "server-b").await;
    // The invalid DENY-everything policy was not applied: everyone is served.
    assert!(served_everywhere(&mesh, &s, s.client).await);
    assert!(served_everywhere(&mesh, &s, s.intruder).await);

    let log = mesh.control.log_text();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let broken: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("mixed.yaml") && l.contains("document=1"))
        .collect();
    assert_eq!(
        broken.len(),
        1,
        "the broken document is reported once, by file and index:\n{log}"
    );
    assert!(
        lines("ConfigMap") >= 1 && lines("UnknownKind") == 1,
        "one warning for the unknown kind:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("deny-everyone") && l.contains("MAYBE")),
        "the invalid policy is rejected with its reason:\n{log}"
    );

    // A valid policy, then an invalid edit of it: the valid version stays in force.
    mesh.apply("policy.yaml", ALLOW_CLIENT);
    time_until(Duration::from_secs(10), "policy applied", || {
        refused_everywhere(&mesh, &s, s.intruder)
    })
    .await;
    mesh.apply("policy.yaml", ALLOW_CLIENT_BROKEN);
    time_until(
        Duration::from_secs(10),
        "the invalid edit is reported",
        || async {
            mesh.control
                .log_text()
                .contains("spiffe://cluster.local/ns/demo/sa/client")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        refused_everywhere(&mesh, &s, s.intruder).await,
        "the last valid policy still holds"
    );
    assert!(
        served_everywhere(&mesh, &s, s.client).await,
        "and still allows the client"
    );
}
