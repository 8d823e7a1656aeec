//! `zmesh-perf`: zmesh's benchmark driver. `suite` runs every scenario against no mesh, a
//! plain relay, zmesh and any proxy the user names, and writes JSON, markdown and SVG plots;
//! `control` benchmarks the controller (zmesh-control) with two node proxies;
//! `loopback` runs the node proxy's benchmark on this
//! machine's loopback (two zmesh-node processes, SOCKS5 in, HBONE between them) beside a direct
//! connection and a plain TCP relay measured in the same run, and reports medians, ranges and
//! ratios to direct. It does not build zmesh, set up network namespaces or judge the numbers.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod control;
mod control_gen;
mod control_procs;
mod control_report;
mod crypto;
mod delay;
mod http;
mod idle;
mod latency;
mod method;
mod openloop;
mod procfs;
mod proxy;
mod relay;
mod report;
mod server;
mod shards;
mod suite;
mod suite_cli;
mod suite_plots;
mod suite_report;
mod suite_systems;
mod svg;
mod systems;
mod throughput;
mod zmesh;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Loopback(args) => bench::loopback(args),
        Command::Relay(args) => relay::run(args),
        Command::Suite(args) => suite::suite(args),
        Command::Control(args) => control::run(args),
        Command::DelayProxy(args) => delay::run(args),
        Command::Crypto { time } => print_crypto(*time),
        Command::BenchMethod(args) => method::run(args),
        Command::Serve(args) => method::hold::serve(args),
        Command::Hold(args) => method::hold::hold(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zmesh-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `zmesh-perf crypto`: the ceiling alone, as JSON on stdout.
fn print_crypto(time: std::time::Duration) -> anyhow::Result<()> {
    let r = crypto::measure(time)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
