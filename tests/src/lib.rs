//! Harness for zmesh's end-to-end tests: real `zmesh-node` processes on loopback addresses,
//! with helpers for SOCKS5 clients, echo servers and metrics.
//!
//! Each test picks its own id `T` and uses addresses `127.T.N.x` (node N listens on
//! `127.T.N.1`; its workloads live at `127.T.N.10` and up), so tests run in parallel without
//! port clashes. Config YAML is written with `{T}` where the test id goes.
#![forbid(unsafe_code)]

pub mod control;
pub mod netns;
pub mod topo;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A binary of this workspace (`zmesh-node`, `zmesh-control`, …) built beside the test
/// executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first: cargo build --workspace --bins",
        bin.display()
    );
    bin
}

/// The `zmesh-node` binary.
pub fn node_bin() -> PathBuf {
    bin("zmesh-node")
}

/// Which IO driver the nodes use; tests run once per driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn flag(self) -> &'static str {
        match self {
            Driver::IoUring => "io-uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// A running mesh of node proxies sharing one config and one development CA.
pub struct Mesh {
    pub test_id: u8,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

/// One `zmesh-node` process.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub child: Child,
    pub log: PathBuf,
}

impl Node {
    pub fn socks5(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15080)
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15000)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15020)
    }

    pub fn readiness(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15021)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The /metrics text.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics_addr(), "/metrics").expect("scrape metrics");
        assert_eq!(status, 200, "metrics status");
        body
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`key="value"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Node {
    /// Starts one node proxy with its files in `dir`: from a static `config` with the shared
    /// development CA in `dir/ca`, or (no config) from whatever `opts.extra` points it at.
    pub fn spawn(
        dir: &Path,
        name: &str,
        ip: IpAddr,
        config: Option<&Path>,
        opts: &NodeOpts,
    ) -> Node {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(node_bin());
        if let Some(config) = config {
            cmd.arg("--config")
                .arg(config)
                .arg("--dev-ca")
                .arg(dir.join("ca"));
        }
        let child = cmd
            .arg("--node-name")
            .arg(name)
            .arg("--driver")
            .arg(opts.driver.flag())
            .arg("--shards")
            .arg(opts.shards.to_string())
            .arg("--no-pin")
            .arg("--outbound-addr")
            .arg(format!("{ip}:15001"))
            .arg("--socks5-addr")
            .arg(format!("{ip}:15080"))
            .arg("--admin-addr")
            .arg(format!("{ip}:15000"))
            .arg("--metrics-addr")
            .arg(format!("{ip}:15020"))
            .arg("--readiness-addr")
            .arg(format!("{ip}:15021"))
            .arg("--log")
            .arg("info,access=debug")
            .args(&opts.extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn zmesh-node");
        Node {
            name: name.to_string(),
            ip,
            child,
            log,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} log (last lines) ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Sums samples of an OpenMetrics/Prometheus text body.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Replaces `{T}` with the test id.
pub fn with_id(text: &str, id: u8) -> String {
    text.replace("{T}", &id.to_string())
}

/// Options for starting nodes.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    pub driver: Driver,
    pub shards: usize,
    pub extra: Vec<String>,
}

impl NodeOpts {
    pub fn new(driver: Driver) -> NodeOpts {
        NodeOpts {
            driver,
            shards: 2,
            extra: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> NodeOpts {
        self.extra.push(a.into());
        self
    }
}

impl Mesh {
    /// Writes the config (with `{T}` replaced) and starts `nodes` (node i+1 on 127.T.(i+1).1),
    /// waiting until each is ready.
    pub fn start(test_id: u8, yaml: &str, nodes: &[&str], opts: &NodeOpts) -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, with_id(yaml, test_id)).expect("write config");
        let mut mesh = Mesh {
            test_id,
            dir,
            nodes: Vec::new(),
        };
        for (i, name) in nodes.iter().enumerate() {
            let ip: IpAddr = format!("127.{test_id}.{}.1", i + 1)
                .parse()
                .expect("node ip");
            let node = Node::spawn(mesh.dir.path(), name, ip, Some(&config), opts);
            mesh.nodes.push(node);
        }
        for n in &mesh.nodes {
            wait_ready(n);
        }
        mesh
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    /// An IP in this test's range: `127.T.a.b`.
    pub fn ip(&self, a: u8, b: u8) -> IpAddr {
        format!("127.{}.{a}.{b}", self.test_id).parse().expect("ip")
    }

    /// The CA directory the nodes share (tests mint certificates from it).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }
}

pub(crate) fn wait_ready(n: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = http_get(n.readiness(), "/healthz/ready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} not ready in 20s; log:\n{}",
            n.name,
            n.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny blocking HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// SOCKS5 CONNECT through `proxy` from source address `src` to `dst`. Returns the stream
/// after a success reply, or the reply code as the error.
pub async fn socks5_connect(
    proxy: SocketAddr,
    src: IpAddr,
    dst: SocketAddr,
) -> Result<TcpStream, Socks5Failure> {
    let sock = if proxy.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Socks5Failure::Io)?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(Socks5Failure::Io)?;
    let mut s = sock.connect(proxy).await.map_err(Socks5Failure::Io)?;
    s.set_nodelay(true).map_err(Socks5Failure::Io)?;
    s.write_all(&[5, 1, 0]).await.map_err(Socks5Failure::Io)?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).await.map_err(Socks5Failure::Io)?;
    assert_eq!(greet, [5, 0], "socks5 greeting reply");
    let mut req = vec![5, 1, 0];
    match dst {
        SocketAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
    }
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await.map_err(Socks5Failure::Io)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.map_err(Socks5Failure::Io)?;
    if reply[1] != 0 {
        return Err(Socks5Failure::Reply(reply[1]));
    }
    Ok(s)
}

/// Why a SOCKS5 connect failed.
#[derive(Debug)]
pub enum Socks5Failure {
    Io(std::io::Error),
    Reply(u8),
}

/// An echo server: every accepted connection gets its bytes back, then a half-close.
pub async fn echo_server(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind echo {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can check content cheaply.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// Writes `total` pattern bytes then half-closes, while reading everything back and checking
/// it equals what was sent. Returns the bytes read.
pub async fn echo_roundtrip(stream: TcpStream, total: u64, seed: u64) -> u64 {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 256 << 10];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.expect("write");
            left -= n as u64;
        }
        w.shutdown().await.expect("half-close");
    });
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 256 << 10];
    let mut want = vec![0u8; 256 << 10];
    let mut got = 0u64;
    // The expected stream is generated in the same chunking as it was written, so keep a
    // carry-over of generated-but-unchecked bytes.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        while pending.len() < n {
            let chunk = ((total - got - pending.len() as u64).min(want.len() as u64)) as usize;
            assert!(chunk > 0, "received more bytes than were sent");
            p.fill(&mut want[..chunk]);
            pending.extend_from_slice(&want[..chunk]);
        }
        assert!(buf[..n] == pending[..n], "byte mismatch after {got} bytes");
        pending.drain(..n);
        got += n as u64;
    }
    writer.await.expect("writer task");
    got
}

/// Runs `f`, failing the test with `what` when it has not finished within `limit`: a hang
/// becomes a clear failure instead of a stuck test run. (Not a performance assertion: limits
/// are many times the expected duration.)
pub async fn within<F: std::future::Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

impl Node {
    /// Polls `metric(name, labels)` until `done` holds for it or `limit` passes; returns the
    /// last value (the caller asserts on it, so a miss shows the value seen).
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[&str],
        limit: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name, labels);
            if done(v) || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An echo server like [`echo_server`] that also counts the connections it accepted, so a
/// test can tell whether a refused connection reached the app at all.
pub async fn echo_server_counted(
    addr: SocketAddr,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind echo {addr}: {e}"));
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (task, accepted)
}

/// Largest piece [`write_pattern`] writes at once.
const PATTERN_CHUNK: usize = 256 << 10;

/// Writes the next `n` bytes of `p` (a multiple of 8 unless it is the last write, so that
/// the stream continues seamlessly across calls).
pub async fn write_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    p: &mut Pattern,
    n: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; PATTERN_CHUNK.min(n as usize)];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}

/// Reads until EOF, checking every byte against `Pattern::new(seed)`; returns the count.
/// Panics at the first wrong byte. (The pattern is the same whatever the write sizes, as
/// long as each write but the last is a multiple of 8 bytes.)
pub async fn read_pattern<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
) -> std::io::Result<u64> {
    // Small buffers: a thousand of these may run at once.
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 32 << 10];
    let mut want = vec![0u8; 32 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        while pending.len() < n {
            p.fill(&mut want);
            pending.extend_from_slice(&want);
        }
        assert!(buf[..n] == pending[..n], "byte mismatch after {got} bytes");
        pending.drain(..n);
        got += n as u64;
    }
}

/// Sends `total` pattern bytes with writes of at most `chunk` bytes (a multiple of 8), then
/// half-closes, while reading the echo back and checking it. Like [`echo_roundtrip`] but with
/// small buffers, for tests that run a thousand of these at once. Returns the bytes read.
pub async fn echo_roundtrip_small(stream: TcpStream, total: u64, seed: u64) -> u64 {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(seed);
        write_pattern(&mut w, &mut p, total).await.expect("write");
        w.shutdown().await.expect("half-close");
    });
    let got = read_pattern(&mut r, seed).await.expect("read");
    writer.await.expect("writer task");
    got
}

/// SOCKS5 CONNECT to a host name (address type 3), as `curl --socks5-hostname` sends it.
/// Returns the stream after a success reply, or the reply code as the error.
pub async fn socks5_connect_host(
    proxy: SocketAddr,
    src: IpAddr,
    host: &str,
    port: u16,
) -> Result<TcpStream, Socks5Failure> {
    let sock = if proxy.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Socks5Failure::Io)?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(Socks5Failure::Io)?;
    let mut s = sock.connect(proxy).await.map_err(Socks5Failure::Io)?;
    s.set_nodelay(true).map_err(Socks5Failure::Io)?;
    s.write_all(&[5, 1, 0]).await.map_err(Socks5Failure::Io)?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).await.map_err(Socks5Failure::Io)?;
    assert_eq!(greet, [5, 0], "socks5 greeting reply");
    let name = u8::try_from(host.len()).expect("host name under 256 bytes");
    let mut req = vec![5, 1, 0, 3, name];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.map_err(Socks5Failure::Io)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.map_err(Socks5Failure::Io)?;
    if reply[1] != 0 {
        return Err(Socks5Failure::Reply(reply[1]));
    }
    Ok(s)
}

/// A minimal HTTP/1.1 server standing in for an app in a pod: answers every request with
/// `200` and `body`, closes after one response, and counts the requests it served.
pub async fn http_server(
    addr: SocketAddr,
    body: &str,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind http {addr}: {e}"));
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let body = body.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let count = count.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (task, served)
}

/// What one `curl` run gave.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code (0 = a response came back; 97 = the SOCKS5 proxy refused; 56 = the
    /// connection was reset or closed; 28 = timeout).
    pub exit: i32,
    /// The HTTP status, 0 when there was no response.
    pub status: u16,
    pub body: String,
}

/// Runs the real `curl` from source address `src` to `url`, through the SOCKS5 proxy `socks`
/// when given (how a test sends an app's connection into a node proxy without capture).
pub async fn curl(socks: Option<SocketAddr>, src: IpAddr, url: &str) -> Curl {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--interface")
        .arg(src.to_string())
        .arg(url);
    if let Some(p) = socks {
        cmd.arg("--socks5").arg(p.to_string());
    }
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}
