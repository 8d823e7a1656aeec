//! `zmesh-perf delay-proxy`: a deliberately slow TCP relay, the harness's own test double.
//! Every chunk read from one side is written to the other `--delay` after it was read, in
//! each direction, so a request/response round trip gains twice the delay. It lets the
//! harness check itself: a scenario through it must report that much more latency than
//! direct.
//!
//! Plain threads, not tokio: tokio's timer rounds up to the millisecond, which would add up
//! to a whole extra delay. Each direction has a reader thread that timestamps chunks and a
//! writer thread that releases them on time (sleep, then spin the last stretch).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::latency::sleep_until;

/// Flags of `zmesh-perf delay-proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct DelayArgs {
    /// Address to accept connections on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Address every accepted connection is relayed to.
    #[arg(long, value_name = "ADDR")]
    pub upstream: SocketAddr,

    /// Added to each direction of every connection ("1ms", "250us").
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub delay: Duration,
}

/// Runs until killed. Prints `listening <addr>` on stdout once accepting.
pub fn run(args: &DelayArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for down in listener.incoming() {
        let Ok(down) = down else { continue };
        let (upstream, delay) = (args.upstream, args.delay);
        std::thread::spawn(move || {
            // A failed upstream connect closes the client's connection; nobody to tell.
            if let Ok(up) = TcpStream::connect(upstream) {
                let _ = relay(down, up, delay);
            }
        });
    }
    Ok(())
}

fn relay(down: TcpStream, up: TcpStream, delay: Duration) -> std::io::Result<()> {
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let a = direction(down.try_clone()?, up.try_clone()?, delay);
    let b = direction(up, down, delay);
    for t in a.into_iter().chain(b) {
        let _ = t.join();
    }
    Ok(())
}

/// Starts the reader and writer threads of `from → to`.
fn direction(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
) -> [std::thread::JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer to pass the end of stream on.
    });
    let writer = std::thread::spawn(move || {
        for (at, chunk) in rx {
            sleep_until(at + delay);
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    [reader, writer]
}
