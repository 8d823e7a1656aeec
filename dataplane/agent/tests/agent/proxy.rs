//! A node proxy test double: the ZDS client end. Connects, says hello, then receives the
//! agent's requests (with their fds) and acks them as the test says.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use zmesh_proto::zds::{
    Ack, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};

pub struct Proxy {
    sock: OwnedFd,
}

/// A request as the proxy saw it.
#[derive(Debug)]
pub enum Got {
    Add {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        cgroup: String,
        netns: Option<OwnedFd>,
    },
    Del(String),
    Snapshot,
}

impl Proxy {
    pub fn connect(path: &Path) -> Proxy {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = SocketAddrUnix::new(path).expect("address");
        rustix::net::connect(&sock, &addr).expect("connect to the agent's ZDS socket");
        let hello = ZdsHello {
            version: zmesh_proto::zds::Version::V1 as i32,
        };
        rustix::net::send(&sock, &hello.encode_to_vec(), SendFlags::NOSIGNAL).expect("hello");
        Proxy { sock }
    }

    /// The next request, or `None` when none comes within `limit`.
    pub fn try_recv(&self, limit: Duration) -> Option<Got> {
        rustix::net::sockopt::set_socket_timeout(
            &self.sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(limit),
        )
        .expect("SO_RCVTIMEO");
        let mut buf = vec![0u8; 65536];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg =
            match rustix::net::recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            {
                Ok(m) => m,
                Err(rustix::io::Errno::AGAIN) => return None,
                Err(e) => panic!("recvmsg from the agent: {e}"),
            };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        assert!(msg.bytes > 0, "the agent closed the ZDS connection");
        let req = WorkloadRequest::decode(&buf[..msg.bytes]).expect("a WorkloadRequest");
        Some(match req.payload.expect("a payload") {
            Payload::Add(a) => {
                let info = a.workload_info.unwrap_or_default();
                Got::Add {
                    uid: a.uid,
                    name: info.name,
                    namespace: info.namespace,
                    service_account: info.service_account,
                    cgroup: a.cgroup_path,
                    netns: fds.into_iter().next(),
                }
            }
            Payload::Del(d) => {
                assert!(fds.is_empty(), "del with an fd");
                Got::Del(d.uid)
            }
            Payload::SnapshotSent(_) => Got::Snapshot,
            Payload::Keep(k) => panic!("unexpected keep {}", k.uid),
        })
    }

    pub fn recv(&self) -> Got {
        self.try_recv(Duration::from_secs(10))
            .expect("the agent sent nothing within 10 s")
    }

    pub fn ack(&self, error: &str) {
        let resp = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.into(),
            })),
        };
        rustix::net::send(&self.sock, &resp.encode_to_vec(), SendFlags::NOSIGNAL).expect("ack");
    }

    /// Expects `snapshot_sent` and acks it.
    pub fn expect_snapshot(&self) {
        match self.recv() {
            Got::Snapshot => self.ack(""),
            other => panic!("expected snapshot_sent, got {other:?}"),
        }
    }

    /// Expects a `del` of `uid` and acks it.
    pub fn expect_del(&self, uid: &str) {
        match self.recv() {
            Got::Del(u) => assert_eq!(u, uid),
            other => panic!("expected del {uid}, got {other:?}"),
        }
        self.ack("");
    }

    /// Asserts the agent sends nothing for a while.
    pub fn expect_nothing(&self) {
        if let Some(got) = self.try_recv(Duration::from_millis(700)) {
            panic!("expected no request, got {got:?}");
        }
    }
}
