//! 50 concurrent clients push 1 MiB each through an echo server on another runtime thread,
//! then half-close; each must read back exactly its bytes, then EOF.
#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::{DriverKind, Runtime, RuntimeConfig, TcpListener, TcpStream, spawn, timeout};

const CLIENTS: usize = 50;
const PER_CLIENT: usize = 1 << 20;

async fn echo(mut s: TcpStream) -> io::Result<usize> {
    let mut buf = vec![0u8; 48 * 1024];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).await?;
        total += n;
    }
    s.shutdown().await?;
    Ok(total)
}

async fn client(addr: SocketAddr, seed: u64) -> io::Result<()> {
    let s = TcpStream::connect(common::client_socket(), addr).await?;
    assert_eq!(s.peer_addr()?, addr);
    let (mut r, mut w) = s.into_split();
    let data = Rc::new(common::random_bytes(seed, PER_CLIENT));
    let sent = data.clone();
    let writer = spawn(async move {
        // Uneven chunk sizes exercise partial buffers on both sides.
        let mut off = 0;
        let mut step = 1000 + seed as usize * 37;
        while off < sent.len() {
            let end = (off + step).min(sent.len());
            w.write_all(&sent[off..end]).await?;
            off = end;
            step = step * 3 % 70_000 + 1;
        }
        w.shutdown().await?;
        io::Result::Ok(())
    });
    let mut got = Vec::with_capacity(PER_CLIENT);
    r.read_to_end(&mut got).await?;
    writer.await?;
    assert_eq!(got.len(), data.len(), "client {seed}: length");
    assert!(got == *data, "client {seed}: bytes differ");
    // EOF is sticky.
    assert_eq!(r.read(&mut [0u8; 16]).await?, 0);
    Ok(())
}

fn run(cfg: RuntimeConfig) {
    let kind = cfg.driver;
    let (lsock, addr) = common::listen();
    let server_cfg = cfg.clone();
    let server = std::thread::spawn(move || {
        let rt = Runtime::new(&server_cfg).unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_socket(lsock).unwrap();
            let mut tasks = Vec::new();
            for _ in 0..CLIENTS {
                let (s, peer) = l.accept().await.unwrap();
                assert_eq!(s.local_addr().unwrap(), addr);
                assert_eq!(s.peer_addr().unwrap(), peer);
                tasks.push(spawn(echo(s)));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), PER_CLIENT);
            }
        });
        rt.stats()
    });
    let rt = Runtime::new(&cfg).unwrap();
    rt.block_on(async move {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| spawn(client(addr, i as u64 + 1)))
            .collect();
        let all = async {
            for c in clients {
                c.await.unwrap();
            }
        };
        timeout(Duration::from_secs(120), all)
            .await
            .expect("echo test timed out");
    });
    let stats = server.join().unwrap();
    let polls = stats.polls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(polls > 0);
    eprintln!("{kind}: server stats {stats:?}");
}

#[test]
fn echo_50_clients_half_close() {
    for kind in common::drivers() {
        let cfg = RuntimeConfig {
            driver: kind,
            ..RuntimeConfig::default()
        };
        run(cfg.clone());
        if kind == DriverKind::IoUring {
            run(RuntimeConfig {
                send_zc_threshold: Some(8192),
                ..cfg
            });
        }
    }
}
