//! Run queue and wake routing.
//!
//! A wake on the runtime's own thread pushes the runnable onto a thread-local `VecDeque` (no
//! lock, no atomic RMW beyond async-task's own). A wake from any other thread goes through the
//! runtime's [`Remote`]: a crossbeam queue plus an eventfd that interrupts io_uring_enter or
//! epoll_wait.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Wake, Waker};

use async_task::Runnable;

use crate::runtime::{self, Core};
use crate::sys;

/// Tasks run per tick before the driver is polled again, so a busy task set cannot starve IO.
pub(crate) const BUDGET: usize = 128;

/// The part of a runtime other threads may touch.
pub(crate) struct Remote {
    pub(crate) id: usize,
    tx: crossbeam_channel::Sender<Foreign>,
    rx: crossbeam_channel::Receiver<Foreign>,
    pub(crate) efd: OwnedFd,
    /// An eventfd write is pending: later senders need not write again.
    notified: AtomicBool,
    /// The runtime is gone: foreign wakes leak their runnable instead of queueing it.
    closed: AtomicBool,
}

/// A runnable in the cross-thread queue. A local task must never be dropped off its thread
/// (async-task would panic), so one stranded in the queue is leaked, not dropped.
struct Foreign(Option<Runnable>);

impl Drop for Foreign {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            mem::forget(r);
        }
    }
}

impl Remote {
    pub(crate) fn new() -> std::io::Result<Arc<Remote>> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Arc::new(Remote {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            rx,
            efd: sys::eventfd()?,
            notified: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }))
    }

    /// Wakes the runtime if it is blocked (or will block) in the driver.
    pub(crate) fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            sys::eventfd_signal(&self.efd);
        }
    }

    /// Called by the driver once it consumed the eventfd; later notifies write it again.
    pub(crate) fn clear_notified(&self) {
        self.notified.swap(false, Ordering::AcqRel);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Schedules a runnable of this runtime, from whatever thread the waker runs on.
    pub(crate) fn schedule(self: &Arc<Self>, runnable: Runnable) {
        let Some(runnable) = runtime::try_push_local(self.id, runnable) else {
            return;
        };
        if self.closed.load(Ordering::Acquire) {
            mem::forget(runnable);
            return;
        }
        // Cannot fail: `self` holds the receiver.
        let _ = self.tx.send(Foreign(Some(runnable)));
        self.notify();
    }

    /// Moves runnables woken from other threads onto the local queue.
    pub(crate) fn drain_into(&self, queue: &RefCell<VecDeque<Runnable>>) {
        while let Ok(mut f) = self.rx.try_recv() {
            if let Some(r) = f.0.take() {
                queue.borrow_mut().push_back(r);
            }
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }
}

/// Runs up to [`BUDGET`] ready tasks; returns how many ran.
pub(crate) fn run_ready(core: &Core) -> usize {
    core.remote.drain_into(&core.queue);
    let mut ran = 0;
    while ran < BUDGET {
        // The borrow ends with the statement: the task may wake others while it runs.
        let next = core.queue.borrow_mut().pop_front();
        let Some(runnable) = next else { break };
        runnable.run();
        ran += 1;
    }
    ran
}

/// Drops every queued runnable (cancelling its task) until the queue stays empty.
pub(crate) fn drain_all(core: &Core) -> usize {
    let mut dropped = 0;
    loop {
        core.remote.drain_into(&core.queue);
        let next = core.queue.borrow_mut().pop_front();
        match next {
            Some(r) => {
                drop(r);
                dropped += 1;
            }
            None => return dropped,
        }
    }
}

/// The waker of the `block_on` future: a flag, plus a remote notify when set off-thread.
pub(crate) struct MainWaker {
    pub(crate) woken: AtomicBool,
    pub(crate) remote: Arc<Remote>,
}

impl MainWaker {
    pub(crate) fn take(&self) -> bool {
        // A plain load first: the common "not woken" case stays a read.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if !runtime::is_current(self.remote.id) {
            self.remote.notify();
        }
    }
}

pub(crate) fn main_waker(remote: &Arc<Remote>) -> (Arc<MainWaker>, Waker) {
    let main = Arc::new(MainWaker {
        woken: AtomicBool::new(true),
        remote: remote.clone(),
    });
    let waker = Waker::from(main.clone());
    (main, waker)
}
