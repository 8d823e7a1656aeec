//! A TCP stream on io_uring.
//!
//! Both directions first try the socket directly (non-blocking `recv`/`sendmsg`): on a busy
//! stream data is usually already there, and this skips a ring round trip and a copy through
//! our buffers (measured: 2× single-stream loopback throughput). The ring takes over only when
//! the socket would block, so idle and slow connections still cost no thread and no buffer.
//!
//! Reads: at most one receive in flight, selecting a provided buffer only when data arrives;
//! `poll_read` copies out of it and recycles it once drained (so a connection holds at most
//! one receive buffer, and an idle one none). On ENOBUFS the receive is retried with a
//! private buffer.
//!
//! Writes: `poll_write` copies into `pending` and returns at once; `pending` is swapped into
//! `inflight` whenever no send is in flight, so writers keep appending during a send. The
//! buffers are bounded by [`MAX_SEND_BUF`], and `inflight` is never touched while the kernel
//! may read it (for SendZc, until the notification CQE).

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::mem;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::ptr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};

use io_uring::{cqueue, opcode, squeue, types};
use socket2::Socket;
use tokio::io::ReadBuf;

use super::{Driver, Op};
use crate::sys;

pub(crate) const READ: u8 = 1;
pub(crate) const WRITE: u8 = 2;

/// Bytes a writer may queue ahead of the kernel: enough for a few TLS records in flight on a
/// fast path, small enough that 10k busy connections stay within a few GiB.
const MAX_SEND_BUF: usize = 256 * 1024;
/// Drained send buffers larger than this are freed, so idle connections stay small.
const KEEP_SEND_BUF: usize = 64 * 1024;

pub(crate) struct StreamInner {
    driver: Rc<Driver>,
    socket: Socket,
    /// Which handles (READ, WRITE) are alive.
    open: Cell<u8>,
    rd: RefCell<ReadState>,
    wr: RefCell<WriteState>,
}

#[derive(Default)]
struct ReadState {
    buf: Option<RecvBuf>,
    ud: Option<u64>,
    /// Target of an in-flight fallback receive (after ENOBUFS).
    private: Option<Vec<u8>>,
    eof: bool,
    err: Option<i32>,
    waker: Option<Waker>,
}

enum RecvBuf {
    Ring { bid: u16, len: usize, pos: usize },
    Owned { data: Vec<u8>, pos: usize },
}

#[derive(Default)]
struct WriteState {
    pending: Vec<u8>,
    inflight: Vec<u8>,
    pos: usize,
    ud: Option<u64>,
    /// The in-flight send is a SendZc; its result waits in `zc_res` for the notification.
    zc: bool,
    zc_res: Option<i32>,
    zc_off: bool,
    /// In the driver's flush list.
    queued: bool,
    err: Option<i32>,
    shut: bool,
    waker: Option<Waker>,
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl StreamInner {
    pub(crate) fn new(driver: Rc<Driver>, socket: Socket) -> Rc<StreamInner> {
        Rc::new(StreamInner {
            driver,
            socket,
            open: Cell::new(READ | WRITE),
            rd: RefCell::default(),
            wr: RefCell::default(),
        })
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(crate) fn poll_read(
        self: &Rc<Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut rd = self.rd.borrow_mut();
        if let Some(buf) = rd.buf.as_mut() {
            let (data, pos) = match buf {
                RecvBuf::Ring { bid, len, pos } => (self.driver.bufs.data(*bid, *len), pos),
                RecvBuf::Owned { data, pos } => (&data[..], pos),
            };
            let n = out.remaining().min(data.len() - *pos);
            out.put_slice(&data[*pos..*pos + n]);
            *pos += n;
            if *pos == data.len()
                && let Some(RecvBuf::Ring { bid, .. }) = rd.buf.take()
            {
                self.driver.bufs.recycle(bid);
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = rd.err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if rd.eof || out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if rd.ud.is_none() {
            // Fast path: when data is already queued on the socket, read it straight into the
            // caller's buffer — no ring round trip and no copy out of a provided buffer. Only
            // when the socket is empty do we park a receive in the ring.
            // SAFETY: recv writes at most `unfilled` bytes and we mark exactly `n` as filled.
            match sys::recv_nonblocking(self.socket.as_raw_fd(), unsafe { out.unfilled_mut() }) {
                Ok(0) => {
                    rd.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    // SAFETY: the kernel initialised the first `n` bytes of the unfilled part.
                    unsafe { out.assume_init(n) };
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.submit_recv(&mut rd, false) {
                return Poll::Ready(Err(e));
            }
        }
        set_waker(&mut rd.waker, cx);
        Poll::Pending
    }

    fn submit_recv(self: &Rc<Self>, rd: &mut ReadState, private: bool) -> io::Result<()> {
        let fd = types::Fd(self.socket.as_raw_fd());
        let size = self.driver.bufs.buf_size;
        let sqe = if private {
            let mut v = Vec::with_capacity(size);
            let p = v.as_mut_ptr();
            // The Vec's heap block does not move when the Vec itself is moved into `rd`.
            rd.private = Some(v);
            opcode::Recv::new(fd, p, size as u32).build()
        } else {
            opcode::Recv::new(fd, ptr::null_mut(), size as u32)
                .buf_group(self.driver.bufs.bgid)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        match self.driver.submit(sqe, Op::Recv(self.clone())) {
            Ok(ud) => {
                rd.ud = Some(ud);
                Ok(())
            }
            Err(e) => {
                rd.private = None;
                Err(e)
            }
        }
    }

    pub(crate) fn recv_done(self: &Rc<Self>, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        if let Some(bid) = bid {
            self.driver.bufs.taken(bid);
        }
        let reading = self.open.get() & READ != 0;
        let mut rd = self.rd.borrow_mut();
        rd.ud = None;
        let private = rd.private.take();
        if res > 0 && reading {
            let len = res as usize;
            rd.buf = match (bid, private) {
                (Some(bid), _) => Some(RecvBuf::Ring { bid, len, pos: 0 }),
                (None, Some(mut data)) => {
                    // SAFETY: the kernel initialised `len` bytes of the spare capacity it was
                    // given, and `len` never exceeds that capacity.
                    unsafe { data.set_len(len.min(data.capacity())) };
                    Some(RecvBuf::Owned { data, pos: 0 })
                }
                (None, None) => None,
            };
        } else {
            if let Some(bid) = bid {
                self.driver.bufs.recycle(bid);
            }
            if !reading {
                return;
            }
            match -res {
                0 => rd.eof = true,
                libc::ENOBUFS => match self.submit_recv(&mut rd, true) {
                    Ok(()) => return,
                    Err(e) => rd.err = Some(e.raw_os_error().unwrap_or(libc::EIO)),
                },
                // The reader polls again and re-submits.
                libc::EINTR | libc::EAGAIN => {}
                e => rd.err = Some(e),
            }
        }
        let waker = rd.waker.take();
        drop(rd);
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn poll_write(
        self: &Rc<Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut wr = self.wr.borrow_mut();
        if let Some(e) = wr.err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if wr.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if wr.ud.is_none() && !wr.queued && wr.pending.is_empty() && wr.pos >= wr.inflight.len() {
            // Fast path: nothing queued ahead of us, so the socket can take the caller's bytes
            // directly (no copy into our buffer, no ring round trip). Whatever it cannot take
            // now goes through the ring below on the caller's next write.
            match sys::send_vectored_nonblocking(self.socket.as_raw_fd(), bufs) {
                Ok(n) if n > 0 => return Poll::Ready(Ok(n)),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    wr.err = e.raw_os_error();
                    return Poll::Ready(Err(e));
                }
            }
        }
        let room = MAX_SEND_BUF.saturating_sub(wr.pending.len());
        if room == 0 {
            // A send is in flight or queued (pending is never full otherwise); it wakes us.
            self.schedule_send(&mut wr);
            set_waker(&mut wr.waker, cx);
            return Poll::Pending;
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            wr.pending.extend_from_slice(&b[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        self.schedule_send(&mut wr);
        Poll::Ready(Ok(n))
    }

    fn schedule_send(self: &Rc<Self>, wr: &mut WriteState) {
        if wr.ud.is_none() && !wr.queued && !wr.pending.is_empty() {
            wr.queued = true;
            self.driver.queue_flush(self.clone());
        }
    }

    /// Submits the next send, if there is data and none is in flight.
    pub(crate) fn start_send(self: &Rc<Self>) {
        let mut wr = self.wr.borrow_mut();
        wr.queued = false;
        if wr.ud.is_some() || wr.err.is_some() || self.open.get() == 0 {
            return;
        }
        if wr.pos >= wr.inflight.len() {
            if wr.pending.is_empty() {
                return;
            }
            let w = &mut *wr;
            mem::swap(&mut w.pending, &mut w.inflight);
            w.pending.clear();
            w.pos = 0;
            if w.pending.capacity() > KEEP_SEND_BUF {
                w.pending = Vec::new();
            }
        }
        let chunk = &wr.inflight[wr.pos..];
        let (p, len) = (chunk.as_ptr(), chunk.len() as u32);
        let fd = types::Fd(self.socket.as_raw_fd());
        let zc = !wr.zc_off && self.driver.zc_threshold.is_some_and(|t| chunk.len() >= t);
        let sqe = if zc {
            opcode::SendZc::new(fd, p, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::Send::new(fd, p, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        match self.driver.submit(sqe, Op::Send(self.clone())) {
            Ok(ud) => {
                wr.ud = Some(ud);
                wr.zc = zc;
                wr.zc_res = None;
            }
            Err(e) => {
                wr.err = Some(e.raw_os_error().unwrap_or(libc::EIO));
                let waker = wr.waker.take();
                drop(wr);
                waker.into_iter().for_each(Waker::wake);
            }
        }
    }

    pub(crate) fn send_done(self: &Rc<Self>, res: i32, flags: u32, more: bool) {
        let mut wr = self.wr.borrow_mut();
        let zc = wr.zc;
        let res = if !zc {
            res
        } else if cqueue::notif(flags) {
            // The kernel is done with the buffer; the result came in the first CQE.
            wr.zc_res.take().unwrap_or(0)
        } else if more {
            wr.zc_res = Some(res);
            return;
        } else {
            res
        };
        wr.ud = None;
        wr.zc = false;
        if res >= 0 {
            wr.pos += res as usize;
            if wr.pos >= wr.inflight.len() {
                wr.inflight.clear();
                wr.pos = 0;
                if wr.inflight.capacity() > KEEP_SEND_BUF {
                    wr.inflight = Vec::new();
                }
            }
        } else {
            match -res {
                libc::EOPNOTSUPP | libc::EINVAL if zc => wr.zc_off = true,
                libc::EINTR | libc::EAGAIN => {}
                libc::ECANCELED if self.open.get() == 0 => {}
                e => {
                    wr.err = Some(e);
                    wr.pending = Vec::new();
                    wr.inflight = Vec::new();
                    wr.pos = 0;
                }
            }
        }
        let again = wr.err.is_none() && (wr.pos < wr.inflight.len() || !wr.pending.is_empty());
        let waker = wr.waker.take();
        drop(wr);
        if again {
            self.start_send();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn poll_flush(self: &Rc<Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wr = self.wr.borrow_mut();
        if let Some(e) = wr.err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if wr.ud.is_none() && wr.pending.is_empty() && wr.pos >= wr.inflight.len() {
            return Poll::Ready(Ok(()));
        }
        self.schedule_send(&mut wr);
        set_waker(&mut wr.waker, cx);
        Poll::Pending
    }

    /// Flushes, then half-closes (SHUT_WR).
    pub(crate) fn poll_shutdown(self: &Rc<Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        let mut wr = self.wr.borrow_mut();
        if wr.shut {
            return Poll::Ready(Ok(()));
        }
        wr.shut = true;
        Poll::Ready(match self.socket.shutdown(Shutdown::Write) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            r => r,
        })
    }

    /// A handle (READ and/or WRITE) was dropped. Cancels what nobody will wait for; the fd
    /// closes in Drop, once the last in-flight op has completed.
    pub(crate) fn release(&self, half: u8) {
        let open = self.open.get() & !half;
        self.open.set(open);
        if half & READ != 0 {
            let mut rd = self.rd.borrow_mut();
            rd.waker = None;
            if let Some(ud) = rd.ud {
                self.driver.cancel(ud);
            }
            if let Some(RecvBuf::Ring { bid, .. }) = rd.buf.take() {
                self.driver.bufs.recycle(bid);
            }
        }
        if open == 0 {
            let mut wr = self.wr.borrow_mut();
            wr.waker = None;
            if let Some(ud) = wr.ud {
                self.driver.cancel(ud);
            }
        }
    }
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        if let Some(RecvBuf::Ring { bid, .. }) = self.rd.get_mut().buf.take() {
            self.driver.bufs.recycle(bid);
        }
        // Dropped without flushing: hand what still fits to the kernel, as close(2) after a
        // blocking write would have. No op is in flight any more, so the buffers are ours.
        let wr = self.wr.get_mut();
        if wr.err.is_none() && !wr.shut {
            let fd = self.socket.as_raw_fd();
            let rest = [
                wr.inflight.get(wr.pos..).unwrap_or_default(),
                &wr.pending[..],
            ];
            for part in rest.into_iter().filter(|p| !p.is_empty()) {
                match sys::send(fd, part, libc::MSG_DONTWAIT) {
                    Ok(n) if n == part.len() => {}
                    _ => break,
                }
            }
        }
    }
}
