//! The suite's SVG plots, drawn from the same medians as the markdown tables.

use std::path::{Path, PathBuf};

use crate::report::spread;
use crate::shards::ShardDelta;
use crate::suite_cli::ScenarioKind;
use crate::suite_report::{Cell, Point, Record};
use crate::svg::{Series, bar_chart, line_chart};

/// Writes every plot that has data into `dir`; the files written.
pub fn write_all(
    dir: &Path,
    records: &[Record],
    points: &[Point],
    systems: &[String],
) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut put = |name: &str, svg: Option<String>| -> std::io::Result<()> {
        if let Some(svg) = svg {
            let p = dir.join(name);
            std::fs::write(&p, svg)?;
            written.push(p);
        }
        Ok(())
    };
    // p50 and p99 apart: on one scale the p99 lines squash the p50 ones flat.
    put(
        "latency-p50-vs-rate.svg",
        latency_vs_rate(records, points, systems, "p50", |r| {
            r.latency.map(|l| l.p50_us)
        }),
    )?;
    put(
        "latency-p99-vs-rate.svg",
        latency_vs_rate(records, points, systems, "p99", |r| {
            r.latency.map(|l| l.p99_us)
        }),
    )?;
    put(
        "throughput-vs-connections.svg",
        throughput_vs_conns(records, points, systems),
    )?;
    if let Some((label, secs, shards)) = shard_medians(records, points) {
        put("shard-cpu.svg", Some(shard_cpu(&label, &shards)))?;
        put("shard-io.svg", Some(shard_io(&label, secs, &shards)))?;
    }
    Ok(written)
}

/// Median of `f` over the successful records of (point, system).
fn median(
    records: &[Record],
    p: &Point,
    sys: &str,
    f: impl Fn(&Record) -> Option<f64>,
) -> Option<f64> {
    Cell::of(records, &p.label(), sys)
        .metric(f)
        .map(|s| s.median)
}

fn latency_vs_rate(
    records: &[Record],
    points: &[Point],
    systems: &[String],
    quantile: &str,
    f: fn(&Record) -> Option<f64>,
) -> Option<String> {
    let pts: Vec<&Point> = (points.iter())
        .filter(|p| p.kind == ScenarioKind::TcpLatency)
        .collect();
    if pts.is_empty() {
        return None;
    }
    let series: Vec<Series> = (systems.iter().enumerate())
        .map(|(i, sys)| Series {
            name: sys.clone(),
            points: (pts.iter())
                .filter_map(|p| Some((p.rate?, median(records, p, sys, f)?)))
                .collect(),
            dashed: false,
            colour: i,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let conns = pts[0].connections;
    Some(line_chart(
        &format!("TCP echo {quantile} latency against offered rate ({conns} conn, medians)"),
        "offered rate (requests/s)",
        &format!("{quantile} from intended send time (µs)"),
        &series,
    ))
}

fn throughput_vs_conns(records: &[Record], points: &[Point], systems: &[String]) -> Option<String> {
    let pts: Vec<&Point> = (points.iter())
        .filter(|p| p.kind == ScenarioKind::Throughput)
        .collect();
    if pts.is_empty() {
        return None;
    }
    let series: Vec<Series> = (systems.iter().enumerate())
        .map(|(i, sys)| Series {
            name: sys.clone(),
            points: (pts.iter())
                .filter_map(|p| {
                    Some((
                        p.connections as f64,
                        median(records, p, sys, |r| r.gbit_per_s)?,
                    ))
                })
                .collect(),
            dashed: false,
            colour: i,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    Some(line_chart(
        "Throughput against connections (receiver side, medians)",
        "connections",
        "Gbit/s",
        &series,
    ))
}

/// Per-shard medians of zmesh's busiest point: the throughput point with the most
/// connections, or else the first point with shard data.
fn shard_medians(records: &[Record], points: &[Point]) -> Option<(String, f64, Vec<ShardDelta>)> {
    let has = |p: &&Point| {
        (records.iter())
            .any(|r| r.point == p.label() && r.system == "zmesh" && !r.shards.is_empty())
    };
    let p = (points.iter())
        .filter(|p| p.kind == ScenarioKind::Throughput)
        .filter(has)
        .max_by_key(|p| p.connections)
        .or_else(|| points.iter().find(has))?;
    let label = p.label();
    let runs: Vec<&Record> = (records.iter())
        .filter(|r| r.point == label && r.system == "zmesh" && r.error.is_none())
        .collect();
    let first = runs.first()?;
    let med = |key: &ShardDelta, f: fn(&ShardDelta) -> f64| {
        let v: Vec<f64> = (runs.iter())
            .filter_map(|r| {
                r.shards
                    .iter()
                    .find(|s| s.node == key.node && s.shard == key.shard)
            })
            .map(f)
            .collect();
        spread(&v).map(|s| s.median).unwrap_or(0.0)
    };
    let secs: Vec<f64> = runs.iter().filter_map(|r| r.shard_seconds).collect();
    let secs = spread(&secs).map(|s| s.median).unwrap_or(0.0);
    let shards = (first.shards.iter())
        .map(|k| ShardDelta {
            busy_seconds: med(k, |s| s.busy_seconds),
            idle_seconds: med(k, |s| s.idle_seconds),
            ring_submissions: med(k, |s| s.ring_submissions),
            ring_completions: med(k, |s| s.ring_completions),
            ..k.clone()
        })
        .collect();
    Some((label, secs, shards))
}

fn categories(shards: &[ShardDelta]) -> Vec<String> {
    shards
        .iter()
        .map(|s| format!("{} #{}", s.node, s.shard))
        .collect()
}

fn shard_cpu(label: &str, shards: &[ShardDelta]) -> String {
    let frac = |f: fn(&ShardDelta) -> f64| -> Vec<f64> {
        (shards.iter())
            .map(|s| {
                let t = s.busy_seconds + s.idle_seconds;
                if t > 0.0 { f(s) / t } else { 0.0 }
            })
            .collect()
    };
    bar_chart(
        &format!("zmesh shard time, {label} (median run)"),
        "node and shard",
        "fraction of the shard thread's time",
        &categories(shards),
        &[
            ("busy".into(), frac(|s| s.busy_seconds)),
            ("idle (waiting for IO)".into(), frac(|s| s.idle_seconds)),
        ],
    )
}

fn shard_io(label: &str, secs: f64, shards: &[ShardDelta]) -> String {
    let per_s = |f: fn(&ShardDelta) -> f64| -> Vec<f64> {
        (shards.iter())
            .map(|s| {
                if secs > 0.0 {
                    f(s) / secs / 1000.0
                } else {
                    0.0
                }
            })
            .collect()
    };
    bar_chart(
        &format!("zmesh shard IO, {label} (median run)"),
        "node and shard",
        "thousands per second",
        &categories(shards),
        &[
            ("ring submissions".into(), per_s(|s| s.ring_submissions)),
            ("ring completions".into(), per_s(|s| s.ring_completions)),
        ],
    )
}
