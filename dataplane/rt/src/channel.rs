//! Cross-thread channel into a runtime. The receiver's waker is a task waker, so a send from
//! another thread reaches the runtime through its remote queue and eventfd, waking it even when
//! it is blocked in io_uring_enter or epoll_wait.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use crossbeam_channel::TryRecvError;
use futures_util::task::AtomicWaker;

/// Creates an unbounded channel whose [`Receiver`] lives on a runtime thread.
pub fn channel<T: Send + 'static>() -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        Sender {
            tx: Some(tx),
            waker: waker.clone(),
        },
        Receiver { rx, waker },
    )
}

/// Sending side: `Send + Sync + Clone`.
pub struct Sender<T> {
    // An Option only so Drop can release it before waking the receiver.
    tx: Option<crossbeam_channel::Sender<T>>,
    waker: Arc<AtomicWaker>,
}

/// Receiving side, used on the runtime thread.
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Sender<T> {
    /// Queues `v` and wakes the receiving task. `Err(v)` when the receiver was dropped.
    pub fn send(&self, v: T) -> Result<(), T> {
        let Some(tx) = &self.tx else { return Err(v) };
        tx.send(v).map_err(|e| e.into_inner())?;
        self.waker.wake();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Disconnect first, so a woken receiver sees the channel closed if this was the last.
        drop(self.tx.take());
        self.waker.wake();
    }
}

impl<T> Receiver<T> {
    /// The next value; `None` once every sender is dropped and the queue is empty.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            match self.rx.try_recv() {
                Ok(v) => return Poll::Ready(Some(v)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            self.waker.register(cx.waker());
            // Re-check: a send between the first try and the registration woke nobody.
            match self.rx.try_recv() {
                Ok(v) => Poll::Ready(Some(v)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    /// A value if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender { .. }")
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("queued", &self.rx.len())
            .finish()
    }
}
