//! Network errors surface as io::Error, never as panics; buffer exhaustion falls back.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::{DriverKind, Runtime, RuntimeConfig, TcpListener, TcpStream, sleep, spawn};

#[test]
fn connect_refused_is_an_error() {
    for kind in common::drivers() {
        let rt = common::runtime(kind);
        let (l, addr) = common::listen();
        drop(l);
        let e = rt
            .block_on(TcpStream::connect(common::client_socket(), addr))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{kind}: {e}");
    }
}

#[test]
fn peer_reset_and_closed_peer_are_errors() {
    for kind in common::drivers() {
        let rt = common::runtime(kind);
        let (lsock, addr) = common::listen();
        rt.block_on(async move {
            let l = TcpListener::from_socket(lsock).unwrap();
            // Reset: linger 0 then close sends RST.
            let c = spawn(TcpStream::connect(common::client_socket(), addr));
            let (mut s, _) = l.accept().await.unwrap();
            let c = c.await.unwrap();
            c.socket().set_linger(Some(Duration::ZERO)).unwrap();
            drop(c);
            let mut b = [0u8; 16];
            let r = s.read(&mut b).await;
            assert!(
                matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
                "{kind}: {r:?}"
            );

            // Writing to a closed peer fails eventually (EPIPE/ECONNRESET), without SIGPIPE.
            let c = spawn(TcpStream::connect(common::client_socket(), addr));
            let (mut s, _) = l.accept().await.unwrap();
            drop(c.await.unwrap());
            sleep(Duration::from_millis(10)).await;
            let chunk = vec![1u8; 64 * 1024];
            let mut failed = None;
            for _ in 0..1000 {
                if let Err(e) = async {
                    s.write_all(&chunk).await?;
                    s.flush().await
                }
                .await
                {
                    failed = Some(e);
                    break;
                }
            }
            let e = failed.expect("writes to a closed peer kept succeeding");
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "{kind}: {e}"
            );
        });
    }
}

#[test]
fn receive_buffer_exhaustion_falls_back() {
    if !common::drivers().contains(&DriverKind::IoUring) {
        return;
    }
    // Two ring buffers for eight connections that each leave data unread in theirs.
    let cfg = RuntimeConfig {
        recv_buffers: 2,
        recv_buffer_size: 4096,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(&cfg).unwrap();
    let stats = rt.stats();
    let (lsock, addr) = common::listen();
    rt.block_on(async move {
        let l = TcpListener::from_socket(lsock).unwrap();
        let mut pairs = Vec::new();
        for i in 0..8u8 {
            let c = spawn(TcpStream::connect(common::client_socket(), addr));
            let (s, _) = l.accept().await.unwrap();
            let mut c = c.await.unwrap();
            c.write_all(&[i; 100]).await.unwrap();
            c.flush().await.unwrap();
            pairs.push((s, c));
        }
        sleep(Duration::from_millis(20)).await;
        for (i, (s, _)) in pairs.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            assert_eq!(one[0], i as u8);
        }
        assert!(
            stats
                .recv_buffers_in_use
                .load(std::sync::atomic::Ordering::Relaxed)
                <= 2
        );
        for (i, (s, _)) in pairs.iter_mut().enumerate() {
            let mut rest = [0u8; 99];
            s.read_exact(&mut rest).await.unwrap();
            assert!(rest.iter().all(|&b| b == i as u8));
        }
        assert_eq!(
            stats
                .recv_buffers_in_use
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let (l, _) = common::listen();
    let e = TcpListener::from_socket(l).unwrap_err();
    assert!(e.to_string().contains("no zmesh-rt runtime"));
}
