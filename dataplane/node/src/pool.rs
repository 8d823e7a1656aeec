//! The shard's pool of outbound HBONE connections.
//!
//! Keyed like ztunnel's (source identity, expected destination identities, dialed address,
//! source IP). A connection carries at most `min(100, peer's SETTINGS_MAX_CONCURRENT_STREAMS)`
//! streams; past that the pool dials another. While a key's connection is busy, the next
//! stream gets a second connection (see [`SPREAD_CONNS`]) so that parallel bulk streams can use
//! more than one core at each end. Only one dial per key runs at a time: the other
//! requests wait for it and share its result. The pool lives on one shard, so none of this
//! needs a lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use zmesh_hbone::settings;
use zmesh_state::Identity;

use crate::metrics::ShardStats;

/// Which connections may be shared.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub src_id: Identity,
    pub dst_ids: Vec<Identity>,
    pub dst: SocketAddr,
    pub src_ip: IpAddr,
    /// The enrolled pod the connection is dialed from (in-pod mode: every pod has its own
    /// pool, since its sockets live in its own netns).
    pub pod: Option<u64>,
}

/// One pooled HTTP/2 connection.
pub struct PooledConn {
    send: SendRequest<Bytes>,
    streams: Cell<usize>,
    closed: Rc<Cell<bool>>,
    idle_since: Cell<Instant>,
}

impl PooledConn {
    pub fn new(send: SendRequest<Bytes>, closed: Rc<Cell<bool>>) -> PooledConn {
        PooledConn {
            send,
            streams: Cell::new(0),
            closed,
            idle_since: Cell::new(Instant::now()),
        }
    }

    fn limit(&self) -> usize {
        settings::CLIENT_MAX_STREAMS.min(self.send.current_max_send_streams().max(1))
    }

    fn usable(&self) -> bool {
        !self.closed.get() && self.streams.get() < self.limit()
    }
}

/// A stream slot on a pooled connection; returns the slot when dropped.
pub struct Checkout {
    conn: Rc<PooledConn>,
}

impl Checkout {
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.conn.send.clone()
    }

    /// Marks the connection unusable (it failed under us).
    pub fn poison(&self) {
        self.conn.closed.set(true);
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let n = self.conn.streams.get() - 1;
        self.conn.streams.set(n);
        if n == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

#[derive(Default)]
struct Entry {
    conns: Vec<Rc<PooledConn>>,
    dialing: bool,
    /// Bumped at the end of every dial; waiters compare it to know their dial finished.
    dial_gen: u64,
    last_error: Option<(u64, String)>,
    waiters: Vec<Waker>,
}

impl Entry {
    /// The open connection with the fewest streams that can take one more.
    fn least_loaded(&self) -> Option<Rc<PooledConn>> {
        self.conns
            .iter()
            .filter(|c| c.usable())
            .min_by_key(|c| c.streams.get())
            .cloned()
    }

    /// Whether a new stream should get a connection of its own rather than share `best`: it
    /// already carries [`SPREAD_STREAMS`] and the key has fewer than [`SPREAD_CONNS`] open.
    fn wants_spread(&self, best: &PooledConn) -> bool {
        best.streams.get() >= SPREAD_STREAMS
            && self.conns.iter().filter(|c| !c.closed.get()).count() < SPREAD_CONNS
    }
}

/// Open connections per key a shard keeps for spreading busy streams. One HTTP/2 connection
/// is served by one shard at each end (TLS and framing for all its streams on one core), so
/// streams sharing a single connection cannot use more than one core on the receiving node;
/// a second connection may land on another shard there (SO_REUSEPORT spreads connections).
/// ztunnel keeps one; a second costs one more handshake per key and shard, once.
const SPREAD_CONNS: usize = 2;
/// Streams a connection carries before the next stream opens another connection (up to
/// [`SPREAD_CONNS`]); past that, streams go to the least loaded connection.
const SPREAD_STREAMS: usize = 1;

/// The pool of one shard.
pub struct Pool {
    entries: RefCell<HashMap<PoolKey, Entry>>,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Pool {
        Pool {
            entries: RefCell::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// A stream slot for `key`, dialing with `dial` when no connection has room.
    pub async fn checkout<D, F>(
        &self,
        key: &PoolKey,
        dial: D,
        stats: &ShardStats,
    ) -> io::Result<Checkout>
    where
        D: Fn() -> F,
        F: Future<Output = io::Result<PooledConn>>,
    {
        let mut fallback: Option<Rc<PooledConn>> = None;
        loop {
            let generation = {
                let mut entries = self.entries.borrow_mut();
                let entry = entries.entry(key.clone()).or_default();
                let best = entry.least_loaded();
                match best {
                    // Share `best` unless it is busy, the key has room for another
                    // connection and no dial runs yet: then dial one (below).
                    Some(ref conn) if entry.dialing || !entry.wants_spread(conn) => {
                        conn.streams.set(conn.streams.get() + 1);
                        return Ok(Checkout { conn: conn.clone() });
                    }
                    _ => {}
                }
                if !entry.dialing {
                    entry.dialing = true;
                    fallback = best;
                    None
                } else {
                    Some(entry.dial_gen)
                }
            };
            match generation {
                Some(generation) => {
                    DialDone {
                        pool: self,
                        key,
                        generation,
                    }
                    .await;
                    let entries = self.entries.borrow();
                    if let Some((g, err)) = entries.get(key).and_then(|e| e.last_error.as_ref())
                        && *g == generation + 1
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            err.clone(),
                        ));
                    }
                }
                None => {
                    let result = dial().await;
                    let mut entries = self.entries.borrow_mut();
                    let entry = entries.entry(key.clone()).or_default();
                    entry.dialing = false;
                    entry.dial_gen += 1;
                    for w in entry.waiters.drain(..) {
                        w.wake();
                    }
                    match result {
                        Ok(conn) => {
                            ShardStats::gauge_add(&stats.hbone_connections_open, 1);
                            entry.last_error = None;
                            let conn = Rc::new(conn);
                            conn.streams.set(1);
                            entry.conns.push(conn.clone());
                            return Ok(Checkout { conn });
                        }
                        Err(e) => {
                            entry.last_error = Some((entry.dial_gen, e.to_string()));
                            // A spreading dial failed: the connection we had still serves.
                            if let Some(conn) = fallback.take().filter(|c| c.usable()) {
                                tracing::debug!(error = %e, "extra HBONE connection failed");
                                conn.streams.set(conn.streams.get() + 1);
                                return Ok(Checkout { conn });
                            }
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Forgets a removed pod's connections: idle ones close now, busy ones when their last
    /// stream ends.
    pub fn remove_pod(&self, pod: u64, stats: &ShardStats) {
        let mut entries = self.entries.borrow_mut();
        let mut removed = 0i64;
        entries.retain(|k, e| {
            let keep = k.pod != Some(pod);
            if !keep {
                removed += e.conns.len() as i64;
            }
            keep
        });
        ShardStats::gauge_add(&stats.hbone_connections_open, -removed);
    }

    /// Drops closed connections and those idle past the timeout.
    pub fn sweep(&self, now: Instant, stats: &ShardStats) {
        let mut entries = self.entries.borrow_mut();
        let mut removed = 0i64;
        entries.retain(|_, e| {
            let before = e.conns.len();
            e.conns.retain(|c| {
                !c.closed.get()
                    && (c.streams.get() > 0
                        || now.duration_since(c.idle_since.get()) < self.idle_timeout)
            });
            removed += (before - e.conns.len()) as i64;
            !e.conns.is_empty() || e.dialing
        });
        ShardStats::gauge_add(&stats.hbone_connections_open, -removed);
    }
}

/// Resolves once the dial that was running at `generation` has finished.
struct DialDone<'a> {
    pool: &'a Pool,
    key: &'a PoolKey,
    generation: u64,
}

impl Future for DialDone<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut entries = self.pool.entries.borrow_mut();
        match entries.get_mut(self.key) {
            Some(e) if e.dial_gen == self.generation && e.dialing => {
                e.waiters.push(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}
