//! Two node proxies on loopback: a SOCKS5 client on node A reaches an echo server behind
//! node B through an HBONE tunnel, with every byte checked.

use std::net::SocketAddr;

use zmesh_tests::{Driver, Mesh, NodeOpts, echo_roundtrip, echo_server, socks5_connect};

const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["127.{T}.1.10"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/demo/echo
  name: echo
  namespace: demo
  serviceAccount: echo
  workloadIps: ["127.{T}.2.10"]
  protocol: HBONE
  node: node-b
  services:
    "demo/echo.demo.svc.cluster.local": {80: 8080}
services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  vips: ["/127.{T}.200.1"]
  ports: {80: 8080}
"#;

async fn small_echo_through_vip(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &["node-a", "node-b"], &NodeOpts::new(driver));
    let _echo = echo_server(SocketAddr::new(mesh.ip(2, 10), 8080)).await;
    let vip = SocketAddr::new(mesh.ip(200, 1), 80);
    let a = mesh.node("node-a");
    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), vip).await.expect("socks5 connect");
    assert_eq!(echo_roundtrip(s, 4 << 20, 7).await, 4 << 20);
    let b = mesh.node("node-b");
    assert!(b.metric("istio_tcp_connections_opened_total", &["reporter=\"destination\"", "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\""]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_vip_io_uring() {
    small_echo_through_vip(11, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_vip_epoll() {
    small_echo_through_vip(12, Driver::Epoll).await;
}
