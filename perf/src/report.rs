//! Run records (kept raw in the JSON file) and the markdown summary printed on stdout: median
//! and min–max over the repetitions, and ratios of medians to direct from the same run.

use std::fmt::Write;

use crate::latency::LatencyStats;
use crate::procfs::{CpuUsage, Memory};
use crate::systems::System;

/// A scenario: what load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Throughput { conns: usize },
    Latency { conns: usize },
}

impl Scenario {
    pub fn conns(self) -> usize {
        match self {
            Scenario::Throughput { conns } | Scenario::Latency { conns } => conns,
        }
    }

    pub fn label(self) -> String {
        match self {
            Scenario::Throughput { conns } => format!("throughput-{conns}"),
            Scenario::Latency { conns } => format!("latency-{conns}"),
        }
    }
}

/// One run of one system in one scenario. Numbers are absent, never guessed, when the run
/// failed (`error`) or when they do not apply (no proxy CPU for direct).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub system: System,
    pub scenario: String,
    pub repetition: u32,
    pub connections: usize,
    /// Throughput: bytes the sink received in the window. Latency: response bytes counted.
    pub bytes: u64,
    /// Length of the measured window.
    pub seconds: f64,
    pub gbit_per_s: Option<f64>,
    /// user+system of the proxy processes over the window (both nodes, or the relay).
    pub proxy_cpu_seconds: Option<f64>,
    /// Gbit moved per proxy CPU-second (throughput runs only).
    pub gbit_per_proxy_cpu_second: Option<f64>,
    pub loadgen_cpu_seconds: Option<f64>,
    pub machine_busy_seconds: Option<f64>,
    pub latency: Option<LatencyStats>,
    pub error: Option<String>,
}

impl RunRecord {
    pub fn new(system: System, scenario: Scenario, repetition: u32) -> RunRecord {
        RunRecord {
            system,
            scenario: scenario.label(),
            repetition,
            connections: scenario.conns(),
            bytes: 0,
            seconds: 0.0,
            gbit_per_s: None,
            proxy_cpu_seconds: None,
            gbit_per_proxy_cpu_second: None,
            loadgen_cpu_seconds: None,
            machine_busy_seconds: None,
            latency: None,
            error: None,
        }
    }

    pub fn set_cpu(&mut self, cpu: CpuUsage) {
        self.seconds = cpu.seconds;
        self.loadgen_cpu_seconds = Some(cpu.loadgen_cpu_seconds);
        self.machine_busy_seconds = Some(cpu.machine_busy_seconds);
        if self.system != System::Direct {
            self.proxy_cpu_seconds = Some(cpu.proxy_cpu_seconds);
        }
    }

    pub fn set_throughput(&mut self, bytes: u64, cpu: CpuUsage) {
        self.set_cpu(cpu);
        self.bytes = bytes;
        let gbit = bytes as f64 * 8.0 / 1e9;
        self.gbit_per_s = Some(gbit / cpu.seconds);
        self.gbit_per_proxy_cpu_second = self
            .proxy_cpu_seconds
            .filter(|c| *c > 0.0)
            .map(|c| gbit / c);
    }

    /// A one-line progress report for stderr.
    pub fn progress(&self) -> String {
        let head = format!(
            "[rep {}] {:<14} {:<6}",
            self.repetition,
            self.scenario,
            self.system.name()
        );
        if let Some(e) = &self.error {
            return format!("{head} FAILED: {e}");
        }
        let cpu = self
            .proxy_cpu_seconds
            .map(|c| format!(", proxy CPU {:.2} cores", c / self.seconds))
            .unwrap_or_default();
        match (&self.latency, self.gbit_per_s) {
            (Some(l), _) => format!(
                "{head} p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs{cpu}",
                l.p50_us, l.p99_us, l.max_us
            ),
            (None, Some(g)) => format!("{head} {g:.2} Gbit/s{cpu}"),
            (None, None) => head,
        }
    }

    fn per_second(&self, v: Option<f64>) -> Option<f64> {
        v.filter(|_| self.seconds > 0.0).map(|v| v / self.seconds)
    }
}

/// Median and range of one metric over the successful repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Compact number: 3 significant-ish digits.
fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn cell(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        None => "–".into(),
    }
}

fn ratio(s: Option<Spread>, direct: Option<Spread>) -> String {
    match (s, direct) {
        (Some(s), Some(d)) if d.median > 0.0 => format!("{:.2}×", s.median / d.median),
        _ => "–".into(),
    }
}

/// The records of one (scenario, system) pair, for summarising.
struct Cell<'a> {
    runs: Vec<&'a RunRecord>,
}

impl<'a> Cell<'a> {
    fn of(records: &'a [RunRecord], scenario: &str, system: System) -> Cell<'a> {
        Cell {
            runs: records
                .iter()
                .filter(|r| r.scenario == scenario && r.system == system)
                .collect(),
        }
    }

    /// Spread of `f` over the successful runs.
    fn metric(&self, f: impl Fn(&RunRecord) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| f(r))
            .collect();
        spread(&v)
    }

    fn latency(&self, f: fn(&LatencyStats) -> f64) -> Option<Spread> {
        self.metric(|r| r.latency.as_ref().map(f))
    }

    fn per_second(&self, f: fn(&RunRecord) -> Option<f64>) -> Option<Spread> {
        self.metric(|r| r.per_second(f(r)))
    }

    fn ok(&self) -> String {
        format!(
            "{}/{}",
            self.runs.iter().filter(|r| r.error.is_none()).count(),
            self.runs.len()
        )
    }
}

/// The markdown summary of all records.
pub fn markdown(
    records: &[RunRecord],
    scenarios: &[Scenario],
    memory: &[(String, Memory)],
) -> String {
    let mut out = throughput_table(records, scenarios);
    for sc in scenarios
        .iter()
        .filter(|s| matches!(s, Scenario::Latency { .. }))
    {
        out += &latency_table(records, *sc);
    }
    if !memory.is_empty() {
        out += "\n### Proxy memory after the runs\n\n| process | VmRSS (MiB) | VmHWM (MiB) |\n|---|---:|---:|\n";
        for (name, m) in memory {
            let _ = writeln!(
                out,
                "| {name} | {:.1} | {:.1} |",
                m.vm_rss_kib as f64 / 1024.0,
                m.vm_hwm_kib as f64 / 1024.0
            );
        }
    }
    out
}

fn throughput_table(records: &[RunRecord], scenarios: &[Scenario]) -> String {
    let mut out = String::from(
        "### Throughput (receiver side)\n\n\
         | conns | system | Gbit/s | vs direct | proxy CPU (cores) | Gbit per proxy CPU-s | machine busy (cores) | load gen CPU (cores) | runs ok |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for sc in scenarios
        .iter()
        .filter(|s| matches!(s, Scenario::Throughput { .. }))
    {
        let label = sc.label();
        let direct = Cell::of(records, &label, System::Direct).metric(|r| r.gbit_per_s);
        for sys in System::ALL {
            let c = Cell::of(records, &label, sys);
            let g = c.metric(|r| r.gbit_per_s);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                sc.conns(),
                sys.name(),
                cell(g),
                ratio(g, direct),
                cell(c.per_second(|r| r.proxy_cpu_seconds)),
                cell(c.metric(|r| r.gbit_per_proxy_cpu_second)),
                cell(c.per_second(|r| r.machine_busy_seconds)),
                cell(c.per_second(|r| r.loadgen_cpu_seconds)),
                c.ok(),
            );
        }
    }
    out
}

fn latency_table(records: &[RunRecord], sc: Scenario) -> String {
    let label = sc.label();
    let mut out = format!(
        "\n### Latency, {label} (µs from intended send time, open loop)\n\n\
         | system | p50 | p50 vs direct | p99 | p99 vs direct | p99.9 | max | sender lag p99 | proxy CPU (cores) | runs ok |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let direct = Cell::of(records, &label, System::Direct);
    let (d50, d99) = (direct.latency(|l| l.p50_us), direct.latency(|l| l.p99_us));
    for sys in System::ALL {
        let c = Cell::of(records, &label, sys);
        let (p50, p99) = (c.latency(|l| l.p50_us), c.latency(|l| l.p99_us));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sys.name(),
            cell(p50),
            ratio(p50, d50),
            cell(p99),
            ratio(p99, d99),
            cell(c.latency(|l| l.p999_us)),
            cell(c.latency(|l| l.max_us)),
            cell(c.latency(|l| l.sender_lag_p99_us)),
            cell(c.per_second(|r| r.proxy_cpu_seconds)),
            c.ok(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median), Some(2.5));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn failed_runs_are_shown_not_invented() {
        let sc = Scenario::Throughput { conns: 1 };
        let mut ok = RunRecord::new(System::Direct, sc, 1);
        ok.set_throughput(
            1_250_000_000,
            CpuUsage {
                seconds: 1.0,
                ..CpuUsage::default()
            },
        );
        let mut bad = RunRecord::new(System::Zmesh, sc, 1);
        bad.error = Some("connection 0: refused".into());
        let md = markdown(&[ok, bad], &[sc], &[]);
        assert!(md.contains("| 1 | direct | 10.0 | 1.00× |"), "{md}");
        assert!(md.contains("| 1 | zmesh | – | – |"), "{md}");
        assert!(md.contains("0/1"), "{md}");
    }
}

/// Writes `report.json` with every path under the current directory (the workspace root, where
/// the tool is meant to run) recorded relative to it, so committed results name no machine's
/// directories.
pub fn write_json(dir: &std::path::Path, json: &serde_json::Value) -> std::io::Result<()> {
    let mut json = json.clone();
    if let Ok(cwd) = std::env::current_dir() {
        let prefix = format!("{}/", cwd.display());
        relativize(&mut json, &prefix);
    }
    let bytes = serde_json::to_vec_pretty(&json).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), bytes)
}

fn relativize(v: &mut serde_json::Value, prefix: &str) {
    match v {
        serde_json::Value::String(s) if s.contains(prefix) => *s = s.replace(prefix, ""),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| relativize(i, prefix)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| relativize(i, prefix)),
        _ => {}
    }
}

#[cfg(test)]
mod write_json_tests {
    #[test]
    fn paths_under_the_root_become_relative() {
        let mut v = serde_json::json!({
            "bin_dir": "/r/oot/target/release",
            "cmd": "/r/oot/target/release/zmesh-perf relay --listen 127.0.0.1:1",
            "other": ["/elsewhere/x", 3],
        });
        super::relativize(&mut v, "/r/oot/");
        assert_eq!(v["bin_dir"], "target/release");
        assert_eq!(
            v["cmd"],
            "target/release/zmesh-perf relay --listen 127.0.0.1:1"
        );
        assert_eq!(v["other"][0], "/elsewhere/x");
    }
}
