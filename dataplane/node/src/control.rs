//! The control loop (xDS mode), on the control thread's runtime: turns xDS snapshots and CA
//! answers into published `NodeState`s and shard commands. It opens and closes local
//! workloads' listeners, asks the shards to re-check open connections when policy changes,
//! keeps each local identity's certificate fresh, and says what readiness still waits for.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use zmesh_state::{Identity, Snapshot};

use crate::backoff::jitter;
use crate::certs::CertBook;
use crate::certs::client::{CaClient, CaError};
use crate::shard::{Command, NetNs, WorkloadListeners};
use crate::state::{IdentityCert, NodeState, SharedState};
use crate::xds::client::MeshUpdate;

/// What readiness waits for in xDS mode.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub xds_synced: bool,
    pub certs_missing: Vec<Identity>,
}

impl Pending {
    /// Human-readable reasons, empty when nothing is pending.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.xds_synced {
            out.push("xds (first Address and Authorization responses)".to_owned());
        }
        out.extend(
            self.certs_missing
                .iter()
                .map(|id| format!("certificate {id}")),
        );
        out
    }
}

/// Sleep at most this long between checks, so expiries are noticed without a precise timer.
const MAX_IDLE: Duration = Duration::from_secs(30);

pub struct ControlLoop {
    pub state: SharedState,
    pub shards: Vec<zmesh_rt::Sender<Command>>,
    pub ca: CaClient,
    pub pending: Arc<Mutex<Pending>>,
    pub updates: mpsc::Receiver<MeshUpdate>,
    /// Open local workloads' listeners on the host (off in in-pod mode, where pods get theirs
    /// in their own netns when enrolled).
    pub host_listeners: bool,
}

struct Run {
    state: SharedState,
    shards: Vec<zmesh_rt::Sender<Command>>,
    pending: Arc<Mutex<Pending>>,
    mesh: Arc<Snapshot>,
    synced: bool,
    book: CertBook,
    listening: BTreeMap<String, Vec<IpAddr>>,
    host_listeners: bool,
}

type CertResult = (Identity, Result<Arc<IdentityCert>, CaError>);

impl ControlLoop {
    pub async fn run(self) {
        let ControlLoop {
            state,
            shards,
            ca,
            pending,
            mut updates,
            host_listeners,
        } = self;
        let mesh = state.load().mesh.clone();
        let mut run = Run {
            state,
            shards,
            pending,
            mesh,
            synced: false,
            book: CertBook::default(),
            listening: BTreeMap::new(),
            host_listeners,
        };
        let (cert_tx, mut cert_rx) = mpsc::unbounded_channel::<CertResult>();
        run.refresh_pending();
        loop {
            let now = SystemTime::now();
            for id in run.book.take_due(now) {
                let (ca, tx) = (ca.clone(), cert_tx.clone());
                tokio::spawn(async move {
                    let r = ca.fetch(&id).await;
                    let _ = tx.send((id, r));
                });
            }
            let wake = [run.book.next_due(), run.book.next_expiry(now)]
                .into_iter()
                .flatten()
                .min()
                .and_then(|t| t.duration_since(now).ok())
                .unwrap_or(MAX_IDLE)
                .min(MAX_IDLE);
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => run.on_mesh(u),
                    None => return,
                },
                Some((id, r)) = cert_rx.recv() => run.on_cert(id, r),
                _ = tokio::time::sleep(wake) => run.publish(false),
            }
        }
    }
}

impl Run {
    fn on_mesh(&mut self, u: MeshUpdate) {
        let old = std::mem::replace(&mut self.mesh, u.snapshot);
        self.synced |= u.synced;
        let node = self.state.load().node_name.clone();
        let local: Vec<_> = self
            .mesh
            .workloads()
            .filter(|w| w.node == node)
            .cloned()
            .collect();
        let wanted: BTreeSet<Identity> = local.iter().map(|w| w.identity()).collect();
        self.book.set_wanted(&wanted, SystemTime::now());
        let want: BTreeMap<String, Vec<IpAddr>> = local
            .iter()
            .map(|w| (w.uid.clone(), w.workload_ips.clone()))
            .collect();
        // Publish first: a listener opened below must find its workload in the state.
        let recheck = policy_inputs_changed(&old, &self.mesh, &node);
        self.publish(recheck);
        if self.host_listeners {
            self.sync_listeners(want);
        }
    }

    fn on_cert(&mut self, id: Identity, r: Result<Arc<IdentityCert>, CaError>) {
        match r {
            Ok(cert) => {
                tracing::info!(identity = %id, not_after = ?cert.cert.not_after, "certificate issued");
                self.book.succeeded(&id, cert);
            }
            Err(e) => {
                let retry = self.book.failed(&id, SystemTime::now(), jitter());
                tracing::warn!(identity = %id, error = %e, retry_in = ?retry, "certificate request failed");
            }
        }
        self.publish(false);
    }

    /// Opens listeners of new local workloads, closes those of workloads that left.
    fn sync_listeners(&mut self, want: BTreeMap<String, Vec<IpAddr>>) {
        for uid in self.listening.keys() {
            if !want.contains_key(uid) {
                tracing::info!(%uid, "local workload left; closing its listeners");
                self.broadcast(|| Command::Unlisten { uid: uid.clone() });
            }
        }
        for (uid, ips) in &want {
            if self.listening.get(uid) != Some(ips) {
                tracing::info!(%uid, ?ips, "local workload; opening its listeners");
                let spec = WorkloadListeners {
                    uid: uid.clone(),
                    ips: ips.clone(),
                    netns: NetNs::Host,
                };
                self.broadcast(|| Command::Listen(spec.clone()));
            }
        }
        self.listening = want;
    }

    fn broadcast(&self, cmd: impl Fn() -> Command) {
        for tx in &self.shards {
            if tx.send(cmd()).is_err() {
                tracing::warn!("a shard is gone; command dropped");
            }
        }
    }

    /// Publishes the current mesh and usable certificates; then, if asked, has every shard
    /// re-check its open connections against it.
    fn publish(&mut self, recheck: bool) {
        let now = SystemTime::now();
        let prev = self.state.load();
        let next = NodeState {
            mesh: self.mesh.clone(),
            certs: self.book.usable(now),
            node_name: prev.node_name.clone(),
            network: prev.network.clone(),
            cluster_id: prev.cluster_id.clone(),
            version: prev.version + 1,
        };
        self.state.store(Arc::new(next));
        if recheck {
            tracing::info!("policy inputs changed; re-checking open connections");
            self.broadcast(|| Command::RecheckPolicy);
        }
        self.refresh_pending();
    }

    fn refresh_pending(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.xds_synced = self.synced;
        p.certs_missing = self.book.missing(SystemTime::now());
    }
}

/// Whether any input of authorization differs: the policies, or the policy keys and addresses
/// of this node's workloads.
fn policy_inputs_changed(old: &Snapshot, new: &Snapshot, node: &str) -> bool {
    let policies = |s: &Snapshot| {
        let mut v: Vec<_> = s.policies().map(|p| (**p).clone()).collect();
        v.sort_by_key(|p| p.key());
        v
    };
    let local = |s: &Snapshot| {
        let mut v: Vec<_> = s
            .workloads()
            .filter(|w| w.node == node)
            .map(|w| {
                (
                    w.uid.clone(),
                    w.namespace.clone(),
                    w.authorization_policies.clone(),
                )
            })
            .collect();
        v.sort();
        v
    };
    policies(old) != policies(new) || local(old) != local(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_state::{Action, Authorization, Workload};

    fn snap(policies: Vec<Authorization>, wl_policies: Vec<String>) -> Snapshot {
        let w = Workload {
            uid: "w".into(),
            namespace: "demo".into(),
            node: "n1".into(),
            workload_ips: vec!["10.0.0.1".parse().unwrap()],
            authorization_policies: wl_policies,
            ..Default::default()
        };
        Snapshot::new(vec![w], vec![], policies).unwrap()
    }

    #[test]
    fn recheck_only_when_policy_inputs_change() {
        let p = |action| Authorization {
            name: "p".into(),
            namespace: "demo".into(),
            action,
            ..Default::default()
        };
        let a = snap(vec![p(Action::Allow)], vec![]);
        assert!(!policy_inputs_changed(
            &a,
            &snap(vec![p(Action::Allow)], vec![]),
            "n1"
        ));
        assert!(policy_inputs_changed(
            &a,
            &snap(vec![p(Action::Deny)], vec![]),
            "n1"
        ));
        assert!(policy_inputs_changed(
            &a,
            &snap(vec![p(Action::Allow)], vec!["demo/p".into()]),
            "n1"
        ));
        assert!(!policy_inputs_changed(
            &a,
            &snap(vec![p(Action::Allow)], vec!["demo/p".into()]),
            "n2"
        ));
    }
}
