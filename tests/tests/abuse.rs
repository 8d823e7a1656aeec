//! Abusive peers against node B's HBONE port: HTTP/2 frame floods on a valid connection,
//! peers that stall in the handshake, and thousands of idle connections. In each case the node
//! must stay alive, keep its memory bounded, count what it refused, and keep serving a normal
//! client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::frames::{self, Answer};
use common::peer::{self, HBONE_PORT, spiffe};
use common::{assert_moved, metric_now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmesh_hbone::ca::DevCa;
use zmesh_tests::{Driver, Mesh, Node, NodeOpts, echo_roundtrip, echo_server, socks5_connect};

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
"#;

const NODES: [&str; 2] = ["node-a", "node-b"];
const MIB: u64 = 1024;

/// Tests that open thousands of sockets run one at a time: two at once would need twice the
/// descriptors and would disturb each other's memory readings.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn addr(mesh: &Mesh, a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.ip(a, b), port)
}

fn rejections(node: &Node, r: &str) -> f64 {
    metric_now(
        node,
        "zmesh_rejections_total",
        &[&format!("reason=\"{r}\"")],
    )
}

#[track_caller]
fn rejection_moved(node: &Node, r: &str, before: f64) -> f64 {
    assert_moved(
        node,
        "zmesh_rejections_total",
        &[&format!("reason=\"{r}\"")],
        before,
    )
}

fn client_tls(ca: &DevCa) -> Arc<rustls::ClientConfig> {
    peer::client_config(
        &peer::leaf(ca, &spiffe("client")),
        peer::roots(ca),
        Some(&spiffe("echo")),
    )
    .0
}

/// A SOCKS5 client on node A through node B to the echo app, and a fresh HBONE connection of
/// our own straight to node B: both must work.
async fn normal_clients_work(mesh: &Mesh, ca: &DevCa, seed: u64) {
    let s = socks5_connect(
        mesh.node("node-a").socks5(),
        mesh.ip(1, 10),
        addr(mesh, 2, 10, 8080),
    )
    .await
    .expect("socks5 via node A");
    assert_eq!(echo_roundtrip(s, 128 << 10, seed).await, 128 << 10);
    let mut h = peer::hbone_dial(addr(mesh, 2, 10, HBONE_PORT), client_tls(ca))
        .await
        .expect("fresh HBONE connection");
    let authority = addr(mesh, 2, 10, 8080).to_string();
    let req = peer::connect_request(&authority, addr(mesh, 1, 10, 40000));
    let (resp, send) = peer::request(&mut h, req).await.expect("CONNECT");
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(
        peer::echo_over(send, resp.into_body(), 128 << 10, seed + 1)
            .await
            .expect("echo"),
        128 << 10
    );
}

/// Samples a process's VmRSS every 10 ms on a thread and keeps the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssPeak { stop, peak, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---- 4. HTTP/2 frame floods on a valid HBONE connection ----

/// How a flooded connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    GoAway(u32),
    Closed,
    /// Still open: the node read and answered everything, or stopped reading (back-pressure).
    Open,
}

/// What a flood does once the connection is up (and, for some, a tunnel stream is open).
#[derive(Clone, Copy, Debug)]
enum Flood {
    Ping,
    Settings,
    EmptyData,
    TinyData,
    RapidReset,
    Continuation,
    Streams,
}

impl Flood {
    /// Whether the flood runs on an open tunnel (stream 1, answered 200).
    fn needs_tunnel(self) -> bool {
        matches!(self, Flood::EmptyData | Flood::TinyData)
    }

    fn bytes(self, authority: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Flood::Ping => (0..100_000u64)
                .for_each(|i| out.extend(frames::frame(frames::PING, 0, 0, &i.to_be_bytes()))),
            Flood::Settings => {
                (0..100_000).for_each(|_| out.extend(frames::settings(&[(0x3, 100)])))
            }
            Flood::EmptyData => {
                (0..1_000).for_each(|_| out.extend(frames::frame(frames::DATA, 0, 1, &[])))
            }
            Flood::TinyData => {
                (0..200_000).for_each(|_| out.extend(frames::frame(frames::DATA, 0, 1, b"x")))
            }
            Flood::RapidReset => (0..10_000u32).for_each(|i| {
                out.extend(frames::connect_headers(1 + 2 * i, authority));
                out.extend(frames::rst_stream(1 + 2 * i, frames::CANCEL));
            }),
            Flood::Continuation => {
                out.extend(frames::frame(
                    frames::HEADERS,
                    0,
                    1,
                    &frames::header_block(&[(":method", "CONNECT")]),
                ));
                (0..10_000).for_each(|i| {
                    let block = frames::header_block(&[(&format!("x-{i}"), "y")]);
                    out.extend(frames::frame(frames::CONTINUATION, 0, 1, &block));
                });
            }
            Flood::Streams => (0..5_000u32)
                .for_each(|i| out.extend(frames::connect_headers(1 + 2 * i, authority))),
        }
        out
    }
}

/// Opens a valid HBONE connection, runs `flood` on it and reports how the node ended it.
async fn run_flood(mesh: &Mesh, ca: &DevCa, flood: Flood) -> Outcome {
    let authority = addr(mesh, 2, 10, 8080).to_string();
    let mut s = peer::tls_dial(addr(mesh, 2, 10, HBONE_PORT), client_tls(ca))
        .await
        .expect("TLS");
    frames::start(&mut s).await.expect("preface");
    if flood.needs_tunnel() {
        s.write_all(&frames::connect_headers(1, &authority))
            .await
            .expect("CONNECT");
        assert_eq!(
            frames::answer(&mut s, 1).await,
            Answer::Headers(Some(200)),
            "tunnel for {flood:?}"
        );
    }
    let (mut r, mut w) = tokio::io::split(s);
    // Read everything the node sends until it ends the connection.
    let reader = tokio::spawn(async move {
        loop {
            match frames::read_frame(&mut r).await {
                Ok(Some(f)) if f.ty == frames::GOAWAY => {
                    return Outcome::GoAway(f.error_code().unwrap_or(0));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Outcome::Closed,
            }
        }
    });
    let start = Instant::now();
    let bytes = flood.bytes(&authority);
    let wrote = tokio::time::timeout(Duration::from_secs(10), w.write_all(&bytes)).await;
    let written = match wrote {
        Ok(Ok(())) => "all",
        Ok(Err(_)) => "until the node closed",
        Err(_) => "until the node stopped reading",
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), w.flush()).await;
    let outcome = match tokio::time::timeout(Duration::from_secs(3), reader).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("reader: {e}"),
        Err(_) => Outcome::Open,
    };
    println!(
        "{flood:?}: {} KiB written ({written}) in {:?}, connection {outcome:?}",
        bytes.len() >> 10,
        start.elapsed()
    );
    outcome
}

async fn floods(id: u8, driver: Driver) {
    let mesh = Mesh::start(id, MESH, &NODES, &NodeOpts::new(driver));
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    normal_clients_work(&mesh, &ca, 1).await;
    let b = mesh.node("node-b");
    let base = b.rss_kib();
    let peak = RssPeak::start(b.pid());
    // The reference's HTTP/2 stack (h2, as in ztunnel) answers PINGs and SETTINGS at line rate
    // and pushes back through TCP when we stop reading; it does not close for them. Tiny DATA
    // frames close the connection only when more of them pile up than the relay drains.
    for flood in [Flood::Ping, Flood::Settings, Flood::TinyData] {
        run_flood(&mesh, &ca, flood).await;
    }
    // These end the connection with GOAWAY(ENHANCE_YOUR_CALM): more than 100 empty DATA
    // frames, pending streams reset by the peer (CVE-2023-44487), a header block in too many
    // CONTINUATION frames (CVE-2024-27316), and more refused streams than allowed.
    for flood in [
        Flood::EmptyData,
        Flood::RapidReset,
        Flood::Continuation,
        Flood::Streams,
    ] {
        let outcome = run_flood(&mesh, &ca, flood).await;
        assert!(
            outcome == Outcome::GoAway(frames::ENHANCE_YOUR_CALM) || outcome == Outcome::Closed,
            "{flood:?}: the node kept the connection ({outcome:?})"
        );
    }
    let peak = peak.finish();
    let after = b.rss_kib();
    println!(
        "node-b RSS: {} MiB before, peak {} MiB, {} MiB after",
        base / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(
        peak.saturating_sub(base) < 100 * MIB,
        "RSS grew by {} MiB under floods",
        (peak - base) / MIB
    );
    assert!(common::running(b), "node-b died");
    normal_clients_work(&mesh, &ca, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_io_uring() {
    floods(60, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_epoll() {
    floods(61, Driver::Epoll).await;
}

// ---- 5. Peers that stall in the handshake ----

/// The first flight of a TLS client, as bytes.
fn client_hello(ca: &DevCa) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let mut conn = rustls::ClientConnection::new(client_tls(ca), name).expect("client connection");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("ClientHello");
    out
}

/// Sends `bytes` (or nothing), then waits for the node to close; returns how long it took.
async fn stall(to: SocketAddr, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "{to}: a stalled handshake was not closed in 8 s"
    );
    start.elapsed()
}

async fn handshake_stalls(id: u8, driver: Driver) {
    let opts = NodeOpts::new(driver).arg("--handshake-timeout").arg("1s");
    let mesh = Mesh::start(id, MESH, &NODES, &opts);
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    let (a, b) = (mesh.node("node-a"), mesh.node("node-b"));
    let (before_a, before_b) = (
        rejections(a, "handshake_timeout"),
        rejections(b, "handshake_timeout"),
    );
    let hbone = addr(&mesh, 2, 10, HBONE_PORT);
    let hello = client_hello(&ca);
    let half = &hello[..hello.len() / 2];
    let tls_then_silence = async {
        let start = Instant::now();
        let mut s = peer::tls_dial(hbone, client_tls(&ca)).await.expect("TLS");
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "a connection without the HTTP/2 preface was not closed in 8 s"
        );
        start.elapsed()
    };
    // Slowloris: the ClientHello one byte every 100 ms; the deadline covers the whole handshake.
    let trickle = async {
        let start = Instant::now();
        let s = TcpStream::connect(hbone).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        let bytes = hello.clone();
        let writer = tokio::spawn(async move {
            for byte in bytes {
                if w.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), r.read_to_end(&mut sink)).await;
        writer.abort();
        assert!(
            closed.is_ok(),
            "a trickled ClientHello kept the connection open for 8 s"
        );
        start.elapsed()
    };
    let (silent, half_hello, no_preface, trickled, socks) = tokio::join!(
        stall(hbone, &[]),
        stall(hbone, half),
        tls_then_silence,
        trickle,
        stall(a.socks5(), &[])
    );
    println!(
        "closed after: silent {silent:?}, half ClientHello {half_hello:?}, no h2 preface {no_preface:?}, \
         trickled ClientHello {trickled:?}, silent SOCKS5 {socks:?}"
    );
    assert_moved(
        b,
        "zmesh_rejections_total",
        &["reason=\"handshake_timeout\""],
        before_b + 3.0,
    );
    rejection_moved(a, "handshake_timeout", before_a);
    normal_clients_work(&mesh, &ca, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_stalls_io_uring() {
    handshake_stalls(62, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_stalls_epoll() {
    handshake_stalls(63, Driver::Epoll).await;
}

// ---- 6. Thousands of idle connections, and the per-shard limit ----

/// Raises this process's soft open-files limit to its hard limit; returns the soft limit.
fn raise_own_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|_| {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|l| l.0)
            .unwrap_or(1024)
    })
}

/// The soft "Max open files" of a process.
fn nofile_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Opens `n` TCP connections to `to`, at most 256 connecting at once (the listen backlog is
/// 4096 per shard; staying well under it keeps SYN retries out of the picture).
async fn open_idle(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(to)).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        match t.await.expect("connect task") {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => panic!("connection {} of {n}: {e}", conns.len()),
            Err(_) => panic!("connection {} of {n} timed out", conns.len()),
        }
    }
    conns
}

/// Total accepted connections over all shards.
fn accepted(node: &Node) -> f64 {
    metric_now(node, "zmesh_shard_accepted_connections_total", &[])
}

async fn idle_connections(id: u8, driver: Driver) {
    let _heavy = HEAVY.lock().await;
    let limit = raise_own_nofile();
    let n = 10_000usize.min(limit.saturating_sub(1_000) as usize);
    assert!(
        n >= 4_000,
        "open-files limit {limit} allows only {n} idle connections"
    );
    // Idle means not yet past the TLS handshake: keep them longer than the test takes.
    let opts = NodeOpts::new(driver).arg("--handshake-timeout").arg("300s");
    let mesh = Mesh::start(id, MESH, &NODES, &opts);
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    normal_clients_work(&mesh, &ca, 30).await;
    let b = mesh.node("node-b");
    let node_limit = nofile_of(b.pid());
    println!("open files: test process {limit}, node-b {node_limit}; opening {n} idle connections");
    assert!(
        node_limit > n as u64 + 100,
        "node-b's open-files limit {node_limit} is below {n} connections"
    );

    // First, established but idle HBONE connections (TLS and HTTP/2 done, no streams).
    let (base_rss, established) = (b.rss_kib(), 1_000usize);
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let dials: Vec<_> = (0..established)
        .map(|_| {
            let (sem, cfg, to) = (sem.clone(), client_tls(&ca), addr(&mesh, 2, 10, HBONE_PORT));
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                peer::hbone_dial(to, cfg).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut hbone = Vec::with_capacity(established);
    for d in dials {
        hbone.push(d.await.expect("dial task").expect("HBONE dial"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = b.rss_kib();
    let per = rss.saturating_sub(base_rss) as f64 / established as f64;
    println!(
        "node-b RSS {} MiB -> {} MiB: {per:.2} KiB per established idle HBONE connection",
        base_rss / MIB,
        rss / MIB
    );

    let (base_rss, base_accepted) = (rss, accepted(b));
    let start = Instant::now();
    let conns = open_idle(addr(&mesh, 2, 10, HBONE_PORT), n).await;
    let want = base_accepted + n as f64;
    let got = common::wait_metric(b, "zmesh_shard_accepted_connections_total", &[], want);
    assert!(
        got >= want,
        "node-b accepted {} of {n}",
        got - base_accepted
    );
    println!("{n} connections open and accepted in {:?}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = b.rss_kib();
    let growth = rss.saturating_sub(base_rss);
    println!(
        "node-b RSS {} MiB -> {} MiB: {:.2} KiB per idle TCP connection (before TLS)",
        base_rss / MIB,
        rss / MIB,
        growth as f64 / n as f64
    );
    assert!(
        growth < 200 * MIB,
        "{n} idle connections cost {} MiB",
        growth / MIB
    );
    assert!(common::running(b));
    // New clients still get through while they are open.
    normal_clients_work(&mesh, &ca, 40).await;
    drop(conns);
    drop(hbone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_io_uring() {
    idle_connections(64, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_epoll() {
    idle_connections(65, Driver::Epoll).await;
}

/// How many of `conns` the peer has closed (a read sees EOF or an error within `wait`).
async fn closed_count(conns: &mut [TcpStream], wait: Duration) -> usize {
    let reads = conns.iter_mut().map(|s| async move {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .filter(|c| *c)
        .count()
}

async fn connection_limit(id: u8, driver: Driver) {
    let _heavy = HEAVY.lock().await;
    raise_own_nofile();
    // 2000 slots per shard; an inbound connection takes two (itself and its upstream).
    let opts = NodeOpts::new(driver)
        .arg("--handshake-timeout")
        .arg("300s")
        .arg("--max-connections-per-shard")
        .arg("2000");
    let mesh = Mesh::start(id, MESH, &NODES, &opts);
    let _echo = echo_server(addr(&mesh, 2, 10, 8080)).await;
    let ca = peer::mesh_ca(&mesh);
    let b = mesh.node("node-b");
    let before = rejections(b, "over_limit");
    let n = 3_000;
    let mut conns = open_idle(addr(&mesh, 2, 10, HBONE_PORT), n).await;
    let closed = closed_count(&mut conns, Duration::from_secs(2)).await;
    let refused = rejection_moved(b, "over_limit", before + 900.0) - before;
    println!(
        "{n} connections against 2 shards x 1000: {closed} closed by node-b, over_limit +{refused}"
    );
    assert!(
        closed >= 900,
        "only {closed} of {n} connections were refused"
    );
    // While the shards are full, a new connection is refused too…
    assert!(
        peer::hbone_dial(addr(&mesh, 2, 10, HBONE_PORT), client_tls(&ca))
            .await
            .is_err(),
        "a full node accepted another connection"
    );
    // …and once the idle ones leave, service is back.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_now(b, "zmesh_shard_connections", &[]) > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(common::running(b));
    normal_clients_work(&mesh, &ca, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_io_uring() {
    connection_limit(66, Driver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_epoll() {
    connection_limit(67, Driver::Epoll).await;
}
