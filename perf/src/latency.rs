//! Latency: fixed-size requests on a fixed schedule (open loop), echoed back by the server.
//!
//! Request `j` is due at `t0 + j / rate` and goes to connection `j mod C`. Its latency is
//! counted from that intended send time, not from when it was actually written, so a stall
//! in the proxy (or in the load generator) shows up in every request it delayed instead of
//! silently lowering the rate (coordinated omission). Samples go into an hdrhistogram.
//!
//! This runs on plain threads, not tokio: tokio's timer has 1 ms granularity, which would add
//! up to 1 ms to every sample measured from the intended time. One sender thread paces all
//! connections (sleep, then spin the last [`SPIN_BEFORE_SEND`]); one blocking reader thread per
//! connection timestamps the responses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

use crate::procfs::{CpuSnapshot, CpuUsage};
use crate::server::Mode;
use crate::systems::{Target, connect};

/// The sender sleeps until this long before a request is due, then spins: nanosleep wakes up
/// ~50 µs late (the default timer slack), which is as much as a loopback round trip.
const SPIN_BEFORE_SEND: Duration = Duration::from_micros(150);
/// A response missing this long after the reader's last progress counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the threads to start before the first request is due.
const START_DELAY: Duration = Duration::from_millis(50);
/// Largest latency the histograms hold (100 s, in ns); larger samples are clamped.
const MAX_NS: u64 = 100_000_000_000;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub conns: usize,
    pub rate: f64,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Percentiles of the requests due in the measured window, microseconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LatencyStats {
    pub requests: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// How late the sender itself was against the schedule (included in the latencies).
    pub sender_lag_p99_us: f64,
    pub sender_lag_max_us: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub stats: LatencyStats,
    pub cpu: CpuUsage,
}

/// The schedule shared by the sender and the readers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub t0: Instant,
    pub rate: f64,
    pub conns: usize,
    /// Requests in warm-up plus window.
    pub total: u64,
    /// First request due in the measured window.
    pub first_measured: u64,
}

impl Schedule {
    /// The schedule of a run starting shortly from now.
    pub fn new(rate: f64, conns: usize, warmup: Duration, duration: Duration) -> Schedule {
        Schedule {
            t0: Instant::now() + START_DELAY,
            rate,
            conns,
            total: ((warmup + duration).as_secs_f64() * rate).ceil() as u64,
            first_measured: (warmup.as_secs_f64() * rate).ceil() as u64,
        }
    }

    pub fn due(&self, j: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(j as f64 / self.rate)
    }

    /// Requests that go to connection `k`.
    fn count_for(&self, k: usize) -> u64 {
        let (k, c) = (k as u64, self.conns as u64);
        if k >= self.total {
            0
        } else {
            (self.total - k).div_ceil(c)
        }
    }
}

pub fn run(rt: &Runtime, target: Target, p: Params, pids: &[u32]) -> anyhow::Result<Measured> {
    let streams = connect_all(rt, target, p.conns)?;
    let sched = Schedule::new(p.rate, p.conns, p.warmup, p.duration);
    let mut readers = Vec::new();
    for (k, s) in streams.iter().enumerate() {
        let s = s.try_clone()?;
        readers.push(std::thread::spawn(move || {
            read_responses(s, k, sched, p.size)
        }));
    }
    let sender = std::thread::spawn(move || send_requests(streams, sched, p.size));

    sleep_until(sched.t0 + p.warmup);
    let before = CpuSnapshot::take(pids)?;
    sleep_until(sched.t0 + p.warmup + p.duration);
    let after = CpuSnapshot::take(pids)?;

    // Join everything before judging, so no thread outlives the run holding a connection.
    let lag = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    let mut hist = new_histogram();
    let mut problems = Vec::new();
    for (k, r) in readers.into_iter().enumerate() {
        match r
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        {
            Ok(h) => hist
                .add(&h)
                .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?,
            Err(e) => problems.push(format!("connection {k}: {e}")),
        }
    }
    let lag =
        lag.map_err(|e| anyhow::anyhow!("sender: {e:#}; readers: {}", problems.join("; ")))?;
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of {} connections failed: {}",
            problems.len(),
            p.conns,
            problems.join("; ")
        );
    }
    Ok(Measured {
        stats: LatencyStats::of(&hist, &lag),
        cpu: CpuUsage::between(&before, &after),
    })
}

impl LatencyStats {
    /// Percentiles of `hist` (latencies) and `lag` (sender lateness), both in ns.
    pub fn of(hist: &Histogram<u64>, lag: &Histogram<u64>) -> LatencyStats {
        let us = |ns: u64| ns as f64 / 1e3;
        LatencyStats {
            requests: hist.len(),
            p50_us: us(hist.value_at_quantile(0.50)),
            p90_us: us(hist.value_at_quantile(0.90)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            max_us: us(hist.max()),
            mean_us: hist.mean() / 1e3,
            sender_lag_p99_us: us(lag.value_at_quantile(0.99)),
            sender_lag_max_us: us(lag.max()),
        }
    }
}

fn connect_all(rt: &Runtime, target: Target, conns: usize) -> anyhow::Result<Vec<TcpStream>> {
    rt.block_on(async {
        let mut v = Vec::with_capacity(conns);
        for i in 0..conns {
            let s = connect(target, Mode::Echo)
                .await
                .map_err(|e| anyhow::anyhow!("connection {i}: {e}"))?;
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
            // A stalled proxy must not hang the sender once the socket buffers are full.
            s.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
            v.push(s);
        }
        anyhow::Ok(v)
    })
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are constants hdrhistogram accepts (low ≥ 1, high ≥ 2·low,
    // 3 significant digits).
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Writes every request at its due time. Returns how late it was against the schedule.
fn send_requests(
    mut streams: Vec<TcpStream>,
    sched: Schedule,
    size: usize,
) -> anyhow::Result<Histogram<u64>> {
    let req = vec![0xa5u8; size];
    let mut lag = new_histogram();
    for j in 0..sched.total {
        let due = sched.due(j);
        sleep_until(due);
        lag.saturating_record(
            Instant::now()
                .saturating_duration_since(due)
                .as_nanos()
                .max(1) as u64,
        );
        let k = (j % sched.conns as u64) as usize;
        streams[k]
            .write_all(&req)
            .map_err(|e| anyhow::anyhow!("connection {k}: write of request {j} failed: {e}"))?;
    }
    Ok(lag)
}

/// Reads connection `k`'s responses; request `k + m·C` is answered by its m-th response.
fn read_responses(
    mut s: TcpStream,
    k: usize,
    sched: Schedule,
    size: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let want = sched.count_for(k);
    let mut buf = vec![0u8; size.max(64 << 10)];
    let (mut done, mut partial) = (0u64, 0usize);
    while done < want {
        let n = match s.read(&mut buf) {
            Ok(0) => anyhow::bail!("closed after {done} of {want} responses"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                anyhow::bail!("{done} of {want} responses, then none for {RESPONSE_TIMEOUT:?}")
            }
            Err(e) => anyhow::bail!("read failed after {done} of {want} responses: {e}"),
        };
        let now = Instant::now();
        partial += n;
        while partial >= size && done < want {
            partial -= size;
            let j = k as u64 + done * sched.conns as u64;
            if j >= sched.first_measured {
                hist.saturating_record(
                    now.saturating_duration_since(sched.due(j))
                        .as_nanos()
                        .max(1) as u64,
                );
            }
            done += 1;
        }
    }
    Ok(hist)
}

/// Sleeps until `t` with sub-10 µs accuracy: nanosleep for most of the wait, then spin.
pub(crate) fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now + SPIN_BEFORE_SEND {
        std::thread::sleep(t - now - SPIN_BEFORE_SEND);
    }
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_splits_requests_round_robin() {
        let s = Schedule {
            t0: Instant::now(),
            rate: 1000.0,
            conns: 16,
            total: 100,
            first_measured: 10,
        };
        let counts: Vec<u64> = (0..16).map(|k| s.count_for(k)).collect();
        assert_eq!(counts.iter().sum::<u64>(), 100);
        assert_eq!(counts[0], 7);
        assert_eq!(counts[15], 6);
        assert_eq!(s.due(1000) - s.t0, Duration::from_secs(1));
        let few = Schedule { total: 3, ..s };
        assert_eq!(few.count_for(5), 0);
    }
}
