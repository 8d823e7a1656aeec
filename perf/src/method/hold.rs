//! `zmesh-perf serve` and `zmesh-perf hold`: the two ends of the idle step, run as processes
//! in the pods. `serve` is the suite's server (echo or sink, chosen by each connection's first
//! byte); `hold` opens N echo connections, makes one round trip on each, prints `held N` and
//! keeps them open until it is killed (or --max-time passes).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::Mode;
use crate::systems::{Target, connect};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
}

#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    /// The `serve` address to connect to.
    #[arg(long, value_name = "ADDR")]
    pub connect: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50_000), value_name = "N")]
    pub connections: u32,
    /// Exit after this long even if nobody kills us.
    #[arg(long, default_value = "10m", value_parser = crate::cli::parse_positive_duration, value_name = "DURATION")]
    pub max_time: Duration,
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(100_000);
    let rt = runtime()?;
    rt.block_on(async {
        let (_stats, addr) = crate::server::start_at(a.listen).await?;
        println!("listening {addr}");
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

pub fn hold(a: &HoldArgs) -> anyhow::Result<()> {
    let n = a.connections;
    let want = u64::from(n) + 1024;
    if let Ok(got) = rlimit::increase_nofile_limit(want) {
        anyhow::ensure!(
            got >= want,
            "open-file limit {got} is too low for {n} connections"
        );
    }
    let rt = runtime()?;
    let target = Target {
        addr: a.connect,
        socks5: None,
        bind: None,
    };
    rt.block_on(async {
        let mut held = Vec::with_capacity(n as usize);
        for i in 0..n {
            let s = open_one(target)
                .await
                .map_err(|e| anyhow::anyhow!("connection {i} of {n} to {}: {e}", a.connect))?;
            held.push(s);
        }
        println!("held {n}");
        tokio::time::sleep(a.max_time).await;
        drop(held);
        anyhow::Ok(())
    })
}

async fn open_one(target: Target) -> std::io::Result<tokio::net::TcpStream> {
    let mut s = connect(target, Mode::Echo).await?;
    s.write_all(b"?").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(s)
}
