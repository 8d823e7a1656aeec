//! Command line: `zmesh-perf loopback …` (the benchmark) and `zmesh-perf relay …` (the plain
//! TCP relay baseline, which `loopback` starts as a child process so its CPU time can be read
//! from /proc like a proxy's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// zmesh's load generator: measures latency, throughput, connection churn, memory and CPU cost
/// of the node proxy beside no mesh, a plain TCP relay and other proxies, in the same run.
#[derive(Parser, Debug)]
#[command(name = "zmesh-perf", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Two zmesh-node processes on loopback (client → SOCKS5 → node A → HBONE → node B →
    /// server), compared with direct connections and a plain TCP relay, interleaved.
    Loopback(LoopbackArgs),
    /// The benchmark suite: every scenario (TCP latency against rate, throughput against
    /// connections, HTTP/1.1, HTTP/2, connection churn, idle connections) against no mesh,
    /// the plain relay, zmesh and any --proxy, interleaved and repeated, with the crypto
    /// ceiling; writes JSON, markdown and SVG plots to a results folder.
    Suite(Box<crate::suite_cli::SuiteArgs>),
    /// BENCH-METHOD on the network-namespace topology (root): a client pod on node 1 and a
    /// server pod on node 2, with no mesh (direct) and captured by zmesh (eBPF, one HBONE
    /// hop), interleaved and repeated: iperf3 throughput and proxy CPU per GB, sockperf
    /// latency, ab new connections per second to nginx, proxy memory, the crypto ceiling;
    /// JSON and markdown with issue 5's targets. See perf/README.md.
    BenchMethod(Box<crate::method::MethodArgs>),
    /// The echo/sink server of the suite on one address (bench-method runs it in a pod).
    Serve(crate::method::hold::ServeArgs),
    /// Opens N echo connections to a `serve`, one round trip each, prints `held N` and holds
    /// them until killed (bench-method's idle step runs it in a pod).
    Hold(crate::method::hold::HoldArgs),
    /// The controller benchmark: a generated cluster in a config directory, zmesh-control and
    /// two zmesh-nodes on loopback; policy propagation time through the data path, bytes of a
    /// one-pod change against the full push, controller start-up, CPU and memory at scale.
    Control(crate::control::ControlArgs),
    /// A deliberately slow TCP relay (a test double): every chunk is forwarded --delay after
    /// it was read, in each direction. Prints "listening <addr>" when ready.
    DelayProxy(crate::delay::DelayArgs),
    /// Measures AES-GCM seal and open of 16 KiB records on one core with aws-lc-rs (rustls'
    /// crypto here) and prints the results as JSON.
    Crypto {
        /// Time per measurement.
        #[arg(long, default_value = "1s", value_parser = parse_positive_duration, value_name = "DURATION")]
        time: Duration,
    },
    /// A plain TCP relay: accept, connect upstream, copy both ways. The baseline that
    /// `loopback` runs as a child process; prints "listening <addr>" on stdout when ready.
    Relay(RelayArgs),
}

/// Flags of `zmesh-perf loopback`.
#[derive(Args, Debug, Clone)]
pub struct LoopbackArgs {
    /// Measured time of each run, after the warm-up ("10s", "500ms", "1m"). Default 10s, or
    /// 3s with --quick.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Warm-up before each run's measurement starts; its bytes and samples are not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,

    /// Repetitions of every (scenario, system) pair. Default 3, or 1 with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub repeat: Option<u32>,

    /// Shard threads of each zmesh-node (--shards), and worker threads of the plain relay.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub shards: u32,

    /// Connection counts of the throughput scenarios, comma separated: one scenario each.
    #[arg(long, default_value = "1,8", value_delimiter = ',', value_parser = parse_count, value_name = "N,…")]
    pub connections: Vec<usize>,

    /// Requests per second of the latency scenario, all connections together (open loop,
    /// fixed schedule). Must be greater than zero.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate, allow_hyphen_values = true, value_name = "REQ/S")]
    pub rate: f64,

    /// Connections of the latency scenario; requests go round-robin over them.
    #[arg(long, default_value_t = 16, value_parser = parse_count, value_name = "N")]
    pub latency_connections: usize,

    /// Request and response size of the latency scenario, in bytes (echoed back whole).
    #[arg(long, default_value_t = 1024, value_parser = parse_size, value_name = "BYTES")]
    pub size: usize,

    /// The zmesh-node binary. Default: `zmesh-node` in the directory of this executable
    /// (target/release when both were built with `cargo build --release`).
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,

    /// IO driver passed to both nodes (--driver). Default: the node's own choice (io_uring
    /// when the kernel allows it), which is read back and recorded.
    #[arg(long, value_enum, value_name = "DRIVER")]
    pub driver: Option<Driver>,

    /// An extra argument for both zmesh-node processes, repeatable: e.g. `--node-arg=--no-pin`
    /// to let the kernel place the shard threads instead of pinning shard i to core i.
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    pub node_arg: Vec<String>,

    /// Directory for the JSON file with every raw run record; created if missing.
    #[arg(long, default_value = "perf/results", value_name = "DIR")]
    pub out: PathBuf,

    /// A short smoke run: duration 3s and 1 repetition, unless --duration or --repeat say
    /// otherwise.
    #[arg(long)]
    pub quick: bool,
}

/// Flags of `zmesh-perf relay`.
#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address to accept connections on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Address every accepted connection is relayed to.
    #[arg(long, value_name = "ADDR")]
    pub upstream: SocketAddr,

    /// Tokio worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub threads: u32,
}

/// zmesh-node's IO drivers.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring (Linux 5.19+, unless seccomp forbids it).
    IoUring,
    /// epoll readiness.
    Epoll,
}

impl Driver {
    pub fn flag(self) -> &'static str {
        match self {
            Driver::IoUring => "io-uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The settings of one `loopback` run, with --quick and the defaults applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub repeat: u32,
    pub shards: u32,
    pub connections: Vec<usize>,
    pub rate: f64,
    pub latency_connections: usize,
    pub size: usize,
    pub node_bin: PathBuf,
    pub driver: Option<String>,
    pub node_args: Vec<String>,
    pub out: PathBuf,
}

impl LoopbackArgs {
    /// Applies --quick and the defaults, and finds the node binary (an error if missing).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let node_bin = match &self.node_bin {
            Some(p) => p.clone(),
            None => default_node_bin()?,
        };
        anyhow::ensure!(
            node_bin.is_file(),
            "zmesh-node binary {} not found: build it with `cargo build --release -p zmesh-node`, or pass --node-bin",
            node_bin.display()
        );
        anyhow::ensure!(
            !self.connections.is_empty(),
            "--connections needs at least one count"
        );
        Ok(Settings {
            node_bin,
            ..self.settings_without_binary()
        })
    }

    /// The settings without looking for the node binary (for runs that start no node).
    pub fn settings_without_binary(&self) -> Settings {
        let duration = self.duration.unwrap_or(if self.quick {
            QUICK_DURATION
        } else {
            DEFAULT_DURATION
        });
        let repeat = self.repeat.unwrap_or(if self.quick { 1 } else { 3 });
        Settings {
            duration_s: duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            repeat,
            shards: self.shards,
            connections: self.connections.clone(),
            rate: self.rate,
            latency_connections: self.latency_connections,
            size: self.size,
            node_bin: self.node_bin.clone().unwrap_or_default(),
            driver: self.driver.map(|d| d.flag().to_string()),
            node_args: self.node_arg.clone(),
            out: self.out.clone(),
        }
    }
}

const DEFAULT_DURATION: Duration = Duration::from_secs(10);
const QUICK_DURATION: Duration = Duration::from_secs(3);

fn default_node_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))?;
    Ok(dir.join("zmesh-node"))
}

pub use zmesh_state::parse_duration;

pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short: a run needs at least 100ms"));
    }
    Ok(d)
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!("{s:?}: the rate must be greater than zero"));
    }
    if r > 1e6 {
        return Err(format!("{s:?}: at most 1000000 requests per second"));
    }
    Ok(r)
}

pub fn parse_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if !(1..=4096).contains(&n) {
        return Err(format!(
            "{s:?}: a connection count must be between 1 and 4096"
        ));
    }
    Ok(n)
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    if !(1..=(1 << 20)).contains(&n) {
        return Err(format!(
            "{s:?}: the size must be between 1 and 1048576 bytes"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_quick() {
        let Cli {
            command: Command::Loopback(a),
        } = Cli::try_parse_from(["zmesh-perf", "loopback"]).expect("parse")
        else {
            panic!("loopback expected")
        };
        assert_eq!(a.connections, vec![1, 8]);
        assert_eq!(a.rate, 1000.0);
        assert_eq!((a.duration, a.repeat, a.quick), (None, None, false));
        let Cli {
            command: Command::Loopback(q),
        } = Cli::try_parse_from(["zmesh-perf", "loopback", "--quick", "--node-bin", "/bin/sh"])
            .expect("parse")
        else {
            panic!("loopback expected")
        };
        let s = q.settings().expect("settings");
        assert_eq!((s.duration_s, s.repeat), (3.0, 1));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        for bad in [
            &["--rate", "0"][..],
            &["--rate", "-5"],
            &["--rate", "nan"],
            &["--driver", "kqueue"],
            &["--connections", "1,0"],
            &["--duration", "0s"],
            &["--repeat", "0"],
            &["--size", "0"],
        ] {
            let args = ["zmesh-perf", "loopback"]
                .into_iter()
                .chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn missing_node_binary_is_an_error() {
        let Cli {
            command: Command::Loopback(a),
        } = Cli::try_parse_from([
            "zmesh-perf",
            "loopback",
            "--node-bin",
            "/nonexistent/zmesh-node",
        ])
        .expect("parse")
        else {
            panic!("loopback expected")
        };
        let e = a.settings().expect_err("missing binary");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
