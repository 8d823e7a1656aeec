//! 2,000 idle accepted connections, each with a read pending, hold no receive buffer.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::{DriverKind, TcpListener, TcpStream, sleep, spawn};

const CONNS: usize = 2000;

fn run(kind: DriverKind) {
    let rt = common::runtime(kind);
    let stats = rt.stats();
    let (lsock, addr) = common::listen();
    rt.block_on(async move {
        let l = TcpListener::from_socket(lsock).unwrap();
        let mut clients = Vec::with_capacity(CONNS);
        let mut readers = Vec::with_capacity(CONNS);
        let rss_before = common::rss();
        for i in 0..CONNS {
            let c = spawn(TcpStream::connect(common::client_socket(), addr));
            let (mut s, _) = l.accept().await.unwrap();
            clients.push(c.await.unwrap());
            // Every server side waits in read: under io_uring a receive is in flight.
            readers.push(spawn(async move {
                let mut b = [0u8; 1];
                let n = s.read(&mut b).await.unwrap();
                (n, b[0], s)
            }));
            if i % 256 == 0 {
                sleep(Duration::from_millis(1)).await;
            }
        }
        sleep(Duration::from_millis(50)).await;
        let in_use = stats.recv_buffers_in_use.load(Relaxed);
        let depth = stats.queue_depth.load(Relaxed);
        let grown = common::rss().saturating_sub(rss_before);
        eprintln!(
            "{kind}: {CONNS} idle conns: buffers in use {in_use}, ops/sources {depth}, rss +{} KiB",
            grown / 1024
        );
        assert_eq!(in_use, 0, "idle connections hold receive buffers");
        assert!(
            depth as usize >= CONNS,
            "reads are not pending: depth {depth}"
        );
        // A 64 KiB buffer each would be 125 MiB; allow a few KiB per connection pair.
        assert!(
            grown < CONNS * 16 * 1024,
            "RSS grew {grown} bytes for idle connections"
        );

        // They all still work: one byte each.
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(&[i as u8]).await.unwrap();
        }
        for (i, r) in readers.into_iter().enumerate() {
            let (n, b, _s) = r.await;
            assert_eq!((n, b), (1, i as u8));
        }
        assert_eq!(
            stats.recv_buffers_in_use.load(Relaxed),
            0,
            "buffers not recycled"
        );
    });
}

#[test]
fn idle_connections_hold_no_receive_buffers() {
    for kind in common::drivers() {
        run(kind);
    }
}
