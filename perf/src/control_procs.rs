//! The processes of `zmesh-perf control`: one `zmesh-control` serving a config directory and
//! two `zmesh-node`s (node-a, node-b) taking config and certificates from it, on loopback;
//! reading their xDS counters; and the data-path probe (SOCKS5 through node-a).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::control_gen::{PROBE_PORT, Shape};
use crate::procfs::{Proc, log_file};
use crate::zmesh::http_get;

/// The Address (workloads and services) and Authorization type URLs of ambient's xDS.
pub const ADDRESS_URL: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHZ_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// How long start-up may take at most (10,000 pods on a debug build included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the binaries are and how the processes of one run are laid out.
pub struct Layout {
    pub bin_dir: PathBuf,
    pub dir: PathBuf,
    pub shape: Shape,
}

impl Layout {
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("control-data")
    }

    fn control_addr(&self) -> SocketAddr {
        SocketAddr::new(self.shape.control_ip().into(), 15012)
    }

    /// Starts the controller; returns it once it accepts connections (it loads and translates
    /// the whole directory before it listens) and how long that took since spawn.
    pub fn start_control(&self) -> anyhow::Result<(Proc, Instant, Duration)> {
        let log = self.dir.join("zmesh-control.log");
        let (out, err) = log_file(&log)?;
        let bin = self.bin_dir.join("zmesh-control");
        let spawned = Instant::now();
        let child = Command::new(&bin)
            .arg("--config-dir")
            .arg(self.config_dir())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(self.control_addr().to_string())
            .args(["--log", "info"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut p = Proc {
            name: "zmesh-control".into(),
            child,
            log,
        };
        let addr = self.control_addr();
        loop {
            p.check_alive()
                .context("zmesh-control exited during start-up")?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok((p, spawned, spawned.elapsed()));
            }
            anyhow::ensure!(
                spawned.elapsed() < START_TIMEOUT,
                "zmesh-control not listening on {addr} after {START_TIMEOUT:?}; log:\n{}",
                p.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts node-a and node-b against the controller (not waiting for readiness).
    pub fn start_nodes(&self) -> anyhow::Result<Vec<Proc>> {
        let mut procs = Vec::new();
        for (i, name) in [(1u8, "node-a"), (2, "node-b")] {
            let token = self.node_token(name)?;
            procs.push(self.spawn_node(name, self.shape.node_ip(i).into(), &token)?);
        }
        Ok(procs)
    }

    fn node_token(&self, node: &str) -> anyhow::Result<PathBuf> {
        let out = Command::new(self.bin_dir.join("zmesh-control"))
            .arg("node-token")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg(node)
            .output()
            .context("running zmesh-control node-token")?;
        anyhow::ensure!(
            out.status.success(),
            "zmesh-control node-token {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }

    fn spawn_node(&self, name: &str, ip: IpAddr, token: &Path) -> anyhow::Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let (out, err) = log_file(&log)?;
        let bin = self.bin_dir.join("zmesh-node");
        let mut cmd = Command::new(&bin);
        cmd.args(["--node-name", name])
            .arg("--xds-address")
            .arg(format!("https://{}", self.control_addr()))
            .arg("--xds-root-cert")
            .arg(self.data_dir().join("root-cert.pem"))
            .arg("--token-file")
            .arg(token)
            .args(["--shards", "1", "--no-pin", "--log", "info"]);
        for (flag, port) in [
            ("--outbound-addr", 15001),
            ("--socks5-addr", 15080),
            ("--admin-addr", 15000),
            ("--metrics-addr", 15020),
            ("--readiness-addr", 15021),
        ] {
            cmd.arg(flag).arg(format!("{ip}:{port}"));
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} as {name}", bin.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn socks5(&self) -> SocketAddr {
        SocketAddr::new(self.shape.node_ip(1).into(), 15080)
    }

    pub fn metrics_addr(&self, node: u8) -> SocketAddr {
        SocketAddr::new(self.shape.node_ip(node).into(), 15020)
    }

    pub fn readiness_addr(&self, node: u8) -> SocketAddr {
        SocketAddr::new(self.shape.node_ip(node).into(), 15021)
    }
}

/// Polls every 5 ms until both nodes report ready; an error if a process exits or
/// START_TIMEOUT passes.
pub fn wait_nodes_ready(layout: &Layout, procs: &mut [Proc]) -> anyhow::Result<()> {
    let start = Instant::now();
    for (i, p) in (1u8..).zip(procs.iter_mut()) {
        loop {
            p.check_alive().context("node exited during start-up")?;
            if let Ok((200, _)) = http_get(layout.readiness_addr(i), "/healthz/ready") {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < START_TIMEOUT,
                "{} not ready after {START_TIMEOUT:?}; log:\n{}",
                p.name,
                p.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// A node's xDS receive counters for the Address and Authorization types and all types.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct XdsCounters {
    pub address_messages: u64,
    pub address_bytes: u64,
    pub authorization_messages: u64,
    pub authorization_bytes: u64,
    pub all_messages: u64,
    pub all_bytes: u64,
}

impl XdsCounters {
    pub fn read(addr: SocketAddr) -> anyhow::Result<XdsCounters> {
        let (status, body) =
            http_get(addr, "/metrics").with_context(|| format!("GET http://{addr}/metrics"))?;
        anyhow::ensure!(status == 200, "GET http://{addr}/metrics: status {status}");
        Ok(XdsCounters::parse(&body))
    }

    fn parse(text: &str) -> XdsCounters {
        let url = |u: &str| format!("url=\"{u}\"");
        let (a, z) = (url(ADDRESS_URL), url(AUTHZ_URL));
        XdsCounters {
            address_messages: metric(text, "istio_xds_message_total", Some(&a)),
            address_bytes: metric(text, "istio_xds_message_bytes_total", Some(&a)),
            authorization_messages: metric(text, "istio_xds_message_total", Some(&z)),
            authorization_bytes: metric(text, "istio_xds_message_bytes_total", Some(&z)),
            all_messages: metric(text, "istio_xds_message_total", None),
            all_bytes: metric(text, "istio_xds_message_bytes_total", None),
        }
    }

    /// What arrived between `before` and `self`.
    pub fn since(&self, before: &XdsCounters) -> XdsCounters {
        XdsCounters {
            address_messages: self
                .address_messages
                .saturating_sub(before.address_messages),
            address_bytes: self.address_bytes.saturating_sub(before.address_bytes),
            authorization_messages: self
                .authorization_messages
                .saturating_sub(before.authorization_messages),
            authorization_bytes: self
                .authorization_bytes
                .saturating_sub(before.authorization_bytes),
            all_messages: self.all_messages.saturating_sub(before.all_messages),
            all_bytes: self.all_bytes.saturating_sub(before.all_bytes),
        }
    }
}

/// Sum of the samples of counter `name` (optionally only those with `label`).
fn metric(text: &str, name: &str, label: Option<&str>) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_none_or(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until both nodes' counters stop moving (unchanged for `quiet`): the initial push is
/// done. Returns the counters of node-a and node-b, and when they were last seen changing.
pub fn settle(layout: &Layout, quiet: Duration) -> anyhow::Result<([XdsCounters; 2], Instant)> {
    let start = Instant::now();
    let read = || -> anyhow::Result<[XdsCounters; 2]> {
        Ok([
            XdsCounters::read(layout.metrics_addr(1))?,
            XdsCounters::read(layout.metrics_addr(2))?,
        ])
    };
    let mut last = read()?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = read()?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet && last.iter().all(|c| c.address_messages > 0) {
            return Ok((last, since));
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "xDS counters still moving after {START_TIMEOUT:?}"
        );
    }
}

/// Accept-and-hold servers standing in for the probe server pods (a connect through the mesh
/// succeeds only if something listens behind the destination node).
pub async fn probe_servers(shape: &Shape) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut out = Vec::new();
    for ip in shape.probe_servers() {
        let addr = SocketAddr::new(ip.into(), PROBE_PORT);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding probe server {addr}"))?;
        out.push(tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    Ok(out)
}

/// What a probe connection saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// SOCKS5 success and a byte echoed back.
    Served,
    /// A SOCKS5 failure reply (a policy denial is one), or the tunnel closed before the echo.
    Refused,
}

/// The probe client's connects through node-a to both probe servers (node-a's and node-b's),
/// concurrently.
pub async fn probe_both(layout: &Layout) -> anyhow::Result<[Probe; 2]> {
    let src: IpAddr = layout.shape.probe_client().into();
    let [a, b] = layout
        .shape
        .probe_servers()
        .map(|ip| SocketAddr::new(ip.into(), PROBE_PORT));
    let socks = layout.socks5();
    let (x, y) = tokio::join!(probe(socks, src, a), probe(socks, src, b));
    Ok([x?, y?])
}

async fn probe(proxy: SocketAddr, src: IpAddr, dst: SocketAddr) -> anyhow::Result<Probe> {
    tokio::time::timeout(Duration::from_secs(5), probe_inner(proxy, src, dst))
        .await
        .with_context(|| format!("probe {src} → {dst}: no answer in 5s"))?
}

async fn probe_inner(proxy: SocketAddr, src: IpAddr, dst: SocketAddr) -> anyhow::Result<Probe> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = sock
        .connect(proxy)
        .await
        .with_context(|| format!("connecting to SOCKS5 {proxy}"))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0]).await?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).await?;
    anyhow::ensure!(greet == [5, 0], "SOCKS5 greeting reply {greet:?}");
    let IpAddr::V4(ip) = dst.ip() else {
        anyhow::bail!("probe destinations are IPv4");
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    if s.read_exact(&mut reply).await.is_err() || reply[1] != 0 {
        return Ok(Probe::Refused);
    }
    let mut one = [0u8; 1];
    if s.write_all(b"p").await.is_err() || s.read_exact(&mut one).await.is_err() {
        return Ok(Probe::Refused);
    }
    Ok(Probe::Served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_metrics_text() {
        let text = format!(
            "# HELP istio_xds_message_total xDS responses\n\
             istio_xds_message_total{{url=\"{ADDRESS_URL}\"}} 3\n\
             istio_xds_message_total{{url=\"{AUTHZ_URL}\"}} 2\n\
             istio_xds_message_bytes_total{{url=\"{ADDRESS_URL}\"}} 123456\n\
             istio_xds_message_bytes_total{{url=\"{AUTHZ_URL}\"}} 789\n\
             istio_xds_message_totally_other 99\n"
        );
        let c = XdsCounters::parse(&text);
        assert_eq!((c.address_messages, c.address_bytes), (3, 123_456));
        assert_eq!((c.authorization_messages, c.authorization_bytes), (2, 789));
        assert_eq!((c.all_messages, c.all_bytes), (5, 124_245));
        let d = c.since(&XdsCounters {
            address_bytes: 123_000,
            ..c
        });
        assert_eq!((d.address_bytes, d.all_messages), (456, 0));
    }
}
