//! `zmesh-perf suite`: measures the crypto ceiling, starts the server and every system once,
//! then runs every (repetition, point, system) with the systems interleaved, and writes the
//! results folder: `report.json` (every raw record), `report.md` (medians, ranges, ratios to
//! direct, each row naming its records) and SVG plots.
//!
//! A system is a way from the client to the server: an endpoint pair (the client's
//! [`Target`], the server's fixed address) plus the processes to measure. The loopback
//! topology builds them here; another topology only has to build other ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Runtime;

use crate::bench::{compilers_running, machine_info, timestamp, unix_now};
use crate::procfs::{Memory, memory};
use crate::proxy;
use crate::server::ServerStats;
use crate::shards;
use crate::suite_cli::{ScenarioKind, SuiteArgs, SuiteSettings};
use crate::suite_report::{Inputs, Point, Record, markdown};
use crate::suite_systems::{Procs, Sys, relay_spec};
use crate::systems::{SERVER, Target};
use crate::zmesh::{Nodes, log_problems};
use crate::{crypto, idle, latency, openloop, throughput};

/// How long the server may take to see every connection of a finished run closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
struct Suite {
    s: SuiteSettings,
    rt: Runtime,
    _server_rt: Runtime,
    server: Arc<ServerStats>,
    /// Where the server listens: the server workload's IP, a port the kernel picked (so that
    /// suites in parallel, e.g. tests, do not collide).
    server_addr: SocketAddr,
    systems: Vec<Sys>,
    /// Proxies' working directories and logs; removed at the end (logs copied out first).
    work: tempfile::TempDir,
    warnings: Vec<String>,
    zmesh_driver: Option<String>,
}

pub fn suite(args: &SuiteArgs) -> anyhow::Result<()> {
    let s = args.settings()?;
    let started = unix_now();
    let clock = Instant::now();
    raise_fd_limit(s.idle_connections);
    let mut warnings = Vec::new();
    if let Some(w) = compilers_running() {
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    // First, while nothing else of ours runs.
    eprintln!(
        "measuring the crypto ceiling ({} s per measurement)",
        s.crypto_time_s
    );
    let crypto = crypto::measure(Duration::from_secs_f64(s.crypto_time_s))?;
    let mut suite = Suite::start(s, warnings)?;
    let points = suite.points();
    let mut records = Vec::new();
    let outcome = suite.run_all(&points, &mut records, clock);
    let memory = suite.memory();
    suite.note_log_problems();

    let dir = suite
        .s
        .node
        .out
        .join(format!("suite-{}", timestamp(started)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    suite.keep_logs(&dir);
    let md = suite.markdown(&records, &points, &crypto, &memory, &outcome, clock);
    let plots = crate::suite_plots::write_all(&dir, &records, &points, &suite.s.systems)?;
    let json = serde_json::json!({
        "tool": "zmesh-perf suite",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
        "finished_unix": unix_now(),
        "settings": suite.s,
        "machine": machine_info(),
        "zmesh_driver": suite.zmesh_driver,
        "proxies": suite.proxy_commands(),
        "crypto": crypto,
        "aborted": outcome.as_ref().err().map(|e| format!("{e:#}")),
        "warnings": suite.warnings,
        "memory": memory.iter().map(|(s, p, m)| serde_json::json!({"system": s, "process": p, "memory": m})).collect::<Vec<_>>(),
        "points": points,
        "records": records,
        "plots": plots.iter().filter_map(|p| p.file_name()).map(|f| f.to_string_lossy()).collect::<Vec<_>>(),
    });
    crate::report::write_json(&dir, &json)?;
    std::fs::write(dir.join("report.md"), &md)?;
    print!("{md}");
    println!("\nResults: {}", dir.display());
    outcome
}

impl Suite {
    fn start(s: SuiteSettings, warnings: Vec<String>) -> anyhow::Result<Suite> {
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()
        };
        let rt = runtime("client")?;
        let server_rt = runtime("server")?;
        let any_port = SocketAddr::new(SERVER.ip(), 0);
        let (server, server_addr) = server_rt.block_on(crate::server::start_at(any_port))?;
        let work = tempfile::Builder::new()
            .prefix("zmesh-perf-suite-")
            .tempdir()?;
        let mut suite = Suite {
            s,
            rt,
            _server_rt: server_rt,
            server,
            server_addr,
            systems: Vec::new(),
            work,
            warnings,
            zmesh_driver: None,
        };
        for name in suite.s.systems.clone() {
            let sys = suite.start_system(&name)?;
            eprintln!(
                "system {name} ready: clients connect to {}",
                sys.target.addr
            );
            suite.systems.push(sys);
        }
        Ok(suite)
    }

    fn start_system(&mut self, name: &str) -> anyhow::Result<Sys> {
        let (target, procs) = match name {
            "direct" => (Target::plain(self.server_addr), Procs::None),
            "zmesh" => {
                eprintln!("starting zmesh nodes ({})", self.s.node.node_bin.display());
                let nodes = Nodes::start(&self.s.node)?;
                self.zmesh_driver = Some(nodes.driver.clone());
                let target = Target {
                    socks5: Some(self.server_addr),
                    ..Target::of(crate::systems::System::Zmesh)
                };
                (target, Procs::Zmesh(Box::new(nodes)))
            }
            other => {
                let spec = if other == "relay" {
                    relay_spec(self.s.node.shards)
                } else {
                    (self.s.proxies.iter())
                        .find(|p| p.name == other)
                        .cloned()
                        .with_context(|| format!("no --proxy named {other}"))?
                };
                let running = proxy::start(&spec, self.server_addr, &self.work.path().join(other))?;
                (
                    Target::plain(running.listen),
                    Procs::Proxy(Box::new(running)),
                )
            }
        };
        Ok(Sys {
            name: name.to_string(),
            target,
            procs,
        })
    }

    /// Every point of the selected scenarios, in the order they run.
    fn points(&self) -> Vec<Point> {
        let s = &self.s;
        let mut v = Vec::new();
        let p = |kind, connections, rate| Point {
            kind,
            connections,
            rate,
            size: s.size,
        };
        // Idle first (see run_all), then the others in the order given.
        let mut kinds = s.scenarios.clone();
        kinds.sort_by_key(|k| *k != ScenarioKind::Idle);
        for &k in &kinds {
            match k {
                ScenarioKind::TcpLatency => {
                    v.extend((s.rates.iter()).map(|&r| p(k, s.latency_connections, Some(r))))
                }
                ScenarioKind::Throughput => v.extend(s.connections.iter().map(|&c| p(k, c, None))),
                ScenarioKind::Http1 | ScenarioKind::Http2 => {
                    v.push(p(k, s.http_connections, Some(s.http_rate)))
                }
                ScenarioKind::Churn => v.push(p(k, 1, Some(s.churn_rate))),
                ScenarioKind::Idle => v.push(p(k, s.idle_connections, None)),
            }
        }
        v
    }

    fn run_all(
        &mut self,
        points: &[Point],
        records: &mut Vec<Record>,
        clock: Instant,
    ) -> anyhow::Result<()> {
        let idle = points
            .iter()
            .filter(|p| p.kind == ScenarioKind::Idle)
            .count();
        let total = (self.s.repeat as usize * (points.len() - idle) + idle) * self.systems.len();
        let loop_start = Instant::now();
        for rep in 1..=self.s.repeat {
            // Idle runs once, first: allocators keep what a proxy freed, so a repeated idle
            // run would reuse the memory of the first and understate the cost per connection.
            for p in points
                .iter()
                .filter(|p| rep == 1 || p.kind != ScenarioKind::Idle)
            {
                for si in 0..self.systems.len() {
                    let rec = self.run_one(si, *p, rep, records.len() + 1);
                    let done = records.len() + 1;
                    let per_run = loop_start.elapsed().as_secs_f64() / done as f64;
                    eprintln!(
                        "[{done:>3}/{total} {:>4.0}s, ~{:.0}s left] rep {rep} {:<24} {:<8} {}",
                        clock.elapsed().as_secs_f64(),
                        per_run * (total - done) as f64,
                        p.label(),
                        rec.system,
                        rec.summary()
                    );
                    records.push(rec);
                    // A dead proxy makes every later number meaningless: stop here.
                    self.systems[si].check_alive()?;
                }
            }
        }
        Ok(())
    }

    fn run_one(&mut self, si: usize, p: Point, rep: u32, id: usize) -> Record {
        let sys = &self.systems[si];
        let (pids, target, proxied) = (sys.pids(), sys.target, !matches!(sys.procs, Procs::None));
        let mut rec = Record {
            id,
            system: sys.name.clone(),
            scenario: p.kind.name().to_string(),
            point: p.label(),
            repetition: rep,
            connections: p.connections,
            rate: p.rate,
            size: p.size,
            ..Record::default()
        };
        let before = sys.scrape();
        let scraped_at = Instant::now();
        if let Err(e) = self.measure(&mut rec, p, target, &pids, proxied) {
            rec.error = Some(format!("{e:#}"));
        }
        let sys = &self.systems[si];
        if let (Some(a), Some(b)) = (before, sys.scrape()) {
            rec.shard_seconds = Some(scraped_at.elapsed().as_secs_f64());
            rec.shards = a
                .iter()
                .zip(&b)
                .flat_map(|(a, b)| shards::delta(a, b))
                .collect();
        }
        if !self.server.wait_idle(DRAIN_TIMEOUT) {
            let w = format!(
                "{}/{}/rep {rep}: server connections still open {DRAIN_TIMEOUT:?} after the run",
                rec.point, rec.system
            );
            eprintln!("warning: {w}");
            self.warnings.push(w);
        }
        rec
    }

    fn measure(
        &self,
        rec: &mut Record,
        p: Point,
        target: Target,
        pids: &[u32],
        proxied: bool,
    ) -> anyhow::Result<()> {
        let (warmup, duration) = (
            Duration::from_secs_f64(self.s.warmup_s),
            Duration::from_secs_f64(self.s.duration_s),
        );
        let rate = p.rate.unwrap_or(1.0);
        match p.kind {
            ScenarioKind::TcpLatency => {
                let params = latency::Params {
                    conns: p.connections,
                    rate,
                    size: p.size,
                    warmup,
                    duration,
                };
                let m = latency::run(&self.rt, target, params, pids)?;
                rec.set_cpu(m.cpu, proxied);
                rec.achieved_per_s = Some(m.stats.requests as f64 / duration.as_secs_f64());
                rec.latency = Some(m.stats);
            }
            ScenarioKind::Throughput => {
                let m = throughput::run(
                    &self.rt,
                    target,
                    p.connections,
                    warmup,
                    duration,
                    &self.server,
                    pids,
                )?;
                rec.set_cpu(m.cpu, proxied);
                rec.bytes = m.bytes;
                rec.gbit_per_s = Some(m.bytes as f64 * 8.0 / 1e9 / m.cpu.seconds);
                rec.proxy_cpu_s_per_gb = rec.proxy_cpu_seconds.map(|c| c / (m.bytes as f64 / 1e9));
            }
            ScenarioKind::Http1 | ScenarioKind::Http2 | ScenarioKind::Churn => {
                let work = match p.kind {
                    ScenarioKind::Http1 => openloop::Work::Http1,
                    ScenarioKind::Http2 => openloop::Work::Http2,
                    _ => openloop::Work::Churn,
                };
                let params = openloop::Params {
                    work,
                    conns: p.connections,
                    rate,
                    size: p.size,
                    warmup,
                    duration,
                };
                let m = openloop::run(&self.rt, target, params, pids)?;
                rec.set_cpu(m.cpu, proxied);
                rec.achieved_per_s = Some(m.stats.requests as f64 / duration.as_secs_f64());
                rec.errors = (p.kind == ScenarioKind::Churn).then_some(m.errors);
                rec.latency = Some(m.stats);
            }
            ScenarioKind::Idle => {
                let m = idle::run(&self.rt, target, p.connections, &self.server, pids)?;
                rec.idle = Some(m);
            }
        }
        Ok(())
    }

    /// Memory of every proxy process after all runs: (system, process, memory).
    fn memory(&self) -> Vec<(String, String, Memory)> {
        let mut out = Vec::new();
        for sys in &self.systems {
            for p in sys.procs() {
                match memory(p.pid()) {
                    Ok(m) => out.push((sys.name.clone(), p.name.clone(), m)),
                    Err(e) => eprintln!("warning: memory of {}: {e:#}", p.name),
                }
            }
        }
        out
    }

    fn note_log_problems(&mut self) {
        if let Some(Procs::Zmesh(n)) = self
            .systems
            .iter()
            .map(|s| &s.procs)
            .find(|p| matches!(p, Procs::Zmesh(_)))
        {
            for p in &n.procs {
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
    }

    /// Copies the proxies' logs into the results folder (their temp dirs go away).
    fn keep_logs(&mut self, dir: &Path) {
        let mut failed = Vec::new();
        for sys in &self.systems {
            for p in sys.procs() {
                let to: PathBuf = dir.join(format!("{}.{}.log", sys.name, p.name));
                if let Err(e) = std::fs::copy(&p.log, &to) {
                    failed.push(format!("copying {}: {e}", p.log.display()));
                }
            }
        }
        self.warnings.extend(failed);
    }

    fn proxy_commands(&self) -> serde_json::Value {
        (self.systems.iter())
            .filter_map(|s| match &s.procs {
                Procs::Proxy(p) => Some(serde_json::json!({
                    "system": s.name, "cmd": p.cmd, "listen": p.listen.to_string()
                })),
                _ => None,
            })
            .collect()
    }

    fn markdown(
        &self,
        records: &[Record],
        points: &[Point],
        crypto: &[crypto::CryptoResult],
        memory: &[(String, String, Memory)],
        outcome: &anyhow::Result<()>,
        clock: Instant,
    ) -> String {
        let s = &self.s;
        let mut md = format!(
            "## zmesh-perf suite{}\n\n{} s measured after {} s warm-up, {} repetition(s), systems {} \
             interleaved; {} shards per zmesh node, zmesh driver {}; {:.0} s in all. Cells are medians \
             with (min–max) over repetitions; ratios are of medians, to direct from the same run; \
             `records` names the raw records (`id` in report.json), `!` marks a failed one.\n",
            if s.quick { " --quick" } else { "" },
            s.duration_s,
            s.warmup_s,
            s.repeat,
            s.systems.join(", "),
            s.node.shards,
            self.zmesh_driver.as_deref().unwrap_or("–"),
            clock.elapsed().as_secs_f64(),
        );
        md += &markdown(&Inputs {
            records,
            points,
            systems: &s.systems,
            crypto,
            memory,
        });
        for w in &self.warnings {
            md += &format!("\n> warning: {w}\n");
        }
        if let Err(e) = outcome {
            md += &format!(
                "\n> aborted: {}\n",
                e.to_string().lines().next().unwrap_or_default()
            );
        }
        md
    }
}

/// Idle connections need two descriptors each here (client and server end) and one or two in
/// every proxy (children inherit the limit): raise the soft limit towards the hard one.
fn raise_fd_limit(idle: usize) {
    let want = (idle as u64) * 3 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => eprintln!(
            "warning: open-file limit is {got}, the idle scenario with {idle} connections may fail"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: raising the open-file limit: {e}"),
    }
}
