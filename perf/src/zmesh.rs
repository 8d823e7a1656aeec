//! Starting the two zmesh-node processes of the loopback topology: node A serves the client
//! workload (127.0.1.10) and listens on 127.0.1.1; node B serves the server workload
//! (127.0.2.10) and listens on 127.0.2.1. They share a development CA in a temp dir.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::Settings;
use crate::procfs::{Proc, log_file};

/// The local config both nodes read.
const CONFIG: &str = "\
workloads:
- uid: cluster1//v1/Pod/bench/client
  name: client
  namespace: bench
  serviceAccount: client
  workloadIps: [\"127.0.1.10\"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/bench/server
  name: server
  namespace: bench
  serviceAccount: server
  workloadIps: [\"127.0.2.10\"]
  protocol: HBONE
  node: node-b
";

/// How long a node may take to report ready (it mints certificates at start-up).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Node A's SOCKS5 listener, the client's way into the mesh.
pub const SOCKS5_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)), 15080);

/// The running nodes; killed on drop, the temp dir (config, CA, logs) removed with them.
pub struct Nodes {
    pub procs: Vec<Proc>,
    /// The IO driver node A reports in its config dump.
    pub driver: String,
    pub dir: tempfile::TempDir,
}

impl Nodes {
    pub fn start(s: &Settings) -> anyhow::Result<Nodes> {
        let dir = tempfile::Builder::new().prefix("zmesh-perf-").tempdir()?;
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, CONFIG)?;
        let mut procs = Vec::new();
        for (name, ip) in [
            ("node-a", Ipv4Addr::new(127, 0, 1, 1)),
            ("node-b", Ipv4Addr::new(127, 0, 2, 1)),
        ] {
            procs.push(spawn(s, dir.path(), name, ip)?);
        }
        for (p, ip) in procs
            .iter_mut()
            .zip([Ipv4Addr::new(127, 0, 1, 1), Ipv4Addr::new(127, 0, 2, 1)])
        {
            wait_ready(p, SocketAddr::new(ip.into(), 15021))?;
        }
        let driver = driver_of(SocketAddr::new(Ipv4Addr::new(127, 0, 1, 1).into(), 15000))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        Ok(Nodes { procs, driver, dir })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }
}

fn spawn(s: &Settings, dir: &std::path::Path, name: &str, ip: Ipv4Addr) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let (out, err) = log_file(&log)?;
    let mut cmd = Command::new(&s.node_bin);
    cmd.arg("--config").arg(dir.join("mesh.yaml"));
    cmd.args(["--node-name", name]);
    cmd.arg("--dev-ca").arg(dir.join("ca"));
    cmd.args(["--shards", &s.shards.to_string()]);
    if let Some(d) = &s.driver {
        cmd.args(["--driver", d]);
    }
    for (flag, port) in [
        ("--outbound-addr", 15001),
        ("--socks5-addr", 15080),
        ("--admin-addr", 15000),
        ("--metrics-addr", 15020),
        ("--readiness-addr", 15021),
    ] {
        cmd.arg(flag).arg(format!("{ip}:{port}"));
    }
    cmd.args(&s.node_args);
    // Plain log lines, so WARN and ERROR can be counted.
    cmd.env("NO_COLOR", "1");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} as {name}", s.node_bin.display()))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

fn wait_ready(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        p.check_alive()
            .context("zmesh-node exited during start-up")?;
        if let Ok((200, _)) = http_get(addr, "/healthz/ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} not ready on {addr} after {READY_TIMEOUT:?}; last log lines:\n{}",
                p.name,
                p.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn driver_of(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http_get(admin, "/config_dump")?;
    anyhow::ensure!(status == 200, "config_dump status {status}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["driver"]
        .as_str()
        .context("no driver in config_dump")?
        .to_string())
}

/// A tiny blocking HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
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

/// Counts of WARN and ERROR lines in a node's log, and the first few of them.
pub fn log_problems(p: &Proc) -> (usize, usize, Vec<String>) {
    let text = p.log_text();
    let mut warn = 0;
    let mut error = 0;
    let mut first = Vec::new();
    for line in text.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or("");
        let is_warn = level.contains("WARN");
        let is_error = level.contains("ERROR");
        warn += usize::from(is_warn);
        error += usize::from(is_error);
        if (is_warn || is_error) && first.len() < 5 {
            first.push(line.to_string());
        }
    }
    (warn, error, first)
}
