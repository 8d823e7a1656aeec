//! The epoll driver (mio): edge-triggered readiness per socket, syscalls straight on the fd
//! until they would block. Used where io_uring is unavailable.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use socket2::Socket;
use tokio::io::ReadBuf;

use crate::executor::Remote;
use crate::slab::Slab;
use crate::{RuntimeStats, sys};

const EVENTFD_TOKEN: Token = Token(usize::MAX);

pub(crate) struct Driver {
    poll: RefCell<mio::Poll>,
    registry: mio::Registry,
    events: RefCell<Events>,
    ios: RefCell<Slab<Rc<Readiness>>>,
    wakers: RefCell<Vec<Waker>>,
    remote: Arc<Remote>,
    stats: Arc<RuntimeStats>,
}

/// Readiness of one socket, as last reported by epoll and cleared on EAGAIN.
#[derive(Default)]
struct Readiness {
    readable: Cell<bool>,
    writable: Cell<bool>,
    rd_waker: Cell<Option<Waker>>,
    wr_waker: Cell<Option<Waker>>,
}

impl Driver {
    pub(crate) fn new(remote: &Arc<Remote>, stats: &Arc<RuntimeStats>) -> io::Result<Rc<Driver>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        registry.register(
            &mut SourceFd(&remote.efd.as_raw_fd()),
            EVENTFD_TOKEN,
            Interest::READABLE,
        )?;
        Ok(Rc::new(Driver {
            poll: RefCell::new(poll),
            registry,
            events: RefCell::new(Events::with_capacity(1024)),
            ios: RefCell::new(Slab::new()),
            wakers: RefCell::new(Vec::new()),
            remote: remote.clone(),
            stats: stats.clone(),
        }))
    }

    /// Waits up to `timeout` (None: forever) and wakes what became ready; returns the time
    /// spent in epoll_wait.
    pub(crate) fn park(&self, timeout: Option<Duration>) -> io::Result<Duration> {
        let mut events = self.events.borrow_mut();
        let start = Instant::now();
        let res = self.poll.borrow_mut().poll(&mut events, timeout);
        let blocked = if timeout == Some(Duration::ZERO) {
            Duration::ZERO
        } else {
            start.elapsed()
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(blocked),
            Err(e) => return Err(e),
        }
        let mut wakers = self.wakers.take();
        let mut n = 0;
        {
            let ios = self.ios.borrow();
            for ev in events.iter() {
                n += 1;
                if ev.token() == EVENTFD_TOKEN {
                    sys::eventfd_drain(&self.remote.efd);
                    self.remote.clear_notified();
                    continue;
                }
                let Some(r) = ios.get(ev.token().0 as u64) else {
                    continue;
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    r.readable.set(true);
                    wakers.extend(r.rd_waker.take());
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    r.writable.set(true);
                    wakers.extend(r.wr_waker.take());
                }
            }
        }
        drop(events);
        RuntimeStats::add(&self.stats.completions, n);
        wakers.drain(..).for_each(Waker::wake);
        *self.wakers.borrow_mut() = wakers;
        Ok(blocked)
    }

    /// Shutdown step: drops every parked waker; returns how many there were.
    pub(crate) fn shutdown(&self) -> usize {
        let wakers: Vec<Waker> = self
            .ios
            .borrow()
            .values()
            .flat_map(|r| [r.rd_waker.take(), r.wr_waker.take()])
            .flatten()
            .collect();
        wakers.len()
    }
}

/// A registered socket (stream or listener).
pub(crate) struct Io {
    driver: Rc<Driver>,
    ready: Rc<Readiness>,
    key: u64,
    socket: Socket,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Io {
    pub(crate) fn new(driver: Rc<Driver>, socket: Socket, writable: bool) -> io::Result<Rc<Io>> {
        socket.set_nonblocking(true)?;
        let ready = Rc::new(Readiness::default());
        ready.readable.set(true);
        ready.writable.set(writable);
        let key = driver.ios.borrow_mut().insert(ready.clone());
        let interest = Interest::READABLE | Interest::WRITABLE;
        let token = Token(key as usize);
        if let Err(e) =
            driver
                .registry
                .register(&mut SourceFd(&socket.as_raw_fd()), token, interest)
        {
            let r = driver.ios.borrow_mut().remove(key);
            drop(r);
            return Err(e);
        }
        RuntimeStats::set(&driver.stats.queue_depth, driver.ios.borrow().len() as u64);
        Ok(Rc::new(Io {
            driver,
            ready,
            key,
            socket,
        }))
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(crate) fn driver(&self) -> &Rc<Driver> {
        &self.driver
    }

    fn count(&self) {
        RuntimeStats::add(&self.driver.stats.submissions, 1);
    }

    /// Runs `op` until it does not return WouldBlock; parks on the read side if it does.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let (flag, waker) = if write {
            (&self.ready.writable, &self.ready.wr_waker)
        } else {
            (&self.ready.readable, &self.ready.rd_waker)
        };
        loop {
            if !flag.get() {
                // No event can arrive between the EAGAIN and this registration: events are
                // dispatched on this thread, in park.
                waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            self.count();
            match op() {
                Err(e) if would_block(&e) => flag.set(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let fd = self.socket.as_raw_fd();
        let n = std::task::ready!(self.poll_io(cx, false, || {
            // SAFETY: `recv` only writes bytes into the unfilled part (it never de-initialises
            // any), and exactly the bytes it reports are marked initialised below.
            let unfilled = unsafe { out.unfilled_mut() };
            sys::recv(fd, unfilled)
        }))?;
        // SAFETY: the kernel wrote `n` bytes at the start of the unfilled part.
        unsafe { out.assume_init(n) };
        out.advance(n);
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = self.socket.as_raw_fd();
        match bufs {
            [] => Poll::Ready(Ok(0)),
            [one] => self.poll_io(cx, true, || sys::send(fd, one, 0)),
            many => self.poll_io(cx, true, || sys::send_vectored(fd, many)),
        }
    }

    pub(crate) fn poll_shutdown(&self) -> Poll<io::Result<()>> {
        Poll::Ready(match self.socket.shutdown(Shutdown::Write) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            r => r,
        })
    }

    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Socket, SocketAddr)>> {
        self.poll_io(cx, false, || {
            let (s, addr) = self.socket.accept()?;
            let addr = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("peer is not an IP socket"))?;
            Ok((s, addr))
        })
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        let _ = self
            .driver
            .registry
            .deregister(&mut SourceFd(&self.socket.as_raw_fd()));
        let r = self.driver.ios.borrow_mut().remove(self.key);
        drop(r);
        RuntimeStats::set(
            &self.driver.stats.queue_depth,
            self.driver.ios.borrow().len() as u64,
        );
    }
}

/// Non-blocking connect, then wait for writability and check SO_ERROR.
pub(crate) async fn connect(
    driver: Rc<Driver>,
    socket: Socket,
    addr: SocketAddr,
) -> io::Result<Rc<Io>> {
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => return Io::new(driver, socket, true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let io = Io::new(driver, socket, false)?;
    loop {
        poll_fn(|cx| {
            if io.ready.writable.get() {
                Poll::Ready(())
            } else {
                io.ready.wr_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        if let Some(e) = io.socket.take_error()? {
            return Err(e);
        }
        match io.socket.peer_addr() {
            Ok(_) => return Ok(io),
            // Spurious wakeup: still connecting.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => io.ready.writable.set(false),
            Err(e) => return Err(e),
        }
    }
}
