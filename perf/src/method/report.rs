//! The markdown of `bench-method`: every cell is the median (min–max) of one field over the
//! successful records named in its row (`#id`, `!` for a failed one), and ratios are of
//! medians, to direct from the same run. Issue 5's targets are set beside zmesh's numbers.

use std::fmt::Write;

use crate::method::record::Record;
use crate::report::{Spread, spread};
use crate::suite_report::num;

/// The records of one (point, system).
pub struct Rows<'a>(pub Vec<&'a Record>);

impl<'a> Rows<'a> {
    pub fn of(records: &'a [Record], point: &str, system: &str) -> Rows<'a> {
        Rows(
            (records.iter())
                .filter(|r| r.point == point && r.system == system)
                .collect(),
        )
    }

    pub fn metric(&self, f: impl Fn(&Record) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = (self.0.iter())
            .filter(|r| r.error.is_none())
            .filter_map(|r| f(r))
            .collect();
        spread(&v)
    }

    pub fn ids(&self) -> String {
        let v: Vec<String> = (self.0.iter())
            .map(|r| format!("#{}{}", r.id, if r.error.is_some() { "!" } else { "" }))
            .collect();
        v.join(" ")
    }
}

pub fn cell(s: Option<Spread>) -> String {
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

/// The distinct points of `step`, in the order they first ran.
pub fn points(records: &[Record], step: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in records.iter().filter(|r| r.step == step) {
        if !v.contains(&r.point) {
            v.push(r.point.clone());
        }
    }
    v
}

fn cores(r: &Record) -> Option<f64> {
    r.cpu
        .as_ref()
        .filter(|c| c.seconds > 0.0)
        .map(|c| c.machine_busy_seconds / c.seconds)
}

pub fn throughput(records: &[Record], systems: &[String]) -> String {
    let mut out = String::from(
        "\n### Throughput (iperf3, receiver side)\n\n\
         | run | system | Gbit/s | vs direct | proxy CPU-s per GB | proxy CPU (cores) | machine busy (cores) | retransmits | records |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in points(records, "iperf3") {
        let base = Rows::of(records, &p, "direct").metric(|r| r.gbit_per_s);
        for sys in systems {
            let c = Rows::of(records, &p, sys);
            let g = c.metric(|r| r.gbit_per_s);
            let _ = writeln!(
                out,
                "| {p} | {sys} | {} | {} | {} | {} | {} | {} | {} |",
                cell(g),
                ratio(g, base),
                cell(c.metric(|r| r.proxy_cpu_s_per_gb)),
                cell(c.metric(|r| {
                    let w = r.cpu.as_ref().filter(|w| !w.per_proxy.is_empty())?;
                    Some(w.proxy_cpu_seconds / w.seconds)
                })),
                cell(c.metric(cores)),
                cell(c.metric(|r| r.iperf.and_then(|i| i.retransmits).map(|x| x as f64))),
                c.ids(),
            );
        }
    }
    out
}

pub fn latency(records: &[Record], systems: &[String]) -> String {
    let mut out = String::from(
        "\n### Latency (sockperf ping-pong, TCP, one connection, --full-rtt, µs)\n\n\
         | run | system | p50 | p50 added vs direct | p90 | p99 | p99.9 | round trips/s | vs direct | proxy CPU (cores) | records |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in points(records, "sockperf") {
        let base = Rows::of(records, &p, "direct");
        let b50 = base.metric(|r| r.sockperf.map(|s| s.p50_us));
        let brt = base.metric(|r| r.sockperf.map(|s| s.round_trips_per_s));
        for sys in systems {
            let c = Rows::of(records, &p, sys);
            let p50 = c.metric(|r| r.sockperf.map(|s| s.p50_us));
            let rt = c.metric(|r| r.sockperf.map(|s| s.round_trips_per_s));
            let added = match (p50, b50) {
                (Some(a), Some(b)) if sys != "direct" => format!("{:+.0}", a.median - b.median),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {p} | {sys} | {} | {added} | {} | {} | {} | {} | {} | {} | {} |",
                cell(p50),
                cell(c.metric(|r| r.sockperf.map(|s| s.p90_us))),
                cell(c.metric(|r| r.sockperf.map(|s| s.p99_us))),
                cell(c.metric(|r| r.sockperf.map(|s| s.p999_us))),
                cell(rt),
                ratio(rt, brt),
                cell(c.metric(|r| {
                    let w = r.cpu.as_ref().filter(|w| !w.per_proxy.is_empty())?;
                    Some(w.proxy_cpu_seconds / w.seconds)
                })),
                c.ids(),
            );
        }
    }
    out
}

pub fn connections(records: &[Record], systems: &[String]) -> String {
    let mut out = String::from(
        "\n### New connections (ab, no keep-alive, to nginx in the server pod)\n\n\
         | run | system | connections/s | vs direct | failed | proxy CPU-ms per connection | machine busy (cores) | records |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for p in points(records, "ab") {
        let base = Rows::of(records, &p, "direct").metric(|r| r.ab.map(|a| a.requests_per_s));
        for sys in systems {
            let c = Rows::of(records, &p, sys);
            let cps = c.metric(|r| r.ab.map(|a| a.requests_per_s));
            let _ = writeln!(
                out,
                "| {p} | {sys} | {} | {} | {} | {} | {} | {} |",
                cell(cps),
                ratio(cps, base),
                cell(c.metric(|r| r.ab.map(|a| (a.failed + a.non_2xx) as f64))),
                cell(c.metric(|r| r.proxy_cpu_ms_per_connection)),
                cell(c.metric(cores)),
                c.ids(),
            );
        }
    }
    out
}

pub fn memory(records: &[Record], systems: &[String]) -> String {
    let mut out = String::from(
        "\n### Proxy memory (MiB; idle = right after the pods were captured, before any load)\n\n\
         | system | node | VmRSS idle | VmRSS after the runs | VmHWM after the runs | records |\n\
         |---|---|---:|---:|---:|---|\n",
    );
    for sys in systems.iter().filter(|s| *s != "direct") {
        let c = Rows::of(records, "memory", sys);
        let mut nodes: Vec<String> = (c.0.iter())
            .flat_map(|r| r.memory.iter().map(|m| m.node.clone()))
            .collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let mib = |f: fn(&crate::method::record::ProxyMemory) -> Option<u64>| {
                let node = node.clone();
                c.metric(move |r| {
                    let m = r.memory.iter().find(|m| m.node == node)?;
                    f(m).map(|k| k as f64 / 1024.0)
                })
            };
            let _ = writeln!(
                out,
                "| {sys} | {node} | {} | {} | {} | {} |",
                cell(mib(|m| m.idle_rss_kib)),
                cell(mib(|m| Some(m.vm_rss_kib))),
                cell(mib(|m| Some(m.vm_hwm_kib))),
                c.ids(),
            );
        }
    }
    for p in points(records, "idle") {
        out += "\n| idle connections | system | proxies' VmRSS before (MiB) | holding (MiB) | KiB per connection | records |\n\
             |---|---|---:|---:|---:|---|\n";
        for sys in systems.iter().filter(|s| *s != "direct") {
            let c = Rows::of(records, &p, sys);
            let mib = |f: fn(&crate::method::record::IdleHeld) -> u64| {
                c.metric(move |r| r.idle.as_ref().map(|i| f(i) as f64 / 1024.0))
            };
            let _ = writeln!(
                out,
                "| {p} | {sys} | {} | {} | {} | {} |",
                cell(mib(|i| i.rss_before_kib)),
                cell(mib(|i| i.rss_held_kib)),
                cell(c.metric(|r| r.idle.as_ref().map(|i| i.kib_per_connection))),
                c.ids(),
            );
        }
    }
    out
}

/// Per node and shard, over the zmesh runs of each point: busy fraction, bytes, accepts.
pub fn shards(records: &[Record]) -> String {
    let mut out = String::new();
    for sys in ["zmesh", "zmesh-nftables"] {
        let runs: Vec<&Record> = (records.iter())
            .filter(|r| r.system == sys && !r.shards.is_empty() && r.error.is_none())
            .collect();
        if runs.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "\n### {sys} shards (from the nodes' metrics over each run; median over repetitions)\n\n\
             | run | node | shard | busy fraction | MB received | MB sent | accepted connections | records |\n\
             |---|---|---:|---:|---:|---:|---:|---|\n"
        );
        let mut pts: Vec<&str> = Vec::new();
        for r in &runs {
            if !pts.contains(&r.point.as_str()) {
                pts.push(&r.point);
            }
        }
        for p in pts {
            let these: Vec<&&Record> = runs.iter().filter(|r| r.point == p).collect();
            let Some(first) = these.first() else { continue };
            for (node, shard) in first.shards.iter().map(|s| (s.node.clone(), s.shard)) {
                let vals = |f: fn(&crate::shards::ShardDelta) -> Option<f64>| {
                    let v: Vec<f64> = (these.iter())
                        .filter_map(|r| {
                            let s = r
                                .shards
                                .iter()
                                .find(|s| s.node == node && s.shard == shard)?;
                            f(s)
                        })
                        .collect();
                    cell(spread(&v))
                };
                let ids: Vec<String> = these.iter().map(|r| format!("#{}", r.id)).collect();
                let _ = writeln!(
                    out,
                    "| {p} | {node} | {shard} | {} | {} | {} | {} | {} |",
                    vals(|s| s.busy_fraction),
                    vals(|s| Some(s.received_bytes / 1e6)),
                    vals(|s| Some(s.sent_bytes / 1e6)),
                    vals(|s| Some(s.accepted_connections)),
                    ids.join(" "),
                );
            }
        }
    }
    out
}
