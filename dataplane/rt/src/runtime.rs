//! The runtime: one per shard thread. Its loop runs ready tasks, parks in the driver until the
//! next timer, dispatches completions, fires timers, and repeats until `block_on`'s future is
//! done.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_task::{Runnable, Task};

use crate::executor::{self, Remote};
use crate::timer::Timers;
use crate::{DriverKind, RuntimeConfig, RuntimeStats, epoll, uring};

/// The IO driver, dispatched by enum (no trait objects on the hot path).
pub(crate) enum Driver {
    Uring(Rc<uring::Driver>),
    Epoll(Rc<epoll::Driver>),
}

/// Everything one runtime owns; reachable from its thread through `CURRENT`.
pub(crate) struct Core {
    pub(crate) id: usize,
    pub(crate) queue: RefCell<VecDeque<Runnable>>,
    pub(crate) remote: Arc<Remote>,
    pub(crate) timers: Rc<RefCell<Timers>>,
    pub(crate) driver: Driver,
    pub(crate) stats: Arc<RuntimeStats>,
    running: Cell<bool>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// The runtime of the calling thread, if any.
pub(crate) fn current() -> Option<Rc<Core>> {
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|c| c.clone()))
        .ok()
        .flatten()
}

pub(crate) fn is_current(id: usize) -> bool {
    CURRENT
        .try_with(|c| {
            c.try_borrow()
                .is_ok_and(|c| c.as_ref().is_some_and(|core| core.id == id))
        })
        .unwrap_or(false)
}

/// Pushes onto the local queue if runtime `id` is current on this thread; else hands it back.
pub(crate) fn try_push_local(id: usize, runnable: Runnable) -> Option<Runnable> {
    let mut slot = Some(runnable);
    let _ = CURRENT.try_with(|c| {
        if let Ok(c) = c.try_borrow()
            && let Some(core) = c.as_ref()
            && core.id == id
            && let Ok(mut q) = core.queue.try_borrow_mut()
            && let Some(r) = slot.take()
        {
            q.push_back(r);
        }
    });
    slot
}

pub(crate) fn timers() -> Rc<RefCell<Timers>> {
    match current() {
        Some(core) => core.timers.clone(),
        None => panic!("zmesh_rt timer polled outside a zmesh-rt runtime"),
    }
}

/// Spawn on the current thread's runtime. Dropping the returned Task cancels it;
/// `.detach()` lets it run on.
///
/// # Panics
/// If the calling thread has no runtime.
pub fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let Some(core) = current() else {
        panic!("zmesh_rt::spawn called on a thread without a zmesh-rt runtime");
    };
    let remote = core.remote.clone();
    // A panicking task unwinds into whoever awaits its Task, not through the shard's loop.
    let (runnable, task) = async_task::Builder::new()
        .propagate_panic(true)
        .spawn_local(move |()| fut, move |r| remote.schedule(r));
    runnable.schedule();
    task
}

/// A single-threaded runtime with one IO driver. `!Send`: one per thread.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    /// Builds the runtime and makes it the thread's current one (if there is none yet), so
    /// sockets and tasks can be created before `block_on`.
    pub fn new(cfg: &RuntimeConfig) -> io::Result<Runtime> {
        let remote = Remote::new()?;
        let stats = Arc::new(RuntimeStats::default());
        let driver = match cfg.driver {
            DriverKind::IoUring => Driver::Uring(uring::Driver::new(cfg, &remote, &stats)?),
            DriverKind::Epoll => Driver::Epoll(epoll::Driver::new(&remote, &stats)?),
        };
        let core = Rc::new(Core {
            id: remote.id,
            queue: RefCell::new(VecDeque::with_capacity(256)),
            remote,
            timers: Rc::default(),
            driver,
            stats,
            running: Cell::new(false),
        });
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Some(core.clone());
            }
        });
        Ok(Runtime { core })
    }

    /// The IO driver this runtime was built with.
    pub fn kind(&self) -> DriverKind {
        match self.core.driver {
            Driver::Uring(_) => DriverKind::IoUring,
            Driver::Epoll(_) => DriverKind::Epoll,
        }
    }

    /// Counters for a metrics scraper on any thread.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.core.stats.clone()
    }

    /// Runs `fut` and every task spawned meanwhile on this thread until `fut` completes.
    ///
    /// # Panics
    /// If called from inside this runtime's own `block_on` (it would deadlock).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let core = &*self.core;
        if core.running.get() {
            panic!("zmesh_rt::Runtime::block_on called re-entrantly");
        }
        let _enter = Enter::new(self.core.clone());
        let mut fut = std::pin::pin!(fut);
        let (main, waker) = executor::main_waker(&core.remote);
        let mut cx = Context::from_waker(&waker);
        let mut expired = Vec::new();
        loop {
            let start = Instant::now();
            if main.take() {
                RuntimeStats::add(&core.stats.polls, 1);
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    RuntimeStats::add(&core.stats.busy_ns, nanos(start.elapsed()));
                    return v;
                }
            }
            let ran = executor::run_ready(core);
            RuntimeStats::add(&core.stats.polls, ran as u64);
            let busy = !core.queue.borrow().is_empty()
                || core.remote.has_pending()
                || main.woken.load(std::sync::atomic::Ordering::Acquire);
            let now = Instant::now();
            let timeout = match core.timers.borrow().next_deadline() {
                _ if busy => Some(Duration::ZERO),
                Some(deadline) => Some(deadline.saturating_duration_since(now)),
                None => None,
            };
            let waited = core.park(timeout).unwrap_or_else(|e| {
                tracing::error!(error = %e, "zmesh-rt driver wait failed");
                Duration::ZERO
            });
            let woke = Instant::now();
            RuntimeStats::add(&core.stats.idle_ns, nanos(waited));
            RuntimeStats::add(
                &core.stats.busy_ns,
                nanos((woke - start).saturating_sub(waited)),
            );
            core.timers.borrow_mut().fire(woke, &mut expired);
            expired.drain(..).for_each(|w| w.wake());
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Core {
    /// Returns the time spent blocked.
    fn park(&self, timeout: Option<Duration>) -> io::Result<Duration> {
        match &self.driver {
            Driver::Uring(d) => d.park(timeout),
            Driver::Epoll(d) => d.park(timeout),
        }
    }

    fn shutdown(&self) {
        // Cancel tasks until no runnable, timer waker or IO waker is left to revive one: each
        // dropped future may drop sockets whose cancellations complete, waking more tasks.
        for _ in 0..64 {
            let mut work = executor::drain_all(self);
            let wakers = self.timers.borrow_mut().clear();
            work += wakers.len();
            drop(wakers);
            work += match &self.driver {
                Driver::Uring(d) => d.shutdown(),
                Driver::Epoll(d) => d.shutdown(),
            };
            if work == 0 && self.queue.borrow().is_empty() && !self.remote.has_pending() {
                break;
            }
        }
        self.remote.close();
        executor::drain_all(self);
    }
}

/// Makes a runtime current for the duration of `block_on`, restoring the previous one.
struct Enter {
    core: Rc<Core>,
    prev: Option<Rc<Core>>,
}

impl Enter {
    fn new(core: Rc<Core>) -> Enter {
        core.running.set(true);
        let prev = CURRENT.with(|c| c.replace(Some(core.clone())));
        Enter { core, prev }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        self.core.running.set(false);
        let prev = self.prev.take();
        let _ = CURRENT.try_with(|c| c.replace(prev));
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Tasks are dropped with this runtime current so their sockets can cancel operations.
        let prev = CURRENT
            .try_with(|c| c.replace(Some(self.core.clone())))
            .ok()
            .flatten();
        self.core.shutdown();
        let prev = prev.filter(|p| !Rc::ptr_eq(p, &self.core));
        let _ = CURRENT.try_with(|c| c.replace(prev));
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("kind", &self.kind())
            .finish()
    }
}
