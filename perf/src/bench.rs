//! `zmesh-perf loopback`: starts the server, the relay and the two nodes once, then runs every
//! (repetition, scenario, system) with the systems interleaved (direct, relay, zmesh, direct,
//! …) so that slow drift of a shared machine hits all three alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::runtime::Runtime;

use crate::cli::{LoopbackArgs, Settings};
use crate::procfs::{Memory, Proc, clk_tck, memory};
use crate::report::{RunRecord, Scenario, markdown};
use crate::server::ServerStats;
use crate::systems::{SERVER, System, Target, spawn_relay};
use crate::zmesh::{Nodes, log_problems};
use crate::{latency, throughput};

/// Load generator threads: a runtime for the clients and one for the server, like the two
/// pods of BENCH-METHOD. In one shared 2-worker runtime a writer task and the sink task it
/// wakes tend to run on the same worker (tokio's LIFO slot), which held one direct connection
/// to one core (~10 Gbit/s here, against ~15 with separate runtimes); one worker each instead
/// held 8 direct connections to ~1.5 cores. Idle workers cost nothing, and only the busy ones
/// compete with the proxies for the 2 cores.
const CLIENT_WORKERS: usize = 2;
const SERVER_WORKERS: usize = 2;
/// How long the server may take to see every connection of a finished run closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `loopback` holds while it runs.
struct Bench {
    s: Settings,
    /// Runs the clients; the runtime on which every run is driven.
    rt: Runtime,
    /// Runs the server; kept only so that it lives as long as the runs.
    _server_rt: Runtime,
    server: Arc<ServerStats>,
    nodes: Nodes,
    relay: Proc,
    warnings: Vec<String>,
    /// Proxy memory after each repetition: steady growth across repetitions hints at a leak.
    memory_by_rep: Vec<serde_json::Value>,
}

pub fn loopback(args: &LoopbackArgs) -> anyhow::Result<()> {
    let started = unix_now();
    let mut b = Bench::start(args.settings()?)?;
    let mut scenarios: Vec<Scenario> = (b.s.connections.iter())
        .map(|&conns| Scenario::Throughput { conns })
        .collect();
    scenarios.push(Scenario::Latency {
        conns: b.s.latency_connections,
    });
    let mut records = Vec::new();
    let outcome = b.run_all(&scenarios, &mut records);

    let memory = b.memory();
    b.note_log_problems();
    let stem = format!("loopback-{}", timestamp(started));
    b.keep_logs(&stem);
    let json = serde_json::json!({
        "tool": "zmesh-perf loopback",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
        "finished_unix": unix_now(),
        "settings": b.s,
        "machine": machine_info(),
        "zmesh_driver": b.nodes.driver,
        "aborted": outcome.as_ref().err().map(|e| format!("{e:#}")),
        "warnings": b.warnings,
        "memory": memory_json(&memory),
        "memory_by_repetition": b.memory_by_rep,
        "records": records,
    });
    let path = b.s.out.join(format!("{stem}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    b.print_report(&records, &scenarios, &memory, &outcome);
    println!("\nRaw records: {}", path.display());
    outcome
}

impl Bench {
    /// Starts the server, the nodes and the relay; an error if any of them cannot start.
    fn start(s: Settings) -> anyhow::Result<Bench> {
        std::fs::create_dir_all(&s.out)
            .with_context(|| format!("creating --out {}", s.out.display()))?;
        let mut warnings = Vec::new();
        if let Some(w) = compilers_running() {
            eprintln!("warning: {w}");
            warnings.push(w);
        }
        let runtime = |name: &str, workers| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name(name)
                .enable_all()
                .build()
        };
        let rt = runtime("client", CLIENT_WORKERS)?;
        let server_rt = runtime("server", SERVER_WORKERS)?;
        let server = server_rt.block_on(crate::server::start(SERVER))?;
        eprintln!(
            "starting zmesh nodes ({}, {} shards each)",
            s.node_bin.display(),
            s.shards
        );
        let nodes = Nodes::start(&s)?;
        let relay = spawn_relay(s.shards, nodes.dir.path())?;
        eprintln!(
            "nodes ready (driver {}), relay on {}",
            nodes.driver,
            crate::systems::RELAY
        );
        Ok(Bench {
            s,
            rt,
            _server_rt: server_rt,
            server,
            nodes,
            relay,
            warnings,
            memory_by_rep: Vec::new(),
        })
    }

    fn run_all(
        &mut self,
        scenarios: &[Scenario],
        records: &mut Vec<RunRecord>,
    ) -> anyhow::Result<()> {
        for rep in 1..=self.s.repeat {
            for &sc in scenarios {
                for sys in System::ALL {
                    let rec = self.run_one(sys, sc, rep);
                    eprintln!("{}", rec.progress());
                    records.push(rec);
                    // A dead proxy makes every later number meaningless: stop here.
                    self.nodes.check_alive()?;
                    self.relay.check_alive()?;
                }
            }
            let m = memory_json(&self.memory());
            self.memory_by_rep
                .push(serde_json::json!({ "repetition": rep, "memory": m }));
        }
        Ok(())
    }

    fn run_one(&mut self, sys: System, sc: Scenario, rep: u32) -> RunRecord {
        let pids = match sys {
            System::Direct => Vec::new(),
            System::Relay => vec![self.relay.pid()],
            System::Zmesh => self.nodes.pids(),
        };
        let (warmup, duration) = (
            Duration::from_secs_f64(self.s.warmup_s),
            Duration::from_secs_f64(self.s.duration_s),
        );
        let target = Target::of(sys);
        let mut rec = RunRecord::new(sys, sc, rep);
        let result = match sc {
            Scenario::Throughput { conns } => throughput::run(
                &self.rt,
                target,
                conns,
                warmup,
                duration,
                &self.server,
                &pids,
            )
            .map(|m| rec.set_throughput(m.bytes, m.cpu)),
            Scenario::Latency { conns } => {
                let p = latency::Params {
                    conns,
                    rate: self.s.rate,
                    size: self.s.size,
                    warmup,
                    duration,
                };
                latency::run(&self.rt, target, p, &pids).map(|m| {
                    rec.set_cpu(m.cpu);
                    rec.bytes = m.stats.requests * self.s.size as u64;
                    rec.latency = Some(m.stats);
                })
            }
        };
        if let Err(e) = result {
            rec.error = Some(format!("{e:#}"));
        }
        if !self.server.wait_idle(DRAIN_TIMEOUT) {
            let w = format!(
                "{}/{}/rep {rep}: server connections still open {DRAIN_TIMEOUT:?} after the run",
                sc.label(),
                sys.name()
            );
            eprintln!("warning: {w}");
            self.warnings.push(w);
        }
        rec
    }

    fn print_report(
        &self,
        records: &[RunRecord],
        scenarios: &[Scenario],
        memory: &[(String, Memory)],
        outcome: &anyhow::Result<()>,
    ) {
        let s = &self.s;
        println!("## zmesh-perf loopback\n");
        println!(
            "{} s measured after {} s warm-up, {} repetition(s), {} shards per proxy, zmesh driver {}; \
             medians with (min–max), ratios are of medians.\n",
            s.duration_s, s.warmup_s, s.repeat, s.shards, self.nodes.driver
        );
        print!("{}", markdown(records, scenarios, memory));
        for w in &self.warnings {
            println!("\n> warning: {w}");
        }
        if let Err(e) = outcome {
            println!(
                "\n> aborted: {}",
                e.to_string().lines().next().unwrap_or_default()
            );
        }
    }

    fn note_log_problems(&mut self) {
        for p in &self.nodes.procs {
            let (warn, error, first) = log_problems(p);
            if warn + error > 0 {
                self.warnings.push(format!(
                    "{}: {warn} WARN and {error} ERROR log lines, first: {}",
                    p.name,
                    first.join(" | ")
                ));
            }
        }
    }

    /// Copies the proxies' logs beside the JSON file (the temp dir goes away with the nodes).
    fn keep_logs(&mut self, stem: &str) {
        for p in self.nodes.procs.iter().chain([&self.relay]) {
            let to = self.s.out.join(format!("{stem}.{}.log", p.name));
            if let Err(e) = std::fs::copy(&p.log, &to) {
                self.warnings.push(format!(
                    "copying {} to {}: {e}",
                    p.log.display(),
                    to.display()
                ));
            }
        }
    }

    fn memory(&self) -> Vec<(String, Memory)> {
        let mut out = Vec::new();
        for p in self.nodes.procs.iter().chain([&self.relay]) {
            match memory(p.pid()) {
                Ok(m) => out.push((p.name.clone(), m)),
                Err(e) => eprintln!("warning: memory of {}: {e:#}", p.name),
            }
        }
        out
    }
}

fn memory_json(memory: &[(String, Memory)]) -> serde_json::Value {
    memory
        .iter()
        .map(|(n, m)| (n.clone(), serde_json::json!(m)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDD-HHMMSS` (UTC) for file names.
pub(crate) fn timestamp(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub(crate) fn machine_info() -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "loadavg_at_end": read("/proc/loadavg"),
        "clk_tck": clk_tck(),
    })
}

/// Compilers running beside us make every number noisy (BENCH-METHOD: wait until none runs).
pub(crate) fn compilers_running() -> Option<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let comm: PathBuf = entry.path().join("comm");
        if let Ok(c) = std::fs::read_to_string(comm) {
            let c = c.trim();
            if matches!(c, "rustc" | "cc1" | "cc1plus" | "ld" | "ld.lld" | "clang") {
                names.push(c.to_string());
            }
        }
    }
    (!names.is_empty()).then(|| {
        format!(
            "{} compiler process(es) running ({}): numbers will be noisy",
            names.len(),
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(951_782_400 + 3_661), "20000229-010101");
        assert_eq!(timestamp(1_767_225_599), "20251231-235959");
    }
}
