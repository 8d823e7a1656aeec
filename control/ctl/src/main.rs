//! `zmeshctl`: the zmesh command line. Today it runs the demo mesh; install, inspect and
//! waypoint commands come later.
#![forbid(unsafe_code)]

mod demo;
mod loopback;
mod metrics_line;
mod serve;

use clap::{Parser, Subcommand};

/// The zmesh command line.
#[derive(Parser, Debug)]
#[command(name = "zmeshctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a two-node mesh on this machine (root: network namespaces, cgroups, eBPF): the
    /// controller, a node agent and a node proxy per node, an HTTP service with two replicas
    /// on different nodes, a curl client that reaches it over mTLS (HBONE), a second client
    /// that an L4 AuthorizationPolicy denies, and the metrics that show it. Cleans up when
    /// done. `--loopback` runs the older demo without root.
    Demo(demo::Args),
    /// The demo's HTTP server (runs inside pods).
    #[command(hide = true)]
    ServeHttp(serve::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo(args) => demo::run(args),
        Cmd::ServeHttp(args) => serve::run(args),
    };
    if let Err(e) = result {
        eprintln!("zmeshctl: {e:#}");
        std::process::exit(1);
    }
}
