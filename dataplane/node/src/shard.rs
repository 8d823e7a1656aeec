//! A shard: one pinned thread with its own runtime, listeners, connection table and HBONE
//! pool. Connections never leave the shard that accepted them; the control thread reaches a
//! shard only through its command channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use socket2::Socket;
use tokio::sync::Notify;
use zmesh_rt::{Runtime, RuntimeConfig, TcpListener};
use zmesh_state::{Connection, Decision, Identity};

use crate::metrics::{Rejection, ShardMetrics, ShardStats};
use crate::podns::PodRef;
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

/// The network namespace a listener is opened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetNs {
    /// The node proxy's own namespace (pod addresses routed to the node, or loopback).
    /// (An enrolled pod's listeners live in its own netns: they are opened there by the ZDS
    /// thread and handed over ready-made with [`Command::ListenPod`], with the pod.)
    Host,
}

/// One shard's listeners inside a pod's netns, already bound and listening: outbound capture
/// (15001, v4 and v6 loopback), inbound plaintext (15006) and HBONE (15008).
#[derive(Debug, Default)]
pub struct PodSockets {
    pub outbound: Vec<Socket>,
    pub plaintext: Vec<Socket>,
    pub hbone: Vec<Socket>,
}

/// The inbound listeners (HBONE 15008, plaintext 15006) of one local workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadListeners {
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub netns: NetNs,
}

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Report the open connections.
    Connections(tokio::sync::oneshot::Sender<Vec<ConnInfo>>),
    /// Open a local workload's listeners on this shard (its own SO_REUSEPORT sockets).
    Listen(WorkloadListeners),
    /// Close the listeners of the workload with this uid; its open connections go on.
    Unlisten { uid: String },
    /// Serve an enrolled pod's listeners; answers on `done` once they are registered.
    ListenPod {
        pod: PodRef,
        sockets: PodSockets,
        done: std::sync::mpsc::Sender<()>,
    },
    /// Close a pod's listeners and drop its idle pooled connections (open connections finish);
    /// answers on `done`.
    UnlistenPod {
        id: u64,
        done: std::sync::mpsc::Sender<()>,
    },
    /// The policies changed: authorize every open inbound connection again and close the
    /// ones now denied.
    RecheckPolicy,
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
    table: RefCell<HashMap<u64, Tracked>>,
}

/// A connection table entry; inbound connections carry what a policy re-check needs.
struct Tracked {
    info: ConnInfo,
    policy: Option<PolicyCheck>,
}

struct PolicyCheck {
    peer: Option<Identity>,
    close: Rc<Notify>,
}

/// An inbound connection (or HBONE stream) listed in the table for policy re-checks; removes
/// its entry on drop.
pub struct PolicyEntry {
    shard: ShardRef,
    id: u64,
    close: Rc<Notify>,
}

impl PolicyEntry {
    /// Completes when a policy re-check denied the connection.
    pub async fn denied(&self) {
        self.close.notified().await
    }
}

impl Drop for PolicyEntry {
    fn drop(&mut self) {
        self.shard.table.borrow_mut().remove(&self.id);
    }
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

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Lists an authorized inbound connection (`dst` is the target the policy saw).
    pub fn track_policy(
        self: &Rc<Self>,
        direction: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
        peer: Option<Identity>,
    ) -> PolicyEntry {
        let id = self.next_id();
        let close = Rc::new(Notify::new());
        let info = conn_info(
            self.id,
            direction,
            src,
            dst,
            peer.as_ref().map(Identity::to_uri),
        );
        let policy = Some(PolicyCheck {
            peer,
            close: close.clone(),
        });
        self.table.borrow_mut().insert(id, Tracked { info, policy });
        PolicyEntry {
            shard: self.clone(),
            id,
            close,
        }
    }

    /// Authorizes every tracked inbound connection against the current state; closes and
    /// counts the denied ones.
    fn recheck_policy(&self) {
        let state = self.state.load();
        let mut closed = 0;
        for t in self.table.borrow().values() {
            let Some(p) = &t.policy else { continue };
            let (src, dst) = (t.info.src, t.info.dst);
            let Some(w) = state.local_workload(dst.ip()) else {
                continue;
            };
            let conn = Connection {
                src_ip: src.ip(),
                src_identity: p.peer.as_ref(),
                dst_ip: dst.ip(),
                dst_port: dst.port(),
            };
            if let Decision::Deny { policy } = state.mesh.authorize(w, &conn) {
                p.close.notify_one();
                self.reject(Rejection::PolicyRecheck);
                closed += 1;
                let why = if policy.is_empty() {
                    "no ALLOW policy matched".to_owned()
                } else {
                    format!("denied by {policy}")
                };
                tracing::info!(
                    target: "access", direction = t.info.direction, src.addr = %src,
                    dst.addr = %dst, src.identity = t.info.peer_identity.as_deref().unwrap_or("-"),
                    flags = "DENY", error = %why, "connection closed on policy re-check"
                );
            }
        }
        tracing::debug!(
            shard = self.id,
            closed,
            version = state.version,
            "policy re-checked"
        );
    }
}

fn conn_info(
    shard: usize,
    direction: &'static str,
    src: SocketAddr,
    dst: SocketAddr,
    peer_identity: Option<String>,
) -> ConnInfo {
    let started_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ConnInfo {
        shard,
        direction,
        src,
        dst,
        peer_identity,
        started_unix_ms,
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
        let id = self.shard.next_id();
        let info = conn_info(self.shard.id, direction, src, dst, peer);
        self.shard
            .table
            .borrow_mut()
            .insert(id, Tracked { info, policy: None });
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
    // Before the shard's first allocation: its arena then keeps freed buffers for reuse.
    zmesh_rt::keep_freed_memory();
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
            tasks.push(zmesh_rt::spawn(inbound::serve_hbone(
                shard.clone(),
                l,
                None,
            )));
        }
        for l in sockets.plaintext.into_iter().filter_map(listen) {
            tasks.push(zmesh_rt::spawn(inbound::serve_plaintext(
                shard.clone(),
                l,
                None,
            )));
        }
        if let Some(l) = sockets.outbound.and_then(listen) {
            tasks.push(zmesh_rt::spawn(outbound::serve_captured(
                shard.clone(),
                l,
                None,
            )));
        }
        if let Some(l) = sockets.socks5.and_then(listen) {
            tasks.push(zmesh_rt::spawn(outbound::serve_socks5(shard.clone(), l)));
        }
        tasks.push(zmesh_rt::spawn(sweep_pool(shard.clone())));
        ready.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(shard = id, "serving");
        let mut workloads = crate::listeners::Dynamic::default();
        let mut pods = crate::listeners::Pods::default();
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Connections(reply) => {
                    let list = shard
                        .table
                        .borrow()
                        .values()
                        .map(|t| t.info.clone())
                        .collect();
                    let _ = reply.send(list);
                }
                Command::Listen(spec) => workloads.listen(&shard, spec),
                Command::Unlisten { uid } => workloads.unlisten(id, &uid),
                Command::ListenPod { pod, sockets, done } => {
                    pods.listen(&shard, pod, sockets);
                    let _ = done.send(());
                }
                Command::UnlistenPod { id: pod, done } => {
                    pods.unlisten(&shard, pod);
                    let _ = done.send(());
                }
                Command::RecheckPolicy => shard.recheck_policy(),
                Command::Stop => break,
            }
        }
        // Stop accepting, then give open connections a grace period to finish.
        drop(tasks);
        drop(workloads);
        drop(pods);
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
