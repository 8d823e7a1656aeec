//! Enrolled pods: opening a pod's listeners inside its netns (one SO_REUSEPORT socket per
//! shard), attaching capture, handing the listeners to the shards, and undoing it all.
//!
//! A pod is enrolled as soon as the node agent sends it, even when its workload has not
//! arrived in the mesh snapshot yet: its listeners and capture need only the pod. Until the
//! workload is known, its captured connections are refused (outbound: unknown source;
//! inbound: no such workload) — the pod fails closed and never bypasses the proxy. They are
//! served as soon as a snapshot names a local workload with the pod's namespace and name.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use socket2::Socket;
use zmesh_ebpf::{Capturer, PodGuard, PodSpec};

use super::metrics::PodMetrics;
use crate::podns::{Pod, PodRef};
use crate::shard::{Command, PodSockets};
use crate::sockets;

/// How long a shard may take to register or drop a pod's listeners.
const SHARD_REPLY: Duration = Duration::from_secs(5);

/// Why a pod could not be enrolled or removed; sent back in the ack.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("add without a network namespace fd")]
    NoNetns,
    #[error("pod network namespace: {0}")]
    Netns(io::Error),
    #[error("listen on {0} in the pod: {1}")]
    Listen(SocketAddr, io::Error),
    #[error("eBPF capture needs the pod's cgroup (AddWorkload.cgroup_path)")]
    NoCgroup,
    #[error("capture: {0}")]
    Capture(#[from] zmesh_ebpf::Error),
    #[error("shard {0} did not answer")]
    Shard(usize),
    #[error("unknown pod {0}")]
    Unknown(String),
}

/// An `add` from the node agent.
pub struct AddPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub cgroup: String,
    pub netns: Option<OwnedFd>,
}

struct Enrolled {
    pod: PodRef,
    /// (device, inode) of the netns: a re-add with the same netns is a no-op.
    netns_id: (u64, u64),
    capture: Option<PodGuard>,
}

/// The pods this node proxy serves, owned by the ZDS thread.
pub struct Pods {
    shards: Vec<zmesh_rt::Sender<Command>>,
    capturer: Capturer,
    metrics: Arc<PodMetrics>,
    by_uid: HashMap<String, Enrolled>,
    next_id: u64,
}

impl Pods {
    pub fn new(
        shards: Vec<zmesh_rt::Sender<Command>>,
        capturer: Capturer,
        metrics: Arc<PodMetrics>,
    ) -> Pods {
        Pods {
            shards,
            capturer,
            metrics,
            by_uid: HashMap::new(),
            next_id: 0,
        }
    }

    /// Enrolls a pod; returns once its traffic is captured and every shard serves it.
    pub fn add(&mut self, req: AddPod) -> Result<(), PodError> {
        let netns = req.netns.ok_or(PodError::NoNetns)?;
        let file = std::fs::File::from(netns);
        let meta = file.metadata().map_err(PodError::Netns)?;
        let netns_id = (meta.dev(), meta.ino());
        if let Some(e) = self.by_uid.get(&req.uid) {
            if e.netns_id == netns_id {
                return Ok(());
            }
            // The pod's sandbox was re-created: serve the new namespace.
            self.remove(&req.uid)?;
        }
        self.next_id += 1;
        let pod = Arc::new(Pod {
            id: self.next_id,
            uid: req.uid.clone(),
            name: req.name,
            namespace: req.namespace,
            netns: OwnedFd::from(file),
            ips: Default::default(),
        });
        self.metrics.pending.fetch_add(1, Relaxed);
        let result = self.enroll(&pod, &req.cgroup);
        self.metrics.pending.fetch_sub(1, Relaxed);
        let capture = result?;
        tracing::info!(pod = %pod.uid, name = %pod.name, namespace = %pod.namespace, backend = self.capturer.name(), "pod enrolled and captured");
        self.by_uid.insert(
            req.uid,
            Enrolled {
                pod,
                netns_id,
                capture: Some(capture),
            },
        );
        self.metrics.active.fetch_add(1, Relaxed);
        self.metrics.started.fetch_add(1, Relaxed);
        Ok(())
    }

    fn enroll(&self, pod: &PodRef, cgroup: &str) -> Result<PodGuard, PodError> {
        if cgroup.is_empty() && matches!(self.capturer, Capturer::Ebpf(_)) {
            return Err(PodError::NoCgroup);
        }
        let shards = self.shards.len();
        let (mut sockets, ips) = zmesh_ebpf::run_in_netns(pod.netns.as_fd(), || {
            Ok::<_, PodError>((
                open_sockets(shards)?,
                pod_addresses().map_err(PodError::Netns)?,
            ))
        })??;
        let _ = pod.ips.set(ips.clone());
        let first = sockets.first().ok_or(PodError::Shard(0))?;
        let (inbound_v4, inbound_v6) = (
            first.plaintext.first().map(|s| s.as_fd()),
            first.plaintext.get(1).map(|s| s.as_fd()),
        );
        let capture = self.capturer.capture_pod(&PodSpec {
            netns: pod.netns.as_fd(),
            cgroup: Path::new(cgroup),
            ips: &ips,
            inbound_v4,
            inbound_v6,
        })?;
        if let Err(e) = self.hand_to_shards(pod, &mut sockets) {
            // Not enrolled after all: undo capture (a pinned one would outlive the drop).
            if let Err(release) = capture.release() {
                tracing::warn!(pod = %pod.uid, error = %release, "releasing capture of a failed add");
            }
            return Err(e);
        }
        tracing::debug!(pod = %pod.uid, ?ips, shards, "pod listeners handed to the shards");
        Ok(capture)
    }

    fn hand_to_shards(&self, pod: &PodRef, sockets: &mut [PodSockets]) -> Result<(), PodError> {
        let mut replies = Vec::new();
        for (i, tx) in self.shards.iter().enumerate() {
            let (done, rx) = std::sync::mpsc::channel();
            let cmd = Command::ListenPod {
                pod: pod.clone(),
                sockets: std::mem::take(&mut sockets[i]),
                done,
            };
            tx.send(cmd).map_err(|_| PodError::Shard(i))?;
            replies.push(rx);
        }
        wait_all(replies)
    }

    /// Releases a pod: capture first (its traffic then flows directly), then its listeners.
    pub fn remove(&mut self, uid: &str) -> Result<(), PodError> {
        let Some(mut e) = self.by_uid.remove(uid) else {
            return Err(PodError::Unknown(uid.to_owned()));
        };
        let released = e.capture.take().map(PodGuard::release).transpose();
        let mut replies = Vec::new();
        for tx in &self.shards {
            let (done, rx) = std::sync::mpsc::channel();
            if tx.send(Command::UnlistenPod { id: e.pod.id, done }).is_ok() {
                replies.push(rx);
            }
        }
        let waited = wait_all(replies);
        self.metrics.active.fetch_sub(1, Relaxed);
        self.metrics.stopped.fetch_add(1, Relaxed);
        tracing::info!(pod = %uid, "pod released");
        released?;
        waited
    }

    /// Keeps only the pods in `seen` (after the agent's snapshot); returns how many left.
    pub fn retain(&mut self, seen: &HashSet<String>) -> usize {
        let gone: Vec<String> = self
            .by_uid
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in &gone {
            if let Err(e) = self.remove(uid) {
                tracing::warn!(pod = %uid, error = %e, "removing a pod missing from the snapshot");
            }
        }
        // Pods captured by an earlier run of the proxy (pinned links) that the agent did not
        // list again: gone while we were down.
        gone.len() + self.capturer.prune_pins()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }
}

fn wait_all(replies: Vec<std::sync::mpsc::Receiver<()>>) -> Result<(), PodError> {
    for (i, rx) in replies.into_iter().enumerate() {
        rx.recv_timeout(SHARD_REPLY)
            .map_err(|_| PodError::Shard(i))?;
    }
    Ok(())
}

/// Every shard's listeners; called on a thread inside the pod's netns. `plaintext` holds the
/// IPv4 listener first, then the IPv6 one when the pod has IPv6.
fn open_sockets(shards: usize) -> Result<Vec<PodSockets>, PodError> {
    let v4 = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let any4 = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let lo6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    let any6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let ipv6 = sockets::listener_with(lo6(0), true).is_ok();
    let out = zmesh_ebpf::OUTBOUND_PORT;
    let inb = zmesh_ebpf::INBOUND_PORT;
    let hbone = zmesh_ebpf::HBONE_PORT;
    let mut all = Vec::with_capacity(shards);
    for _ in 0..shards {
        let mut s = PodSockets::default();
        // One socket per family (v6-only): a dual-stack socket would show IPv4 peers and
        // local addresses as v4-mapped IPv6, which match no workload address.
        s.outbound.push(listen(v4(out), true)?);
        s.plaintext.push(listen(any4(inb), true)?);
        s.hbone.push(listen(any4(hbone), true)?);
        if ipv6 {
            s.outbound.push(listen(lo6(out), true)?);
            s.plaintext.push(listen(any6(inb), true)?);
            s.hbone.push(listen(any6(hbone), true)?);
        }
        all.push(s);
    }
    Ok(all)
}

fn listen(addr: SocketAddr, v6_only: bool) -> Result<Socket, PodError> {
    let s = sockets::listener_with(addr, v6_only).map_err(|e| PodError::Listen(addr, e))?;
    // Connections accepted here inherit the proxy's mark, like every socket of the proxy.
    let _ = s.set_mark(zmesh_ebpf::PROXY_MARK);
    Ok(s)
}

/// The pod's own addresses (not loopback, not link-local), read inside its netns: what inbound
/// capture steers to the proxy.
fn pod_addresses() -> io::Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for a in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = a.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if !ip.is_loopback() && !link_local && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}
