//! The three systems compared in every scenario, and how a client reaches the server through
//! each of them:
//!
//! - direct: client → server;
//! - relay: client → plain TCP relay (a `zmesh-perf relay` child process) → server;
//! - zmesh: client → SOCKS5 → node A → HBONE (mTLS + HTTP/2) → node B → server.
//!
//! The client always binds 127.0.1.10 (node A's client workload), the server always listens on
//! 127.0.2.10:8080 (node B's server workload).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::procfs::{Proc, first_line, log_file};
use crate::server::Mode;

pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10));
pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 10)), 8080);
/// Outside both nodes' ranges, so the relay never clashes with a node listener.
pub const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1)), 15090);

/// Which path the bytes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Direct,
    Relay,
    Zmesh,
}

impl System {
    pub const ALL: [System; 3] = [System::Direct, System::Relay, System::Zmesh];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Relay => "relay",
            System::Zmesh => "zmesh",
        }
    }
}

/// Where a client connects for one system: one half of an endpoint pair (the server half is
/// the address the server listens on). Scenarios only ever see a `Target`, so another
/// topology (network namespaces, other proxies) plugs in by building different ones.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The address the client's TCP connection goes to.
    pub addr: SocketAddr,
    /// When set, a SOCKS5 CONNECT to this destination is done first.
    pub socks5: Option<SocketAddr>,
    /// The client's source address (the client workload's IP), if it must be fixed.
    pub bind: Option<IpAddr>,
}

impl Target {
    pub fn of(system: System) -> Target {
        match system {
            System::Direct => Target::plain(SERVER),
            System::Relay => Target::plain(RELAY),
            System::Zmesh => Target {
                addr: crate::zmesh::SOCKS5_A,
                socks5: Some(SERVER),
                bind: Some(CLIENT_IP),
            },
        }
    }
}

impl Target {
    /// A plain TCP connection to `addr` from the client workload's address.
    pub fn plain(addr: SocketAddr) -> Target {
        Target {
            addr,
            socks5: None,
            bind: Some(CLIENT_IP),
        }
    }
}

/// Opens a connection to the server through `t` and sends the mode byte.
pub async fn connect(t: Target, mode: Mode) -> io::Result<TcpStream> {
    let mut s = connect_raw(t).await?;
    s.write_all(&[mode.byte()]).await?;
    Ok(s)
}

/// Opens a connection to the server through `t`, ready for the application's first byte.
pub async fn connect_raw(t: Target) -> io::Result<TcpStream> {
    let sock = if t.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = t.bind {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let mut s = sock.connect(t.addr).await?;
    s.set_nodelay(true)?;
    if let Some(dst) = t.socks5 {
        socks5_connect(&mut s, dst).await?;
    }
    Ok(s)
}

/// SOCKS5 without authentication: greeting, then CONNECT to an IPv4 address.
async fn socks5_connect(s: &mut TcpStream, dst: SocketAddr) -> io::Result<()> {
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SOCKS5 target must be IPv4",
        ));
    };
    s.write_all(&[5, 1, 0]).await?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet).await?;
    if greet != [5, 0] {
        return Err(io::Error::other(format!(
            "SOCKS5 greeting refused: {greet:?}"
        )));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&dst.ip().octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(io::Error::other(format!(
            "SOCKS5 CONNECT to {dst} failed with reply code {}",
            reply[1]
        )));
    }
    Ok(())
}

/// Starts `zmesh-perf relay` as a child process and waits until it listens.
pub fn spawn_relay(threads: u32, log_dir: &std::path::Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let log = log_dir.join("relay.log");
    let (_, err) = log_file(&log)?;
    let mut child = Command::new(&exe)
        .args([
            "relay",
            "--listen",
            &RELAY.to_string(),
            "--upstream",
            &SERVER.to_string(),
        ])
        .args(["--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} relay", exe.display()))?;
    let out = child.stdout.take().context("relay stdout")?;
    let mut proc = Proc {
        name: "relay".into(),
        child,
        log,
    };
    let line = first_line(out)?;
    proc.check_alive()?;
    anyhow::ensure!(
        line.starts_with("listening"),
        "relay did not start: {line:?}\n{}",
        proc.log_tail(10)
    );
    Ok(proc)
}
