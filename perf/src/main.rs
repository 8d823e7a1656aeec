//! `zmesh-perf`: zmesh's benchmark driver. `loopback` runs the node proxy's benchmark on this
//! machine's loopback (two zmesh-node processes, SOCKS5 in, HBONE between them) beside a direct
//! connection and a plain TCP relay measured in the same run, and reports medians, ranges and
//! ratios to direct. It does not build zmesh, set up network namespaces or judge the numbers.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod latency;
mod procfs;
mod relay;
mod report;
mod server;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zmesh-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}
