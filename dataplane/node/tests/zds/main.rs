//! In-pod mode end to end (root only; fails, never skips, when not root): a ZDS node agent
//! test double, pod and node network namespaces joined by veths, pod cgroups, the real
//! `zmesh-node` binary in the node namespace, and this test binary re-executed as the pods'
//! apps (`ZMESH_POD_APP=server|client`, started in the pod's netns and cgroup).
//!
//! `cargo test -p zmesh-node --test zds` (as root). The node's log is printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod restart;
mod topology;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use topology::{Cgroup, Pod, Proc, in_netns, netns_ino, node_netns, require_root, run};

const APP_PORT: u16 = 8080;
const NODE: &str = "node1";
const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/demo/a
  name: a
  namespace: demo
  serviceAccount: a
  workloadIps: ["198.18.1.2"]
  protocol: HBONE
  node: node1
- uid: cluster1//v1/Pod/demo/b
  name: b
  namespace: demo
  serviceAccount: b
  workloadIps: ["198.18.2.2"]
  protocol: HBONE
  node: node1
- uid: cluster1//v1/Pod/demo/c
  name: c
  namespace: demo
  serviceAccount: c
  workloadIps: ["198.18.3.2"]
  protocol: HBONE
  node: node1
"#;

fn main() {
    if let Ok(role) = std::env::var("ZMESH_POD_APP") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match role.as_str() {
            "server" => serve(&args[0]),
            "client" => client(&args[0], args[1].parse().unwrap()),
            "tally" => restart::tally(&args[0], &args[1]),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    require_root();
    for backend in ["ebpf", "nftables"] {
        in_pod_mode(backend);
        println!("test zds::in_pod_mode({backend}) ... ok");
        restart::capture_survives_restart(backend);
        println!("test zds::capture_survives_restart({backend}) ... ok");
    }
}

/// Echoes every connection until its EOF.
fn serve(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.shutdown(Shutdown::Write);
        });
    }
}

/// Sends `n` patterned bytes, reads the echo, checks it; prints the peer name.
fn client(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).expect("write");
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).expect("read the echo");
    writer.join().unwrap();
    assert!(got == data, "echo differs: {} of {n} bytes back", got.len());
    println!("ok {n}");
}

/// The node proxy process and what the test reads from it.
struct NodeProxy {
    proc: Proc,
    netns: std::os::fd::OwnedFd,
    log: PathBuf,
}

impl NodeProxy {
    fn metrics(&self) -> String {
        in_netns(self.netns.as_fd(), || {
            let mut s = TcpStream::connect("127.0.0.1:15020")?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap_or_default()
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        zmesh_tests::metric_sum(&self.metrics(), name, labels)
    }

    fn opened(&self, labels: &[&str]) -> f64 {
        self.metric("istio_tcp_connections_opened_total", labels)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .unwrap()
            .count()
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- zmesh-node log ----\n{log}");
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn app(pod: &Pod, role: &str, args: &[String]) -> Proc {
    let exe = std::env::current_exe().unwrap();
    Proc::spawn(
        pod.netns.as_fd(),
        &pod.cgroup.0,
        &exe,
        args,
        &[("ZMESH_POD_APP", role.to_owned())],
        None,
    )
}

/// Runs the client app in `pod` against `to`; panics unless the echo came back intact.
fn client_in(pod: &Pod, to: std::net::Ipv4Addr, bytes: usize) {
    let args = [format!("{to}:{APP_PORT}"), bytes.to_string()];
    let out = app(pod, "client", &args).finish(Duration::from_secs(20));
    assert_eq!(out.trim(), format!("ok {bytes}"), "client in {}", pod.name);
}

/// Programs attached to a cgroup, and sk_lookup links on a netns.
fn bpf_attached(pod: &Pod) -> (usize, usize) {
    let cg = run(
        "bpftool",
        &["cgroup", "show", &pod.cgroup.0.display().to_string(), "-j"],
    );
    let progs = if cg.trim().is_empty() {
        0
    } else {
        let v: serde_json::Value = serde_json::from_str(&cg).unwrap();
        v.as_array().map_or(0, Vec::len)
    };
    let ino = netns_ino(pod.netns.as_fd());
    let links: serde_json::Value =
        serde_json::from_str(&run("bpftool", &["link", "show", "-j"])).unwrap_or_default();
    let on_netns = links.as_array().map_or(0, |l| {
        l.iter()
            .filter(|l| l["netns_ino"].as_u64() == Some(ino))
            .count()
    });
    (progs, on_netns)
}

/// Whether the nftables fallback's table is in the pod's netns.
fn nft_table(pod: &Pod) -> bool {
    in_netns(pod.netns.as_fd(), || {
        std::process::Command::new("nft")
            .args(["list", "table", "inet", zmesh_ebpf::nftables::TABLE])
            .output()
            .expect("run nft")
            .status
            .success()
    })
}

/// Everything one run sets up. Fields drop in order: the proxy and the apps are killed
/// before their cgroups and namespaces go.
struct World {
    node: NodeProxy,
    args: Vec<String>,
    _servers: Vec<Proc>,
    agent: agent::Agent,
    a: Pod,
    b: Pod,
    c: Pod,
    d: Pod,
    node_cg: Cgroup,
    host_cg: Cgroup,
    node_ns: std::os::fd::OwnedFd,
    dir: tempfile::TempDir,
}

const MTLS_IN: [&str; 2] = [
    "reporter=\"destination\"",
    "connection_security_policy=\"mutual_tls\"",
];

fn in_pod_mode(backend: &str) {
    let (w, session) = start(backend, &[]);
    // Not enrolled yet: nothing is attached.
    assert_eq!(bpf_attached(&w.a), (0, 0));
    let fds_before = w.node.fds();
    enrol_and_tunnel(&w, &session, backend);
    plaintext_from_the_node(&w);
    enrolled_before_its_workload(&w, &session);
    never_enrolled(&w);
    let session = agent_restart(&w, session);
    release(&w, &session, fds_before);
}

fn start(backend: &str, extra: &[String]) -> (World, agent::Session) {
    let dir = tempfile::tempdir().unwrap();
    let node_ns = node_netns();
    let (a, b, c, d) = (
        Pod::new(&node_ns, "a", 1),
        Pod::new(&node_ns, "b", 2),
        Pod::new(&node_ns, "c", 3),
        Pod::new(&node_ns, "d", 4),
    );
    let servers: Vec<Proc> = [&a, &b, &c]
        .iter()
        .map(|p| app(p, "server", &[format!("0.0.0.0:{APP_PORT}")]))
        .collect();
    let node_cg = Cgroup::new("node");
    let host_cg = Cgroup::new("host");
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, MESH).unwrap();
    let zds_path = dir.path().join("zds.sock");
    let agent = agent::Agent::bind(&zds_path);
    let log = dir.path().join("node.log");
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--dev-ca",
        &dir.path().join("ca").display().to_string(),
        "--node-name",
        NODE,
        "--shards",
        "2",
        "--no-pin",
        "--outbound-addr",
        "off",
        "--socks5-addr",
        "off",
        "--admin-addr",
        "127.0.0.1:15000",
        "--metrics-addr",
        "127.0.0.1:15020",
        "--readiness-addr",
        "127.0.0.1:15021",
        "--capture",
        backend,
        "--zds-socket",
        &zds_path.display().to_string(),
        "--log",
        "info,access=debug,zmesh_node=debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().cloned())
    .collect();
    let node = spawn_node(&node_ns, &node_cg, &args, &log);
    let w = World {
        node,
        args,
        _servers: servers,
        agent,
        a,
        b,
        c,
        d,
        node_cg,
        host_cg,
        node_ns,
        dir,
    };
    let session = w.agent.accept(Duration::from_secs(30));
    wait_for("metrics", Duration::from_secs(10), || {
        w.node.metrics().contains("istio_active_proxy_count")
    });
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = format!("in-pod mode: pods enroll over ZDS backend=\"{backend}\"");
    assert!(logged.contains(&line), "capture back end logged:\n{logged}");
    let pinned = extra.iter().any(|a| a == "--bpf-pin-dir");
    assert_eq!(
        logged.contains("without --bpf-pin-dir"),
        backend == "ebpf" && !pinned,
        "warned that capture does not survive a restart only when it does not:\n{logged}"
    );
    assert!(
        !logged.contains("other processes share"),
        "the proxy has its cgroup to itself:\n{logged}"
    );
    (w, session)
}

/// Starts `zmesh-node` in the node's netns and cgroup, logging to `log`.
fn spawn_node(
    node_ns: &std::os::fd::OwnedFd,
    cg: &Cgroup,
    args: &[String],
    log: &Path,
) -> NodeProxy {
    NodeProxy {
        proc: Proc::spawn(
            node_ns.as_fd(),
            &cg.0,
            Path::new(env!("CARGO_BIN_EXE_zmesh-node")),
            args,
            &[],
            Some(log),
        ),
        netns: node_ns.try_clone().unwrap(),
        log: log.to_owned(),
    }
}

/// The ack means captured: traffic right after it goes through the proxy, a → b over HBONE.
fn enrol_and_tunnel(w: &World, session: &agent::Session, backend: &str) {
    let (a, b, node) = (&w.a, &w.b, &w.node);
    let t = Instant::now();
    assert_eq!(
        session.add("pod-a-uid", "a", a.netns.as_fd(), &a.cgroup.0),
        ""
    );
    // Measured, not asserted: what a pod's start waits for (listeners on 2 shards + capture).
    eprintln!("{backend}: add → ack in {:?}", t.elapsed());
    assert_eq!(
        session.add("pod-b-uid", "b", b.netns.as_fd(), &b.cgroup.0),
        ""
    );
    let mtls_before = node.opened(&MTLS_IN);
    client_in(a, b.ip, 256 * 1024);
    assert_eq!(
        node.opened(&MTLS_IN) - mtls_before,
        1.0,
        "a → b went over HBONE (mTLS) right after the ack"
    );
    let from_a = [
        "reporter=\"source\"",
        "source_workload=\"a\"",
        "destination_workload=\"b\"",
    ];
    assert_eq!(node.opened(&from_a), 1.0, "the outbound side knew its pod");
    // The app reached the proxy over loopback (eBPF) or kept its address (nftables): either
    // way the connection is logged as coming from the pod's address.
    let pod_src = format!("direction=\"outbound\" src.addr={}:", a.ip);
    wait_for("outbound access log", Duration::from_secs(5), || {
        std::fs::read_to_string(&node.log).is_ok_and(|l| l.contains(&pod_src))
    });
    let (progs, sk_lookup) = bpf_attached(a);
    if backend == "ebpf" {
        assert!(
            progs > 0 && sk_lookup == 1,
            "eBPF on pod a: {progs} {sk_lookup}"
        );
    } else {
        assert_eq!((progs, sk_lookup), (0, 0), "nftables: no eBPF on pod a");
        assert!(nft_table(a), "nftables rules in pod a");
    }
    assert_eq!(session.snapshot_sent(), "");
    assert_eq!(node.metric("istio_active_proxy_count", &[]), 2.0);
    assert_eq!(node.metric("istio_proxies_started_total", &[]), 2.0);
}

/// Runs the client app in the node's netns (outside every pod).
fn client_from_node(w: &World, to: SocketAddr) -> (bool, String) {
    Proc::spawn(
        w.node_ns.as_fd(),
        &w.host_cg.0,
        &std::env::current_exe().unwrap(),
        &[to.to_string(), "1000".into()],
        &[("ZMESH_POD_APP", "client".into())],
        None,
    )
    .finish_status(Duration::from_secs(20))
}

/// Plaintext from the node to b's app port is captured to 15006; to a proxy port, refused.
fn plaintext_from_the_node(w: &World) {
    let node = &w.node;
    let plain = [
        "reporter=\"destination\"",
        "connection_security_policy=\"unknown\"",
        "destination_workload=\"b\"",
    ];
    let before = node.opened(&plain);
    let (ok, out) = client_from_node(w, SocketAddr::from((w.b.ip, APP_PORT)));
    assert!(ok && out.trim() == "ok 1000", "node → b:8080: {out}");
    assert_eq!(
        node.opened(&plain),
        before + 1.0,
        "node → b:8080 went through 15006"
    );
    let illegal = || node.metric("zmesh_rejections_total", &["reason=\"illegal_port\""]);
    let illegal_before = illegal();
    let (ok, out) = client_from_node(w, SocketAddr::from((w.b.ip, 15001)));
    assert!(!ok, "node → b:15001 must be refused: {out}");
    assert_eq!(illegal(), illegal_before + 1.0, "refused as a proxy port");
}

/// d is enrolled but no workload of the mesh is d: captured, and refused (fail closed) until
/// a workload with its namespace and name arrives. A bad request gets an error ack.
fn enrolled_before_its_workload(w: &World, session: &agent::Session) {
    let (d, node) = (&w.d, &w.node);
    let identity_errors = || {
        let flag = ["response_flags=\"IDENTITY_ERROR\""];
        node.metric("istio_tcp_connections_failed_total", &flag)
    };
    let before = identity_errors();
    assert_eq!(
        session.add("pod-d-uid", "d", d.netns.as_fd(), &d.cgroup.0),
        ""
    );
    let args = [format!("{}:{APP_PORT}", w.b.ip), "1000".to_string()];
    let (ok, out) = app(d, "client", &args).finish_status(Duration::from_secs(20));
    assert!(!ok, "d's connection must not get through: {out}");
    assert_eq!(
        identity_errors(),
        before + 1.0,
        "d refused as unknown source"
    );
    assert_eq!(session.del("pod-d-uid"), "");
    let err = session.add_without_netns("pod-e-uid", "e", &d.cgroup.0);
    assert!(err.contains("network namespace"), "error ack: {err:?}");
}

/// c is in the config but never enrolled: its outbound is not captured.
fn never_enrolled(w: &World) {
    let node = &w.node;
    assert_eq!(bpf_attached(&w.c), (0, 0), "c has no capture");
    let total = node.opened(&[]);
    let mtls = node.opened(&["connection_security_policy=\"mutual_tls\""]);
    client_in(&w.c, w.a.ip, 1000);
    assert_eq!(
        node.opened(&[]),
        total + 1.0,
        "c → a: only a's inbound capture saw it"
    );
    assert_eq!(
        node.opened(&["connection_security_policy=\"mutual_tls\""]),
        mtls,
        "c's outbound was not captured into a tunnel"
    );
}

/// The agent goes away: pods stay captured while the proxy reconnects; the new snapshot lists
/// only a (re-sent with the same netns: kept as is), so b is released.
fn agent_restart(w: &World, session: agent::Session) -> agent::Session {
    let (a, b, node) = (&w.a, &w.b, &w.node);
    drop(session);
    let session = w.agent.accept(Duration::from_secs(30));
    let mtls = node.opened(&MTLS_IN);
    client_in(a, b.ip, 1000);
    assert_eq!(
        node.opened(&MTLS_IN),
        mtls + 1.0,
        "captured while the agent was away"
    );
    assert_eq!(
        session.add("pod-a-uid", "a", a.netns.as_fd(), &a.cgroup.0),
        ""
    );
    assert_eq!(session.snapshot_sent(), "");
    assert_eq!(node.metric("istio_active_proxy_count", &[]), 1.0);
    let started = node.metric("istio_proxies_started_total", &[]);
    assert_eq!(started, 3.0, "a was not re-enrolled");
    assert_eq!(
        bpf_attached(b),
        (0, 0),
        "b, missing from the snapshot, was released"
    );
    session
}

/// del releases capture and the listeners: traffic flows directly, nothing leaks.
fn release(w: &World, session: &agent::Session, fds_before: usize) {
    let (a, b, node) = (&w.a, &w.b, &w.node);
    assert_eq!(session.del("pod-a-uid"), "");
    assert_eq!(bpf_attached(a), (0, 0), "no programs or links left for a");
    assert_eq!(bpf_attached(b), (0, 0), "no programs or links left for b");
    assert!(!nft_table(a) && !nft_table(b), "no nftables rules left");
    let total = node.opened(&[]);
    client_in(a, b.ip, 64 * 1024);
    assert_eq!(node.opened(&[]), total, "a → b after del: not proxied");
    assert_eq!(node.metric("istio_active_proxy_count", &[]), 0.0);
    assert_eq!(node.metric("istio_proxies_stopped_total", &[]), 3.0);
    wait_for(
        "the node's fds back to their count",
        Duration::from_secs(15),
        || node.fds() <= fds_before,
    );
    let err = session.del("pod-a-uid");
    assert!(!err.is_empty(), "del of an unknown pod is an error ack");
}
