//! The io_uring driver: one ring per runtime, an operation slab keyed by user_data, and a
//! provided-buffer ring for receives.
//!
//! Memory rule: every buffer, address or fd an SQE points at is owned (through an `Rc`) by the
//! op in the slab until that op's final CQE arrives. Dropping a socket only cancels its ops;
//! its memory and fd are released when the last completion comes back.

mod bufring;
mod listener;
mod probe;
mod stream;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::executor::Remote;
use crate::slab::Slab;
use crate::{RuntimeConfig, RuntimeStats, sys};

pub(crate) use listener::{ListenInner, connect};
pub(crate) use probe::probe;
pub(crate) use stream::{READ, StreamInner, WRITE};

/// user_data of the eventfd read that wakes the ring from other threads.
const EVENTFD_UD: u64 = u64::MAX - 1;
/// user_data of AsyncCancel requests, whose completions carry nothing we need.
const CANCEL_UD: u64 = u64::MAX;
const BGID: u16 = 0;

/// What a completion is for; each variant owns what the kernel may touch.
#[derive(Clone)]
pub(crate) enum Op {
    Accept(Rc<ListenInner>),
    Recv(Rc<StreamInner>),
    Send(Rc<StreamInner>),
    Connect(Rc<listener::ConnectInner>),
}

pub(crate) struct Driver {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<Op>>,
    pub(crate) bufs: bufring::BufRing,
    /// Streams with buffered writes to submit before the next enter (batches a tick's writes).
    flush: RefCell<Vec<Rc<StreamInner>>>,
    /// SQEs that did not fit the submission queue (e.g. while the CQ overflowed); pushed, in
    /// order, before anything newer.
    backlog: RefCell<VecDeque<squeue::Entry>>,
    cqes: RefCell<Vec<(u64, i32, u32)>>,
    /// Target of the eventfd read; heap-allocated so its address is stable.
    efd_buf: Box<Cell<u64>>,
    efd_armed: Cell<bool>,
    remote: Arc<Remote>,
    stats: Arc<RuntimeStats>,
    pub(crate) zc_threshold: Option<usize>,
    closed: Cell<bool>,
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(2);
    // Fastest first: completions processed only when we enter, by this thread.
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun()
                .setup_taskrun_flag();
        },
        |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        },
        |_| {},
    ];
    let mut last = io::Error::other("unreachable");
    for setup in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        setup(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Driver {
    pub(crate) fn new(
        cfg: &RuntimeConfig,
        remote: &Arc<Remote>,
        stats: &Arc<RuntimeStats>,
    ) -> io::Result<Rc<Driver>> {
        let ring = build_ring(cfg.ring_entries.max(8))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+); use the epoll driver",
            ));
        }
        let bufs = bufring::BufRing::new(
            &ring.submitter(),
            cfg.recv_buffers,
            cfg.recv_buffer_size,
            BGID,
            stats,
        )?;
        let d = Rc::new(Driver {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::new()),
            bufs,
            flush: RefCell::new(Vec::new()),
            backlog: RefCell::new(VecDeque::new()),
            cqes: RefCell::new(Vec::with_capacity(256)),
            efd_buf: Box::new(Cell::new(0)),
            efd_armed: Cell::new(false),
            remote: remote.clone(),
            stats: stats.clone(),
            zc_threshold: cfg.send_zc_threshold,
            closed: Cell::new(false),
        });
        d.arm_eventfd()?;
        Ok(d)
    }

    fn arm_eventfd(&self) -> io::Result<()> {
        let sqe = opcode::Read::new(
            types::Fd(self.remote.efd.as_raw_fd()),
            self.efd_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(EVENTFD_UD);
        self.push(&sqe)?;
        self.efd_armed.set(true);
        Ok(())
    }

    /// Queues `sqe` for `op`; the op (and all it owns) lives in the slab until its final CQE.
    pub(crate) fn submit(&self, sqe: squeue::Entry, op: Op) -> io::Result<u64> {
        if self.closed.get() {
            return Err(sys::shut_down());
        }
        let ud = self.ops.borrow_mut().insert(op);
        if let Err(e) = self.push(&sqe.user_data(ud)) {
            let op = self.ops.borrow_mut().remove(ud);
            drop(op);
            return Err(e);
        }
        Ok(ud)
    }

    /// Asks the kernel to cancel op `ud`; its completion (usually -ECANCELED) still arrives.
    pub(crate) fn cancel(&self, ud: u64) {
        let sqe = opcode::AsyncCancel::new(ud).build().user_data(CANCEL_UD);
        if let Err(e) = self.push(&sqe) {
            tracing::debug!(error = %e, "io_uring cancel not queued");
        }
    }

    fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        RuntimeStats::add(&self.stats.submissions, 1);
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() && self.try_push(sqe) {
            return Ok(());
        }
        backlog.push_back(sqe.clone());
        Ok(())
    }

    /// Pushes into the SQ, submitting once to make room if it is full.
    fn try_push(&self, sqe: &squeue::Entry) -> bool {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: everything the SQE points at is owned by its slab op (or by the driver for
        // the eventfd read), which outlives the operation; see the module docs.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return true;
        }
        if ring.submit().is_err() {
            return false;
        }
        // SAFETY: as above.
        unsafe { ring.submission().push(sqe) }.is_ok()
    }

    fn push_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        while let Some(sqe) = backlog.front() {
            if !self.try_push(sqe) {
                break;
            }
            backlog.pop_front();
        }
    }

    /// Schedules `s`'s buffered writes to be submitted before the next enter.
    pub(crate) fn queue_flush(&self, s: Rc<StreamInner>) {
        self.flush.borrow_mut().push(s);
    }

    /// Submits, waits up to `timeout` (None: forever) if nothing completed, and dispatches.
    /// Returns the time spent blocked: submission work done inline by the kernel is not idle.
    pub(crate) fn park(&self, timeout: Option<Duration>) -> io::Result<Duration> {
        let mut flush = self.flush.take();
        for s in flush.drain(..) {
            s.start_send();
        }
        *self.flush.borrow_mut() = flush;
        self.push_backlog();
        self.enter(Some(Duration::ZERO))?;
        let mut blocked = Duration::ZERO;
        // With a backlog, only reap: the CQ must drain before the SQ takes more.
        let may_wait = self.backlog.borrow().is_empty() && timeout != Some(Duration::ZERO);
        if may_wait && self.cqes.borrow().is_empty() {
            let start = Instant::now();
            self.enter(timeout)?;
            blocked = start.elapsed();
        }
        self.dispatch();
        Ok(blocked)
    }

    fn enter(&self, timeout: Option<Duration>) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        let res = match timeout {
            Some(t) if t.is_zero() => {
                let pending = ring.submission().len() as u32;
                // SAFETY: plain io_uring_enter with no argument pointer; GETEVENTS makes the
                // kernel run deferred task work so ready completions get posted.
                unsafe {
                    ring.submitter().enter::<libc::sigset_t>(
                        pending,
                        0,
                        io_uring::EnterFlags::GETEVENTS.bits(),
                        None,
                    )
                }
            }
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
            None => ring.submitter().submit_and_wait(1),
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut cqes = self.cqes.borrow_mut();
        cqes.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        Ok(())
    }

    fn dispatch(&self) {
        let mut cqes = self.cqes.take();
        RuntimeStats::add(&self.stats.completions, cqes.len() as u64);
        for (ud, res, flags) in cqes.drain(..) {
            self.complete(ud, res, flags);
        }
        *self.cqes.borrow_mut() = cqes;
        RuntimeStats::set(&self.stats.queue_depth, self.ops.borrow().len() as u64);
    }

    fn complete(&self, ud: u64, res: i32, flags: u32) {
        match ud {
            CANCEL_UD => return,
            EVENTFD_UD => {
                self.efd_armed.set(false);
                self.remote.clear_notified();
                if !self.closed.get()
                    && let Err(e) = self.arm_eventfd()
                {
                    tracing::error!(error = %e, "cannot re-arm the runtime eventfd");
                }
                return;
            }
            _ => {}
        }
        let more = cqueue::more(flags);
        let op = {
            let mut ops = self.ops.borrow_mut();
            if more {
                ops.get(ud).cloned()
            } else {
                ops.remove(ud)
            }
        };
        let Some(op) = op else {
            // Unknown op: never leave a selected buffer stranded.
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.bufs.taken(bid);
                self.bufs.recycle(bid);
            }
            return;
        };
        match op {
            Op::Accept(l) => l.complete(res, more),
            Op::Recv(s) => s.recv_done(res, flags),
            Op::Send(s) => s.send_done(res, flags, more),
            Op::Connect(c) => c.complete(res),
        }
    }

    /// Shutdown step: cancel every op and reap; returns how much is still outstanding.
    pub(crate) fn shutdown(&self) -> usize {
        self.closed.set(true);
        self.flush.borrow_mut().clear();
        for round in 0..50 {
            let keys = self.ops.borrow().keys();
            if keys.is_empty() && !self.efd_armed.get() {
                return 0;
            }
            if round % 10 == 0 {
                keys.into_iter().for_each(|ud| self.cancel(ud));
                if self.efd_armed.get() {
                    self.cancel(EVENTFD_UD);
                }
            }
            if let Err(e) = self.park(Some(Duration::from_millis(10))) {
                tracing::warn!(error = %e, "io_uring shutdown wait failed");
            }
        }
        self.ops.borrow().len() + usize::from(self.efd_armed.get())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let idle = self.ops.get_mut().len() == 0 && !self.efd_armed.get();
        if idle {
            let _ = self.ring.get_mut().submitter().unregister_buf_ring(BGID);
        } else {
            // The kernel may still write into buffers or read send data: leak them (and the
            // ops owning them) rather than free memory under it.
            tracing::warn!(
                ops = self.ops.get_mut().len(),
                "io_uring dropped with ops in flight"
            );
            self.bufs.leak.set(true);
            std::mem::forget(self.ops.replace(Slab::new()));
            std::mem::forget(std::mem::replace(&mut self.efd_buf, Box::new(Cell::new(0))));
        }
    }
}
