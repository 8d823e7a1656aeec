//! Listeners of local workloads that come and go at run time (from xDS): each shard opens its
//! own SO_REUSEPORT sockets on the workload's addresses when told to, and closes them when the
//! workload leaves. Connections already accepted are not affected by a close.

use std::collections::HashMap;
use std::net::SocketAddr;

use zmesh_rt::{Task, TcpListener};

use crate::podns::PodRef;
use crate::shard::{NetNs, PodSockets, ShardRef, WorkloadListeners};
use crate::sockets;
use crate::{inbound, outbound};

/// The plaintext inbound port.
pub const PLAINTEXT_PORT: u16 = 15006;

/// One shard's run-time listeners, by workload uid. Dropping a task closes its listener.
#[derive(Default)]
pub struct Dynamic {
    by_uid: HashMap<String, (WorkloadListeners, Vec<Task<()>>)>,
}

impl Dynamic {
    pub fn listen(&mut self, shard: &ShardRef, spec: WorkloadListeners) {
        if self.by_uid.get(&spec.uid).is_some_and(|(s, _)| *s == spec) {
            return;
        }
        // Replaced addresses: close the old sockets before binding the new ones.
        self.by_uid.remove(&spec.uid);
        let NetNs::Host = spec.netns;
        let mut tasks = Vec::new();
        for ip in &spec.ips {
            for port in [zmesh_hbone::HBONE_PORT, PLAINTEXT_PORT] {
                let addr = SocketAddr::new(*ip, port);
                let listener = sockets::listener(addr).and_then(TcpListener::from_socket);
                let l = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(shard = shard.id, uid = %spec.uid, %addr, error = %e, "cannot listen for workload");
                        continue;
                    }
                };
                let task = if port == PLAINTEXT_PORT {
                    zmesh_rt::spawn(inbound::serve_plaintext(shard.clone(), l, None))
                } else {
                    zmesh_rt::spawn(inbound::serve_hbone(shard.clone(), l, None))
                };
                tasks.push(task);
            }
        }
        tracing::debug!(shard = shard.id, uid = %spec.uid, ips = ?spec.ips, listeners = tasks.len(), "workload listeners open");
        self.by_uid.insert(spec.uid.clone(), (spec, tasks));
    }

    pub fn unlisten(&mut self, shard: usize, uid: &str) {
        if self.by_uid.remove(uid).is_some() {
            tracing::debug!(shard, uid, "workload listeners closed");
        }
    }
}

/// One shard's listeners of enrolled pods (in-pod mode), by pod id. Connections accepted on
/// them carry the pod, so they are served and dialed from inside its netns.
#[derive(Default)]
pub struct Pods {
    by_id: HashMap<u64, Vec<Task<()>>>,
}

impl Pods {
    pub fn listen(&mut self, shard: &ShardRef, pod: PodRef, sockets: PodSockets) {
        let mut tasks = Vec::new();
        let mut register = |s: socket2::Socket| match TcpListener::from_socket(s) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(shard = shard.id, pod = %pod.uid, error = %e, "cannot register pod listener");
                None
            }
        };
        let PodSockets {
            outbound,
            plaintext,
            hbone,
        } = sockets;
        for l in outbound.into_iter().filter_map(&mut register) {
            let p = Some(pod.clone());
            tasks.push(zmesh_rt::spawn(outbound::serve_captured(
                shard.clone(),
                l,
                p,
            )));
        }
        for l in plaintext.into_iter().filter_map(&mut register) {
            let p = Some(pod.clone());
            tasks.push(zmesh_rt::spawn(inbound::serve_plaintext(
                shard.clone(),
                l,
                p,
            )));
        }
        for l in hbone.into_iter().filter_map(&mut register) {
            let p = Some(pod.clone());
            tasks.push(zmesh_rt::spawn(inbound::serve_hbone(shard.clone(), l, p)));
        }
        tracing::debug!(shard = shard.id, pod = %pod.uid, listeners = tasks.len(), "pod listeners open");
        self.by_id.insert(pod.id, tasks);
    }

    pub fn unlisten(&mut self, shard: &ShardRef, id: u64) {
        self.by_id.remove(&id);
        shard.pool.remove_pod(id, shard.stats());
        tracing::debug!(shard = shard.id, pod = id, "pod listeners closed");
    }
}
