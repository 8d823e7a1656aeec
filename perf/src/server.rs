//! The server end of every scenario, in-process: one listener whose connections announce their
//! mode in their first byte, so throughput and latency runs share one address (the server
//! workload's 127.0.2.10:8080) without restarting anything between runs.
//!
//! - [`Mode::Sink`]: read and discard, counting bytes received (receiver-side throughput, as
//!   iperf3 reports it).
//! - [`Mode::Echo`]: write back every byte read.
//! - anything else: HTTP/2 (the connection preface) or HTTP/1.1, answered by [`crate::http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read size of the sink: large reads keep the server's syscall cost small next to the
/// proxies' (iperf3 uses 128 KiB).
const SINK_READ: usize = 256 << 10;
/// Read size of the echo server: latency messages are small, but a burst after a stall may
/// bring many at once.
const ECHO_READ: usize = 64 << 10;

/// What a connection wants from the server, sent as its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sink,
    Echo,
}

impl Mode {
    pub fn byte(self) -> u8 {
        match self {
            Mode::Sink => b'S',
            Mode::Echo => b'E',
        }
    }
}

/// Counters shared with the scenario runner.
#[derive(Default, Debug)]
pub struct ServerStats {
    /// Bytes received by sink connections (the mode byte excluded).
    pub sink_bytes: AtomicU64,
    /// Connections accepted and not yet closed.
    pub open: AtomicUsize,
}

impl ServerStats {
    pub fn sink_bytes(&self) -> u64 {
        self.sink_bytes.load(Ordering::Relaxed)
    }

    /// Waits until every connection has closed, so one run's tail does not spill into the
    /// next. False on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.open.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Binds `addr` and serves it on the current runtime until the runtime stops.
pub async fn start(addr: SocketAddr) -> anyhow::Result<Arc<ServerStats>> {
    Ok(start_at(addr).await?.0)
}

/// Like [`start`], and returns the bound address (`addr` may have port 0).
pub async fn start_at(addr: SocketAddr) -> anyhow::Result<(Arc<ServerStats>, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the server on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let stats = s.clone();
            stats.open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // A reset or early close is the client's business; the runner sees its side.
                let _ = serve(conn, &stats).await;
                stats.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok((stats, bound))
}

async fn serve(mut conn: TcpStream, stats: &ServerStats) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    // Peeked, not read: an HTTP connection's first bytes belong to its request.
    let mut first = [0u8; 3];
    let mut n = conn.peek(&mut first).await?;
    if n == 0 {
        return Ok(());
    }
    if first[0] == Mode::Sink.byte() || first[0] == Mode::Echo.byte() {
        conn.read_exact(&mut first[..1]).await?;
        return if first[0] == Mode::Sink.byte() {
            sink(conn, stats).await
        } else {
            echo(conn).await
        };
    }
    // "PRI" starts the HTTP/2 preface, "POST" an HTTP/1.1 request: wait for the third byte
    // (it comes in the same write, so this is at most a few short waits).
    for _ in 0..100 {
        if n >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        n = conn.peek(&mut first).await?;
    }
    if &first[..n] == b"PRI" {
        crate::http::serve_http2(conn).await
    } else {
        crate::http::serve_http1(conn).await
    }
}

async fn sink(mut conn: TcpStream, stats: &ServerStats) -> std::io::Result<()> {
    let mut buf = vec![0u8; SINK_READ];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stats.sink_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn echo(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; ECHO_READ];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return conn.shutdown().await;
        }
        conn.write_all(&buf[..n]).await?;
    }
}
