//! Open-loop request/response over HTTP/1.1, HTTP/2, or a new connection per request (churn),
//! with latency measured from each request's *intended* send time (no coordinated omission).
//!
//! A pacer thread (sleep, then spin: precise to a few µs, where tokio's timer is not) hands
//! request numbers to the workers on their due time; the workers are tokio tasks:
//!
//! - HTTP/1.1: one task per connection, one request at a time; requests due while the
//!   connection is busy queue behind it, and that wait counts in their latency.
//! - HTTP/2: one task per connection, every request its own stream, as many in flight as due.
//! - churn: every request opens a connection through the target, sends `size` bytes to the
//!   echo server, reads them back and closes. Failures are counted, not fatal: at a high
//!   connection rate some failing is the result.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::http::{Http1Client, Http2Client};
use crate::latency::{LatencyStats, Schedule, new_histogram, sleep_until};
use crate::procfs::{CpuSnapshot, CpuUsage};
use crate::server::Mode;
use crate::systems::{Target, connect, connect_raw};

/// How long the workers may take, after the last request was due, to finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Churn: connections in flight beyond this are counted as failed instead of opened, so an
/// overloaded proxy cannot exhaust our file descriptors.
const MAX_CHURN_IN_FLIGHT: usize = 2000;

/// The kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Http1,
    Http2,
    Churn,
}

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub work: Work,
    /// Connections the requests go round-robin over (ignored for churn).
    pub conns: usize,
    pub rate: f64,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub stats: LatencyStats,
    /// Requests due in the measured window that failed (churn only; elsewhere a failure
    /// fails the run).
    pub errors: u64,
    pub cpu: CpuUsage,
}

/// What one worker gives back: latencies of the measured requests, and failures.
type Outcome = anyhow::Result<(Histogram<u64>, u64)>;

pub fn run(rt: &Runtime, target: Target, p: Params, pids: &[u32]) -> anyhow::Result<Measured> {
    let workers = if p.work == Work::Churn { 1 } else { p.conns };
    let sched = Schedule::new(p.rate, workers, p.warmup, p.duration);
    let mut txs = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for k in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        txs.push(tx);
        let h = match p.work {
            Work::Http1 => {
                let c = rt.block_on(async {
                    let s = connect_raw(target).await?;
                    anyhow::Ok(Http1Client::new(s, p.size))
                });
                let c = c.map_err(|e| anyhow::anyhow!("connection {k}: {e:#}"))?;
                rt.spawn(http1_worker(c, rx, sched))
            }
            Work::Http2 => {
                let c = rt.block_on(async {
                    let s = connect_raw(target).await?;
                    Http2Client::new(s, p.size).await
                });
                let c = c.map_err(|e| anyhow::anyhow!("connection {k}: {e}"))?;
                rt.spawn(http2_worker(c, rx, sched))
            }
            Work::Churn => rt.spawn(churn_worker(target, p.size, rx, sched)),
        };
        handles.push(h);
    }
    let pacer = std::thread::spawn(move || pace(txs, sched));

    sleep_until(sched.t0 + p.warmup);
    let before = CpuSnapshot::take(pids)?;
    sleep_until(sched.t0 + p.warmup + p.duration);
    let after = CpuSnapshot::take(pids)?;
    let lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;

    let mut hist = new_histogram();
    let mut errors = 0;
    let mut problems = Vec::new();
    for (k, h) in handles.into_iter().enumerate() {
        let r = rt.block_on(async { tokio::time::timeout(FINISH_TIMEOUT, h).await });
        match r {
            Ok(Ok(Ok((h, e)))) => {
                hist.add(&h)
                    .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
                errors += e;
            }
            Ok(Ok(Err(e))) => problems.push(format!("connection {k}: {e:#}")),
            Ok(Err(e)) => problems.push(format!("connection {k}: task failed: {e}")),
            Err(_) => problems.push(format!(
                "connection {k}: requests unanswered {FINISH_TIMEOUT:?} after the last was due"
            )),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of {workers} workers failed: {}",
            problems.len(),
            problems.join("; ")
        );
    }
    anyhow::ensure!(
        !hist.is_empty(),
        "no request of the measured window succeeded ({errors} failed)"
    );
    Ok(Measured {
        stats: LatencyStats::of(&hist, &lag),
        errors,
        cpu: CpuUsage::between(&before, &after),
    })
}

/// Hands request `j` to worker `j mod workers` at its due time; how late it was.
fn pace(txs: Vec<mpsc::UnboundedSender<u64>>, sched: Schedule) -> Histogram<u64> {
    let mut lag = new_histogram();
    for j in 0..sched.total {
        let due = sched.due(j);
        sleep_until(due);
        lag.saturating_record(Instant::now().saturating_duration_since(due).as_nanos() as u64);
        // A worker that has failed has dropped its receiver; its error is reported at the end.
        let _ = txs[(j % txs.len() as u64) as usize].send(j);
    }
    lag
}

fn record(h: &mut Histogram<u64>, sched: &Schedule, j: u64, done: Instant) {
    if j >= sched.first_measured {
        let ns = done.saturating_duration_since(sched.due(j)).as_nanos();
        h.saturating_record(ns.max(1) as u64);
    }
}

async fn http1_worker(
    mut c: Http1Client<tokio::net::TcpStream>,
    mut rx: mpsc::UnboundedReceiver<u64>,
    sched: Schedule,
) -> Outcome {
    let mut h = new_histogram();
    while let Some(j) = rx.recv().await {
        c.request()
            .await
            .map_err(|e| anyhow::anyhow!("request {j}: {e}"))?;
        record(&mut h, &sched, j, Instant::now());
    }
    Ok((h, 0))
}

async fn http2_worker(
    c: Http2Client,
    mut rx: mpsc::UnboundedReceiver<u64>,
    sched: Schedule,
) -> Outcome {
    let mut h = new_histogram();
    let mut set = JoinSet::new();
    let finish = |h: &mut Histogram<u64>, r: Result<(u64, std::io::Result<()>), _>| match r {
        Ok((j, Ok(()))) => {
            record(h, &sched, j, Instant::now());
            Ok(())
        }
        Ok((j, Err(e))) => Err(anyhow::anyhow!("request {j}: {e}")),
        Err(e) => Err(anyhow::anyhow!("request task: {e}")),
    };
    loop {
        tokio::select! {
            j = rx.recv() => {
                let Some(j) = j else { break };
                let c = c.clone();
                set.spawn(async move { (j, c.request().await) });
            }
            Some(r) = set.join_next(), if !set.is_empty() => finish(&mut h, r)?,
        }
    }
    while let Some(r) = set.join_next().await {
        finish(&mut h, r)?;
    }
    Ok((h, 0))
}

async fn churn_worker(
    target: Target,
    size: usize,
    mut rx: mpsc::UnboundedReceiver<u64>,
    sched: Schedule,
) -> Outcome {
    let mut h = new_histogram();
    let mut errors = 0u64;
    let mut set = JoinSet::new();
    let mut finish = |h: &mut Histogram<u64>, r: Result<(u64, std::io::Result<()>), _>| match r {
        Ok((j, Ok(()))) => record(h, &sched, j, Instant::now()),
        Ok((j, Err(_))) => errors += u64::from(j >= sched.first_measured),
        Err(_) => errors += 1,
    };
    loop {
        tokio::select! {
            j = rx.recv() => {
                let Some(j) = j else { break };
                if set.len() >= MAX_CHURN_IN_FLIGHT {
                    finish(&mut h, Ok((j, Err(std::io::ErrorKind::WouldBlock.into()))));
                    continue;
                }
                set.spawn(async move { (j, one_connection(target, size).await) });
            }
            Some(r) = set.join_next(), if !set.is_empty() => finish(&mut h, r),
        }
    }
    while let Some(r) = set.join_next().await {
        finish(&mut h, r);
    }
    Ok((h, errors))
}

/// Connect, one echoed request, close.
async fn one_connection(target: Target, size: usize) -> std::io::Result<()> {
    let mut s = connect(target, Mode::Echo).await?;
    let req = vec![0x3cu8; size];
    s.write_all(&req).await?;
    let mut got = vec![0u8; size];
    s.read_exact(&mut got).await?;
    s.shutdown().await?;
    Ok(())
}
