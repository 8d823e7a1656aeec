//! HBONE on the wire, checked by an independent peer (tests/common/peer.rs: rustls + plain h2,
//! written from ISTIO-INTEROP.md §2): the proxy as a server and as a client, and every refusal
//! the reference defines — bad certificates, plaintext, non-CONNECT methods, bad authorities,
//! closed ports and policy denials — each answered as the reference does, counted, and
//! followed by normal service.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::frames::{self, Answer};
use common::peer::{self, HBONE_PORT, Hbone, connect_request, spiffe};
use common::{assert_moved, metric_now};
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmesh_hbone::ca::DevCa;
use zmesh_tests::{
    Driver, Mesh, NodeOpts, Socks5Failure, echo_roundtrip, echo_server, socks5_connect,
};

/// node-a: client. node-b: echo and echo2. node-c (no proxy; the test is its HBONE server):
/// ext, and impostor-target whose server will present the wrong identity. Port 8444 is denied.
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
- uid: cluster1//v1/Pod/demo/echo2
  name: echo2
  namespace: demo
  serviceAccount: echo2
  workloadIps: ["127.{T}.2.11"]
  protocol: HBONE
  node: node-b
- uid: cluster1//v1/Pod/demo/ext
  name: ext
  namespace: demo
  serviceAccount: ext
  workloadIps: ["127.{T}.3.10"]
  protocol: HBONE
  node: node-c
- uid: cluster1//v1/Pod/demo/impostor-target
  name: impostor-target
  namespace: demo
  serviceAccount: target
  workloadIps: ["127.{T}.3.11"]
  protocol: HBONE
  node: node-c
policies:
- name: deny-8444
  namespace: demo
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [8444]
"#;

const NODES: [&str; 2] = ["node-a", "node-b"];
const REJECTIONS: &str = "zmesh_rejections_total";
const FAILED: &str = "istio_tcp_connections_failed_total";

fn addr(mesh: &Mesh, a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.ip(a, b), port)
}

/// `zmesh_rejections_total{reason=r}` on `node`.
fn rejections(node: &zmesh_tests::Node, r: &str) -> f64 {
    metric_now(node, REJECTIONS, &[&format!("reason=\"{r}\"")])
}

/// Asserts `zmesh_rejections_total{reason=r}` grew past `before`.
#[track_caller]
fn rejection_moved(node: &zmesh_tests::Node, r: &str, before: f64) {
    assert_moved(node, REJECTIONS, &[&format!("reason=\"{r}\"")], before);
}

/// A connection to echo's 15008 as the mesh's `client` identity, expecting the server to be
/// `echo`.
async fn dial_echo(mesh: &Mesh, ca: &DevCa) -> (Hbone, std::sync::Arc<peer::SpiffeServerCheck>) {
    let (cfg, check) = peer::client_config(
        &peer::leaf(ca, &spiffe("client")),
        peer::roots(ca),
        Some(&spiffe("echo")),
    );
    let h = peer::hbone_dial(addr(mesh, 2, 10, HBONE_PORT), cfg)
        .await
        .expect("HBONE dial to echo");
    (h, check)
}

/// Opens a tunnel to echo:8080 on `h` and moves `total` bytes through it both ways.
async fn tunnel_echo(mesh: &Mesh, h: &mut Hbone, total: usize, seed: u64) {
    let authority = addr(mesh, 2, 10, 8080).to_string();
    let (resp, send) = peer::request(h, connect_request(&authority, addr(mesh, 1, 10, 40000)))
        .await
        .expect("CONNECT");
    assert_eq!(resp.status(), StatusCode::OK, "CONNECT {authority}");
    let got = peer::echo_over(send, resp.into_body(), total, seed)
        .await
        .expect("echo over tunnel");
    assert_eq!(got, total);
}

// ---- 1. zmesh as the HBONE server, our peer as client ----

async fn hbone_client(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &NODES, &NodeOpts::new(driver));
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    let (mut h, check) = dial_echo(&mesh, &ca).await;
    assert_eq!(
        *check.seen.lock().expect("lock"),
        vec![spiffe("echo")],
        "server identity (URI SAN)"
    );
    assert_eq!(h.tls.alpn.as_deref(), Some(&b"h2"[..]), "ALPN");
    assert_eq!(h.tls.version, Some(rustls::ProtocolVersion::TLSv1_3));

    let authority = addr(&mesh, 2, 10, 8080).to_string();
    let (resp, send) = peer::request(
        &mut h,
        connect_request(&authority, addr(&mesh, 1, 10, 40000)),
    )
    .await
    .expect("CONNECT");
    assert_eq!(resp.status(), StatusCode::OK);
    let baggage = resp
        .headers()
        .get("baggage")
        .expect("200 carries baggage")
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        baggage.contains("k8s.namespace.name=demo"),
        "response baggage {baggage:?}"
    );
    assert!(
        baggage.contains("k8s.deployment.name=echo"),
        "response baggage {baggage:?}"
    );
    // 1 MiB each way, then our half-close; the echo app's half-close comes back as END_STREAM.
    let got = peer::echo_over(send, resp.into_body(), 1 << 20, 1)
        .await
        .expect("echo");
    assert_eq!(got, 1 << 20);

    server_settings(&mesh, &ca).await;
    let b = mesh.node("node-b");
    let labels = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
        "source_workload=\"client\"",
    ];
    assert!(
        common::wait_metric(b, "istio_tcp_connections_closed_total", &labels, 1.0) >= 1.0,
        "node-b counted the tunnel"
    );
}

/// §2 HTTP/2 settings, server side: 200 concurrent streams, 4 MiB stream window, 16 MiB
/// connection window, 1 MiB frames, 64 KiB header lists.
async fn server_settings(mesh: &Mesh, ca: &DevCa) {
    let (cfg, _) = peer::client_config(
        &peer::leaf(ca, &spiffe("client")),
        peer::roots(ca),
        Some(&spiffe("echo")),
    );
    let mut s = peer::tls_dial(addr(mesh, 2, 10, HBONE_PORT), cfg)
        .await
        .expect("TLS");
    frames::start(&mut s).await.expect("preface");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut announced = frames::Announced::default();
    while announced.settings.is_empty() || announced.connection_window_increment == 0 {
        match tokio::time::timeout_at(deadline, frames::read_frame(&mut s)).await {
            Ok(Ok(Some(f))) => seen.push(f),
            _ => break,
        }
        announced = frames::Announced::from_frames(&seen);
    }
    println!("node-b as HTTP/2 server announced {announced:?}");
    assert_eq!(
        announced.get(frames::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(200)
    );
    assert_eq!(
        announced.get(frames::SETTINGS_INITIAL_WINDOW_SIZE),
        Some(peer::STREAM_WINDOW)
    );
    assert_eq!(
        announced.get(frames::SETTINGS_MAX_FRAME_SIZE),
        Some(peer::MAX_FRAME)
    );
    assert_eq!(
        announced.get(frames::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(64 << 10)
    );
    assert_eq!(
        announced.connection_window_increment,
        peer::CONNECTION_WINDOW - 65_535
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_client_io_uring() {
    hbone_client(40, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_client_epoll() {
    hbone_client(41, Driver::Epoll).await;
}

// ---- 2. zmesh as the HBONE client, our peer as server (and 3a: wrong server SAN) ----

/// `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

async fn hbone_server(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &NODES, &NodeOpts::new(driver));
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    let (_ext, mut seen) = peer::hbone_server(
        addr(&mesh, 3, 10, HBONE_PORT),
        &peer::leaf(&ca, &spiffe("ext")),
        peer::roots(&ca),
    )
    .await;
    let a = mesh.node("node-a");

    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), addr(&mesh, 3, 10, 9000))
        .await
        .expect("socks5 to ext");
    let client = s.local_addr().expect("local addr");
    assert_eq!(echo_roundtrip(s, 256 << 10, 2).await, 256 << 10);
    let c = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a CONNECT reached us")
        .expect("server alive");
    assert_eq!(c.method, Method::CONNECT);
    assert_eq!(
        c.authority,
        addr(&mesh, 3, 10, 9000).to_string(),
        ":authority is the target ip:port"
    );
    let header = |n: &str| {
        c.headers
            .get(n)
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        header("forwarded"),
        format!("for=\"{client}\""),
        "forwarded names the SOCKS client"
    );
    assert!(
        header("baggage")
            .split(',')
            .any(|e| e == "k8s.namespace.name=demo"),
        "baggage {:?}",
        header("baggage")
    );
    assert!(
        is_traceparent(&header("traceparent")),
        "traceparent {:?}",
        header("traceparent")
    );
    assert_eq!(
        c.client_sans,
        vec![spiffe("client")],
        "client certificate identity"
    );
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(c.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.sni, None, "HBONE clients send no SNI");
    // §2 HTTP/2 settings, client side: 4 MiB stream window, 16 MiB connection window, 1 MiB
    // frames, 16 KiB header lists, no push.
    let announced = frames::Announced::from_frames(&frames::parse(&c.h2_start));
    println!("node-a as HTTP/2 client announced {announced:?}");
    assert_eq!(
        announced.get(frames::SETTINGS_INITIAL_WINDOW_SIZE),
        Some(peer::STREAM_WINDOW)
    );
    assert_eq!(
        announced.get(frames::SETTINGS_MAX_FRAME_SIZE),
        Some(peer::MAX_FRAME)
    );
    assert_eq!(
        announced.get(frames::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(16 << 10)
    );
    assert_eq!(announced.get(frames::SETTINGS_ENABLE_PUSH), Some(0));
    assert_eq!(
        announced.connection_window_increment,
        peer::CONNECTION_WINDOW - 65_535
    );

    // 3a. The server at impostor-target presents a valid certificate for another identity.
    let (_impostor, mut impostor_seen) = peer::hbone_server(
        addr(&mesh, 3, 11, HBONE_PORT),
        &peer::leaf(&ca, &spiffe("impostor")),
        peer::roots(&ca),
    )
    .await;
    let tls_failed = ["reporter=\"source\"", "response_flags=\"TLS_FAILURE\""];
    let before = metric_now(a, FAILED, &tls_failed);
    match socks5_connect(a.socks5(), mesh.ip(1, 10), addr(&mesh, 3, 11, 9000)).await {
        Err(Socks5Failure::Reply(code)) => assert_ne!(code, 0),
        Err(Socks5Failure::Io(e)) => panic!("expected a SOCKS5 failure reply, got {e}"),
        Ok(_) => panic!("node-a tunnelled to a server with the wrong identity"),
    }
    assert_moved(a, FAILED, &tls_failed, before);
    assert!(
        impostor_seen.try_recv().is_err(),
        "no CONNECT may reach the impostor"
    );

    // Node A keeps serving: the real server and node B are still reached.
    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), addr(&mesh, 3, 10, 9000))
        .await
        .expect("socks5 to ext again");
    assert_eq!(echo_roundtrip(s, 64 << 10, 3).await, 64 << 10);
    let s = socks5_connect(a.socks5(), mesh.ip(1, 10), addr(&mesh, 2, 10, 8080))
        .await
        .expect("socks5 to echo");
    assert_eq!(echo_roundtrip(s, 64 << 10, 4).await, 64 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_server_io_uring() {
    hbone_server(42, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_server_epoll() {
    hbone_server(43, Driver::Epoll).await;
}

// ---- 3b–e. TLS refusals on node B ----

/// Tries a full HBONE tunnel with `creds`; it must fail somewhere before a 200. In TLS 1.3 the
/// client finishes its handshake before the server has checked the client certificate, so the
/// refusal may show up only as an alert on the first read.
async fn must_be_refused(
    mesh: &Mesh,
    creds: &peer::Creds,
    roots_of_server: &DevCa,
    what: &str,
) -> String {
    let (cfg, _) = peer::client_config(creds, peer::roots(roots_of_server), None);
    let mut h = match peer::hbone_dial(addr(mesh, 2, 10, HBONE_PORT), cfg).await {
        Err(e) => return e.to_string(),
        Ok(h) => h,
    };
    match peer::connect_status(&mut h, &addr(mesh, 2, 10, 8080).to_string()).await {
        Err(e) => e.to_string(),
        Ok(status) => {
            panic!("{what}: the server answered {status} instead of refusing the handshake")
        }
    }
}

/// Writes `bytes` in the clear to 15008 and waits for the server to close.
async fn plaintext_closed(target: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(target).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "15008 kept a plaintext connection open");
}

async fn tls_refusals(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &NODES, &NodeOpts::new(driver));
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    let b = mesh.node("node-b");
    let tls_flag = ["reporter=\"destination\"", "response_flags=\"TLS_FAILURE\""];
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let other_ca = DevCa::generate("other").expect("second CA");
    let cases = [
        (
            "expired client cert",
            peer::leaf_valid(&ca, &spiffe("client"), now - 2 * hour, now - hour),
        ),
        (
            "other trust domain",
            peer::leaf(&ca, "spiffe://other.domain/ns/demo/sa/client"),
        ),
        ("other CA", peer::leaf(&other_ca, &spiffe("client"))),
    ];
    for (what, creds) in &cases {
        let (rej, flagged) = (
            rejections(b, "tls_handshake"),
            metric_now(b, FAILED, &tls_flag),
        );
        let err = must_be_refused(&mesh, creds, &ca, what).await;
        println!("{what}: refused ({err})");
        rejection_moved(b, "tls_handshake", rej);
        assert_moved(b, FAILED, &tls_flag, flagged);
    }

    let target = addr(&mesh, 2, 10, HBONE_PORT);
    let garbage: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let plain: [(&str, &[u8]); 3] = [
        (
            "HTTP/1.1",
            b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
        ),
        ("cleartext h2 preface", frames::PREFACE),
        ("garbage", &garbage),
    ];
    for (what, bytes) in plain {
        let rej = rejections(b, "tls_handshake");
        plaintext_closed(target, bytes).await;
        println!("{what}: closed");
        rejection_moved(b, "tls_handshake", rej);
    }

    // Node B still serves a normal client.
    let (mut h, _) = dial_echo(&mesh, &ca).await;
    tunnel_echo(&mesh, &mut h, 256 << 10, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_io_uring() {
    tls_refusals(44, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_epoll() {
    tls_refusals(45, Driver::Epoll).await;
}

// ---- 3f–h. CONNECT refusals on one good connection to node B ----

/// Authorities that are not `ip:port` or `host:port`, sent as raw frames because `h2` will not
/// send them. The reference answers 400, or (when h2 itself cannot parse the value into an
/// authority) resets the stream with PROTOCOL_ERROR; either way the connection lives on.
async fn raw_bad_authorities(mesh: &Mesh, ca: &DevCa) {
    let (cfg, _) = peer::client_config(
        &peer::leaf(ca, &spiffe("client")),
        peer::roots(ca),
        Some(&spiffe("echo")),
    );
    let mut s = peer::tls_dial(addr(mesh, 2, 10, HBONE_PORT), cfg)
        .await
        .expect("TLS");
    frames::start(&mut s).await.expect("preface");
    let bad = [
        "not an authority",
        "1.2.3.4:99999",
        "127.0.0.1",
        ":8080",
        "host:0",
        "[::1:80",
    ];
    for (i, authority) in bad.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        s.write_all(&frames::connect_headers(stream, authority))
            .await
            .expect("HEADERS");
        let answer = frames::answer(&mut s, stream).await;
        println!("CONNECT {authority:?}: {answer:?}");
        assert!(
            matches!(answer, Answer::Headers(Some(400)) | Answer::Reset(1)),
            "CONNECT {authority:?} got {answer:?}, want 400 or RST_STREAM(PROTOCOL_ERROR)"
        );
    }
    // The same raw connection still opens a real tunnel.
    let stream = 1 + 2 * bad.len() as u32;
    s.write_all(&frames::connect_headers(
        stream,
        &addr(mesh, 2, 10, 8080).to_string(),
    ))
    .await
    .expect("HEADERS");
    assert_eq!(
        frames::answer(&mut s, stream).await,
        Answer::Headers(Some(200))
    );
}

async fn connect_refusals(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &NODES, &NodeOpts::new(driver));
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let _denied_app = echo_server(addr(&mesh, 2, 10, 8444)).await;
    let ca = peer::mesh_ca(&mesh);
    let b = mesh.node("node-b");
    let (mut h, _) = dial_echo(&mesh, &ca).await;
    let ip = mesh.ip(2, 10);

    // f. Methods other than CONNECT.
    let bad_method = rejections(b, "bad_method");
    for method in [Method::GET, Method::POST] {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{ip}:8080/"))
            .body(())
            .expect("request");
        let (resp, mut body) = peer::request(&mut h, req).await.expect("request");
        let _ = body.send_data(Bytes::new(), true);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{method}");
    }
    rejection_moved(b, "bad_method", bad_method + 1.0);

    // g. Authorities: garbage, another workload's IP, a closed port, a denied port.
    let bad_authority = rejections(b, "bad_authority");
    raw_bad_authorities(&mesh, &ca).await;
    let other = addr(&mesh, 2, 11, 8080).to_string();
    assert_eq!(
        peer::connect_status(&mut h, &other).await.expect("CONNECT"),
        StatusCode::BAD_REQUEST,
        "{other} on {ip}'s connection"
    );
    rejection_moved(b, "bad_authority", bad_authority + 1.0);

    let upstream = rejections(b, "upstream_connect");
    assert_eq!(
        peer::connect_status(&mut h, &format!("{ip}:8099"))
            .await
            .expect("CONNECT"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    rejection_moved(b, "upstream_connect", upstream);

    let denied = rejections(b, "denied");
    let deny_flag = ["reporter=\"destination\"", "response_flags=\"DENY\""];
    let denied_flag = metric_now(b, FAILED, &deny_flag);
    assert_eq!(
        peer::connect_status(&mut h, &format!("{ip}:8444"))
            .await
            .expect("CONNECT"),
        StatusCode::UNAUTHORIZED
    );
    rejection_moved(b, "denied", denied);
    assert_moved(b, FAILED, &deny_flag, denied_flag);

    // h. The same connection still carries tunnels after all those refused streams…
    tunnel_echo(&mesh, &mut h, 256 << 10, 6).await;
    tunnel_echo(&mesh, &mut h, 64 << 10, 7).await;
    // …and node B still serves node A's clients.
    let s = socks5_connect(
        mesh.node("node-a").socks5(),
        mesh.ip(1, 10),
        addr(&mesh, 2, 10, 8080),
    )
    .await
    .expect("socks5");
    assert_eq!(echo_roundtrip(s, 256 << 10, 8).await, 256 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_io_uring() {
    connect_refusals(46, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_epoll() {
    connect_refusals(47, Driver::Epoll).await;
}
