//! Multishot accept and connect on io_uring.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types};
use socket2::{SockAddr, Socket};

use super::{Driver, Op, StreamInner};

/// Accepted connections queued beyond this stop the multishot accept until `accept` drains
/// them; the kernel's listen backlog holds the rest.
const ACCEPT_QUEUE_MAX: usize = 64;

pub(crate) struct ListenInner {
    pub(crate) driver: Rc<Driver>,
    pub(crate) socket: Socket,
    st: RefCell<AcceptState>,
}

#[derive(Default)]
struct AcceptState {
    /// Accepted fds, or errnos reported by the multishot accept.
    queue: VecDeque<Result<OwnedFd, i32>>,
    ud: Option<u64>,
    cancelling: bool,
    closed: bool,
    waker: Option<Waker>,
}

impl ListenInner {
    pub(crate) fn new(driver: Rc<Driver>, socket: Socket) -> Rc<ListenInner> {
        Rc::new(ListenInner {
            driver,
            socket,
            st: RefCell::default(),
        })
    }

    pub(crate) fn poll_accept(self: &Rc<Self>, cx: &mut Context<'_>) -> Poll<io::Result<OwnedFd>> {
        let mut st = self.st.borrow_mut();
        let item = st.queue.pop_front();
        if st.ud.is_none() && !st.closed && st.queue.len() < ACCEPT_QUEUE_MAX {
            let sqe = opcode::AcceptMulti::new(types::Fd(self.socket.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build();
            match self.driver.submit(sqe, Op::Accept(self.clone())) {
                Ok(ud) => st.ud = Some(ud),
                Err(e) if item.is_none() => return Poll::Ready(Err(e)),
                Err(_) => {}
            }
        }
        match item {
            Some(Ok(fd)) => Poll::Ready(Ok(fd)),
            Some(Err(e)) => Poll::Ready(Err(io::Error::from_raw_os_error(e))),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(crate) fn complete(&self, res: i32, more: bool) {
        let mut st = self.st.borrow_mut();
        if !more {
            st.ud = None;
            st.cancelling = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new fd nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if st.closed {
                return;
            }
            st.queue.push_back(Ok(fd));
            if more
                && !st.cancelling
                && st.queue.len() >= ACCEPT_QUEUE_MAX
                && let Some(ud) = st.ud
            {
                st.cancelling = true;
                self.driver.cancel(ud);
            }
        } else if res != -libc::ECANCELED && !st.closed {
            st.queue.push_back(Err(-res));
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The listener handle was dropped: stop accepting and close what was queued.
    pub(crate) fn close(&self) {
        let mut st = self.st.borrow_mut();
        st.closed = true;
        st.waker = None;
        st.queue.clear();
        if let Some(ud) = st.ud {
            self.driver.cancel(ud);
        }
    }
}

/// An in-flight connect: owns the socket and address the kernel uses until it completes.
pub(crate) struct ConnectInner {
    socket: RefCell<Option<Socket>>,
    addr: SockAddr,
    res: Cell<Option<i32>>,
    waker: Cell<Option<Waker>>,
}

impl ConnectInner {
    pub(crate) fn complete(&self, res: i32) {
        self.res.set(Some(res));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Cancels the connect if its future is dropped first.
struct CancelGuard<'a> {
    driver: &'a Driver,
    ud: u64,
    c: &'a ConnectInner,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.c.res.get().is_none() {
            self.driver.cancel(self.ud);
        }
    }
}

pub(crate) async fn connect(
    driver: Rc<Driver>,
    socket: Socket,
    addr: SocketAddr,
) -> io::Result<Rc<StreamInner>> {
    socket.set_nonblocking(true)?;
    let fd = types::Fd(socket.as_raw_fd());
    let c = Rc::new(ConnectInner {
        socket: RefCell::new(Some(socket)),
        addr: SockAddr::from(addr),
        res: Cell::new(None),
        waker: Cell::new(None),
    });
    let sqe = opcode::Connect::new(fd, c.addr.as_ptr().cast(), c.addr.len()).build();
    let ud = driver.submit(sqe, Op::Connect(c.clone()))?;
    let guard = CancelGuard {
        driver: &driver,
        ud,
        c: &c,
    };
    let res = poll_fn(|cx| match c.res.get() {
        Some(r) => Poll::Ready(r),
        None => {
            c.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    })
    .await;
    drop(guard);
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    let socket = c
        .socket
        .borrow_mut()
        .take()
        .ok_or_else(|| io::Error::other("connect raced"))?;
    Ok(StreamInner::new(driver, socket))
}
