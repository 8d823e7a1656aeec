//! One BENCH-METHOD measurement each: the tool runs in the client pod against its server in
//! the server pod, while the proxies' CPU (/proc/<pid>/stat), the machine's busy time
//! (/proc/stat) and the nodes' shard metrics are read before and after. The tool's own output
//! is kept under `raw/`, named after the record.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::method::cli::Settings;
use crate::method::cluster::{Cluster, ProxyProc, Ran, Side};
use crate::method::record::{CpuWindow, IdleHeld, ProxyMemory, Record};
use crate::method::tools;
use crate::procfs::{clk_tck, machine_ticks, memory, process_ticks};
use crate::shards::{self, Scrape};

pub const IPERF_PORT: u16 = 5201;
pub const SOCKPERF_PORT: u16 = 11111;
pub const HTTP_PORT: u16 = 80;
pub const HOLD_PORT: u16 = 9000;

/// Readings taken before a run.
struct Before {
    at: Instant,
    procs: Vec<(ProxyProc, u64)>,
    machine: u64,
    scrapes: Vec<Scrape>,
}

fn before(c: &dyn Cluster) -> anyhow::Result<Before> {
    let procs = (c.proxies().into_iter())
        .map(|p| Ok((p.clone(), process_ticks(p.pid)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scrapes = scrape_all(c, &procs);
    Ok(Before {
        at: Instant::now(),
        procs,
        machine: machine_ticks()?.busy,
        scrapes,
    })
}

/// Metrics of every node; a node that does not answer is left out (its shards then show no
/// numbers rather than made-up ones).
fn scrape_all(c: &dyn Cluster, procs: &[(ProxyProc, u64)]) -> Vec<Scrape> {
    (procs.iter())
        .filter_map(|(p, _)| c.metrics(&p.node).ok().map(|t| shards::parse(&p.node, &t)))
        .filter(|s| !s.values.is_empty())
        .collect()
}

fn after(c: &dyn Cluster, b: Before, rec: &mut Record) -> anyhow::Result<()> {
    let seconds = b.at.elapsed().as_secs_f64();
    let machine = machine_ticks()?.busy;
    let tck = clk_tck();
    let mut per_proxy = Vec::new();
    for (p, t0) in &b.procs {
        let t1 = process_ticks(p.pid).with_context(|| format!("{} proxy gone", p.node))?;
        per_proxy.push((p.node.clone(), p.pid, t1.saturating_sub(*t0) as f64 / tck));
    }
    let scrapes = scrape_all(c, &b.procs);
    rec.shard_seconds = Some(seconds);
    rec.shards = (b.scrapes.iter())
        .filter_map(|a| Some(shards::delta(a, scrapes.iter().find(|s| s.node == a.node)?)))
        .flatten()
        .collect();
    rec.cpu = Some(CpuWindow {
        seconds,
        proxy_cpu_seconds: per_proxy.iter().map(|p| p.2).sum(),
        per_proxy,
        machine_busy_seconds: machine.saturating_sub(b.machine) as f64 / tck,
    });
    Ok(())
}

/// Runs a tool in the client pod inside a CPU window, keeps its output as `raw/<id>-<name>`.
fn measured(
    c: &mut dyn Cluster,
    rec: &mut Record,
    raw_dir: &Path,
    raw_name: &str,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<Ran> {
    let b = before(c)?;
    let ran = c.run(Side::Client, program, args, timeout)?;
    after(c, b, rec)?;
    let file = format!("{}-{raw_name}", rec.id);
    let text = format!(
        "$ {program} {}\n# exit: {}\n# stderr:\n{}\n# stdout:\n{}",
        args.join(" "),
        ran.status,
        ran.stderr,
        ran.stdout
    );
    std::fs::write(raw_dir.join(&file), text).context("writing the raw output")?;
    rec.raw = Some(format!("raw/{file}"));
    Ok(ran)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn iperf(
    c: &mut dyn Cluster,
    s: &Settings,
    streams: u32,
    rec: &mut Record,
    raw: &Path,
) -> anyhow::Result<()> {
    let ip = c.server_ip().to_string();
    let (port, t, p) = (
        IPERF_PORT.to_string(),
        s.duration_s.to_string(),
        streams.to_string(),
    );
    let args = strings(&["-c", &ip, "-p", &port, "-t", &t, "-P", &p, "-J"]);
    let timeout = Duration::from_secs(u64::from(s.duration_s) + 30);
    let ran = measured(c, rec, raw, "iperf3.json", "iperf3", &args, timeout)?;
    // iperf3 -J writes its errors into the JSON too: parse first, then look at the status.
    let i = tools::parse_iperf(&ran.stdout)?;
    anyhow::ensure!(ran.success, "iperf3 exited {}: {}", ran.status, ran.stderr);
    rec.iperf = Some(i);
    rec.gbit_per_s = Some(i.bits_per_second / 1e9);
    if let Some(cpu) = rec.cpu.as_ref().filter(|c| !c.per_proxy.is_empty()) {
        anyhow::ensure!(i.bytes_received > 0, "iperf3 received nothing");
        rec.proxy_cpu_s_per_gb = Some(cpu.proxy_cpu_seconds / (i.bytes_received as f64 / 1e9));
    }
    Ok(())
}

/// sockperf ping-pong at `pace` messages per second, or unpaced (`None`).
pub fn sockperf(
    c: &mut dyn Cluster,
    s: &Settings,
    pace: Option<f64>,
    rec: &mut Record,
    raw: &Path,
) -> anyhow::Result<()> {
    let ip = c.server_ip().to_string();
    let mps = pace
        .map(|p| format!("{}", p.round() as u64))
        .unwrap_or("max".into());
    let args = strings(&[
        "ping-pong",
        "--tcp",
        "-i",
        &ip,
        "-p",
        &SOCKPERF_PORT.to_string(),
        "-m",
        &s.msg_size.to_string(),
        "-t",
        &s.duration_s.to_string(),
        &format!("--mps={mps}"),
        "--full-rtt",
    ]);
    let timeout = Duration::from_secs(u64::from(s.duration_s) + 30);
    let ran = measured(c, rec, raw, "sockperf.txt", "sockperf", &args, timeout)?;
    anyhow::ensure!(
        ran.success,
        "sockperf exited {}: {}{}",
        ran.status,
        ran.stderr,
        ran.stdout
    );
    rec.sockperf = Some(tools::parse_sockperf(&format!(
        "{}\n{}",
        ran.stdout, ran.stderr
    ))?);
    Ok(())
}

pub fn ab(c: &mut dyn Cluster, s: &Settings, rec: &mut Record, raw: &Path) -> anyhow::Result<()> {
    let url = format!("http://{}:{HTTP_PORT}/", c.server_ip());
    // -t first: it also sets -n to 50,000, which the -n after it raises (ab keeps a record
    // per request, so -n bounds its memory: 60,000/s is far above what this machine does).
    let n = u64::from(s.duration_s) * 60_000;
    let args = strings(&[
        "-q",
        "-r",
        "-t",
        &s.duration_s.to_string(),
        "-n",
        &n.to_string(),
        "-c",
        &s.ab_concurrency.to_string(),
        "-s",
        "10",
        &url,
    ]);
    let timeout = Duration::from_secs(u64::from(s.duration_s) + 30);
    let ran = measured(c, rec, raw, "ab.txt", "ab", &args, timeout)?;
    anyhow::ensure!(ran.success, "ab exited {}: {}", ran.status, ran.stderr);
    let a = tools::parse_ab(&ran.stdout)?;
    rec.ab = Some(a);
    if let Some(cpu) = rec.cpu.as_ref().filter(|c| !c.per_proxy.is_empty()) {
        rec.proxy_cpu_ms_per_connection = Some(cpu.proxy_cpu_seconds * 1e3 / a.complete as f64);
    }
    Ok(())
}

/// VmRSS summed over the proxies.
fn rss_sum(procs: &[ProxyProc]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for p in procs {
        sum += memory(p.pid)?.vm_rss_kib;
    }
    Ok(sum)
}

/// Opens `n` connections from the client pod to the hold server, one round trip each, holds
/// them, and reads the proxies' memory.
pub fn idle(c: &mut dyn Cluster, n: u32, rec: &mut Record, work: &Path) -> anyhow::Result<()> {
    let procs = c.proxies();
    anyhow::ensure!(!procs.is_empty(), "idle: no proxies to measure");
    let before = rss_sum(&procs)?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let log = work.join(format!("hold-{}.log", rec.id));
    let target = format!("{}:{HOLD_PORT}", c.server_ip());
    let args = strings(&[
        "hold",
        "--connect",
        &target,
        "--connections",
        &n.to_string(),
    ]);
    let mut h = c.spawn(Side::Client, &exe, &args, &log)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = format!("held {n}");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&want) {
            break;
        }
        if let Some(status) = h.exited() {
            anyhow::bail!("hold exited ({status}) before holding {n} connections:\n{text}");
        }
        if Instant::now() > deadline {
            h.kill();
            anyhow::bail!("hold did not open {n} connections within 120 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the proxies settle (buffers returned, timers armed) before reading.
    std::thread::sleep(Duration::from_millis(500));
    let held = rss_sum(&procs);
    h.kill();
    let held = held?;
    rec.idle = Some(IdleHeld {
        connections: n,
        rss_before_kib: before,
        rss_held_kib: held,
        kib_per_connection: (held as f64 - before as f64) / f64::from(n),
    });
    Ok(())
}

/// VmRSS (now) of every proxy: right after the pods were captured.
pub fn idle_rss(c: &dyn Cluster) -> Vec<(String, u64)> {
    (c.proxies().iter())
        .filter_map(|p| Some((p.node.clone(), memory(p.pid).ok()?.vm_rss_kib)))
        .collect()
}

/// VmRSS and VmHWM of every proxy after the runs, beside the idle readings.
pub fn memory_after(
    c: &dyn Cluster,
    idle: &[(String, u64)],
    rec: &mut Record,
) -> anyhow::Result<()> {
    for p in c.proxies() {
        let m = memory(p.pid).with_context(|| format!("{} proxy gone", p.node))?;
        rec.memory.push(ProxyMemory {
            idle_rss_kib: idle.iter().find(|(n, _)| *n == p.node).map(|(_, k)| *k),
            node: p.node,
            pid: p.pid,
            vm_rss_kib: m.vm_rss_kib,
            vm_hwm_kib: m.vm_hwm_kib,
        });
    }
    Ok(())
}
