//! The agent's sans-IO core: which pods run on this node (from CNI events), which of them are
//! enrolled (from the object store), and what the connected node proxy holds, turned into
//! ZDS requests and CNI replies. No sockets, no threads, no clock: the driver feeds events with
//! `now`, then drains [`Core::poll_action`] and sleeps until [`Core::poll_timeout`].
//!
//! One request is in flight to the proxy at a time: the proxy answers in order and enrolling
//! is slow anyway, so this keeps every ack tied to its request. What to send next is not a
//! queue but a reconciliation of "should the proxy hold this pod" against "does it", so a
//! label flipping twice, a DEL racing an ADD or a reconnect never leaves stale requests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zmesh_control::store::Store;

use crate::enroll;

/// Identifies a CNI request waiting for an answer.
pub type ReqId = u64;
/// Identifies one node proxy connection.
pub type ConnId = u64;

/// A pod the CNI plugin reported as started on this node. `F` is its netns handle (an fd in
/// the agent, anything clonable in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPod<F> {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    /// The pod's cgroup v2 directory (absolute path), or why it was not found: only an
    /// enrolled pod needs it (eBPF capture attaches to it).
    pub cgroup: Result<String, String>,
    pub netns: F,
}

/// A ZDS request for the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<F> {
    Add {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        cgroup: String,
        netns: F,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// How a CNI ADD ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// The node proxy acked the pod's `add`: its traffic is captured.
    Captured,
    /// The pod is not enrolled; it runs outside the mesh.
    NotEnrolled,
}

/// Why a CNI ADD for an enrolled pod failed (the pod must not start uncaptured).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error(
        "no node proxy connected to the agent within {0:?}: the pod would run uncaptured \
         (is zmesh-node running with --zds-socket?)"
    )]
    NoProxy(Duration),
    #[error("the node proxy did not confirm capture within {0:?}")]
    NotConfirmed(Duration),
    #[error("the node proxy could not capture the pod: {0}")]
    Rejected(String),
    #[error("the pod was deleted before it was captured")]
    Deleted,
    #[error("the pod's cgroup: {0}")]
    NoCgroup(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<F> {
    /// Send a request on the proxy connection (its answer comes back as [`Core::proxy_ack`]).
    Send { conn: ConnId, request: Request<F> },
    /// Answer a CNI ADD.
    Reply {
        req: ReqId,
        result: Result<Enrollment, AddError>,
    },
    /// Close a proxy connection that a newer one replaced.
    Close { conn: ConnId },
}

/// What CHECK reports about a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodStatus {
    pub enrolled: bool,
    /// The connected node proxy acked the pod's `add`.
    pub captured: bool,
}

struct Pod<F> {
    namespace: String,
    name: String,
    container_id: String,
    cgroup: Result<String, String>,
    netns: F,
    enrolled: bool,
    /// The connected proxy acked an `add` and no `del` since.
    held: bool,
    /// The proxy refused its `add` on this connection: not retried until something changes.
    failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum InFlight {
    Add(String),
    Del(String),
    Snapshot,
}

struct Proxy {
    conn: ConnId,
    in_flight: Option<InFlight>,
    snapshot_sent: bool,
}

struct Waiter {
    req: ReqId,
    uid: String,
    deadline: Instant,
    timeout: Duration,
}

/// The state machine; see the module docs.
pub struct Core<F> {
    store: Arc<Store>,
    pods: BTreeMap<String, Pod<F>>,
    /// Deleted pods the proxy may still hold: each gets a `del`.
    gone: BTreeSet<String>,
    proxy: Option<Proxy>,
    waiters: Vec<Waiter>,
    actions: VecDeque<Action<F>>,
}

impl<F: Clone> Core<F> {
    pub fn new(store: Arc<Store>) -> Self {
        Core {
            store,
            pods: BTreeMap::new(),
            gone: BTreeSet::new(),
            proxy: None,
            waiters: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    /// New objects: pods whose enrollment changed are enrolled or released at once.
    pub fn set_store(&mut self, store: Arc<Store>) {
        self.store = store;
        let mut released = Vec::new();
        for (uid, pod) in &mut self.pods {
            let now = enroll::enrolled(&self.store, &pod.namespace, &pod.name);
            if now != pod.enrolled {
                tracing::info!(pod = %uid, namespace = %pod.namespace, name = %pod.name, enrolled = now, "pod enrollment changed");
                pod.enrolled = now;
                pod.failed = false;
                if !now {
                    released.push(uid.clone());
                }
            }
        }
        for uid in released {
            self.answer(&uid, &Ok(Enrollment::NotEnrolled));
        }
        self.pump();
    }

    /// A CNI ADD: an enrolled pod is answered once the proxy acks its `add` (or at
    /// `now + timeout`); another pod is answered at once.
    pub fn cni_add(&mut self, req: ReqId, pod: NewPod<F>, timeout: Duration, now: Instant) {
        let enrolled = enroll::enrolled(&self.store, &pod.namespace, &pod.name);
        tracing::info!(pod = %pod.uid, namespace = %pod.namespace, name = %pod.name, enrolled, "pod started");
        // A repeated ADD (a retry, or a re-created sandbox) re-sends the pod: the proxy treats
        // an add of a netns it already serves as done.
        self.gone.remove(&pod.uid);
        let uid = pod.uid.clone();
        let no_cgroup = pod.cgroup.as_ref().err().cloned();
        self.pods.insert(
            pod.uid,
            Pod {
                namespace: pod.namespace,
                name: pod.name,
                container_id: pod.container_id,
                cgroup: pod.cgroup,
                netns: pod.netns,
                enrolled,
                held: false,
                failed: enrolled && no_cgroup.is_some(),
            },
        );
        if let (true, Some(why)) = (enrolled, no_cgroup) {
            tracing::warn!(pod = %uid, error = %why, "enrolled pod without a cgroup");
            self.actions.push_back(Action::Reply {
                req,
                result: Err(AddError::NoCgroup(why)),
            });
        } else if enrolled {
            self.waiters.push(Waiter {
                req,
                uid,
                deadline: now + timeout,
                timeout,
            });
        } else {
            self.actions.push_back(Action::Reply {
                req,
                result: Ok(Enrollment::NotEnrolled),
            });
        }
        self.pump();
    }

    /// A CNI DEL, by pod uid or container id; returns the uid when the pod was known.
    pub fn cni_del(&mut self, uid: &str, container_id: &str) -> Option<String> {
        let uid = self.find(uid, container_id)?;
        let pod = self.pods.remove(&uid)?;
        tracing::info!(pod = %uid, namespace = %pod.namespace, name = %pod.name, "pod deleted");
        let adding = self
            .proxy
            .as_ref()
            .is_some_and(|p| p.in_flight == Some(InFlight::Add(uid.clone())));
        if pod.held || adding {
            self.gone.insert(uid.clone());
        }
        self.answer(&uid, &Err(AddError::Deleted));
        self.pump();
        Some(uid)
    }

    /// What CHECK needs to know; `None` for a pod the agent does not know.
    pub fn status(&self, uid: &str, container_id: &str) -> Option<PodStatus> {
        let pod = self.pods.get(&self.find(uid, container_id)?)?;
        Some(PodStatus {
            enrolled: pod.enrolled,
            captured: pod.held,
        })
    }

    /// A node proxy connected (and said hello): it gets every enrolled pod, then
    /// `snapshot_sent`. An older connection is closed: one proxy per node.
    pub fn proxy_connected(&mut self, conn: ConnId) {
        if let Some(old) = self.proxy.take() {
            self.actions.push_back(Action::Close { conn: old.conn });
        }
        tracing::info!(
            conn,
            pods = self.pods.len(),
            "node proxy connected; sending the snapshot"
        );
        for pod in self.pods.values_mut() {
            pod.held = false;
            pod.failed = false;
        }
        // The snapshot releases whatever the new proxy holds that is not re-sent.
        self.gone.clear();
        self.proxy = Some(Proxy {
            conn,
            in_flight: None,
            snapshot_sent: false,
        });
        self.pump();
    }

    /// The connection ended; waiting ADDs keep waiting for the next one (until their bound).
    pub fn proxy_gone(&mut self, conn: ConnId) {
        if self.proxy.as_ref().is_some_and(|p| p.conn == conn) {
            tracing::warn!(conn, "node proxy disconnected");
            self.proxy = None;
        }
    }

    /// The proxy's answer to the request in flight; `error` is empty on success.
    pub fn proxy_ack(&mut self, conn: ConnId, error: &str) {
        let Some(proxy) = self.proxy.as_mut().filter(|p| p.conn == conn) else {
            return;
        };
        let Some(done) = proxy.in_flight.take() else {
            tracing::warn!(conn, "ack with no request in flight; ignored");
            return;
        };
        match done {
            InFlight::Snapshot => {
                proxy.snapshot_sent = true;
                tracing::info!(conn, "snapshot acked");
            }
            InFlight::Add(uid) => self.added(&uid, error),
            InFlight::Del(uid) => {
                if !error.is_empty() {
                    // Not retried: the proxy answers `del` of an unknown pod with an error, and
                    // the next snapshot releases it anyway.
                    tracing::warn!(pod = %uid, error, "node proxy failed to release the pod");
                }
                self.gone.remove(&uid);
                if let Some(p) = self.pods.get_mut(&uid) {
                    p.held = false;
                }
            }
        }
        self.pump();
    }

    /// Answers waiting ADDs whose bound passed.
    pub fn tick(&mut self, now: Instant) {
        let connected = self.proxy.is_some();
        let (expired, waiting) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.deadline <= now);
        self.waiters = waiting;
        for w in expired {
            let err = if connected {
                AddError::NotConfirmed(w.timeout)
            } else {
                AddError::NoProxy(w.timeout)
            };
            tracing::warn!(pod = %w.uid, error = %err, "CNI ADD failed");
            self.actions.push_back(Action::Reply {
                req: w.req,
                result: Err(err),
            });
        }
    }

    /// When [`Core::tick`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    pub fn poll_action(&mut self) -> Option<Action<F>> {
        self.actions.pop_front()
    }

    fn find(&self, uid: &str, container_id: &str) -> Option<String> {
        if !uid.is_empty() && self.pods.contains_key(uid) {
            return Some(uid.to_owned());
        }
        if container_id.is_empty() {
            return None;
        }
        self.pods
            .iter()
            .find(|(_, p)| p.container_id == container_id)
            .map(|(u, _)| u.clone())
    }

    fn added(&mut self, uid: &str, error: &str) {
        let result = match self.pods.get_mut(uid) {
            // Deleted while the add was in flight: the proxy holds it now, so release it.
            None => {
                self.gone.insert(uid.to_owned());
                return;
            }
            Some(pod) if error.is_empty() => {
                pod.held = true;
                tracing::info!(pod = %uid, "pod captured by the node proxy");
                Ok(Enrollment::Captured)
            }
            Some(pod) => {
                pod.failed = true;
                tracing::warn!(pod = %uid, error, "node proxy refused the pod");
                Err(AddError::Rejected(error.to_owned()))
            }
        };
        self.answer(uid, &result);
    }

    fn answer(&mut self, uid: &str, result: &Result<Enrollment, AddError>) {
        let (done, waiting) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.uid == uid);
        self.waiters = waiting;
        for w in done {
            self.actions.push_back(Action::Reply {
                req: w.req,
                result: result.clone(),
            });
        }
    }

    /// Sends the next request when none is in flight: releases first, then adds, then the
    /// snapshot marker once every enrolled pod was sent.
    fn pump(&mut self) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        if proxy.in_flight.is_some() {
            return;
        }
        let release = self.gone.first().cloned().or_else(|| {
            self.pods
                .iter()
                .find(|(_, p)| !p.enrolled && p.held)
                .map(|(u, _)| u.clone())
        });
        let (flight, request) = if let Some(uid) = release {
            (InFlight::Del(uid.clone()), Request::Del { uid })
        } else if let Some((uid, pod)) = self
            .pods
            .iter()
            .find(|(_, p)| p.enrolled && !p.held && !p.failed)
        {
            let request = Request::Add {
                uid: uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: enroll::service_account(&self.store, &pod.namespace, &pod.name),
                // Enrolled later by a label: the proxy decides whether it can capture
                // without a cgroup (nftables can; eBPF refuses in its ack).
                cgroup: pod.cgroup.clone().unwrap_or_default(),
                netns: pod.netns.clone(),
            };
            (InFlight::Add(uid.clone()), request)
        } else if !proxy.snapshot_sent {
            (InFlight::Snapshot, Request::SnapshotSent)
        } else {
            return;
        };
        proxy.in_flight = Some(flight);
        let conn = proxy.conn;
        self.actions.push_back(Action::Send { conn, request });
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
