//! The raw records of `bench-method`: one per tool run (and one per proxy-memory reading),
//! each with an `id` the markdown cites, the tool's parsed numbers, the CPU window and, for
//! zmesh, what every shard did. A failed run keeps its error and no numbers.

use crate::method::tools::{Ab, Iperf, Sockperf};
use crate::shards::ShardDelta;

/// CPU spent over one tool run, from /proc.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CpuWindow {
    /// Wall-clock seconds between the two readings (the whole tool run).
    pub seconds: f64,
    /// user+system of every proxy process (all threads), summed.
    pub proxy_cpu_seconds: f64,
    /// The same per proxy process: (node, pid, CPU-seconds).
    pub per_proxy: Vec<(String, u32, f64)>,
    /// Busy time of every core (/proc/stat: all but idle and iowait; softirq included).
    pub machine_busy_seconds: f64,
}

/// One node proxy's memory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxyMemory {
    pub node: String,
    pub pid: u32,
    /// VmRSS right after the pods were captured, before any load.
    pub idle_rss_kib: Option<u64>,
    /// VmRSS and VmHWM after all the runs of this repetition.
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
}

/// Idle connections held open through the system.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IdleHeld {
    pub connections: u32,
    /// Summed VmRSS of the proxies before opening and while holding.
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    /// (held − before) / connections.
    pub kib_per_connection: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Record {
    pub id: usize,
    pub system: String,
    /// `iperf3`, `sockperf`, `ab`, `idle` or `memory`.
    pub step: String,
    /// The row label, e.g. `iperf3 ×4`, `sockperf @1000/s`, `sockperf max`.
    pub point: String,
    pub repetition: u32,
    /// /proc/loadavg's 1-minute figure when the run started: how busy the shared machine was.
    pub loadavg_1m: Option<f64>,
    /// The tool's own output, under `raw/` in the results folder.
    pub raw: Option<String>,
    pub iperf: Option<Iperf>,
    pub gbit_per_s: Option<f64>,
    pub sockperf: Option<Sockperf>,
    pub ab: Option<Ab>,
    pub cpu: Option<CpuWindow>,
    /// Proxy CPU-seconds per GB (10⁹ bytes) received (iperf3; absent for direct).
    pub proxy_cpu_s_per_gb: Option<f64>,
    /// Proxy CPU-milliseconds per completed request, each a new connection (ab).
    pub proxy_cpu_ms_per_connection: Option<f64>,
    pub memory: Vec<ProxyMemory>,
    pub idle: Option<IdleHeld>,
    /// zmesh only: what each shard of each node did over the run.
    pub shards: Vec<ShardDelta>,
    /// Seconds between the two metric scrapes of `shards`.
    pub shard_seconds: Option<f64>,
    pub error: Option<String>,
}

impl Record {
    /// A record for one run, stamped with the machine's load.
    pub fn new(id: usize, system: &str, step: &str, point: &str, repetition: u32) -> Record {
        Record {
            id,
            system: system.into(),
            step: step.into(),
            point: point.into(),
            repetition,
            loadavg_1m: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
            ..Record::default()
        }
    }

    /// One line for the progress display.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {}", e.lines().next().unwrap_or_default());
        }
        let cpu = self
            .cpu
            .as_ref()
            .filter(|c| !c.per_proxy.is_empty())
            .map(|c| format!(", proxy CPU {:.2} s", c.proxy_cpu_seconds))
            .unwrap_or_default();
        if let Some(g) = self.gbit_per_s {
            format!("{g:.2} Gbit/s{cpu}")
        } else if let Some(s) = &self.sockperf {
            format!(
                "p50 {:.0} µs, p99 {:.0} µs, {:.0} round trips/s{cpu}",
                s.p50_us, s.p99_us, s.round_trips_per_s
            )
        } else if let Some(a) = &self.ab {
            format!(
                "{:.0} new connections/s, {} failed{cpu}",
                a.requests_per_s, a.failed
            )
        } else if let Some(i) = &self.idle {
            format!("{:.2} KiB per idle connection", i.kib_per_connection)
        } else if !self.memory.is_empty() {
            let m: Vec<String> = (self.memory.iter())
                .map(|m| format!("{} {:.1} MiB", m.node, m.vm_rss_kib as f64 / 1024.0))
                .collect();
            format!("VmRSS {}", m.join(", "))
        } else {
            String::new()
        }
    }
}
