//! The ZDS client against an in-test agent on a real SOCK_SEQPACKET socket (no root needed:
//! these requests never reach a pod's netns). The root-only end-to-end test with real pods is
//! `tests/zds`.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use zmesh_ebpf::Capturer;
use zmesh_ebpf::nftables::Nftables;
use zmesh_proto::prost::Message;
use zmesh_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadRequest, WorkloadResponse,
    ZdsHello, workload_request::Payload, workload_response,
};

use super::{PodMetrics, Pods};

fn agent(path: &std::path::Path) -> OwnedFd {
    let l = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&l, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&l, 1).unwrap();
    l
}

fn accept(l: &OwnedFd) -> OwnedFd {
    let c = rustix::net::accept(l).unwrap();
    let timeout = Some(Duration::from_secs(10));
    rustix::net::sockopt::set_socket_timeout(&c, rustix::net::sockopt::Timeout::Recv, timeout)
        .unwrap();
    c
}

fn recv(c: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let (n, _) = rustix::net::recv(c, &mut buf, RecvFlags::empty()).unwrap();
    buf.truncate(n);
    buf
}

/// Sends raw bytes as one request; the ack's error text.
fn ask_raw(c: &OwnedFd, bytes: &[u8]) -> String {
    rustix::net::send(c, bytes, SendFlags::NOSIGNAL).unwrap();
    match WorkloadResponse::decode(recv(c).as_slice())
        .unwrap()
        .payload
    {
        Some(workload_response::Payload::Ack(a)) => a.error,
        None => panic!("no ack"),
    }
}

fn ask(c: &OwnedFd, p: Payload) -> String {
    ask_raw(c, &WorkloadRequest { payload: Some(p) }.encode_to_vec())
}

#[test]
fn requests_are_acked_errors_included_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let l = agent(&path);
    let metrics = std::sync::Arc::new(PodMetrics::default());
    // No shards and a capture back end that is never reached: no request here enrolls a pod.
    let capturer = Capturer::Nftables(Nftables::new(Default::default(), 0x539));
    super::spawn(
        path.clone(),
        Pods::new(Vec::new(), capturer, metrics.clone()),
    )
    .unwrap();

    let c = accept(&l);
    let hello = ZdsHello::decode(recv(&c).as_slice()).unwrap();
    assert_eq!(hello.version, zmesh_proto::zds::Version::V1 as i32);
    let add = AddWorkload {
        uid: "p1".into(),
        ..Default::default()
    };
    assert!(ask(&c, Payload::Add(add)).contains("network namespace"));
    assert_eq!(
        ask(&c, Payload::Keep(KeepWorkload { uid: "p2".into() })),
        ""
    );
    assert!(ask(&c, Payload::Del(DelWorkload { uid: "p3".into() })).contains("unknown pod"));
    assert!(ask_raw(&c, &[0xff, 0xff, 0xff]).contains("bad request"));
    // Only a field this client does not know (6): a request with no payload.
    assert!(ask_raw(&c, &[0x30, 0x01]).contains("empty request"));
    // (An empty request encodes to zero bytes, which SOCK_SEQPACKET cannot tell from the
    // agent closing: the client treats it as a disconnect, as ztunnel does.)
    assert_eq!(ask(&c, Payload::SnapshotSent(SnapshotSent {})), "");
    assert_eq!(
        metrics.started.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The agent restarts: the client comes back on its own and says hello again.
    drop(c);
    let c = accept(&l);
    let hello = ZdsHello::decode(recv(&c).as_slice()).unwrap();
    assert_eq!(hello.version, zmesh_proto::zds::Version::V1 as i32);
    assert_eq!(ask(&c, Payload::SnapshotSent(SnapshotSent {})), "");
}

/// Hand-encoded requests with the field numbers of Istio's zds.proto, so a renumbering here
/// cannot go unnoticed.
#[test]
fn wire_numbers_match_istio() {
    let decode = |b: &[u8]| WorkloadRequest::decode(b).unwrap().payload;
    // del = 2 { uid = 2 }
    assert_eq!(
        decode(&[0x12, 0x03, 0x12, 0x01, b'x']),
        Some(Payload::Del(DelWorkload { uid: "x".into() }))
    );
    // keep = 5 { uid = 1 }
    assert_eq!(
        decode(&[0x2a, 0x03, 0x0a, 0x01, b'x']),
        Some(Payload::Keep(KeepWorkload { uid: "x".into() }))
    );
    // snapshot_sent = 3 {}
    assert_eq!(
        decode(&[0x1a, 0x00]),
        Some(Payload::SnapshotSent(SnapshotSent {}))
    );
    // add = 1 { uid = 1, workload_info = 2 { name = 1, namespace = 2, service_account = 3 } }
    let add = decode(&[
        0x0a, 0x0e, 0x0a, 0x01, b'u', 0x12, 0x09, 0x0a, 0x01, b'n', 0x12, 0x01, b's', 0x1a, 0x01,
        b'a',
    ]);
    let Some(Payload::Add(add)) = add else {
        panic!("not an add: {add:?}")
    };
    let info = add.workload_info.unwrap();
    assert_eq!(
        (
            add.uid.as_str(),
            info.name.as_str(),
            info.namespace.as_str()
        ),
        ("u", "n", "s")
    );
    assert_eq!(info.service_account, "a");
    // ZdsHello { version = 1 (V1) }
    assert_eq!(ZdsHello { version: 1 }.encode_to_vec(), [0x08, 0x01]);
}
