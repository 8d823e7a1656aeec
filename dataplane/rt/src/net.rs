//! Public TCP types, dispatching to the runtime's driver by enum.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::runtime::{self, Driver};
use crate::uring::{READ, WRITE};
use crate::{epoll, sys, uring};

fn ip_addr(a: io::Result<socket2::SockAddr>) -> io::Result<SocketAddr> {
    a?.as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

enum ListenerIo {
    Uring(Rc<uring::ListenInner>),
    Epoll(Rc<epoll::Io>),
}

/// A listening TCP socket on the current thread's runtime.
pub struct TcpListener {
    io: ListenerIo,
}

impl TcpListener {
    /// `socket` is already bound and listening (the caller sets SO_REUSEPORT etc. with
    /// socket2). Fails if the thread has no runtime.
    pub fn from_socket(socket: Socket) -> io::Result<TcpListener> {
        let core = runtime::current().ok_or_else(sys::no_runtime)?;
        let io = match &core.driver {
            Driver::Uring(d) => ListenerIo::Uring(uring::ListenInner::new(d.clone(), socket)),
            Driver::Epoll(d) => ListenerIo::Epoll(epoll::Io::new(d.clone(), socket, false)?),
        };
        Ok(TcpListener { io })
    }

    /// Next connection. Under io_uring one multishot accept feeds a small queue.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.io {
            ListenerIo::Uring(l) => loop {
                let fd = poll_fn(|cx| l.poll_accept(cx)).await?;
                let socket = Socket::from(fd);
                // A peer that reset before we looked has no address: skip it, like accept(2)
                // skips connections aborted in the backlog.
                let Ok(peer) = sys::peer_addr(&socket) else {
                    continue;
                };
                let s = uring::StreamInner::new(l.driver.clone(), socket);
                return Ok((TcpStream::new(StreamIo::Uring(s)), peer));
            },
            ListenerIo::Epoll(io) => {
                let (socket, peer) = poll_fn(|cx| io.poll_accept(cx)).await?;
                let s = epoll::Io::new(io.driver().clone(), socket, true)?;
                Ok((TcpStream::new(StreamIo::Epoll(s)), peer))
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_addr(self.sock().local_addr())
    }

    pub fn socket(&self) -> SockRef<'_> {
        SockRef::from(self.sock())
    }

    fn sock(&self) -> &Socket {
        match &self.io {
            ListenerIo::Uring(l) => &l.socket,
            ListenerIo::Epoll(io) => io.socket(),
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        if let ListenerIo::Uring(l) = &self.io {
            l.close();
        }
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local_addr().ok())
            .finish()
    }
}

#[derive(Clone)]
enum StreamIo {
    Uring(Rc<uring::StreamInner>),
    Epoll(Rc<epoll::Io>),
}

/// One handle on a stream: the read side, the write side, or (inside TcpStream) both.
struct Half {
    io: StreamIo,
    bits: u8,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let StreamIo::Uring(s) = &self.io {
            s.release(self.bits);
        }
    }
}

impl StreamIo {
    fn socket(&self) -> &Socket {
        match self {
            StreamIo::Uring(s) => s.socket(),
            StreamIo::Epoll(io) => io.socket(),
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            StreamIo::Uring(s) => s.poll_read(cx, buf),
            StreamIo::Epoll(io) => io.poll_read(cx, buf),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self {
            StreamIo::Uring(s) => s.poll_write(cx, bufs),
            StreamIo::Epoll(io) => io.poll_write(cx, bufs),
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            StreamIo::Uring(s) => s.poll_flush(cx),
            StreamIo::Epoll(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            StreamIo::Uring(s) => s.poll_shutdown(cx),
            StreamIo::Epoll(io) => io.poll_shutdown(),
        }
    }
}

/// A connected TCP stream on the current thread's runtime.
pub struct TcpStream {
    half: Half,
}

/// The read half of a [`TcpStream`]; the fd closes when both halves are dropped.
pub struct OwnedReadHalf {
    half: Half,
}

/// The write half of a [`TcpStream`]; dropping it does not shut the socket down.
pub struct OwnedWriteHalf {
    half: Half,
}

impl TcpStream {
    fn new(io: StreamIo) -> TcpStream {
        TcpStream {
            half: Half {
                io,
                bits: READ | WRITE,
            },
        }
    }

    /// `socket` is created and configured by the caller (bind, SO_MARK, IP_TRANSPARENT,
    /// nodelay...), not yet connected.
    pub async fn connect(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
        let core = runtime::current().ok_or_else(sys::no_runtime)?;
        let io = match &core.driver {
            Driver::Uring(d) => StreamIo::Uring(uring::connect(d.clone(), socket, addr).await?),
            Driver::Epoll(d) => StreamIo::Epoll(epoll::connect(d.clone(), socket, addr).await?),
        };
        Ok(TcpStream::new(io))
    }

    /// Wraps an already connected socket.
    pub fn from_socket(socket: Socket) -> io::Result<TcpStream> {
        let core = runtime::current().ok_or_else(sys::no_runtime)?;
        let io = match &core.driver {
            Driver::Uring(d) => {
                socket.set_nonblocking(true)?;
                StreamIo::Uring(uring::StreamInner::new(d.clone(), socket))
            }
            Driver::Epoll(d) => StreamIo::Epoll(epoll::Io::new(d.clone(), socket, true)?),
        };
        Ok(TcpStream::new(io))
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        ip_addr(self.half.io.socket().peer_addr())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_addr(self.half.io.socket().local_addr())
    }

    /// The socket, e.g. for `original_dst()` or `set_nodelay`.
    pub fn socket(&self) -> SockRef<'_> {
        SockRef::from(self.half.io.socket())
    }

    /// Splits into independently owned halves; the fd closes when both are dropped.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let io = self.half.io.clone();
        // Hand the single handle's bits to two handles without releasing either side.
        let mut half = self.half;
        half.bits = READ;
        (
            OwnedReadHalf { half },
            OwnedWriteHalf {
                half: Half { io, bits: WRITE },
            },
        )
    }
}

macro_rules! addr_accessors {
    ($t:ty) => {
        impl $t {
            pub fn peer_addr(&self) -> io::Result<SocketAddr> {
                ip_addr(self.half.io.socket().peer_addr())
            }

            pub fn local_addr(&self) -> io::Result<SocketAddr> {
                ip_addr(self.half.io.socket().local_addr())
            }

            pub fn socket(&self) -> SockRef<'_> {
                SockRef::from(self.half.io.socket())
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("local", &self.local_addr().ok())
                    .field("peer", &self.peer_addr().ok())
                    .finish()
            }
        }
    };
}

addr_accessors!(OwnedReadHalf);
addr_accessors!(OwnedWriteHalf);

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

macro_rules! async_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.half.io.poll_read(cx, buf)
            }
        }
    };
}

macro_rules! async_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.half.io.poll_write(cx, &[IoSlice::new(buf)])
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.half.io.poll_write(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.half.io.poll_flush(cx)
            }

            /// Flushes pending writes, then half-closes (SHUT_WR); reads keep working.
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.half.io.poll_shutdown(cx)
            }
        }
    };
}

async_read!(TcpStream);
async_read!(OwnedReadHalf);
async_write!(TcpStream);
async_write!(OwnedWriteHalf);
