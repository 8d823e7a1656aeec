//! A shard: one pinned thread with its own runtime, listeners, connection table and HBONE
//! pool. Connections never leave the shard that accepted them; the control thread reaches a
//! shard only through its command channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use socket2::Socket;
use zmesh_rt::{Runtime, RuntimeConfig, TcpListener};

use crate::metrics::{Rejection, ShardMetrics, ShardStats};
use crate::pool::Pool;
use crate::sockets::UpstreamOpts;
use crate::state::SharedState;
use crate::{inbound, outbound};

/// How long a stopping shard waits for open connections (Istio's termination deadline).
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Settings every shard shares (read-only).
#[derive(Debug)]
pub struct ProxySettings {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub upstream: UpstreamOpts,
}

/// What a shard listens on; every shard gets its own sockets bound with SO_REUSEPORT.
#[derive(Debug, Default)]
pub struct ShardSockets {
    pub hbone: Vec<Socket>,
    pub plaintext: Vec<Socket>,
    pub outbound: Option<Socket>,
    pub socks5: Option<Socket>,
}

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Report the open connections.
    Connections(tokio::sync::oneshot::Sender<Vec<ConnInfo>>),
    /// Stop accepting and end.
    Stop,
}

/// One entry of the connection table, as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnInfo {
    pub shard: usize,
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub peer_identity: Option<String>,
    pub started_unix_ms: u128,
}

/// A shard's state, shared by its tasks through `Rc`.
pub struct Shard {
    pub id: usize,
    pub state: SharedState,
    pub settings: Arc<ProxySettings>,
    pub metrics: ShardMetrics,
    pub pool: Pool,
    open: Cell<usize>,
    next_id: Cell<u64>,
    table: RefCell<HashMap<u64, ConnInfo>>,
}

pub type ShardRef = Rc<Shard>;

/// Holds a slot in the shard's connection count and table; frees both on drop.
pub struct ConnGuard {
    shard: ShardRef,
    id: Option<u64>,
    slots: usize,
}

impl Shard {
    pub fn stats(&self) -> &ShardStats {
        &self.metrics.stats
    }

    /// Takes `slots` connection slots (an accepted socket, plus 1 for its upstream), or counts
    /// a rejection when the shard is full.
    pub fn admit(self: &Rc<Self>, slots: usize) -> Option<ConnGuard> {
        let open = self.open.get();
        if open + slots > self.settings.max_connections {
            self.stats().reject(Rejection::OverLimit);
            return None;
        }
        self.open.set(open + slots);
        ShardStats::gauge_add(&self.stats().connections_open, slots as i64);
        Some(ConnGuard {
            shard: self.clone(),
            id: None,
            slots,
        })
    }

    pub fn reject(&self, r: Rejection) {
        self.stats().reject(r);
    }
}

impl ConnGuard {
    /// Lists the connection in the admin table.
    pub fn track(
        &mut self,
        direction: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
        peer: Option<String>,
    ) {
        let id = self.shard.next_id.get();
        self.shard.next_id.set(id + 1);
        let started_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let info = ConnInfo {
            shard: self.shard.id,
            direction,
            src,
            dst,
            peer_identity: peer,
            started_unix_ms,
        };
        self.shard.table.borrow_mut().insert(id, info);
        self.id = Some(id);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shard.open.set(self.shard.open.get() - self.slots);
        ShardStats::gauge_add(&self.shard.stats().connections_open, -(self.slots as i64));
        if let Some(id) = self.id {
            self.shard.table.borrow_mut().remove(&id);
        }
    }
}

/// Everything a shard thread needs to start.
pub struct ShardSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub runtime: RuntimeConfig,
    pub state: SharedState,
    pub settings: Arc<ProxySettings>,
    pub metrics: ShardMetrics,
    pub sockets: ShardSockets,
    pub commands: zmesh_rt::Receiver<Command>,
    pub ready: Arc<AtomicUsize>,
}

/// Starts a shard thread. Errors building its runtime are reported before it serves.
pub fn spawn(spec: ShardSpec) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("zmesh-shard-{}", spec.id))
        .spawn(move || {
            if let Some(core) = spec.core
                && !core_affinity::set_for_current(core)
            {
                tracing::warn!(
                    shard = spec.id,
                    core = core.id,
                    "could not pin shard to core"
                );
            }
            let rt = match Runtime::new(&spec.runtime) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = spec.metrics.stats.runtime.set(rt.stats());
            let _ = tx.send(Ok(()));
            run(rt, spec);
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("shard thread died at start"))??;
    Ok(handle)
}

fn run(rt: Runtime, spec: ShardSpec) {
    let ShardSpec {
        id,
        state,
        settings,
        metrics,
        sockets,
        commands,
        ready,
        ..
    } = spec;
    let pool = Pool::new(settings.pool_idle_timeout);
    let shard = Rc::new(Shard {
        id,
        state,
        settings,
        metrics,
        pool,
        open: Cell::new(0),
        next_id: Cell::new(0),
        table: RefCell::new(HashMap::new()),
    });
    rt.block_on(async move {
        let mut tasks = Vec::new();
        let listen = |s: Socket| match TcpListener::from_socket(s) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot register listener");
                None
            }
        };
        for l in sockets.hbone.into_iter().filter_map(listen) {
            tasks.push(zmesh_rt::spawn(inbound::serve_hbone(shard.clone(), l)));
        }
        for l in sockets.plaintext.into_iter().filter_map(listen) {
            tasks.push(zmesh_rt::spawn(inbound::serve_plaintext(shard.clone(), l)));
        }
        if let Some(l) = sockets.outbound.and_then(listen) {
            tasks.push(zmesh_rt::spawn(outbound::serve_captured(shard.clone(), l)));
        }
        if let Some(l) = sockets.socks5.and_then(listen) {
            tasks.push(zmesh_rt::spawn(outbound::serve_socks5(shard.clone(), l)));
        }
        tasks.push(zmesh_rt::spawn(sweep_pool(shard.clone())));
        ready.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(shard = id, "serving");
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Connections(reply) => {
                    let _ = reply.send(shard.table.borrow().values().cloned().collect());
                }
                Command::Stop => break,
            }
        }
        // Stop accepting, then give open connections a grace period to finish.
        drop(tasks);
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while shard.open.get() > 0 && Instant::now() < deadline {
            zmesh_rt::sleep(Duration::from_millis(20)).await;
        }
        if shard.open.get() > 0 {
            tracing::info!(
                shard = id,
                open = shard.open.get(),
                "closing connections at the drain deadline"
            );
        }
    });
}

/// Closes pooled connections that have been idle too long.
async fn sweep_pool(shard: ShardRef) {
    loop {
        zmesh_rt::sleep(Duration::from_secs(5)).await;
        shard.pool.sweep(Instant::now(), shard.stats());
    }
}
