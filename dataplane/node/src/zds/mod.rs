//! The ZDS client (in-pod mode): like ztunnel, the node proxy connects to the node agent's
//! SOCK_SEQPACKET Unix socket, says hello, then answers every request with an ack:
//!
//! - `add` (the pod's netns fd rides along as SCM_RIGHTS): open the pod's listeners in its
//!   netns on every shard and attach capture, and only then ack — the agent holds the pod's
//!   start until the ack, so no app traffic escapes capture;
//! - `del`: release capture, close the listeners, drop the fds, ack;
//! - `keep` / `snapshot_sent`: after (re)connecting the agent lists its pods; once the snapshot
//!   is sent, pods it did not list are released, including pods whose capture an earlier run
//!   of the proxy left pinned (`--bpf-pin-dir`): a re-sent pod's pinned links are adopted.
//!
//! When the agent goes away the client reconnects with backoff; captured pods stay captured
//! until a new snapshot says otherwise. A bad request is answered with an error in the ack,
//! never a crash. The client runs on its own thread with blocking calls: it is idle but for
//! pod churn, and enrolling blocks on the shards and the kernel anyway.

mod metrics;
mod pods;

use std::collections::HashSet;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use zmesh_proto::prost::Message;
use zmesh_proto::zds::{
    Ack, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};

pub use metrics::{PodCollector, PodMetrics};
pub use pods::Pods;

use crate::backoff::{Backoff, jitter};
use pods::{AddPod, PodError};

/// Largest request we accept: an add is a few hundred bytes.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why a session with the agent ended.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node agent closed the connection")]
    Closed,
}

/// Starts the client thread; it runs for the life of the process.
pub fn spawn(path: PathBuf, pods: Pods) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zmesh-zds".into())
        .spawn(move || run(path, pods))
}

fn run(path: PathBuf, mut pods: Pods) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        match session(&path, &mut pods, &mut backoff) {
            Ok(()) | Err(ZdsError::Closed) => {
                tracing::info!(socket = %path.display(), "node agent disconnected; pods stay captured")
            }
            Err(e) => tracing::warn!(error = %e, "node agent unreachable"),
        }
        std::thread::sleep(backoff.next_delay(jitter()));
    }
}

/// One connection to the agent: hello, then requests until it closes.
fn session(path: &std::path::Path, pods: &mut Pods, backoff: &mut Backoff) -> Result<(), ZdsError> {
    let io = |source| ZdsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io(e.into()))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| io(e.into()))?;
    rustix::net::connect(&sock, &addr).map_err(|e| io(e.into()))?;
    let hello = ZdsHello {
        version: zmesh_proto::zds::Version::V1 as i32,
    };
    rustix::net::send(&sock, &hello.encode_to_vec(), SendFlags::NOSIGNAL)
        .map_err(|e| io(e.into()))?;
    backoff.reset();
    tracing::info!(socket = %path.display(), "connected to the node agent");
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, fds) = receive(&sock, &mut buf).map_err(io)?;
        // End of stream; a zero-length request (an empty oneof) looks the same and is taken
        // as a disconnect too.
        if len == 0 {
            return Err(ZdsError::Closed);
        }
        let result = match WorkloadRequest::decode(&buf[..len]) {
            Ok(req) => handle(req, fds, pods, &mut seen),
            Err(e) => Err(format!("bad request: {e}")),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "node agent request failed");
        }
        let ack = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: result.err().unwrap_or_default(),
            })),
        };
        rustix::net::send(&sock, &ack.encode_to_vec(), SendFlags::NOSIGNAL)
            .map_err(|e| io(e.into()))?;
    }
}

/// One datagram and the fds that came with it (closed on drop unless used).
fn receive(sock: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("request truncated"));
    }
    Ok((msg.bytes, fds))
}

/// Applies one request; `Err` is the text of the ack's `error`.
fn handle(
    req: WorkloadRequest,
    mut fds: Vec<OwnedFd>,
    pods: &mut Pods,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    use workload_request::Payload;
    let text = |e: PodError| e.to_string();
    match req.payload {
        Some(Payload::Add(add)) => {
            let info = add.workload_info.unwrap_or_default();
            seen.insert(add.uid.clone());
            tracing::debug!(pod = %add.uid, name = %info.name, namespace = %info.namespace, "add");
            let netns = (!fds.is_empty()).then(|| fds.remove(0));
            pods.add(AddPod {
                uid: add.uid,
                name: info.name,
                namespace: info.namespace,
                cgroup: add.cgroup_path,
                netns,
            })
            .map_err(text)
        }
        Some(Payload::Keep(keep)) => {
            // The agent lost the pod's netns: keep the pod if we serve it, else nothing to do.
            if !pods.contains(&keep.uid) {
                tracing::debug!(pod = %keep.uid, "keep for a pod not enrolled here");
            }
            seen.insert(keep.uid);
            Ok(())
        }
        Some(Payload::Del(del)) => {
            seen.remove(&del.uid);
            pods.remove(&del.uid).map_err(text)
        }
        Some(Payload::SnapshotSent(_)) => {
            let removed = pods.retain(seen);
            tracing::info!(pods = seen.len(), removed, "node agent snapshot received");
            Ok(())
        }
        None => Err("empty request".to_owned()),
    }
}

#[cfg(test)]
mod tests;
