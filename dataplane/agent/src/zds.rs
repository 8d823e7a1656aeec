//! The ZDS server end, as Istio's node agent serves it to ztunnel: a SOCK_SEQPACKET Unix
//! socket, one protobuf message per datagram. The node proxy connects and sends `ZdsHello`;
//! the agent then sends `WorkloadRequest`s (an `add` carries the pod's netns fd as
//! SCM_RIGHTS) and the proxy answers each with a `WorkloadResponse` ack.
//! Blocking calls: the agent serves one proxy, and requests are rare.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use zmesh_proto::zds::{
    AddWorkload, DelWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest, WorkloadResponse,
    ZdsHello, workload_request::Payload, workload_response,
};

use crate::core::Request;

/// Largest message we read: an ack is a few bytes plus an error text.
const MAX_MESSAGE: usize = 64 * 1024;
/// A connecting proxy says hello at once; one that does not is not a node proxy.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A send only blocks when the proxy stopped reading: treat that as a dead proxy.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A ZDS protocol or socket failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    #[error("ZDS socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ZDS connection: {0}")]
    Io(#[from] io::Error),
    #[error("the node proxy closed the connection")]
    Closed,
    #[error("bad message from the node proxy: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the node proxy speaks ZDS version {0}, not V1")]
    Version(i32),
    #[error("the node proxy sent a response without an ack")]
    NoAck,
}

/// A bound ZDS socket.
pub struct ZdsListener {
    fd: OwnedFd,
}

impl ZdsListener {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> Result<ZdsListener, ZdsError> {
        let err = |source: io::Error| ZdsError::Socket {
            path: path.to_owned(),
            source,
        };
        remove_stale_socket(path).map_err(err)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| err(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| err(e.into()))?;
        rustix::net::listen(&fd, 8).map_err(|e| err(e.into()))?;
        Ok(ZdsListener { fd })
    }

    /// Waits for a node proxy and reads its hello.
    pub fn accept(&self) -> Result<OwnedFd, ZdsError> {
        let conn =
            rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC).map_err(io::Error::from)?;
        set_timeout(
            &conn,
            rustix::net::sockopt::Timeout::Recv,
            Some(HELLO_TIMEOUT),
        )?;
        set_timeout(
            &conn,
            rustix::net::sockopt::Timeout::Send,
            Some(SEND_TIMEOUT),
        )?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = recv(&conn, &mut buf)?;
        let hello = ZdsHello::decode(&buf[..n])?;
        if hello.version != zmesh_proto::zds::Version::V1 as i32 {
            return Err(ZdsError::Version(hello.version));
        }
        // From now on the proxy answers only what we ask; the reader waits as long as it must.
        set_timeout(&conn, rustix::net::sockopt::Timeout::Recv, None)?;
        Ok(conn)
    }
}

/// Removes `path` if it is a socket (an earlier agent's); anything else is left alone and
/// makes `bind` fail with a clear error.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

fn set_timeout(
    fd: &OwnedFd,
    which: rustix::net::sockopt::Timeout,
    d: Option<Duration>,
) -> Result<(), ZdsError> {
    rustix::net::sockopt::set_socket_timeout(fd, which, d).map_err(|e| ZdsError::Io(e.into()))
}

fn recv(conn: &OwnedFd, buf: &mut [u8]) -> Result<usize, ZdsError> {
    let (n, _) = rustix::net::recv(conn, buf, RecvFlags::empty()).map_err(io::Error::from)?;
    if n == 0 {
        return Err(ZdsError::Closed);
    }
    Ok(n)
}

/// Reads the proxy's next ack: its error text (empty on success).
pub fn recv_ack(conn: &OwnedFd) -> Result<String, ZdsError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = recv(conn, &mut buf)?;
    match WorkloadResponse::decode(&buf[..n])?.payload {
        Some(workload_response::Payload::Ack(ack)) => Ok(ack.error),
        None => Err(ZdsError::NoAck),
    }
}

/// Sends one request; an `add` carries its netns fd.
pub fn send<F: AsFd>(conn: &OwnedFd, request: &Request<F>) -> Result<(), ZdsError> {
    let (payload, netns): (Payload, Option<BorrowedFd<'_>>) = match request {
        Request::Add {
            uid,
            name,
            namespace,
            service_account,
            cgroup,
            netns,
        } => (
            Payload::Add(AddWorkload {
                uid: uid.clone(),
                workload_info: Some(WorkloadInfo {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    service_account: service_account.clone(),
                }),
                cgroup_path: cgroup.clone(),
            }),
            Some(netns.as_fd()),
        ),
        Request::Del { uid } => (Payload::Del(DelWorkload { uid: uid.clone() }), None),
        Request::SnapshotSent => (Payload::SnapshotSent(SnapshotSent {}), None),
    };
    let bytes = WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    let fds: Vec<BorrowedFd<'_>> = netns.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    // One fd always fits the buffer sized for one.
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(ZdsError::Io(io::Error::other(
            "SCM_RIGHTS buffer too small",
        )));
    }
    rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Ends a connection: the reader thread sees end of stream.
pub fn shutdown(conn: &OwnedFd) {
    let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Both);
}
