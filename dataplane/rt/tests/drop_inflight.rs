//! Dropping streams with a read (or write) in flight neither crashes nor leaks fds.
//! One test in this binary, so no other test opens fds concurrently.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::{DriverKind, TcpListener, TcpStream, sleep, spawn};

fn run(kind: DriverKind, baseline: usize) {
    let rt = common::runtime(kind);
    // The runtime's own fds (ring or epoll instance, eventfd).
    let own = common::open_fds() - baseline;
    let (lsock, addr) = common::listen();
    rt.block_on(async move {
        let l = TcpListener::from_socket(lsock).unwrap();
        for round in 0..20 {
            let c = spawn(TcpStream::connect(common::client_socket(), addr));
            let (s, _) = l.accept().await.unwrap();
            let mut c = c.await.unwrap();
            // Read in flight on the server side, then the task owning the stream is dropped.
            let reader = spawn(async move {
                let (mut r, w) = s.into_split();
                let mut b = [0u8; 64];
                let _ = r.read(&mut b).await;
                drop(w);
            });
            // And a client with unread data and a large unflushed write.
            let big = vec![7u8; 8 << 20];
            let writer = spawn(async move {
                let _ = c.write_all(&big).await;
            });
            sleep(Duration::from_millis(2)).await;
            drop(reader);
            if round % 2 == 0 {
                drop(writer);
            } else {
                writer.detach();
            }
            sleep(Duration::from_millis(1)).await;
        }
        // A send stuck on a peer that does not read is cancelled, not leaked.
        let c = spawn(TcpStream::connect(common::client_socket(), addr));
        let (stalled_peer, _) = l.accept().await.unwrap();
        let mut c = c.await.unwrap();
        let stuck = spawn(async move {
            let _ = c.write_all(&vec![9u8; 32 << 20]).await;
            let _ = c.flush().await;
        });
        sleep(Duration::from_millis(20)).await;
        drop(stuck);
        sleep(Duration::from_millis(20)).await;
        let open = common::open_fds();
        // Listener and the stalled peer remain.
        assert_eq!(open, baseline + own + 2, "{kind}: stuck sender not closed");
        drop(stalled_peer);

        // The listener itself goes with a multishot accept armed.
        let pending_accept = spawn(async move {
            let _ = l.accept().await;
        });
        sleep(Duration::from_millis(10)).await;
        drop(pending_accept);
        // Cancellations complete on later ticks; detached writers fail once the peer is gone.
        sleep(Duration::from_millis(100)).await;
        let open = common::open_fds();
        assert_eq!(
            open,
            baseline + own,
            "{kind}: fds leaked while the runtime runs"
        );
    });
    drop(rt);
    let now = common::open_fds();
    assert_eq!(
        now, baseline,
        "{kind}: fds leaked ({now} open, baseline {baseline})"
    );
}

#[test]
fn dropping_streams_with_ops_in_flight_closes_fds() {
    let drivers = common::drivers();
    let baseline = common::open_fds();
    for kind in drivers {
        run(kind, baseline);
    }
}
