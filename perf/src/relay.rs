//! The plain TCP relay baseline: accept, connect upstream, copy both ways with
//! `tokio::io::copy_bidirectional` (its default 8 KiB buffers, no tuning), no TLS, no HTTP/2.
//! It runs as its own process (`zmesh-perf relay`) so its CPU time is measured like a proxy's.

use std::io::Write;

use tokio::net::{TcpListener, TcpStream};

use crate::cli::RelayArgs;

/// Runs the relay until killed. Prints `listening <addr>` on stdout once accepting.
pub fn run(args: &RelayArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (down, _) = listener.accept().await?;
            tokio::spawn(relay(down, args.upstream));
        }
    })
}

async fn relay(mut down: TcpStream, upstream: std::net::SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    // A reset from either side ends the relay; there is no one to report it to.
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}
