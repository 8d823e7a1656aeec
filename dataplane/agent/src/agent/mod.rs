//! The agent's IO: threads that turn the config watch, CNI connections and the node proxy's
//! connection into events for the [`Core`], and one loop that feeds them in and carries out
//! its actions. Blocking threads: a node has a handful of pod events a second at most.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use zmesh_control::source::{DEFAULT_DEBOUNCE, DirWatcher, WatchStatus};
use zmesh_control::store::Store;
use zmesh_control::translate::MeshOptions;

use crate::cni::{CniResponse, DEL_WAIT, PodRef};
use crate::core::{Action, ConnId, Core, Enrollment, NewPod, ReqId};
use crate::podns;
use crate::state::{PodRecord, StateFile};
use crate::zds::{self, ZdsListener};

mod cni_server;

use cni_server::{accept_cni, bind_cni};

/// What the agent serves and watches.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub config_dir: PathBuf,
    pub zds_socket: PathBuf,
    pub cni_socket: PathBuf,
    /// Where the running pods are remembered across agent restarts.
    pub state_file: PathBuf,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Watch(#[from] zmesh_control::source::WatchError),
    #[error(transparent)]
    Zds(#[from] zds::ZdsError),
    #[error("CNI socket {path}: {source}")]
    Cni {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting a thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub(crate) type NetnsFd = Arc<OwnedFd>;

pub(crate) enum Event {
    Store(Arc<Store>),
    CniAdd {
        pod: NewPod<NetnsFd>,
        record: PodRecord,
        timeout: Duration,
        reply: mpsc::Sender<CniResponse>,
    },
    CniDel {
        pod: PodRef,
        reply: mpsc::Sender<CniResponse>,
    },
    CniCheck {
        pod: PodRef,
        reply: mpsc::Sender<CniResponse>,
    },
    ProxyConnected {
        conn: ConnId,
        sock: Arc<OwnedFd>,
    },
    ProxyAck {
        conn: ConnId,
        error: String,
    },
    ProxyGone {
        conn: ConnId,
    },
}

/// Starts watching and serving, logs `node agent ready` once both sockets are bound, and runs
/// until the process ends.
pub fn run(cfg: &Config) -> Result<(), StartError> {
    let (resources, _keep) = tokio::sync::watch::channel(Default::default());
    let watcher = DirWatcher::start(
        &cfg.config_dir,
        MeshOptions::default(),
        DEFAULT_DEBOUNCE,
        resources,
    )?;
    let status = watcher.status();
    let initial = status.borrow().store.clone();
    let (tx, rx) = mpsc::channel();
    spawn("zmesh-agent-config", {
        let tx = tx.clone();
        move || forward_config(status, &tx)
    })?;
    let zds = ZdsListener::bind(&cfg.zds_socket)?;
    let cni = bind_cni(&cfg.cni_socket)?;
    spawn("zmesh-agent-zds", {
        let tx = tx.clone();
        move || accept_proxies(&zds, &tx)
    })?;
    spawn("zmesh-agent-cni", move || accept_cni(&cni, &tx))?;
    tracing::info!(
        node = %cfg.node_name,
        config_dir = %cfg.config_dir.display(),
        zds_socket = %cfg.zds_socket.display(),
        cni_socket = %cfg.cni_socket.display(),
        "node agent ready"
    );
    Driver::new(initial, StateFile::load(&cfg.state_file)).run(&rx);
    drop(watcher);
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
        .map_err(StartError::Thread)
}

/// Sends every new store to the core (the watch's status changes after every reload).
fn forward_config(
    mut status: tokio::sync::watch::Receiver<Arc<WatchStatus>>,
    tx: &mpsc::Sender<Event>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "config watch runtime; labels are no longer followed");
            return;
        }
    };
    rt.block_on(async {
        while status.changed().await.is_ok() {
            let store = status.borrow_and_update().store.clone();
            if tx.send(Event::Store(store)).is_err() {
                return;
            }
        }
    });
}

/// The core and what the loop needs to carry out its actions.
struct Driver {
    core: Core<NetnsFd>,
    conns: HashMap<ConnId, Arc<OwnedFd>>,
    replies: HashMap<ReqId, mpsc::Sender<CniResponse>>,
    next_req: ReqId,
    state: StateFile,
}

impl Driver {
    /// The core, with the pods a previous run of the agent left running.
    fn new(store: Arc<Store>, state: StateFile) -> Self {
        let mut d = Driver {
            core: Core::new(store),
            conns: HashMap::new(),
            replies: HashMap::new(),
            next_req: 0,
            state,
        };
        let mut lost = Vec::new();
        for rec in d.state.pods() {
            match reopen(rec) {
                Ok(pod) => d.core.restore(pod),
                Err(why) => {
                    tracing::info!(pod = %rec.uid, namespace = %rec.namespace, name = %rec.name, reason = %why, "pod from the previous run is gone");
                    lost.push(rec.uid.clone());
                }
            }
        }
        d.state.retain(|p| !lost.contains(&p.uid));
        d
    }

    fn run(mut self, rx: &mpsc::Receiver<Event>) {
        loop {
            let event = match self.core.poll_timeout() {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return,
                },
            };
            if let Some(ev) = event {
                self.handle(ev);
            }
            self.core.tick(Instant::now());
            self.act();
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Store(store) => self.core.set_store(store),
            Event::CniAdd {
                pod,
                record,
                timeout,
                reply,
            } => {
                self.state.insert(record);
                self.next_req += 1;
                self.replies.insert(self.next_req, reply);
                self.core
                    .cni_add(self.next_req, pod, timeout, Instant::now());
            }
            Event::CniDel { pod, reply } => {
                self.next_req += 1;
                self.replies.insert(self.next_req, reply);
                let id = (pod.uid(), pod.container_id.clone());
                let (uid, ctr) = (id.0.as_str(), id.1.as_str());
                let found = self
                    .core
                    .cni_del(self.next_req, (uid, ctr), DEL_WAIT, Instant::now());
                if let Some(uid) = found {
                    self.state.remove(&uid);
                }
            }
            Event::CniCheck { pod, reply } => {
                let _ = reply.send(self.check(&pod));
            }
            Event::ProxyConnected { conn, sock } => {
                self.conns.insert(conn, sock);
                self.core.proxy_connected(conn);
            }
            Event::ProxyAck { conn, error } => self.core.proxy_ack(conn, &error),
            Event::ProxyGone { conn } => {
                self.conns.remove(&conn);
                self.core.proxy_gone(conn);
            }
        }
    }

    fn check(&self, pod: &PodRef) -> CniResponse {
        match self.core.status(&pod.uid(), &pod.container_id) {
            None => CniResponse::Error {
                message: format!(
                    "pod {}/{} is not known to the node agent (was ADD run?)",
                    pod.namespace, pod.name
                ),
            },
            Some(s) if !s.enrolled => CniResponse::NotEnrolled,
            Some(s) if s.captured => CniResponse::Captured,
            Some(_) => CniResponse::Error {
                message: format!(
                    "pod {}/{} is enrolled but the node proxy does not capture it now",
                    pod.namespace, pod.name
                ),
            },
        }
    }

    /// Carries out the core's actions; a failed send ends that connection, which may lead to
    /// more actions.
    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send { conn, request } => {
                    let Some(sock) = self.conns.get(&conn) else {
                        self.core.proxy_gone(conn);
                        continue;
                    };
                    if let Err(e) = zds::send(sock, &request) {
                        tracing::warn!(conn, error = %e, "sending to the node proxy failed");
                        zds::shutdown(sock);
                        self.conns.remove(&conn);
                        self.core.proxy_gone(conn);
                    }
                }
                Action::Close { conn } => {
                    if let Some(sock) = self.conns.remove(&conn) {
                        zds::shutdown(&sock);
                    }
                }
                Action::Reply { req, result } => {
                    if let Some(reply) = self.replies.remove(&req) {
                        let _ = reply.send(match result {
                            Ok(Enrollment::Captured) => CniResponse::Captured,
                            Ok(Enrollment::NotEnrolled) => CniResponse::NotEnrolled,
                            Ok(Enrollment::Released) => CniResponse::Deleted,
                            Err(e) => CniResponse::Error {
                                message: e.to_string(),
                            },
                        });
                    }
                }
            }
        }
    }
}

fn accept_proxies(listener: &ZdsListener, tx: &mpsc::Sender<Event>) {
    let mut next: ConnId = 0;
    loop {
        let conn = match listener.accept() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "node proxy connection refused");
                // Accept errors (e.g. out of fds) repeat at once; do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        next += 1;
        let id = next;
        if tx
            .send(Event::ProxyConnected {
                conn: id,
                sock: conn.clone(),
            })
            .is_err()
        {
            return;
        }
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("zmesh-agent-zds-{id}"))
            .spawn(move || read_acks(id, &conn, &tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the ZDS reader");
        }
    }
}

fn read_acks(conn: ConnId, sock: &OwnedFd, tx: &mpsc::Sender<Event>) {
    loop {
        match zds::recv_ack(sock) {
            Ok(error) => {
                if tx.send(Event::ProxyAck { conn, error }).is_err() {
                    return;
                }
            }
            Err(e) => {
                if !matches!(e, zds::ZdsError::Closed) {
                    tracing::warn!(conn, error = %e, "node proxy connection failed");
                }
                zds::shutdown(sock);
                let _ = tx.send(Event::ProxyGone { conn });
                return;
            }
        }
    }
}

/// Reopens a pod of the previous run, if its netns is still the pod's (same cgroup).
fn reopen(rec: &PodRecord) -> Result<NewPod<NetnsFd>, String> {
    let path = Path::new(&rec.netns);
    let netns = podns::open_netns(path).map_err(|e| e.to_string())?;
    let cgroup = podns::pod_cgroup(&netns, path)
        .map(|c| c.display().to_string())
        .map_err(|e| e.to_string());
    if cgroup.as_ref().ok() != rec.cgroup.as_ref() {
        return Err(format!(
            "its netns now leads to cgroup {cgroup:?}, not {:?}",
            rec.cgroup
        ));
    }
    Ok(NewPod {
        uid: rec.uid.clone(),
        namespace: rec.namespace.clone(),
        name: rec.name.clone(),
        container_id: rec.container_id.clone(),
        cgroup,
        netns: Arc::new(netns),
    })
}
