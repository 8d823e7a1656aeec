//! Sanity print (not asserted, timing does not belong in tests) of one loopback stream.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::{DriverKind, Runtime, RuntimeConfig, TcpListener, TcpStream, spawn};

const TOTAL: usize = 512 << 20;

fn run(cfg: RuntimeConfig, label: &str) {
    let rt = Runtime::new(&cfg).unwrap();
    let stats = rt.stats();
    let (lsock, addr) = common::listen();
    let elapsed = rt.block_on(async move {
        let l = TcpListener::from_socket(lsock).unwrap();
        let c = spawn(TcpStream::connect(common::client_socket(), addr));
        let (mut s, _) = l.accept().await.unwrap();
        let mut c = c.await.unwrap();
        let start = Instant::now();
        let writer = spawn(async move {
            let chunk = common::random_bytes(1, 64 * 1024);
            let mut sent = 0;
            while sent < TOTAL {
                c.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            c.shutdown().await.unwrap();
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        writer.await;
        assert_eq!(got, TOTAL);
        start.elapsed()
    });
    let mbps = TOTAL as f64 / elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "throughput {label}: {} MiB in {elapsed:?} = {mbps:.0} MB/s",
        TOTAL >> 20
    );
    eprintln!("  {stats:?}");
}

#[test]
fn loopback_throughput_print() {
    for kind in common::drivers() {
        let cfg = RuntimeConfig {
            driver: kind,
            ..RuntimeConfig::default()
        };
        run(cfg.clone(), &kind.to_string());
        if kind == DriverKind::IoUring {
            let zc = RuntimeConfig {
                send_zc_threshold: Some(16 * 1024),
                ..cfg
            };
            run(zc, "io-uring+sendzc");
        }
    }
}
