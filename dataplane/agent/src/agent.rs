//! The agent's IO: threads that turn the config watch, CNI connections and the node proxy's
//! connection into events for the [`Core`], and one loop that feeds them in and carries out
//! its actions. Blocking threads: a node has a handful of pod events a second at most.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use zmesh_control::source::{DEFAULT_DEBOUNCE, DirWatcher, WatchStatus};
use zmesh_control::store::Store;
use zmesh_control::translate::MeshOptions;

use crate::cni::{CniRequest, CniResponse, PodRef};
use crate::core::{Action, AddError, ConnId, Core, Enrollment, NewPod, ReqId};
use crate::podns;
use crate::zds::{self, ZdsListener};

/// A CNI client gets this long to send its request line.
const CNI_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest ADD wait a client may ask for.
const MAX_ADD_WAIT: Duration = Duration::from_secs(120);

/// What the agent serves and watches.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub config_dir: PathBuf,
    pub zds_socket: PathBuf,
    pub cni_socket: PathBuf,
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

type NetnsFd = Arc<OwnedFd>;

enum Event {
    Store(Arc<Store>),
    CniAdd {
        pod: NewPod<NetnsFd>,
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
    Driver::new(initial).run(&rx);
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
}

impl Driver {
    fn new(store: Arc<Store>) -> Self {
        Driver {
            core: Core::new(store),
            conns: HashMap::new(),
            replies: HashMap::new(),
            next_req: 0,
        }
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
                timeout,
                reply,
            } => {
                self.next_req += 1;
                self.replies.insert(self.next_req, reply);
                self.core
                    .cni_add(self.next_req, pod, timeout, Instant::now());
            }
            Event::CniDel { pod, reply } => {
                self.core.cni_del(&pod.uid(), &pod.container_id);
                let _ = reply.send(CniResponse::Deleted);
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

fn bind_cni(path: &Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Cni {
        path: path.to_owned(),
        source,
    };
    zds::remove_stale_socket(path).map_err(err)?;
    UnixListener::bind(path).map_err(err)
}

fn accept_cni(listener: &UnixListener, tx: &mpsc::Sender<Event>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "CNI connection refused");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("zmesh-agent-cni-conn".to_owned())
            .spawn(move || serve_cni(stream, &tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot serve a CNI request");
        }
    }
}

/// One CNI request: read it, do the IO the core must not (open the netns, find the cgroup),
/// hand it to the core, write the answer.
fn serve_cni(stream: UnixStream, tx: &mpsc::Sender<Event>) {
    let _ = stream.set_read_timeout(Some(CNI_READ_TIMEOUT));
    let mut line = String::new();
    let answer = match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<CniRequest>(&line) {
            Ok(req) => dispatch(req, tx),
            Err(e) => CniResponse::Error {
                message: format!("bad request from the CNI plugin: {e}"),
            },
        },
        Err(e) => CniResponse::Error {
            message: format!("reading the CNI request: {e}"),
        },
    };
    let mut out = match serde_json::to_string(&answer) {
        Ok(s) => s,
        Err(e) => format!(r#"{{"result":"error","message":"encoding the answer: {e}"}}"#),
    };
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

fn dispatch(req: CniRequest, tx: &mpsc::Sender<Event>) -> CniResponse {
    let (reply, answer) = mpsc::channel();
    let (event, wait) = match req {
        CniRequest::Add {
            pod,
            netns,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms).min(MAX_ADD_WAIT);
            match open_pod(&pod, Path::new(&netns)) {
                Ok(new) => (
                    Event::CniAdd {
                        pod: new,
                        timeout,
                        reply,
                    },
                    timeout,
                ),
                Err(e) => {
                    tracing::warn!(namespace = %pod.namespace, name = %pod.name, error = %e, "CNI ADD failed");
                    return CniResponse::Error {
                        message: e.to_string(),
                    };
                }
            }
        }
        CniRequest::Del { pod } => (Event::CniDel { pod, reply }, Duration::ZERO),
        CniRequest::Check { pod } => (Event::CniCheck { pod, reply }, Duration::ZERO),
    };
    if tx.send(event).is_err() {
        return CniResponse::Error {
            message: "the node agent is shutting down".to_owned(),
        };
    }
    // The core answers every request by its bound; the margin only guards against a bug.
    answer
        .recv_timeout(wait + Duration::from_secs(5))
        .unwrap_or_else(|_| CniResponse::Error {
            message: AddError::NotConfirmed(wait).to_string(),
        })
}

fn open_pod(pod: &PodRef, netns_path: &Path) -> Result<NewPod<NetnsFd>, podns::PodNsError> {
    let netns = podns::open_netns(netns_path)?;
    let cgroup = podns::pod_cgroup(&netns, netns_path)
        .map(|c| c.display().to_string())
        .map_err(|e| e.to_string());
    Ok(NewPod {
        uid: pod.uid(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        container_id: pod.container_id.clone(),
        cgroup,
        netns: Arc::new(netns),
    })
}
