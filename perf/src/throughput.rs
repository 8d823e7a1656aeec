//! Throughput: every connection writes as fast as it can to the sink; the bytes the sink
//! received during the measured window, over the window's length, are the result
//! (receiver-side, like iperf3). One tokio task per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::procfs::{CpuSnapshot, CpuUsage};
use crate::server::{Mode, ServerStats};
use crate::systems::{Target, connect};

/// Write size of the load generator (iperf3's default block for TCP is 128 KiB).
const WRITE_BLOCK: usize = 128 << 10;

/// One throughput run's measurement.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub bytes: u64,
    pub cpu: CpuUsage,
}

/// Runs `conns` connections through `target`: warm-up, then the measured window.
pub fn run(
    rt: &Runtime,
    target: Target,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    server: &Arc<ServerStats>,
    pids: &[u32],
) -> anyhow::Result<Measured> {
    let streams = rt.block_on(async {
        let mut v = Vec::with_capacity(conns);
        for i in 0..conns {
            let s = connect(target, Mode::Sink)
                .await
                .map_err(|e| anyhow::anyhow!("connection {i}: {e}"))?;
            v.push(s);
        }
        anyhow::Ok(v)
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let writers: Vec<_> = streams
        .into_iter()
        .map(|s| rt.spawn(write_until_stopped(s, stop_rx.clone())))
        .collect();

    std::thread::sleep(warmup);
    let before = (server.sink_bytes(), CpuSnapshot::take(pids)?);
    std::thread::sleep(duration);
    let after = (server.sink_bytes(), CpuSnapshot::take(pids)?);
    let _ = stop_tx.send(true);

    let mut failure = None;
    for (i, w) in writers.into_iter().enumerate() {
        match rt.block_on(w) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(format!("connection {i}: write failed: {e}"))),
            Err(e) => failure = failure.or(Some(format!("connection {i}: task failed: {e}"))),
        }
    }
    if let Some(f) = failure {
        anyhow::bail!(f);
    }
    let bytes = after.0 - before.0;
    anyhow::ensure!(
        bytes > 0,
        "the server received nothing during the measured window"
    );
    Ok(Measured {
        bytes,
        cpu: CpuUsage::between(&before.1, &after.1),
    })
}

/// Writes until told to stop, then drops the connection (a FIN: we never read, so there is
/// no unread data to turn the close into a reset).
async fn write_until_stopped(
    mut s: tokio::net::TcpStream,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let buf = vec![0x5au8; WRITE_BLOCK];
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = s.write(&buf) => {
                if r? == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
            }
        }
    }
}
