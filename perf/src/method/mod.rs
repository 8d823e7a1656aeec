//! `zmesh-perf bench-method`: BENCH-METHOD on the network-namespace topology. For every
//! repetition and system (interleaved: direct, zmesh, direct, zmesh…) it brings the topology
//! up (a client pod on node 1, a server pod on node 2; with the mesh, their namespace labelled
//! ambient so both are captured and traffic crosses one HBONE hop), starts iperf3, sockperf,
//! nginx and the hold server in the server pod, runs the tools from the client pod, reads the
//! proxies' CPU, memory and shard metrics, and takes it down. Writes `report.json` (every raw
//! record), `report.md` (medians, ranges, ratios, issue 5's targets) and the tools' raw output.

mod cli;
mod cluster;
mod crypto;
pub mod hold;
mod netns;
mod record;
mod report;
mod steps;
mod targets;
mod tools;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

pub use cli::MethodArgs;
use cli::{Settings, Step, SystemKind};
use cluster::Cluster;
use record::Record;

use crate::bench::{compilers_running, machine_info, timestamp, unix_now};
use crate::suite_report::num;

/// The tools every run needs, and the Debian package of each.
const TOOLS: [(&str, &str); 5] = [
    ("iperf3", "iperf3"),
    ("sockperf", "sockperf"),
    ("ab", "apache2-utils"),
    ("nginx", "nginx-light"),
    ("openssl", "openssl"),
];

/// The label of the paced latency point.
pub fn paced_point(pace: f64) -> String {
    format!("sockperf @{}/s", num(pace))
}

pub fn run(args: &MethodArgs) -> anyhow::Result<()> {
    let s = args.settings()?;
    preflight(&s)?;
    let started = unix_now();
    let clock = Instant::now();
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut warnings = Vec::new();
    if let Some(w) = compilers_running() {
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    eprintln!(
        "crypto ceiling: openssl speed, {} s per algorithm",
        s.crypto_seconds
    );
    let crypto = crypto::measure(&s)?;
    let dir = s.out.join(format!("method-{}", timestamp(started)));
    std::fs::create_dir_all(dir.join("raw"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut records = Vec::new();
    let outcome = run_all(&s, &dir, &mut records, clock);
    if let Err(e) = &outcome {
        eprintln!("aborted: {e:#}");
    }
    let systems: Vec<String> = s.systems.iter().map(|k| k.name().to_string()).collect();
    let judged = targets::judge(&records, &systems, s.pace);
    let mut md = header(&s, &load_at_start, clock);
    md += &report::throughput(&records, &systems);
    md += &report::latency(&records, &systems);
    md += &report::connections(&records, &systems);
    md += &report::memory(&records, &systems);
    md += &crypto::markdown(&crypto);
    md += &targets::markdown(&judged);
    md += &report::shards(&records);
    for w in &warnings {
        md += &format!("\n> warning: {w}\n");
    }
    if let Err(e) = &outcome {
        md += &format!(
            "\n> aborted: {}\n",
            format!("{e:#}").lines().next().unwrap_or_default()
        );
    }
    let json = serde_json::json!({
        "tool": "zmesh-perf bench-method",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
        "finished_unix": unix_now(),
        "settings": s,
        "machine": machine_info(),
        "loadavg_at_start": load_at_start.trim(),
        "crypto": crypto,
        "aborted": outcome.as_ref().err().map(|e| format!("{e:#}")),
        "warnings": warnings,
        "targets": judged,
        "records": records,
    });
    crate::report::write_json(&dir, &json)?;
    std::fs::write(dir.join("report.md"), &md)?;
    print!("{md}");
    println!("\nResults: {}", dir.display());
    outcome
}

/// Root, the tools and the mesh binaries: checked before anything runs or is written.
fn preflight(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "bench-method needs root (network namespaces, cgroups, eBPF): run it as root"
    );
    for (tool, package) in TOOLS {
        tools::which(tool, package)
            .map_err(|e| anyhow::anyhow!("{e} (apt-get install -y {package})"))?;
    }
    netns::check_binaries(s)?;
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            l.split_whitespace().nth(2).map(|e| e == "0")
        })
        .unwrap_or(false)
}

fn run_all(
    s: &Settings,
    dir: &Path,
    records: &mut Vec<Record>,
    clock: Instant,
) -> anyhow::Result<()> {
    for rep in 1..=s.repeat {
        for &sys in &s.systems {
            eprintln!(
                "[{:>4.0}s] rep {rep}/{}: {} — bringing the topology up",
                clock.elapsed().as_secs_f64(),
                s.repeat,
                sys.name()
            );
            let logs = dir.join("logs").join(format!("rep{rep}-{}", sys.name()));
            let mut c = netns::up(s, sys, &logs)?;
            one_system(c.as_mut(), s, sys, rep, dir, &logs, records, clock)?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one_system(
    c: &mut dyn Cluster,
    s: &Settings,
    sys: SystemKind,
    rep: u32,
    dir: &Path,
    work: &Path,
    records: &mut Vec<Record>,
    clock: Instant,
) -> anyhow::Result<()> {
    let raw = dir.join("raw");
    let idle_rss = steps::idle_rss(c);
    let mut plan: Vec<(String, &str)> = Vec::new();
    for step in &s.steps {
        match step {
            Step::Iperf => {
                plan.extend(s.streams.iter().map(|n| (format!("iperf3 ×{n}"), "iperf3")))
            }
            Step::LatencyPaced => plan.push((paced_point(s.pace), "sockperf")),
            Step::LatencyMax => plan.push(("sockperf max".into(), "sockperf")),
            Step::NewConnections => plan.push((format!("ab c{}", s.ab_concurrency), "ab")),
            // Idle needs proxies to measure; it runs last, so its held tunnels cannot
            // disturb the other runs.
            Step::Idle => {}
        }
    }
    if s.steps.contains(&Step::Idle) && sys != SystemKind::Direct {
        plan.push((format!("idle ×{}", s.idle_connections), "idle"));
    }
    for (point, step) in plan {
        let mut rec = Record::new(records.len() + 1, sys.name(), step, &point, rep);
        let r = match step {
            "iperf3" => {
                let n = point.trim_start_matches("iperf3 ×").parse().unwrap_or(1);
                steps::iperf(c, s, n, &mut rec, &raw)
            }
            "sockperf" if point == "sockperf max" => steps::sockperf(c, s, None, &mut rec, &raw),
            "sockperf" => steps::sockperf(c, s, Some(s.pace), &mut rec, &raw),
            "ab" => steps::ab(c, s, &mut rec, &raw),
            _ => steps::idle(c, s.idle_connections, &mut rec, work),
        };
        if let Err(e) = r {
            rec.error = Some(format!("{e:#}"));
        }
        eprintln!(
            "[{:>4.0}s] rep {rep} {:<8} {:<18} #{} {}",
            clock.elapsed().as_secs_f64(),
            sys.name(),
            point,
            rec.id,
            rec.summary()
        );
        records.push(rec);
        // A dead proxy makes every later number meaningless: stop here.
        c.check_alive()?;
    }
    if sys != SystemKind::Direct {
        let mut rec = Record::new(records.len() + 1, sys.name(), "memory", "memory", rep);
        if let Err(e) = steps::memory_after(c, &idle_rss, &mut rec) {
            rec.error = Some(format!("{e:#}"));
        }
        eprintln!(
            "[{:>4.0}s] rep {rep} {:<8} memory #{} {}",
            clock.elapsed().as_secs_f64(),
            sys.name(),
            rec.id,
            rec.summary()
        );
        records.push(rec);
    }
    Ok(())
}

fn header(s: &Settings, load: &str, clock: Instant) -> String {
    let m = machine_info();
    format!(
        "## zmesh-perf bench-method{}\n\n\
         BENCH-METHOD on the netns topology: client pod on node 1, server pod on node 2; systems {} \
         interleaved, {} repetition(s), {} s per tool run, {} shard(s) per node proxy{}; {:.0} s in all. \
         Machine: {} ({} cores), kernel {}, load average at start {} and at end {}. Cells are medians \
         with (min–max) over repetitions; ratios are of medians, to direct from the same run; \
         `records` names the raw records (`id` in report.json, tool output under raw/), `!` a failed one.\n",
        if s.quick { " --quick" } else { "" },
        s.systems
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        s.repeat,
        s.duration_s,
        s.shards,
        if s.node_args.is_empty() {
            String::new()
        } else {
            format!(" (extra flags: {})", s.node_args.join(" "))
        },
        clock.elapsed().as_secs_f64(),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        m["loadavg_at_end"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}
