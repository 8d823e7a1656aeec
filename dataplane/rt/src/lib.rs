//! The per-shard runtime of the zmesh node proxy.
//!
//! Each shard is one OS thread owning one [`Runtime`]: a single-threaded executor (a run queue of
//! `async_task` runnables), a timer heap, and one IO driver — io_uring (multishot accept,
//! provided-buffer receives so idle connections hold no buffer, buffered sends, optional
//! zero-copy sends) or epoll through mio where io_uring is unavailable. TCP sockets are exposed
//! through tokio's `AsyncRead`/`AsyncWrite` traits so rustls and h2 run on top, and [`channel`]
//! carries work into a shard from other threads.
//!
//! It does not run a tokio runtime, share anything between shards, balance work across threads,
//! resolve names, or speak UDP; sockets are created and configured by the caller (socket2) and
//! handed over already bound or listening.
//!
//! This is the only zmesh crate allowed to use `unsafe`: every block says why it is sound.
#![allow(unsafe_code)]

mod channel;
mod epoll;
mod executor;
mod net;
mod runtime;
mod slab;
mod sys;
mod timer;
mod uring;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use async_task::Task;
pub use channel::{Receiver, Sender, channel};
pub use net::{OwnedReadHalf, OwnedWriteHalf, TcpListener, TcpStream};
pub use runtime::{Runtime, spawn};
pub use sys::keep_freed_memory;
pub use timer::{Elapsed, Sleep, sleep, sleep_until, timeout};

/// Which IO driver a [`Runtime`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// One io_uring per runtime.
    IoUring,
    /// One epoll instance (mio) per runtime.
    Epoll,
}

impl DriverKind {
    /// Probe: try to create a small io_uring and check the opcodes we use are supported
    /// (Accept multishot, RecvMulti or Recv with buffer select, Send, SendZc, Connect,
    /// Timeout/cancel, buffer ring registration).
    /// Returns IoUring, or Epoll plus the reason io_uring cannot be used.
    pub fn detect() -> (DriverKind, Option<String>) {
        match uring::probe() {
            Ok(()) => (DriverKind::IoUring, None),
            Err(reason) => (DriverKind::Epoll, Some(reason)),
        }
    }
}

/// The error of parsing a [`DriverKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDriverKindError(String);

impl fmt::Display for ParseDriverKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown IO driver {:?} (expected io-uring or epoll)",
            self.0
        )
    }
}

impl std::error::Error for ParseDriverKindError {}

impl FromStr for DriverKind {
    type Err = ParseDriverKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "io-uring" | "uring" | "io_uring" => Ok(DriverKind::IoUring),
            "epoll" => Ok(DriverKind::Epoll),
            other => Err(ParseDriverKindError(other.to_owned())),
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::IoUring => "io-uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// How to build a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The IO driver; see [`DriverKind::detect`].
    pub driver: DriverKind,
    /// io_uring submission queue size (the completion queue is twice as large).
    pub ring_entries: u32,
    /// Provided-buffer ring size: how many receives can hold data at once across all
    /// connections of the shard. A power of two, at most 32768.
    pub recv_buffers: u16,
    /// Size of each provided receive buffer.
    pub recv_buffer_size: usize,
    /// Use SendZc for writes at least this big (io_uring only).
    pub send_zc_threshold: Option<usize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            driver: DriverKind::IoUring,
            ring_entries: 1024,
            recv_buffers: 256,
            // 64 KiB: the largest TLS record (16 KiB) several times over, and what loopback and
            // a busy LAN deliver per wakeup, so one receive rarely needs a second.
            recv_buffer_size: 64 * 1024,
            send_zc_threshold: None,
        }
    }
}

/// Counters written only by the owning thread, read by a metrics scraper on another thread
/// (Relaxed atomics).
#[derive(Default, Debug)]
pub struct RuntimeStats {
    /// Operations submitted (io_uring SQEs; socket syscalls under epoll).
    pub submissions: AtomicU64,
    /// Completions (io_uring CQEs; readiness events under epoll).
    pub completions: AtomicU64,
    /// Nanoseconds spent running tasks and dispatching IO.
    pub busy_ns: AtomicU64,
    /// Nanoseconds spent blocked waiting for IO, timers or remote wakeups.
    pub idle_ns: AtomicU64,
    /// Task polls (including the `block_on` future).
    pub polls: AtomicU64,
    /// Operations in flight (io_uring), or registered sockets (epoll).
    pub queue_depth: AtomicU64,
    /// Provided receive buffers currently held by connections (io_uring; 0 under epoll).
    pub recv_buffers_in_use: AtomicU64,
}

impl RuntimeStats {
    /// Single-writer increment: a load and a store, no read-modify-write instruction.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Ordering::Relaxed);
    }
}
