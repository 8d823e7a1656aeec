//! Moving bytes: app socket ↔ HTTP/2 stream (tunnels) and app socket ↔ socket (passthrough).
//!
//! Both directions run concurrently and end independently: EOF on one side is passed on as a
//! half-close (END_STREAM on the stream, `shutdown(SHUT_WR)` on the socket), so a client that
//! closes its write side still reads the whole reply. Flow control is end to end: received
//! stream capacity is released only after the bytes were written to the app socket.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::{ShardStats, TrafficCounters};

/// Read buffer sizes for the socket → stream direction. A tunnel starts small (an idle or
/// request/response tunnel holds little memory) and doubles its buffer whenever a read fills
/// it, up to the largest size, where reads are big enough that syscalls and DATA frames cost
/// little per byte (the peer accepts frames up to 1 MiB).
const READ_MIN: usize = 4 << 10;
const READ_MAX: usize = 256 << 10;
/// Reads smaller than this are copied into an exact-size buffer so the read buffer is reused;
/// larger ones hand their buffer to HTTP/2 without copying.
const COPY_BELOW: usize = 16 << 10;

/// Bytes moved by a finished relay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    /// From the downstream (app or peer) towards the upstream.
    pub up: u64,
    /// From the upstream back to the downstream.
    pub down: u64,
}

/// Where to count: the connection's traffic series and the shard totals, and this
/// connection's own totals (kept so a relay that ends in an error still reports what it moved).
pub struct Accounting {
    traffic: Arc<TrafficCounters>,
    stats: Arc<ShardStats>,
    moved: Cell<Moved>,
}

impl Accounting {
    pub fn new(traffic: Arc<TrafficCounters>, stats: Arc<ShardStats>) -> Accounting {
        Accounting {
            traffic,
            stats,
            moved: Cell::default(),
        }
    }

    /// Bytes this connection moved so far (all of them once its relay has returned).
    pub fn moved(&self) -> Moved {
        self.moved.get()
    }

    fn received(&self, n: usize) {
        TrafficCounters::add(&self.traffic.received, n as u64);
        TrafficCounters::add(&self.stats.bytes_in, n as u64);
        let mut m = self.moved.get();
        m.up += n as u64;
        self.moved.set(m);
    }

    fn sent(&self, n: usize) {
        TrafficCounters::add(&self.traffic.sent, n as u64);
        TrafficCounters::add(&self.stats.bytes_out, n as u64);
        let mut m = self.moved.get();
        m.down += n as u64;
        self.moved.set(m);
    }
}

/// Relays between a socket and a tunnel stream until both directions have ended. The socket
/// side is "downstream" for counting when `socket_is_downstream` (outbound), else the stream is.
pub async fn tunnel(
    socket: zmesh_rt::TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    acct: &Accounting,
    socket_is_downstream: bool,
) -> io::Result<Moved> {
    let (r, w) = socket.into_split();
    let to_stream = socket_to_stream(r, send, acct, socket_is_downstream);
    let to_socket = stream_to_socket(recv, w, acct, socket_is_downstream);
    let (a, b) = futures_util::future::try_join(to_stream, to_socket).await?;
    Ok(if socket_is_downstream {
        Moved { up: a, down: b }
    } else {
        Moved { up: b, down: a }
    })
}

async fn socket_to_stream<R: AsyncRead + Unpin>(
    mut r: R,
    mut send: SendStream<Bytes>,
    acct: &Accounting,
    socket_is_downstream: bool,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut size = READ_MIN;
    let mut buf = BytesMut::new();
    loop {
        buf.clear();
        buf.reserve(size);
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += n as u64;
        if socket_is_downstream {
            acct.received(n)
        } else {
            acct.sent(n)
        }
        if n >= size && size < READ_MAX {
            size *= 2;
        }
        let mut data = if n < COPY_BELOW {
            Bytes::copy_from_slice(&buf[..n])
        } else {
            buf.split().freeze()
        };
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(h2_io(e)),
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            send.send_data(chunk, false).map_err(h2_io)?;
        }
    }
}

async fn stream_to_socket<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    mut w: W,
    acct: &Accounting,
    socket_is_downstream: bool,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = match chunk {
            Ok(c) => c,
            // The peer reset the stream with NO_ERROR or CANCEL: that is its EOF.
            Err(e) if is_graceful_reset(&e) => break,
            Err(e) => return Err(h2_io(e)),
        };
        w.write_all(&chunk).await?;
        if chunk.is_empty() {
            continue;
        }
        // Flush before returning window: the bytes have left us only once written.
        w.flush().await?;
        total += chunk.len() as u64;
        if socket_is_downstream {
            acct.sent(chunk.len())
        } else {
            acct.received(chunk.len())
        }
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    w.shutdown().await?;
    Ok(total)
}

/// Plain socket-to-socket relay with half-close both ways.
pub async fn passthrough<A, B>(mut down: A, mut up: B, acct: &Accounting) -> io::Result<Moved>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a, b) =
        tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 64 << 10, 64 << 10).await?;
    acct.received(a as usize);
    acct.sent(b as usize);
    Ok(Moved { up: a, down: b })
}

fn is_graceful_reset(e: &h2::Error) -> bool {
    e.is_reset()
        && matches!(
            e.reason(),
            Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
        )
}

/// An h2 error as io: a reset with NO_ERROR or CANCEL is a normal close.
pub fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 io"));
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}
