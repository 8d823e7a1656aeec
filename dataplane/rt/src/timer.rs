//! Per-runtime timers: a binary heap of deadlines over a slab of sleepers.
//!
//! Heap entries are invalidated lazily: a dropped or re-armed [`Sleep`] leaves its old entry
//! behind, skipped when it surfaces. Moving a deadline later (the idle-timeout pattern) does
//! not push a new entry at all; the old one re-queues itself when it fires early. The heap is
//! rebuilt when stale entries dominate, so churn cannot grow it without bound.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::runtime;

/// Slot index and generation of a registered sleeper.
type TimerKey = (u32, u32);

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    stale: usize,
}

struct Slot {
    generation: u32,
    live: bool,
    deadline: Instant,
    /// Deadline of this slot's valid heap entry.
    queued_at: Instant,
    waker: Option<Waker>,
}

impl Timers {
    fn insert(&mut self, deadline: Instant, waker: &Waker) -> TimerKey {
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                let now = Instant::now();
                self.slots.push(Slot {
                    generation: 0,
                    live: false,
                    deadline: now,
                    queued_at: now,
                    waker: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[key as usize];
        slot.live = true;
        slot.deadline = deadline;
        slot.queued_at = deadline;
        slot.waker = Some(waker.clone());
        self.heap.push(Reverse((deadline, key, slot.generation)));
        (key, slot.generation)
    }

    /// Re-arms a live entry; false if it already fired or was removed.
    fn update(&mut self, (key, generation): TimerKey, deadline: Instant, waker: &Waker) -> bool {
        let Some(slot) = self.slots.get_mut(key as usize) else {
            return false;
        };
        if !slot.live || slot.generation != generation {
            return false;
        }
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        slot.deadline = deadline;
        if deadline < slot.queued_at {
            slot.queued_at = deadline;
            self.heap.push(Reverse((deadline, key, generation)));
            self.stale += 1;
        }
        true
    }

    fn remove(&mut self, (key, generation): TimerKey) {
        if let Some(slot) = self.slots.get_mut(key as usize)
            && slot.live
            && slot.generation == generation
        {
            self.release(key);
            self.stale += 1;
        }
    }

    fn release(&mut self, key: u32) {
        let slot = &mut self.slots[key as usize];
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        slot.waker = None;
        self.free.push(key);
    }

    /// The earliest deadline (possibly of a stale entry, which only causes an early wakeup).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((when, _, _))| *when)
    }

    /// Moves the wakers of every expired timer into `out`.
    pub(crate) fn fire(&mut self, now: Instant, out: &mut Vec<Waker>) {
        while let Some(&Reverse((when, key, generation))) = self.heap.peek() {
            if when > now {
                break;
            }
            self.heap.pop();
            let slot = &mut self.slots[key as usize];
            if !slot.live || slot.generation != generation || slot.queued_at != when {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            if slot.deadline > now {
                // Moved later since queued: re-queue at the new deadline.
                slot.queued_at = slot.deadline;
                self.heap.push(Reverse((slot.deadline, key, generation)));
                continue;
            }
            if let Some(w) = slot.waker.take() {
                out.push(w);
            }
            self.release(key);
        }
        self.compact();
    }

    fn compact(&mut self) {
        let live = self.slots.len() - self.free.len();
        if self.stale < 1024 || self.stale < live * 2 {
            return;
        }
        self.heap = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(k, s)| Reverse((s.queued_at, k as u32, s.generation)))
            .collect();
        self.stale = 0;
    }

    /// Drops every waker (breaking task ↔ runtime cycles at shutdown).
    pub(crate) fn clear(&mut self) -> Vec<Waker> {
        self.heap.clear();
        self.slots
            .iter_mut()
            .filter_map(|s| s.waker.take())
            .collect()
    }
}

/// Future returned by [`sleep`] and [`sleep_until`].
pub struct Sleep {
    deadline: Instant,
    entry: Option<(Rc<RefCell<Timers>>, TimerKey)>,
}

impl Sleep {
    /// The instant this sleep completes at.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Changes the deadline; the sleep can be polled again even after it completed.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Whether the deadline has passed.
    pub fn is_elapsed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn unregister(&mut self) {
        if let Some((timers, key)) = self.entry.take() {
            timers.borrow_mut().remove(key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.unregister();
            return Poll::Ready(());
        }
        if let Some((timers, key)) = &this.entry
            && timers.borrow_mut().update(*key, this.deadline, cx.waker())
        {
            return Poll::Pending;
        }
        let timers = match &this.entry {
            Some((t, _)) => t.clone(),
            None => runtime::timers(),
        };
        let key = timers.borrow_mut().insert(this.deadline, cx.waker());
        this.entry = Some((timers, key));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Completes after `d` (on the runtime of the thread that polls it).
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(far_add(Instant::now(), d))
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        entry: None,
    }
}

/// `now + d`, saturating at roughly thirty years instead of overflowing.
fn far_add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// The error of [`timeout`]: the deadline passed before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// Runs `f` for at most `d` (counted from this call); the future is dropped on expiry.
pub fn timeout<F: Future>(d: Duration, f: F) -> impl Future<Output = Result<F::Output, Elapsed>> {
    let mut sleep = sleep(d);
    async move {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            match Pin::new(&mut sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}
