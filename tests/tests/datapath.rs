//! Two node proxies on loopback: a SOCKS5 client on node A reaches servers behind node B
//! through HBONE tunnels, with every byte checked. Each scenario runs once per IO driver.
//!
//! Test ids (the `T` in 127.T.N.x) used here: 11–28.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zmesh_tests::{
    Driver, Mesh, NodeOpts, Pattern, Socks5Failure, echo_roundtrip, echo_roundtrip_small,
    echo_server, echo_server_counted, read_pattern, socks5_connect, socks5_connect_host, within,
    write_pattern,
};

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

const NODES: &[&str] = &["node-a", "node-b"];

/// Generous bound for one step: only a hang should reach it.
const STEP: Duration = Duration::from_secs(60);
/// How long metrics may lag behind the bytes a client has seen.
const SETTLE: Duration = Duration::from_secs(10);

/// Source-side series of node A for connections from `client` to the `echo` workload.
const TO_ECHO: &[&str] = &["reporter=\"source\"", "destination_workload=\"echo\""];

fn echo_pod(mesh: &Mesh, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.ip(2, 10), port)
}

async fn small_echo_through_vip(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let _echo = echo_server(SocketAddr::new(mesh.ip(2, 10), 8080)).await;
    let vip = SocketAddr::new(mesh.ip(200, 1), 80);
    let a = mesh.node("node-a");
    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), vip)
        .await
        .expect("socks5 connect");
    assert_eq!(echo_roundtrip(s, 4 << 20, 7).await, 4 << 20);
    let b = mesh.node("node-b");
    assert!(
        b.metric(
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\""
            ]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_vip_io_uring() {
    small_echo_through_vip(11, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_vip_epoll() {
    small_echo_through_vip(12, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Bulk: 1 GiB each way through one tunnel, byte-exact.

const GIB: u64 = 1 << 30;

async fn gigabyte_each_way(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let _echo = echo_server(echo_pod(&mesh, 8080)).await;
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), echo_pod(&mesh, 8080))
        .await
        .expect("socks5 connect");
    let start = Instant::now();
    let got = within(
        "1 GiB echo",
        Duration::from_secs(300),
        echo_roundtrip(s, GIB, 0x1d),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, GIB, "bytes echoed back");
    println!(
        "{driver:?}: 1 GiB each way in {secs:.1} s = {:.0} MB/s each way; RSS node A {} KiB, node B {} KiB",
        GIB as f64 / 1e6 / secs,
        a.rss_kib(),
        b.rss_kib()
    );
    // The metrics saw the same bytes: node A counts what its client sent and received, node B
    // what it passed to and from the app.
    let g = GIB as f64;
    let recv = a
        .wait_metric("istio_tcp_received_bytes_total", TO_ECHO, SETTLE, |v| {
            v == g
        })
        .await;
    let sent = a
        .wait_metric("istio_tcp_sent_bytes_total", TO_ECHO, SETTLE, |v| v == g)
        .await;
    assert_eq!(
        (recv, sent),
        (g, g),
        "node A received/sent bytes (reporter=source)"
    );
    let dest = ["reporter=\"destination\"", "destination_workload=\"echo\""];
    let recv = b
        .wait_metric("istio_tcp_received_bytes_total", &dest, SETTLE, |v| v == g)
        .await;
    let sent = b
        .wait_metric("istio_tcp_sent_bytes_total", &dest, SETTLE, |v| v == g)
        .await;
    assert_eq!(
        (recv, sent),
        (g, g),
        "node B received/sent bytes (reporter=destination)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_each_way_io_uring() {
    gigabyte_each_way(13, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_each_way_epoll() {
    gigabyte_each_way(14, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Many tunnels at once, multiplexed over the pool.

const TUNNELS: usize = 1000;
const PER_TUNNEL: u64 = 64 << 10;

async fn thousand_tunnels(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let _echo = echo_server(echo_pod(&mesh, 8080)).await;
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let (proxy, src, dst) = (a.socks5(), mesh.ip(1, 10), echo_pod(&mesh, 8080));
    let start = Instant::now();
    // Open every tunnel before any of them moves data, so all streams are open at once and the
    // pool has to spread them over several connections.
    let connects = (0..TUNNELS).map(|_| async move { socks5_connect(proxy, src, dst).await });
    let streams: Vec<_> = within(
        "1000 SOCKS5 connects",
        STEP,
        futures_util::future::join_all(connects),
    )
    .await;
    let streams: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|e| panic!("tunnel {i}: {e:?}")))
        .collect();
    let pool_open = a.metric("zmesh_shard_hbone_pool_connections", &[]);
    let exchanges = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(echo_roundtrip_small(s, PER_TUNNEL, i as u64)));
    let results = within(
        "1000 concurrent echoes",
        STEP,
        futures_util::future::join_all(exchanges),
    )
    .await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("echo task"), PER_TUNNEL, "tunnel {i} bytes echoed");
    }
    println!(
        "{driver:?}: {TUNNELS} tunnels x {PER_TUNNEL} B each way in {:.2} s over {pool_open} pooled connections",
        start.elapsed().as_secs_f64()
    );

    // 1000 streams at most 100 per connection: at least 10 connections (one pool per shard,
    // so up to one partly filled connection per shard more), and nowhere near one per tunnel.
    assert!(
        (10.0..=20.0).contains(&pool_open),
        "pooled HBONE connections on node A while {TUNNELS} tunnels were open: {pool_open}"
    );
    let total = (TUNNELS as u64 * PER_TUNNEL) as f64;
    let n = TUNNELS as f64;
    let recv = a
        .wait_metric("istio_tcp_received_bytes_total", TO_ECHO, SETTLE, |v| {
            v == total
        })
        .await;
    let sent = a
        .wait_metric("istio_tcp_sent_bytes_total", TO_ECHO, SETTLE, |v| {
            v == total
        })
        .await;
    assert_eq!(
        (recv, sent),
        (total, total),
        "node A received/sent bytes (reporter=source)"
    );
    let opened = a.metric("istio_tcp_connections_opened_total", TO_ECHO);
    let closed = a
        .wait_metric("istio_tcp_connections_closed_total", TO_ECHO, SETTLE, |v| {
            v == n
        })
        .await;
    assert_eq!((opened, closed), (n, n), "node A connections opened/closed");
    let dest = ["reporter=\"destination\"", "destination_workload=\"echo\""];
    let recv = b
        .wait_metric("istio_tcp_received_bytes_total", &dest, SETTLE, |v| {
            v == total
        })
        .await;
    let sent = b
        .wait_metric("istio_tcp_sent_bytes_total", &dest, SETTLE, |v| v == total)
        .await;
    assert_eq!(
        (recv, sent),
        (total, total),
        "node B received/sent bytes (reporter=destination)"
    );
    // Every downstream connection was released (pooled HBONE connections are not counted).
    let open = a
        .wait_metric("zmesh_shard_connections", &[], SETTLE, |v| v == 0.0)
        .await;
    assert_eq!(
        open, 0.0,
        "connections node A still holds after all tunnels closed"
    );
    assert_eq!(
        a.metric("istio_tcp_connections_failed_total", &[]),
        0.0,
        "failures on node A"
    );
    assert_eq!(
        b.metric("istio_tcp_connections_failed_total", &[]),
        0.0,
        "failures on node B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_tunnels_io_uring() {
    thousand_tunnels(15, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_tunnels_epoll() {
    thousand_tunnels(16, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Half-close in both directions.

const REQUEST: u64 = 3 << 20;
const REPLY: u64 = 5 << 20;

/// The two relays a half-close must cross: the HBONE tunnel to a mesh pod, and the plain TCP
/// passthrough to an address outside the mesh.
fn half_close_targets(mesh: &Mesh) -> [(SocketAddr, &'static str); 2] {
    [
        (echo_pod(mesh, 8080), "tunnel"),
        (SocketAddr::new(mesh.ip(9, 9), 7070), "passthrough"),
    ]
}

/// (a) The client sends a request and shuts its write side; the server answers only after it
/// saw that EOF, so the reply must still reach the client through the half-closed connection.
async fn client_closes_first(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let a = mesh.node("node-a");
    for (n, (dst, path)) in half_close_targets(&mesh).into_iter().enumerate() {
        let l = TcpListener::bind(dst).await.expect("bind server");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let (mut r, mut w) = s.split();
            let request = read_pattern(&mut r, 0xa1).await.expect("server read");
            write_pattern(&mut w, &mut Pattern::new(0xa2), REPLY)
                .await
                .expect("server reply");
            w.shutdown().await.expect("server shutdown");
            request
        });
        let s = socks5_connect(a.socks5(), mesh.ip(1, 10), dst)
            .await
            .expect("socks5 connect");
        let (mut r, mut w) = s.into_split();
        write_pattern(&mut w, &mut Pattern::new(0xa1), REQUEST)
            .await
            .expect("client write");
        w.shutdown().await.expect("client half-close");
        let reply = within(
            "reply after the client's half-close",
            STEP,
            read_pattern(&mut r, 0xa2),
        )
        .await;
        assert_eq!(
            reply.expect("client read"),
            REPLY,
            "{path}: reply bytes the client read before EOF"
        );
        let request = within("server", STEP, server).await.expect("server task");
        assert_eq!(request, REQUEST, "{path}: request bytes the server read");
        drop(w);
        let want = (n + 1) as f64;
        let closed = a
            .wait_metric(
                "istio_tcp_connections_closed_total",
                &["reporter=\"source\""],
                SETTLE,
                |v| v == want,
            )
            .await;
        assert_eq!(
            closed, want,
            "{path}: node A closed the connection once both sides were done"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_closes_first_io_uring() {
    client_closes_first(17, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_closes_first_epoll() {
    client_closes_first(18, Driver::Epoll).await;
}

const EARLY: u64 = 1 << 20;
const LATE: u64 = 7 << 20;

/// (b) The server writes its reply and shuts its write side at once, then keeps reading. The
/// client sees the reply and EOF while it is still sending, and what it sends after that must
/// all reach the server.
async fn server_closes_first(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let a = mesh.node("node-a");
    for (n, (dst, path)) in half_close_targets(&mesh).into_iter().enumerate() {
        let l = TcpListener::bind(dst).await.expect("bind server");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let (mut r, mut w) = s.split();
            write_pattern(&mut w, &mut Pattern::new(0xb1), REPLY)
                .await
                .expect("server reply");
            w.shutdown().await.expect("server shutdown");
            read_pattern(&mut r, 0xb2).await.expect("server read")
        });
        let s = socks5_connect(a.socks5(), mesh.ip(1, 10), dst)
            .await
            .expect("socks5 connect");
        let (mut r, mut w) = s.into_split();
        let mut p = Pattern::new(0xb2);
        write_pattern(&mut w, &mut p, EARLY)
            .await
            .expect("client write (before EOF)");
        let reply = within(
            "reply and EOF from the server",
            STEP,
            read_pattern(&mut r, 0xb1),
        )
        .await;
        assert_eq!(
            reply.expect("client read"),
            REPLY,
            "{path}: reply bytes the client read before EOF"
        );
        // The server's side is closed; ours must still carry everything.
        let late = within(
            "client sending after EOF",
            STEP,
            write_pattern(&mut w, &mut p, LATE),
        )
        .await;
        late.unwrap_or_else(|e| panic!("{path}: client write after EOF: {e}"));
        w.shutdown().await.expect("client half-close");
        let got = within("server reading to EOF", STEP, server)
            .await
            .expect("server task");
        assert_eq!(got, EARLY + LATE, "{path}: bytes the server received");
        let src = ["reporter=\"source\""];
        let want = (n + 1) as f64;
        let closed = a
            .wait_metric("istio_tcp_connections_closed_total", &src, SETTLE, |v| {
                v == want
            })
            .await;
        assert_eq!(
            closed, want,
            "{path}: node A closed the connection once both sides were done"
        );
        let recv = a.metric("istio_tcp_received_bytes_total", &src);
        let sent = a.metric("istio_tcp_sent_bytes_total", &src);
        let want = (want * (EARLY + LATE) as f64, want * REPLY as f64);
        assert_eq!(
            (recv, sent),
            want,
            "{path}: node A received/sent bytes (all connections so far)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_closes_first_io_uring() {
    server_closes_first(19, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_closes_first_epoll() {
    server_closes_first(20, Driver::Epoll).await;
}

/// (c) One side aborts with a reset instead of closing: the other side's connection must end
/// promptly rather than hang half-open, and node A must release the connection.
async fn abort_propagates(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, NODES, &NodeOpts::new(driver));
    let l = TcpListener::bind(echo_pod(&mesh, 8080))
        .await
        .expect("bind server");
    let a = mesh.node("node-a");
    let (proxy, src, dst) = (a.socks5(), mesh.ip(1, 10), echo_pod(&mesh, 8080));

    // The client resets after the server has seen its first megabyte.
    let mut c = socks5_connect(proxy, src, dst)
        .await
        .expect("socks5 connect");
    let (mut s, _) = within("accept", STEP, l.accept()).await.expect("accept");
    write_pattern(&mut c, &mut Pattern::new(0xc1), EARLY)
        .await
        .expect("client write");
    let mut first = vec![0u8; EARLY as usize];
    within("server reads the first MiB", STEP, s.read_exact(&mut first))
        .await
        .expect("server read");
    c.set_zero_linger().expect("SO_LINGER 0");
    drop(c);
    let mut rest = Vec::new();
    let end = within(
        "server sees the client's abort",
        Duration::from_secs(10),
        s.read_to_end(&mut rest),
    )
    .await;
    println!("{driver:?}: server's read after the client's reset: {end:?}");
    drop(s);

    // The server resets after writing; the client's read must end.
    let mut c = socks5_connect(proxy, src, dst)
        .await
        .expect("socks5 connect");
    let (mut s, _) = within("accept", STEP, l.accept()).await.expect("accept");
    write_pattern(&mut s, &mut Pattern::new(0xc2), EARLY)
        .await
        .expect("server write");
    s.set_zero_linger().expect("SO_LINGER 0");
    drop(s);
    let mut got = Vec::new();
    let end = within(
        "client sees the server's abort",
        Duration::from_secs(10),
        c.read_to_end(&mut got),
    )
    .await;
    println!(
        "{driver:?}: client's read after the server's reset: {end:?} after {} bytes",
        got.len()
    );
    drop(c);

    let closed = a
        .wait_metric("istio_tcp_connections_closed_total", TO_ECHO, SETTLE, |v| {
            v == 2.0
        })
        .await;
    assert_eq!(closed, 2.0, "node A closed both tunnels");
    let open = a
        .wait_metric("zmesh_shard_connections", &[], SETTLE, |v| v == 0.0)
        .await;
    assert_eq!(open, 0.0, "connections node A still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_propagates_io_uring() {
    abort_propagates(27, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_propagates_epoll() {
    abort_propagates(28, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 4. L4 authorization.

const POLICY_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["127.{T}.1.10"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/demo/other
  name: other
  namespace: demo
  serviceAccount: other
  workloadIps: ["127.{T}.1.11"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/demo/echo
  name: echo
  namespace: demo
  serviceAccount: echo
  workloadIps: ["127.{T}.2.10"]
  protocol: HBONE
  node: node-b
  authorizationPolicies: ["demo/allow-client"]
  services:
    "demo/echo.demo.svc.cluster.local": {80: 8080}
services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  vips: ["/127.{T}.200.1"]
  ports: {80: 8080}
policies:
- name: allow-client
  namespace: demo
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - principals: [{Exact: "cluster.local/ns/demo/sa/client"}]
- name: deny-9090
  namespace: demo
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [9090]
"#;

const CLIENT_ID: &str = "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"";
const OTHER_ID: &str = "source_principal=\"spiffe://cluster.local/ns/demo/sa/other\"";
const DENY: &str = "response_flags=\"DENY\"";

async fn refused(proxy: SocketAddr, src: IpAddr, dst: SocketAddr) -> u8 {
    match within(
        "SOCKS5 reply",
        Duration::from_secs(15),
        socks5_connect(proxy, src, dst),
    )
    .await
    {
        Err(Socks5Failure::Reply(code)) => code,
        Err(Socks5Failure::Io(e)) => panic!("{src} → {dst}: no SOCKS5 reply: {e}"),
        Ok(_) => panic!("{src} → {dst}: connected, expected a refusal"),
    }
}

async fn authorization(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, POLICY_MESH, NODES, &NodeOpts::new(driver));
    let (_e1, app_8080) = echo_server_counted(echo_pod(&mesh, 8080)).await;
    let (_e2, app_9090) = echo_server_counted(echo_pod(&mesh, 9090)).await;
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let (client, other) = (mesh.ip(1, 10), mesh.ip(1, 11));
    let vip = SocketAddr::new(mesh.ip(200, 1), 80);

    // The allowed principal gets through, by pod IP and by VIP.
    for dst in [echo_pod(&mesh, 8080), vip] {
        let s = socks5_connect(a.socks5(), client, dst)
            .await
            .unwrap_or_else(|e| panic!("client → {dst}: {e:?}"));
        assert_eq!(echo_roundtrip(s, 1 << 20, 3).await, 1 << 20);
    }
    // Another service account is not allowed: SOCKS5 0x02, by pod IP and by VIP.
    for dst in [echo_pod(&mesh, 8080), vip] {
        assert_eq!(
            refused(a.socks5(), other, dst).await,
            0x02,
            "other → {dst}: SOCKS5 reply"
        );
    }
    // The namespace's DENY on port 9090 wins over the ALLOW for the client.
    assert_eq!(
        refused(a.socks5(), client, echo_pod(&mesh, 9090)).await,
        0x02,
        "client → :9090"
    );
    // The allowed client still works after the refusals.
    let s = socks5_connect(a.socks5(), client, vip)
        .await
        .expect("client again");
    assert_eq!(echo_roundtrip(s, 64 << 10, 4).await, 64 << 10);

    assert_eq!(
        app_8080.load(Ordering::SeqCst),
        3,
        "connections that reached the app on 8080"
    );
    assert_eq!(
        app_9090.load(Ordering::SeqCst),
        0,
        "connections that reached the app on 9090"
    );
    let failed = "istio_tcp_connections_failed_total";
    let on_b = |who: &'static str| {
        [
            who,
            "reporter=\"destination\"",
            DENY,
            "destination_workload=\"echo\"",
        ]
    };
    assert_eq!(
        b.metric(failed, &on_b(OTHER_ID)),
        2.0,
        "node B: DENY for sa/other"
    );
    assert_eq!(
        b.metric(failed, &on_b(CLIENT_ID)),
        1.0,
        "node B: DENY for sa/client on 9090"
    );
    assert_eq!(
        b.metric("zmesh_rejections_total", &["reason=\"denied\""]),
        3.0,
        "node B: denied"
    );
    assert_eq!(
        a.metric(failed, &["reporter=\"source\"", DENY]),
        3.0,
        "node A: DENY (reporter=source)"
    );
    assert_eq!(
        b.metric(
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\"", OTHER_ID]
        ),
        0.0
    );
    assert_eq!(
        b.metric(
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\"", CLIENT_ID]
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_io_uring() {
    authorization(21, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_epoll() {
    authorization(22, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Where a destination resolves to: VIP, pod, outside the mesh, nowhere.

const RESOLVE_MESH: &str = r#"
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
- uid: cluster1//v1/Pod/demo/ghost
  name: ghost
  namespace: demo
  serviceAccount: ghost
  workloadIps: ["127.{T}.3.10"]
  protocol: HBONE
  node: node-c
services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  vips: ["/127.{T}.200.1"]
  ports: {80: 8080}
- name: empty
  namespace: demo
  hostname: empty.demo.svc.cluster.local
  vips: ["/127.{T}.200.2"]
  ports: {80: 8080}
"#;

async fn resolution(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, RESOLVE_MESH, NODES, &NodeOpts::new(driver));
    let (_echo, app) = echo_server_counted(echo_pod(&mesh, 8080)).await;
    let outside = SocketAddr::new(mesh.ip(9, 9), 7070);
    let (_plain, plain_app) = echo_server_counted(outside).await;
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let client = mesh.ip(1, 10);
    let opened = "istio_tcp_connections_opened_total";
    let failed = "istio_tcp_connections_failed_total";

    // Service VIP (port 80 → 8080) and the pod IP both reach the app through the tunnel.
    let vip = SocketAddr::new(mesh.ip(200, 1), 80);
    for (dst, seed) in [(vip, 1), (echo_pod(&mesh, 8080), 2)] {
        let s = socks5_connect(a.socks5(), client, dst)
            .await
            .unwrap_or_else(|e| panic!("→ {dst}: {e:?}"));
        assert_eq!(echo_roundtrip(s, 2 << 20, seed).await, 2 << 20, "→ {dst}");
    }
    // A SOCKS5 host name resolves through the mesh's services, to the same VIP.
    let s = socks5_connect_host(a.socks5(), client, "echo.demo.svc.cluster.local", 80)
        .await
        .expect("by host name");
    assert_eq!(
        echo_roundtrip(s, 1 << 20, 4).await,
        1 << 20,
        "→ echo.demo.svc.cluster.local:80"
    );
    let unknown = socks5_connect_host(a.socks5(), client, "nope.demo.svc.cluster.local", 80).await;
    assert!(
        matches!(unknown, Err(Socks5Failure::Reply(0x04))),
        "unknown host name: {unknown:?}"
    );
    assert_eq!(
        app.load(Ordering::SeqCst),
        3,
        "connections that reached the app"
    );
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let svc = "destination_service=\"echo.demo.svc.cluster.local\"";
    assert_eq!(
        a.metric(opened, &[TO_ECHO[0], TO_ECHO[1], mtls, svc]),
        2.0,
        "node A: by VIP and host name"
    );
    assert_eq!(
        a.metric(
            opened,
            &[
                TO_ECHO[0],
                TO_ECHO[1],
                mtls,
                "destination_service=\"unknown\""
            ]
        ),
        1.0,
        "node A: by pod IP"
    );
    assert_eq!(
        b.metric(opened, &["reporter=\"destination\"", CLIENT_ID, mtls]),
        3.0,
        "node B: inbound tunnels"
    );

    // An address no workload or service owns is passed through as plain TCP: the server gets
    // the bytes as they are, and node B never sees the connection.
    let s = socks5_connect(a.socks5(), client, outside)
        .await
        .expect("passthrough");
    assert_eq!(echo_roundtrip(s, 2 << 20, 3).await, 2 << 20);
    assert_eq!(
        plain_app.load(Ordering::SeqCst),
        1,
        "connections that reached the outside server"
    );
    let plain = [
        "reporter=\"source\"",
        "destination_workload=\"unknown\"",
        "connection_security_policy=\"unknown\"",
    ];
    assert_eq!(
        a.metric(opened, &plain),
        1.0,
        "node A: passthrough (no mTLS)"
    );
    let received = a
        .wait_metric("istio_tcp_received_bytes_total", &plain, SETTLE, |v| {
            v == (2 << 20) as f64
        })
        .await;
    assert_eq!(received, (2 << 20) as f64, "node A: passthrough bytes");
    assert_eq!(
        b.metric(opened, &[]),
        3.0,
        "node B saw only the three tunnels"
    );

    // Nowhere to go: a prompt SOCKS5 failure, counted with response_flags="CONNECT".
    let cases = [
        (
            SocketAddr::new(mesh.ip(200, 2), 80),
            0x04,
            "service without endpoints",
        ),
        (
            SocketAddr::new(mesh.ip(200, 1), 81),
            0x04,
            "port the service does not expose",
        ),
        (
            echo_pod(&mesh, 8081),
            0x05,
            "mesh workload whose app is not listening",
        ),
        (
            SocketAddr::new(mesh.ip(9, 9), 7071),
            0x05,
            "outside address with nothing listening",
        ),
        (
            SocketAddr::new(mesh.ip(3, 10), 8080),
            0x05,
            "mesh workload whose node proxy is down",
        ),
        (
            SocketAddr::new(mesh.ip(3, 10), 8080),
            0x05,
            "the same again (no cached dial)",
        ),
    ];
    for (dst, code, what) in cases {
        let start = Instant::now();
        assert_eq!(
            refused(a.socks5(), client, dst).await,
            code,
            "{what} ({dst}): SOCKS5 reply"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: reply took {:?}",
            start.elapsed()
        );
    }
    let connect = "response_flags=\"CONNECT\"";
    assert_eq!(
        a.metric(failed, &["reporter=\"source\"", connect]),
        6.0,
        "node A: CONNECT failures"
    );
    assert_eq!(
        a.metric(
            failed,
            &[
                "reporter=\"source\"",
                connect,
                "destination_workload=\"ghost\""
            ]
        ),
        2.0
    );
    assert_eq!(
        a.metric(
            failed,
            &[
                "reporter=\"source\"",
                connect,
                "destination_workload=\"echo\""
            ]
        ),
        1.0
    );
    assert_eq!(
        b.metric(failed, &["reporter=\"destination\"", connect, CLIENT_ID]),
        1.0,
        "node B: CONNECT failure"
    );
    assert_eq!(
        b.metric("zmesh_rejections_total", &["reason=\"upstream_connect\""]),
        1.0
    );
    assert_eq!(
        app.load(Ordering::SeqCst),
        3,
        "no failed case reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_io_uring() {
    resolution(23, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_epoll() {
    resolution(24, Driver::Epoll).await;
}

// ---------------------------------------------------------------------------------------------
// 6. IPv6.
//
// The harness puts nodes and clients on 127.T.N.x, and on loopback only ::1 is a local IPv6
// address (others would need root to add). So the IPv6 hop is node A → node B: the echo
// workload's only address is ::1, node B serves HBONE on [::1]:15008 and connects to the app on
// [::1]; the client still talks SOCKS5 to node A over IPv4 and asks for an IPv6 destination
// (or a VIP). Only one mesh can own ::1 at a time, so the two driver variants take turns.
// There is no IPv6 passthrough case: ::1 belongs to the workload.

static IPV6_LOOPBACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const V6_APP_PORT: u16 = 28080;

const V6_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["127.{T}.1.10"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/demo/echo6
  name: echo6
  namespace: demo
  serviceAccount: echo
  workloadIps: ["::1"]
  protocol: HBONE
  node: node-b
  services:
    "demo/echo6.demo.svc.cluster.local": {80: 28080}
services:
- name: echo6
  namespace: demo
  hostname: echo6.demo.svc.cluster.local
  vips: ["/127.{T}.200.6", "/fd00::{T}:6"]
  ports: {80: 28080}
"#;

async fn ipv6(id: u8, driver: Driver) {
    let _turn = IPV6_LOOPBACK.lock().await;
    let mesh = Mesh::start(id, V6_MESH, NODES, &NodeOpts::new(driver));
    let app_addr = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), V6_APP_PORT);
    let (_echo, app) = echo_server_counted(app_addr).await;
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let v6_vip: IpAddr = format!("fd00::{id}:6").parse().expect("v6 vip");
    let cases = [
        (app_addr, "pod [::1] directly"),
        (SocketAddr::new(v6_vip, 80), "IPv6 VIP"),
        (
            SocketAddr::new(mesh.ip(200, 6), 80),
            "IPv4 VIP in front of an IPv6-only pod",
        ),
    ];
    for (i, (dst, what)) in cases.iter().enumerate() {
        let s = socks5_connect(a.socks5(), mesh.ip(1, 10), *dst)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(
            echo_roundtrip(s, 4 << 20, i as u64).await,
            4 << 20,
            "{what}"
        );
    }
    assert_eq!(
        app.load(Ordering::SeqCst),
        3,
        "connections that reached the app on [::1]"
    );
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let to = "destination_workload=\"echo6\"";
    assert_eq!(
        a.metric(
            "istio_tcp_connections_opened_total",
            &["reporter=\"source\"", to, mtls]
        ),
        3.0
    );
    assert_eq!(
        b.metric(
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\"", to, CLIENT_ID]
        ),
        3.0
    );
    // A refused IPv6 destination fails promptly too.
    let closed_port = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), V6_APP_PORT + 1);
    assert_eq!(
        refused(a.socks5(), mesh.ip(1, 10), closed_port).await,
        0x05,
        "[::1] port with no listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_io_uring() {
    ipv6(25, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_epoll() {
    ipv6(26, Driver::Epoll).await;
}
