//! Flags of `zmesh-perf suite`, and the settings they resolve to (defaults, --quick).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::{Driver, parse_count, parse_duration, parse_rate, parse_size};
use crate::proxy::ProxySpec;

/// The scenarios of the suite.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// TCP echo, open loop at each --rates, latency from the intended send time.
    TcpLatency,
    /// Closed-loop bulk transfer at each --connections count, receiver-side Gbit/s.
    Throughput,
    /// HTTP/1.1 POST/200 with --size bodies, open loop at --http-rate.
    Http1,
    /// HTTP/2 streams with --size bodies, open loop at --http-rate.
    Http2,
    /// A new connection per request (connect, echo --size bytes, close) at --churn-rate.
    Churn,
    /// --idle-connections held open: memory per connection.
    Idle,
}

impl ScenarioKind {
    pub const ALL: [ScenarioKind; 6] = [
        ScenarioKind::TcpLatency,
        ScenarioKind::Throughput,
        ScenarioKind::Http1,
        ScenarioKind::Http2,
        ScenarioKind::Churn,
        ScenarioKind::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::TcpLatency => "tcp-latency",
            ScenarioKind::Throughput => "throughput",
            ScenarioKind::Http1 => "http1",
            ScenarioKind::Http2 => "http2",
            ScenarioKind::Churn => "churn",
            ScenarioKind::Idle => "idle",
        }
    }
}

/// Flags of `zmesh-perf suite`.
#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Short settings (1.5 s runs, 2 repetitions, fewer points): finishes in under 3 minutes
    /// on 2 cores. Any flag given explicitly still wins.
    #[arg(long)]
    pub quick: bool,

    /// Systems to compare, comma separated, run interleaved in this order: `direct` (no
    /// mesh), `relay` (a plain TCP relay), `zmesh` (two nodes, HBONE between them), and the
    /// names of --proxy templates (which are added at the end when not named here).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay,zmesh",
        value_name = "NAME,…"
    )]
    pub systems: Vec<String>,

    /// Another proxy to measure, as a command template (repeatable), e.g.
    /// 'name=envoy,config=envoy.yaml,cmd=envoy -c {dir}/envoy.yaml'. Keys: name, listen
    /// (default 127.0.3.1:{port}), config, cmd (last; takes the rest). Placeholders: {port}
    /// {listen} {upstream} {upstream_ip} {upstream_port} {dir} {perf}. See perf/README.md.
    #[arg(long, value_name = "TEMPLATE")]
    pub proxy: Vec<ProxySpec>,

    /// Scenarios to run, comma separated. Default: all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAME,…")]
    pub scenarios: Vec<ScenarioKind>,

    /// Measured time of each run. Default 10s, or 1.5s with --quick.
    #[arg(long, value_parser = crate::cli::parse_positive_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Warm-up before each run's measured window. Default 1s, or 0.5s with --quick.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Option<Duration>,

    /// Repetitions of every (scenario, system) pair (idle runs once). Default 3, or 2 with
    /// --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub repeat: Option<u32>,

    /// Request rates of tcp-latency (req/s, all connections together). Default
    /// 500,1000,2000,4000, or 1000,4000 with --quick.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, allow_hyphen_values = true, value_name = "REQ/S,…")]
    pub rates: Vec<f64>,

    /// Connections of tcp-latency (requests go round-robin over them).
    #[arg(long, default_value_t = 1, value_parser = parse_count, value_name = "N")]
    pub latency_connections: usize,

    /// Request and response size of the request/response scenarios, bytes.
    #[arg(long, default_value_t = 1024, value_parser = parse_size, value_name = "BYTES")]
    pub size: usize,

    /// Connection counts of throughput. Default 1,4,16, or 1,4 with --quick.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, value_name = "N,…")]
    pub connections: Vec<usize>,

    /// Request rate of http1 and http2.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate, allow_hyphen_values = true, value_name = "REQ/S")]
    pub http_rate: f64,

    /// Connections of http1 and http2.
    #[arg(long, default_value_t = 4, value_parser = parse_count, value_name = "N")]
    pub http_connections: usize,

    /// New connections per second of churn. Default 500, or 200 with --quick.
    #[arg(long, value_parser = parse_rate, allow_hyphen_values = true, value_name = "CONN/S")]
    pub churn_rate: Option<f64>,

    /// Connections held open by idle. Default 2000, or 500 with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20_000), value_name = "N")]
    pub idle_connections: Option<u32>,

    /// Time per crypto measurement (4 of them). Default 1s, or 0.25s with --quick.
    #[arg(long, value_parser = crate::cli::parse_positive_duration, value_name = "DURATION")]
    pub crypto_time: Option<Duration>,

    /// Shard threads of each zmesh-node, and worker threads of the relay.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub shards: u32,

    /// IO driver of both nodes. Default: the node's own choice (recorded).
    #[arg(long, value_enum, value_name = "DRIVER")]
    pub driver: Option<Driver>,

    /// The zmesh-node binary. Default: `zmesh-node` beside this executable.
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,

    /// An extra argument for both zmesh-node processes, repeatable.
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    pub node_arg: Vec<String>,

    /// Results folder; each run writes a `suite-YYYYMMDD-HHMMSS/` directory in it.
    #[arg(long, default_value = "perf/results", value_name = "DIR")]
    pub out: PathBuf,
}

/// The resolved settings of a suite run (recorded in the JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteSettings {
    pub quick: bool,
    pub systems: Vec<String>,
    pub proxies: Vec<ProxySpec>,
    pub scenarios: Vec<ScenarioKind>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub repeat: u32,
    pub rates: Vec<f64>,
    pub latency_connections: usize,
    pub size: usize,
    pub connections: Vec<usize>,
    pub http_rate: f64,
    pub http_connections: usize,
    pub churn_rate: f64,
    pub idle_connections: usize,
    pub crypto_time_s: f64,
    /// Passed on to zmesh (the loopback nodes' settings).
    pub node: crate::cli::Settings,
}

impl SuiteArgs {
    /// Applies --quick and the defaults; an error for an unknown system name, a duplicate, or
    /// a missing node binary when zmesh is measured.
    pub fn settings(&self) -> anyhow::Result<SuiteSettings> {
        let q = self.quick;
        let pick = |v: &Vec<f64>, full: &[f64], quick: &[f64]| {
            if !v.is_empty() {
                v.clone()
            } else if q {
                quick.to_vec()
            } else {
                full.to_vec()
            }
        };
        let mut systems = self.systems.clone();
        for p in &self.proxy {
            if !systems.contains(&p.name) {
                systems.push(p.name.clone());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &systems {
            let known = ["direct", "relay", "zmesh"].contains(&s.as_str())
                || self.proxy.iter().any(|p| &p.name == s);
            anyhow::ensure!(
                known,
                "unknown system {s:?}: use direct, relay, zmesh or the name of a --proxy"
            );
            anyhow::ensure!(seen.insert(s.clone()), "system {s:?} named twice");
        }
        for p in &self.proxy {
            anyhow::ensure!(
                !["direct", "relay", "zmesh"].contains(&p.name.as_str()),
                "--proxy name {:?} is taken by a built-in system",
                p.name
            );
        }
        let node = crate::cli::LoopbackArgs {
            duration: None,
            warmup: Duration::ZERO,
            repeat: None,
            shards: self.shards,
            connections: vec![1],
            rate: 1.0,
            latency_connections: 1,
            size: 1,
            node_bin: self.node_bin.clone(),
            driver: self.driver,
            node_arg: self.node_arg.clone(),
            out: self.out.clone(),
            quick: false,
        };
        let node = if systems.iter().any(|s| s == "zmesh") {
            node.settings()?
        } else {
            // zmesh is not measured: its binary need not exist.
            node.settings_without_binary()
        };
        let secs = |d: Option<Duration>, full: f64, quick: f64| {
            d.map(|d| d.as_secs_f64())
                .unwrap_or(if q { quick } else { full })
        };
        Ok(SuiteSettings {
            quick: q,
            systems,
            proxies: self.proxy.clone(),
            scenarios: if self.scenarios.is_empty() {
                ScenarioKind::ALL.to_vec()
            } else {
                self.scenarios.clone()
            },
            duration_s: secs(self.duration, 10.0, 1.5),
            warmup_s: secs(self.warmup, 1.0, 0.5),
            repeat: self.repeat.unwrap_or(if q { 2 } else { 3 }),
            rates: pick(
                &self.rates,
                &[500.0, 1000.0, 2000.0, 4000.0],
                &[1000.0, 4000.0],
            ),
            latency_connections: self.latency_connections,
            size: self.size,
            connections: if !self.connections.is_empty() {
                self.connections.clone()
            } else if q {
                vec![1, 4]
            } else {
                vec![1, 4, 16]
            },
            http_rate: self.http_rate,
            http_connections: self.http_connections,
            churn_rate: self.churn_rate.unwrap_or(if q { 200.0 } else { 500.0 }),
            idle_connections: self.idle_connections.unwrap_or(if q { 500 } else { 2000 }) as usize,
            crypto_time_s: secs(self.crypto_time, 1.0, 0.25),
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> SuiteArgs {
        let argv = ["zmesh-perf", "suite"].iter().chain(extra).copied();
        match Cli::try_parse_from(argv).expect("parse").command {
            Command::Suite(a) => *a,
            other => panic!("suite expected, got {other:?}"),
        }
    }

    #[test]
    fn quick_defaults_and_proxies_join_the_systems() {
        let s = args(&[
            "--quick",
            "--systems",
            "direct",
            "--proxy",
            "name=p,cmd=x {listen}",
            "--churn-rate",
            "50",
        ])
        .settings()
        .expect("settings");
        assert_eq!(s.systems, vec!["direct", "p"]);
        assert_eq!((s.duration_s, s.repeat), (1.5, 2));
        assert_eq!(s.rates, vec![1000.0, 4000.0]);
        assert_eq!((s.churn_rate, s.idle_connections), (50.0, 500));
        assert_eq!(s.scenarios, ScenarioKind::ALL.to_vec());
    }

    #[test]
    fn bad_systems_are_rejected() {
        for (extra, says) in [
            (&["--systems", "direct,nope"][..], "unknown system"),
            (&["--systems", "direct,direct"], "twice"),
            (
                &["--systems", "direct", "--proxy", "name=relay,cmd=x"],
                "taken",
            ),
            (
                &["--systems", "zmesh", "--node-bin", "/nonexistent"],
                "not found",
            ),
        ] {
            let e = args(extra).settings().expect_err("rejected");
            assert!(e.to_string().contains(says), "{extra:?}: {e}");
        }
    }
}
