//! The suite's raw records and the markdown summary made from them. Every number in the
//! markdown is the median (with min–max) of one metric over records named in the row's
//! `records` column by their `id`, so each can be traced to the JSON file.

use std::fmt::Write;

use crate::crypto::CryptoResult;
use crate::idle;
use crate::latency::LatencyStats;
use crate::procfs::{CpuUsage, Memory};
use crate::report::{Spread, spread};
use crate::shards::ShardDelta;
use crate::suite_cli::ScenarioKind;

/// One point of a scenario: the load offered.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    pub kind: ScenarioKind,
    pub connections: usize,
    /// Requests (or new connections) per second; none for closed-loop and idle.
    pub rate: Option<f64>,
    pub size: usize,
}

impl Point {
    /// A short unique label, e.g. `tcp-latency@1000/s×1`.
    pub fn label(&self) -> String {
        let rate = self.rate.map(|r| format!("@{r}/s")).unwrap_or_default();
        format!("{}{rate}×{}", self.kind.name(), self.connections)
    }
}

/// One run of one system at one point. Numbers are absent, never guessed, when the run
/// failed (`error`) or when they do not apply.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Record {
    /// Referenced by the markdown's `records` columns.
    pub id: usize,
    pub system: String,
    pub scenario: String,
    pub point: String,
    pub repetition: u32,
    pub connections: usize,
    pub rate: Option<f64>,
    pub size: usize,
    /// Length of the measured window (CPU snapshots' distance).
    pub seconds: f64,
    /// Throughput: bytes the server received in the window.
    pub bytes: u64,
    pub gbit_per_s: Option<f64>,
    pub latency: Option<LatencyStats>,
    /// Successful requests per second in the window.
    pub achieved_per_s: Option<f64>,
    /// Failed requests in the window (churn).
    pub errors: Option<u64>,
    pub cpu: Option<CpuUsage>,
    /// user+system of the system's proxy processes over the window; absent for direct.
    pub proxy_cpu_seconds: Option<f64>,
    /// Proxy CPU-seconds per GB (10⁹ bytes) moved (throughput runs).
    pub proxy_cpu_s_per_gb: Option<f64>,
    pub idle: Option<idle::Measured>,
    /// zmesh only: what each shard did over the run (scraped before and after).
    pub shards: Vec<ShardDelta>,
    /// Wall-clock seconds between the two scrapes of `shards`.
    pub shard_seconds: Option<f64>,
    pub error: Option<String>,
}

impl Record {
    pub fn set_cpu(&mut self, cpu: CpuUsage, proxied: bool) {
        self.seconds = cpu.seconds;
        self.cpu = Some(cpu);
        self.proxy_cpu_seconds = proxied.then_some(cpu.proxy_cpu_seconds);
    }

    fn proxy_cores(&self) -> Option<f64> {
        self.proxy_cpu_seconds
            .filter(|_| self.seconds > 0.0)
            .map(|c| c / self.seconds)
    }

    /// One line for the progress display.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {}", e.lines().next().unwrap_or_default());
        }
        let cpu = self
            .proxy_cores()
            .map(|c| format!(", proxy CPU {c:.2} cores"))
            .unwrap_or_default();
        if let Some(l) = &self.latency {
            let errs = self
                .errors
                .filter(|e| *e > 0)
                .map(|e| format!(", {e} failed"))
                .unwrap_or_default();
            format!("p50 {:.0} µs, p99 {:.0} µs{errs}{cpu}", l.p50_us, l.p99_us)
        } else if let Some(g) = self.gbit_per_s {
            format!("{g:.2} Gbit/s{cpu}")
        } else if let Some(i) = &self.idle {
            match i.kib_per_connection {
                Some(k) => format!("{k:.1} KiB per connection"),
                None => format!("{} connections held", i.connections),
            }
        } else {
            String::new()
        }
    }
}

/// Compact number: about 3 significant digits.
pub fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn cell(s: Option<Spread>) -> String {
    match s {
        Some(s) if num(s.min) == num(s.max) => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        None => "–".into(),
    }
}

fn ratio(s: Option<Spread>, base: Option<Spread>) -> String {
    match (s, base) {
        (Some(s), Some(b)) if b.median > 0.0 => format!("{:.2}×", s.median / b.median),
        _ => "–".into(),
    }
}

/// The successful records of one (point, system).
pub struct Cell<'a> {
    pub all: Vec<&'a Record>,
}

impl<'a> Cell<'a> {
    pub fn of(records: &'a [Record], point: &str, system: &str) -> Cell<'a> {
        Cell {
            all: records
                .iter()
                .filter(|r| r.point == point && r.system == system)
                .collect(),
        }
    }

    pub fn metric(&self, f: impl Fn(&Record) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = self
            .all
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| f(r))
            .collect();
        spread(&v)
    }

    /// `#3 #15`: the records behind the row; failed ones marked `!`.
    fn ids(&self) -> String {
        let ids: Vec<String> = self
            .all
            .iter()
            .map(|r| {
                let bad = if r.error.is_some() { "!" } else { "" };
                format!("#{}{bad}", r.id)
            })
            .collect();
        ids.join(" ")
    }
}

/// Everything the markdown is made of.
pub struct Inputs<'a> {
    pub records: &'a [Record],
    pub points: &'a [Point],
    pub systems: &'a [String],
    pub crypto: &'a [CryptoResult],
    pub memory: &'a [(String, String, Memory)],
}

pub fn markdown(i: &Inputs<'_>) -> String {
    let mut out = String::new();
    let lat: Vec<&Point> = (i.points.iter()).filter(|p| p.rate.is_some()).collect();
    if !lat.is_empty() {
        out += &latency_table(i, &lat);
    }
    let thr: Vec<&Point> = (i.points.iter())
        .filter(|p| p.kind == ScenarioKind::Throughput)
        .collect();
    if !thr.is_empty() {
        out += &throughput_table(i, &thr);
    }
    for p in i.points.iter().filter(|p| p.kind == ScenarioKind::Idle) {
        out += &idle_table(i, p);
    }
    out += &shard_table(i);
    if !i.crypto.is_empty() {
        out += "\n### Crypto ceiling (aws-lc-rs, 16 KiB records, one core)\n\n\
                | algorithm | seal GB/s | seal+open GB/s | floor CPU-s per GB |\n|---|---:|---:|---:|\n";
        for c in i.crypto {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                c.algorithm,
                num(c.seal_gb_per_s),
                num(c.seal_open_gb_per_s),
                num(c.floor_cpu_s_per_gb)
            );
        }
    }
    if !i.memory.is_empty() {
        out += "\n### Proxy memory after all runs\n\n| system | process | VmRSS (MiB) | VmHWM (MiB) |\n|---|---|---:|---:|\n";
        for (sys, proc_name, m) in i.memory {
            let _ = writeln!(
                out,
                "| {sys} | {proc_name} | {:.1} | {:.1} |",
                m.vm_rss_kib as f64 / 1024.0,
                m.vm_hwm_kib as f64 / 1024.0
            );
        }
    }
    out
}

fn latency_table(i: &Inputs<'_>, points: &[&Point]) -> String {
    let mut out = String::from(
        "\n### Request/response latency (µs from the intended send time, open loop)\n\n\
         | scenario | rate/s | conns | system | p50 | p50 vs direct | p99 | p99 vs direct | p99.9 | achieved/s | failed | proxy CPU (cores) | sender lag p99 | records |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in points {
        let label = p.label();
        let base = Cell::of(i.records, &label, "direct");
        let b50 = base.metric(|r| r.latency.map(|l| l.p50_us));
        let b99 = base.metric(|r| r.latency.map(|l| l.p99_us));
        for sys in i.systems {
            let c = Cell::of(i.records, &label, sys);
            let p50 = c.metric(|r| r.latency.map(|l| l.p50_us));
            let p99 = c.metric(|r| r.latency.map(|l| l.p99_us));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {sys} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.kind.name(),
                p.rate.map(num).unwrap_or_default(),
                p.connections,
                cell(p50),
                ratio(p50, b50),
                cell(p99),
                ratio(p99, b99),
                cell(c.metric(|r| r.latency.map(|l| l.p999_us))),
                cell(c.metric(|r| r.achieved_per_s)),
                cell(c.metric(|r| r.errors.map(|e| e as f64))),
                cell(c.metric(Record::proxy_cores)),
                cell(c.metric(|r| r.latency.map(|l| l.sender_lag_p99_us))),
                c.ids(),
            );
        }
    }
    out
}

fn throughput_table(i: &Inputs<'_>, points: &[&Point]) -> String {
    let floor = i.crypto.iter().find(|c| c.algorithm == "AES-256-GCM");
    let mut out = String::from(
        "\n### Throughput (closed loop, receiver side)\n\n\
         | conns | system | Gbit/s | vs direct | proxy CPU (cores) | proxy CPU-s per GB | × crypto floor | % of crypto ceiling | machine busy (cores) | records |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in points {
        let label = p.label();
        let base = Cell::of(i.records, &label, "direct").metric(|r| r.gbit_per_s);
        for sys in i.systems {
            let c = Cell::of(i.records, &label, sys);
            let g = c.metric(|r| r.gbit_per_s);
            let per_gb = c.metric(|r| r.proxy_cpu_s_per_gb);
            // The relay does no crypto: beside the floor its numbers would mislead.
            let (vs_floor, of_ceiling) = match (floor, sys.as_str()) {
                (Some(f), s) if s != "direct" && s != "relay" => (
                    per_gb.map(|x| format!("{:.1}×", x.median / f.floor_cpu_s_per_gb)),
                    g.map(|g| format!("{:.0}%", g.median / 8.0 / f.seal_open_gb_per_s * 100.0)),
                ),
                _ => (None, None),
            };
            let _ = writeln!(
                out,
                "| {} | {sys} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.connections,
                cell(g),
                ratio(g, base),
                cell(c.metric(Record::proxy_cores)),
                cell(per_gb),
                vs_floor.unwrap_or_else(|| "–".into()),
                of_ceiling.unwrap_or_else(|| "–".into()),
                cell(c.metric(|r| {
                    r.cpu
                        .filter(|c| c.seconds > 0.0)
                        .map(|c| c.machine_busy_seconds / c.seconds)
                })),
                c.ids(),
            );
        }
    }
    out
}

fn idle_table(i: &Inputs<'_>, p: &Point) -> String {
    let label = p.label();
    let mut out = format!(
        "\n### Idle connections ({} held open)\n\n\
         | system | proxy RSS before (MiB) | proxy RSS holding (MiB) | KiB per connection | open time (s) | records |\n\
         |---|---:|---:|---:|---:|---|\n",
        p.connections
    );
    for sys in i.systems {
        let c = Cell::of(i.records, &label, sys);
        let mib = |f: fn(&idle::Measured) -> Option<u64>| {
            c.metric(move |r| r.idle.as_ref().and_then(f).map(|k| k as f64 / 1024.0))
        };
        let _ = writeln!(
            out,
            "| {sys} | {} | {} | {} | {} | {} |",
            cell(mib(|m| m.rss_before_kib)),
            cell(mib(|m| m.rss_held_kib)),
            cell(c.metric(|r| r.idle.as_ref().and_then(|m| m.kib_per_connection))),
            cell(c.metric(|r| r.idle.as_ref().map(|m| m.open_seconds))),
            c.ids(),
        );
    }
    out
}

/// zmesh's shards, per point: median busy fraction and IO rates.
fn shard_table(i: &Inputs<'_>) -> String {
    let zm: Vec<&Record> = (i.records.iter())
        .filter(|r| r.system == "zmesh" && !r.shards.is_empty() && r.error.is_none())
        .collect();
    if zm.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n### zmesh shards (from the nodes' metrics, per run; median over repetitions; – : the shard never woke)\n\n\
         | scenario | node | shard | busy fraction | submissions/s | completions/s | polls/s | records |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for p in i.points {
        let label = p.label();
        let runs: Vec<&&Record> = zm.iter().filter(|r| r.point == label).collect();
        let Some(first) = runs.first() else { continue };
        for key in first.shards.iter().map(|s| (s.node.clone(), s.shard)) {
            let vals = |f: fn(&ShardDelta, f64) -> Option<f64>| {
                let v: Vec<f64> = (runs.iter())
                    .filter_map(|r| {
                        let s = r.shards.iter().find(|s| (s.node.clone(), s.shard) == key)?;
                        f(s, r.shard_seconds.unwrap_or(0.0))
                    })
                    .collect();
                cell(spread(&v))
            };
            let ids: Vec<String> = runs.iter().map(|r| format!("#{}", r.id)).collect();
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                key.0,
                key.1,
                vals(|s, _| s.busy_fraction),
                vals(|s, t| (t > 0.0).then(|| s.ring_submissions / t)),
                vals(|s, t| (t > 0.0).then(|| s.ring_completions / t)),
                vals(|s, t| (t > 0.0).then(|| s.task_polls / t)),
                ids.join(" "),
            );
        }
    }
    out
}
