//! Flags of `zmesh-perf bench-method`, and the settings they resolve to (defaults, --quick).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::cli::parse_rate;

/// The systems BENCH-METHOD compares, interleaved in the order given.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// The same two pods with no mesh: no proxies, nothing captured.
    Direct,
    /// The pods' namespace labelled ambient, captured by eBPF, one HBONE hop.
    Zmesh,
    /// As zmesh, but the node proxies capture with the nftables fallback.
    ZmeshNftables,
}

impl SystemKind {
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Direct => "direct",
            SystemKind::Zmesh => "zmesh",
            SystemKind::ZmeshNftables => "zmesh-nftables",
        }
    }
}

/// The measurements of BENCH-METHOD.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// iperf3 with each of --streams, receiver-side bits/s, proxy CPU per GB.
    Iperf,
    /// sockperf TCP ping-pong, 1 KiB, paced at --pace msg/s, --full-rtt.
    LatencyPaced,
    /// The same ping-pong unpaced: round trips per second.
    LatencyMax,
    /// ab, no keep-alive, --ab-concurrency, to nginx in the server pod: new connections/s.
    NewConnections,
    /// --idle-connections held open through the mesh: proxy memory per tunnel.
    Idle,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Iperf,
        Step::LatencyPaced,
        Step::LatencyMax,
        Step::NewConnections,
        Step::Idle,
    ];
}

/// Flags of `zmesh-perf bench-method`.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Short settings: 2 s runs, 2 repetitions, 200 idle connections, 1 s crypto. Flags given
    /// explicitly still win.
    #[arg(long)]
    pub quick: bool,

    /// Systems, comma separated, interleaved in this order within every repetition.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,zmesh",
        value_name = "NAME,…"
    )]
    pub systems: Vec<SystemKind>,

    /// Measurements to make, comma separated. Default: all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAME,…")]
    pub steps: Vec<Step>,

    /// Seconds of every iperf3, sockperf and ab run (whole seconds). Default 10, or 2 with
    /// --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600), value_name = "SECONDS")]
    pub duration: Option<u32>,

    /// Repetitions of every system. Default 3, or 2 with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    pub repeat: Option<u32>,

    /// iperf3 parallel streams, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4", value_parser = clap::value_parser!(u32).range(1..=128), value_name = "N,…")]
    pub streams: Vec<u32>,

    /// Messages per second of the paced sockperf run.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate, allow_hyphen_values = true, value_name = "MSG/S")]
    pub pace: f64,

    /// sockperf message size, bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(14..=65000), value_name = "BYTES")]
    pub msg_size: u32,

    /// Concurrent requests of ab.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub ab_concurrency: u32,

    /// Connections held open by the idle step. Default 1000, or 200 with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20_000), value_name = "N")]
    pub idle_connections: Option<u32>,

    /// Seconds of each `openssl speed` measurement. Default 3, or 1 with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60), value_name = "SECONDS")]
    pub crypto_seconds: Option<u32>,

    /// Shard threads of each zmesh-node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64), value_name = "N")]
    pub shards: u32,

    /// An extra flag for every zmesh-node, repeatable (e.g. `--node-arg=--driver=epoll`).
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    pub node_arg: Vec<String>,

    /// Directory of zmesh-node, zmesh-agent, zmesh-cni and zmesh-control. Default: the
    /// directory of this executable.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Results folder; each run writes a `method-YYYYMMDD-HHMMSS/` directory in it.
    #[arg(long, default_value = "perf/results", value_name = "DIR")]
    pub out: PathBuf,
}

/// The resolved settings (recorded in the JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub quick: bool,
    pub systems: Vec<SystemKind>,
    pub steps: Vec<Step>,
    pub duration_s: u32,
    pub repeat: u32,
    pub streams: Vec<u32>,
    pub pace: f64,
    pub msg_size: u32,
    pub ab_concurrency: u32,
    pub idle_connections: u32,
    pub crypto_seconds: u32,
    pub shards: u32,
    pub node_args: Vec<String>,
    pub bin_dir: PathBuf,
    pub out: PathBuf,
}

impl MethodArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let q = self.quick;
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.systems {
            anyhow::ensure!(seen.insert(*s), "system {:?} named twice", s.name());
        }
        anyhow::ensure!(
            self.systems.contains(&SystemKind::Direct),
            "--systems must include direct: every ratio is to direct from the same run"
        );
        let bin_dir = match &self.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        let mut streams = self.streams.clone();
        streams.dedup();
        Ok(Settings {
            quick: q,
            systems: self.systems.clone(),
            steps: if self.steps.is_empty() {
                Step::ALL.to_vec()
            } else {
                self.steps.clone()
            },
            duration_s: self.duration.unwrap_or(if q { 2 } else { 10 }),
            repeat: self.repeat.unwrap_or(if q { 2 } else { 3 }),
            streams,
            pace: self.pace,
            msg_size: self.msg_size,
            ab_concurrency: self.ab_concurrency,
            idle_connections: self.idle_connections.unwrap_or(if q { 200 } else { 1000 }),
            crypto_seconds: self.crypto_seconds.unwrap_or(if q { 1 } else { 3 }),
            shards: self.shards,
            node_args: self.node_arg.clone(),
            bin_dir: std::path::absolute(&bin_dir)?,
            // Absolute: nginx resolves a relative -c against its -p prefix.
            out: std::path::absolute(&self.out)?,
        })
    }
}
