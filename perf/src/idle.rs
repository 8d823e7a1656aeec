//! Idle connections: open N connections through the target, make one round trip on each (so
//! the proxy has set up both legs), then hold them and read the proxies' memory. The growth
//! of resident memory over the N connections, divided by N, is the memory per connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::procfs::memory;
use crate::server::{Mode, ServerStats};
use crate::systems::{Target, connect};

/// Time for the proxies to settle (buffers returned, timers armed) before memory is read.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Measured {
    pub connections: usize,
    /// Summed VmRSS of the proxy processes before opening and while holding, KiB; absent
    /// without proxy processes.
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    /// (held − before) / connections, KiB; absent without proxy processes.
    pub kib_per_connection: Option<f64>,
    /// Seconds it took to open and check all connections.
    pub open_seconds: f64,
}

pub fn run(
    rt: &Runtime,
    target: Target,
    n: usize,
    server: &ServerStats,
    pids: &[u32],
) -> anyhow::Result<Measured> {
    let proxied = !pids.is_empty();
    let before = rss(pids)?;
    let started = std::time::Instant::now();
    let conns = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let c = open_one(target)
                .await
                .map_err(|e| anyhow::anyhow!("idle connection {i} of {n}: {e}"))?;
            v.push(c);
        }
        anyhow::Ok(v)
    })?;
    let open_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let open = server.open.load(std::sync::atomic::Ordering::SeqCst);
    anyhow::ensure!(
        open >= n,
        "only {open} of {n} connections reached the server"
    );
    let held = rss(pids)?;
    drop(conns);
    Ok(Measured {
        connections: n,
        rss_before_kib: proxied.then_some(before),
        rss_held_kib: proxied.then_some(held),
        kib_per_connection: proxied.then(|| (held as f64 - before as f64) / n as f64),
        open_seconds,
    })
}

async fn open_one(target: Target) -> std::io::Result<tokio::net::TcpStream> {
    let mut s = connect(target, Mode::Echo).await?;
    s.write_all(b"?").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(s)
}

fn rss(pids: &[u32]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for &p in pids {
        sum += memory(p)?.vm_rss_kib;
    }
    Ok(sum)
}
