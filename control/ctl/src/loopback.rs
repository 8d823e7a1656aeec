//! `zmeshctl demo --loopback`: the demo without root: two `zmesh-node` processes on loopback
//! addresses with a static config, an HTTP service with a replica behind each node, and two
//! clients entering through SOCKS5 (no capture, no controller).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const CONFIG: &str = r#"# The demo mesh, in the shape of ztunnel's local config.
workloads:
- uid: demo//v1/Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["127.0.1.10"]
  protocol: HBONE
  node: node-a
- uid: demo//v1/Pod/demo/intruder
  name: intruder
  namespace: demo
  serviceAccount: intruder
  workloadIps: ["127.0.1.11"]
  protocol: HBONE
  node: node-a
- uid: demo//v1/Pod/demo/web-1
  name: web-1
  namespace: demo
  serviceAccount: web
  workloadIps: ["127.0.2.10"]
  protocol: HBONE
  node: node-b
  canonicalName: web
  services: {"demo/web.demo.svc.cluster.local": {80: 8080}}
- uid: demo//v1/Pod/demo/web-2
  name: web-2
  namespace: demo
  serviceAccount: web
  workloadIps: ["127.0.1.20"]
  protocol: HBONE
  node: node-a
  canonicalName: web
  services: {"demo/web.demo.svc.cluster.local": {80: 8080}}
services:
- name: web
  namespace: demo
  hostname: web.demo.svc.cluster.local
  vips: ["/127.0.100.1"]
  ports: {80: 8080}
# AuthorizationPolicy "web-allow-client": only the client's identity may reach the web pods.
policies:
- name: web-allow-client
  namespace: demo
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [{Exact: "cluster.local/ns/demo/sa/client"}]
"#;

const NODES: [(&str, &str); 2] = [("node-a", "127.0.1.1"), ("node-b", "127.0.2.1")];
const VIP: &str = "127.0.100.1:80";

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(node_bin: Option<PathBuf>, keep: bool) -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("the demo needs Linux (io_uring or epoll, loopback addresses 127.0.x.y)");
    }
    let bin = match node_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("zmesh-node"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p zmesh-node`",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, CONFIG)?;
    step(
        "1/5",
        &format!(
            "starting two node proxies ({} and {}) with a development CA",
            NODES[0].1, NODES[1].1
        ),
    );
    let nodes = Nodes(
        NODES
            .iter()
            .map(|(name, ip)| start_node(&bin, dir.path(), &config, name, ip))
            .collect::<anyhow::Result<_>>()?,
    );
    for (name, ip) in NODES {
        wait_ready(name, ip, dir.path())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        step("2/5", "web-1 (behind node-b) and web-2 (behind node-a) serve HTTP on :8080");
        for (name, ip) in [("web-1", "127.0.2.10"), ("web-2", "127.0.1.20")] {
            tokio::spawn(http_server(name, format!("{ip}:8080").parse()?));
        }
        step("3/5", "client → web.demo.svc.cluster.local (VIP 127.0.100.1:80) over HBONE mTLS");
        for _ in 0..4 {
            let reply = http_get_via_socks("127.0.1.10", VIP).await?;
            println!("      client got: {reply}");
        }
        step("4/5", "intruder (another identity) → same service: the AuthorizationPolicy denies it");
        match http_get_via_socks("127.0.1.11", VIP).await {
            Ok(r) => bail!("the intruder was let through: {r}"),
            Err(e) => println!("      intruder refused: {e}"),
        }
        step("5/5", "metrics from node-b (istio_tcp_*, reporter=destination)");
        let metrics = scrape("127.0.2.1:15020")?;
        for line in metrics.lines().filter(|l| {
            (l.starts_with("istio_tcp_connections_opened_total") || l.starts_with("istio_tcp_connections_failed_total"))
                && l.contains("reporter=\"destination\"")
                && !l.ends_with(" 0")
        }) {
            println!("      {}", crate::metrics_line::shorten(line, SHOWN_LABELS));
        }
        if keep {
            println!("\nThe mesh keeps running (admin: http://127.0.1.1:15000/config_dump). Ctrl-C to stop.");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        anyhow::Ok(())
    })?;
    drop(nodes);
    println!("\nDone: node proxies stopped, temporary files removed.");
    Ok(())
}

fn step(n: &str, what: &str) {
    println!("[{n}] {what}");
}

fn start_node(
    bin: &Path,
    dir: &Path,
    config: &Path,
    name: &str,
    ip: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(bin)
        .args(["--config"])
        .arg(config)
        .args(["--node-name", name, "--dev-ca"])
        .arg(dir.join("ca"))
        .args([
            "--outbound-addr",
            &format!("{ip}:15001"),
            "--socks5-addr",
            &format!("{ip}:15080"),
        ])
        .args([
            "--admin-addr",
            &format!("{ip}:15000"),
            "--metrics-addr",
            &format!("{ip}:15020"),
        ])
        .args(["--readiness-addr", &format!("{ip}:15021"), "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn wait_ready(name: &str, ip: &str, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr: SocketAddr = format!("{ip}:15021").parse()?;
    while Instant::now() < deadline {
        if let Ok(body) = http_get_blocking(addr, "/healthz/ready")
            && body.split_whitespace().nth(1) == Some("200")
        {
            println!("      {name} ready");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    bail!("{name} did not become ready; its log:\n{log}")
}

fn http_get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn scrape(addr: &str) -> anyhow::Result<String> {
    Ok(http_get_blocking(addr.parse()?, "/metrics")?)
}

/// The labels a reader of the demo cares about.
const SHOWN_LABELS: &[&str] = &[
    "source_principal",
    "destination_workload",
    "destination_service=",
    "response_flags",
];

async fn http_server(name: &'static str, addr: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).await?;
    loop {
        let (mut s, peer) = l.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = format!("hello from {name} (you are {})\n", peer.ip());
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// An HTTP GET through node-a's SOCKS5 listener, from the given client address.
async fn http_get_via_socks(src: &str, dst: &str) -> anyhow::Result<String> {
    let src: IpAddr = src.parse()?;
    let dst: SocketAddr = dst.parse()?;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s: TcpStream = sock.connect("127.0.1.1:15080".parse()?).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).await?;
    let SocketAddr::V4(v4) = dst else {
        bail!("IPv4 only in the demo")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    match reply[1] {
        0 => {}
        2 => bail!(
            "connection not allowed by policy (SOCKS5 reply 2; the server answered HBONE 401)"
        ),
        code => bail!("SOCKS5 reply {code}"),
    }
    s.write_all(b"GET / HTTP/1.1\r\nhost: web.demo.svc.cluster.local\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out.lines().last().unwrap_or_default().to_string())
}
