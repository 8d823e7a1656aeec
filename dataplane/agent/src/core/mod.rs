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

pub use self::types::{Action, AddError, ConnId, Enrollment, NewPod, PodStatus, ReqId, Request};

mod types;

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
    /// Changes when a repeated ADD replaces the pod: an ack for an `add` of the earlier
    /// version (another netns) does not count for this one.
    generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum InFlight {
    Add(String, u64),
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
    /// DELs waiting for the proxy to ack the pod's `del`.
    releases: Vec<Waiter>,
    actions: VecDeque<Action<F>>,
    generations: u64,
}

impl<F: Clone> Core<F> {
    pub fn new(store: Arc<Store>) -> Self {
        Core {
            store,
            pods: BTreeMap::new(),
            gone: BTreeSet::new(),
            proxy: None,
            waiters: Vec::new(),
            releases: Vec::new(),
            actions: VecDeque::new(),
            generations: 0,
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
        let uid = pod.uid.clone();
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        let (enrolled, no_cgroup) = self.insert(pod);
        tracing::info!(pod = %uid, %namespace, %name, enrolled, "pod started");
        let result = match (enrolled, no_cgroup) {
            (false, _) => Ok(Enrollment::NotEnrolled),
            (true, Some(why)) => {
                tracing::warn!(pod = %uid, error = %why, "enrolled pod without a cgroup");
                Err(AddError::NoCgroup(why))
            }
            (true, None) => {
                self.waiters.push(Waiter {
                    req,
                    uid,
                    deadline: now + timeout,
                    timeout,
                });
                self.pump();
                return;
            }
        };
        self.actions.push_back(Action::Reply { req, result });
        self.pump();
    }

    /// A pod that was running before the agent restarted (no CNI request waits for it).
    pub fn restore(&mut self, pod: NewPod<F>) {
        tracing::info!(pod = %pod.uid, namespace = %pod.namespace, name = %pod.name, "pod restored");
        self.insert(pod);
        self.pump();
    }

    /// Adds or replaces a running pod: whether it is enrolled, and why it has no cgroup.
    fn insert(&mut self, pod: NewPod<F>) -> (bool, Option<String>) {
        let enrolled = enroll::enrolled(&self.store, &pod.namespace, &pod.name);
        // A repeated ADD (a retry, or a re-created sandbox) re-sends the pod: the proxy treats
        // an add of a netns it already serves as done.
        self.gone.remove(&pod.uid);
        let no_cgroup = pod.cgroup.as_ref().err().cloned();
        self.generations += 1;
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
                generation: self.generations,
            },
        );
        (enrolled, no_cgroup)
    }

    /// A CNI DEL, by pod uid or container id: answered once the proxy acked the pod's `del`
    /// (bounded by `timeout`), so its capture is gone when DEL returns; at once when the proxy
    /// does not hold the pod. Returns the uid when the pod was known.
    pub fn cni_del(
        &mut self,
        req: ReqId,
        (uid, container_id): (&str, &str),
        timeout: Duration,
        now: Instant,
    ) -> Option<String> {
        let Some(uid) = self.find(uid, container_id) else {
            self.reply(req, Ok(Enrollment::Released));
            return None;
        };
        let pod = self.pods.remove(&uid)?;
        tracing::info!(pod = %uid, namespace = %pod.namespace, name = %pod.name, "pod deleted");
        let adding = self
            .proxy
            .as_ref()
            .is_some_and(|p| matches!(&p.in_flight, Some(InFlight::Add(u, _)) if *u == uid));
        self.answer(&uid, &Err(AddError::Deleted));
        if (pod.held || adding) && self.proxy.is_some() {
            self.gone.insert(uid.clone());
            self.releases.push(Waiter {
                req,
                uid: uid.clone(),
                deadline: now + timeout,
                timeout,
            });
        } else {
            self.reply(req, Ok(Enrollment::Released));
        }
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
            // Whatever it held and was not re-sent is released by its next snapshot.
            for w in std::mem::take(&mut self.releases) {
                self.reply(w.req, Ok(Enrollment::Released));
            }
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
            InFlight::Add(uid, generation) => self.added(&uid, generation, error),
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
                let (done, waiting) = std::mem::take(&mut self.releases)
                    .into_iter()
                    .partition::<Vec<_>, _>(|w| w.uid == uid);
                self.releases = waiting;
                for w in done {
                    self.reply(w.req, Ok(Enrollment::Released));
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
            self.reply(w.req, Err(err));
        }
        let (expired, waiting) = std::mem::take(&mut self.releases)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.deadline <= now);
        self.releases = waiting;
        for w in expired {
            tracing::warn!(pod = %w.uid, timeout = ?w.timeout, "node proxy did not confirm the release in time; DEL succeeds anyway");
            self.reply(w.req, Ok(Enrollment::Released));
        }
    }

    /// When [`Core::tick`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiters
            .iter()
            .chain(&self.releases)
            .map(|w| w.deadline)
            .min()
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

    fn added(&mut self, uid: &str, generation: u64, error: &str) {
        let result = match self.pods.get_mut(uid) {
            // Deleted while the add was in flight: the proxy holds it now, so release it.
            None => {
                self.gone.insert(uid.to_owned());
                return;
            }
            // Replaced while the add was in flight: the new version is sent next.
            Some(pod) if pod.generation != generation => return,
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

    fn reply(&mut self, req: ReqId, result: Result<Enrollment, AddError>) {
        self.actions.push_back(Action::Reply { req, result });
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
            (InFlight::Add(uid.clone(), pod.generation), request)
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
mod tests;
