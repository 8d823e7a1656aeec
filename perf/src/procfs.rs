//! Reading CPU time and memory from /proc, and owning the child processes we measure.
//!
//! CPU time comes in clock ticks (`utime`, `stime` of /proc/<pid>/stat, all threads included;
//! the `cpu` line of /proc/stat for the whole machine). Ticks are converted to seconds with
//! `getconf CLK_TCK`, read once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;

/// Ticks per second of /proc's CPU times.
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output();
        match out
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            Some(t) if t > 0.0 => t,
            _ => {
                // USER_HZ is 100 on every Linux architecture we run on; getconf only confirms it.
                eprintln!("zmesh-perf: `getconf CLK_TCK` failed, assuming 100 ticks per second");
                100.0
            }
        }
    })
}

/// utime + stime of a process (all its threads), in ticks.
pub fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_process_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// Fields 14 and 15 of /proc/<pid>/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_process_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' after the command name")?;
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("field {n} missing"))?
            .parse()
            .with_context(|| format!("field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// `pid` and all its descendants (a proxy that forks workers is measured whole).
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    // Breadth-first over the parent links; bounded by the number of processes.
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        for &(p, pp) in &parent_of {
            if pp == cur && !out.contains(&p) {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

/// Whole-machine CPU ticks from the `cpu` line of /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineTicks {
    /// user, nice, system, irq, softirq and steal: everything but idle and iowait.
    pub busy: u64,
}

pub fn machine_ticks() -> anyhow::Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_ticks(&stat).context("parsing /proc/stat")
}

fn parse_machine_ticks(stat: &str) -> anyhow::Result<MachineTicks> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(v.len() >= 8, "cpu line has {} fields", v.len());
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
    // counted in user and nice.
    Ok(MachineTicks {
        busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7],
    })
}

/// Resident and peak resident memory, KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("{key} missing"))?;
        Ok(v.split_whitespace().next().context("empty")?.parse()?)
    };
    Ok(Memory {
        vm_rss_kib: kib("VmRSS:")?,
        vm_hwm_kib: kib("VmHWM:")?,
    })
}

/// CPU counters at one instant: the measured processes, ourselves, and the machine.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    pub at: Instant,
    pub procs: u64,
    pub own: u64,
    pub machine: MachineTicks,
}

impl CpuSnapshot {
    pub fn take(pids: &[u32]) -> anyhow::Result<CpuSnapshot> {
        let mut procs = 0;
        for &pid in pids {
            procs += process_ticks(pid)?;
        }
        Ok(CpuSnapshot {
            at: Instant::now(),
            procs,
            own: process_ticks(std::process::id())?,
            machine: machine_ticks()?,
        })
    }
}

/// CPU seconds spent between two snapshots.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CpuUsage {
    /// Wall-clock seconds between the snapshots.
    pub seconds: f64,
    /// user+system of the measured proxy processes (none for direct).
    pub proxy_cpu_seconds: f64,
    /// user+system of zmesh-perf itself (load generator and servers).
    pub loadgen_cpu_seconds: f64,
    /// Busy time of all cores (includes softirq work of the loopback device).
    pub machine_busy_seconds: f64,
}

impl CpuUsage {
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot) -> CpuUsage {
        let tck = clk_tck();
        let secs = |x: u64, y: u64| y.saturating_sub(x) as f64 / tck;
        CpuUsage {
            seconds: b.at.duration_since(a.at).as_secs_f64(),
            proxy_cpu_seconds: secs(a.procs, b.procs),
            loadgen_cpu_seconds: secs(a.own, b.own),
            machine_busy_seconds: secs(a.machine.busy, b.machine.busy),
        }
    }
}

/// A child process that is killed when dropped, with its output in a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with its status and the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => anyhow::bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(30)
            ),
            Err(e) => anyhow::bail!("{}: waiting for it failed: {e}", self.name),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `path` for a child's stdout and stderr.
pub fn log_file(path: &Path) -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let g = f.try_clone()?;
    Ok((f, g))
}

/// Reads the first line a child prints (a readiness announcement); EOF means it exited.
pub fn first_line(out: ChildStdout) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_fields() {
        let stat =
            "4242 (zmesh (node) a) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(stat).expect("parse"), 1234 + 567);
        assert!(parse_process_ticks("4242 zmesh S 1").is_err());
    }

    #[test]
    fn machine_stat_line() {
        let stat = "cpu  100 5 50 1000 7 3 2 1 9 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n";
        assert_eq!(
            parse_machine_ticks(stat).expect("parse").busy,
            100 + 5 + 50 + 3 + 2 + 1
        );
    }

    #[test]
    fn descendants_include_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let all = with_descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(all[0], std::process::id());
        assert!(all.contains(&child.id()), "{all:?}");
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_ticks(std::process::id()).is_ok());
        let m = memory(std::process::id()).expect("status");
        assert!(m.vm_hwm_kib >= m.vm_rss_kib && m.vm_rss_kib > 0);
        assert!(machine_ticks().is_ok());
    }
}
