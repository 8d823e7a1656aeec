//! A node agent test double: the ZDS server end of a SOCK_SEQPACKET Unix socket.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use zmesh_proto::zds::{
    AddWorkload, DelWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest, WorkloadResponse,
    ZdsHello, workload_request::Payload, workload_response,
};

pub struct Agent {
    listener: OwnedFd,
}

pub struct Session {
    conn: OwnedFd,
}

impl Agent {
    pub fn bind(path: &Path) -> Agent {
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socket");
        let addr = SocketAddrUnix::new(path).expect("unix address");
        rustix::net::bind(&listener, &addr).expect("bind the ZDS socket");
        rustix::net::listen(&listener, 4).expect("listen");
        Agent { listener }
    }

    /// Waits (bounded) for the node proxy to connect and say hello.
    pub fn accept(&self, limit: Duration) -> Session {
        let deadline = Instant::now() + limit;
        let conn = loop {
            match rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC) {
                Ok(c) => break c,
                Err(rustix::io::Errno::AGAIN) => {
                    assert!(Instant::now() < deadline, "the node proxy never connected");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let tv = rustix::net::sockopt::set_socket_timeout;
        tv(
            &conn,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(20)),
        )
        .expect("SO_RCVTIMEO");
        let s = Session { conn };
        let hello = ZdsHello::decode(s.recv().as_slice()).expect("hello");
        assert_eq!(
            hello.version,
            zmesh_proto::zds::Version::V1 as i32,
            "hello version"
        );
        s
    }
}

impl Session {
    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = rustix::net::recv(&self.conn, &mut buf, rustix::net::RecvFlags::empty())
            .expect("recv from the node proxy (timed out?)")
            .0;
        buf.truncate(n);
        buf
    }

    /// Sends a request (with an fd as SCM_RIGHTS) and returns the ack's error text.
    fn request(&self, payload: Payload, fd: Option<BorrowedFd<'_>>) -> String {
        let bytes = WorkloadRequest {
            payload: Some(payload),
        }
        .encode_to_vec();
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        rustix::net::sendmsg(
            &self.conn,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg");
        let resp = WorkloadResponse::decode(self.recv().as_slice()).expect("response");
        match resp.payload {
            Some(workload_response::Payload::Ack(a)) => a.error,
            None => panic!("response without an ack"),
        }
    }

    pub fn add(&self, uid: &str, name: &str, netns: BorrowedFd<'_>, cgroup: &Path) -> String {
        self.request(Payload::Add(add_request(uid, name, cgroup)), Some(netns))
    }

    /// An `add` that forgets the netns fd.
    pub fn add_without_netns(&self, uid: &str, name: &str, cgroup: &Path) -> String {
        self.request(Payload::Add(add_request(uid, name, cgroup)), None)
    }

    pub fn del(&self, uid: &str) -> String {
        self.request(Payload::Del(DelWorkload { uid: uid.into() }), None)
    }

    pub fn snapshot_sent(&self) -> String {
        self.request(Payload::SnapshotSent(SnapshotSent {}), None)
    }
}

fn add_request(uid: &str, name: &str, cgroup: &Path) -> AddWorkload {
    AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
        }),
        cgroup_path: cgroup.display().to_string(),
    }
}
