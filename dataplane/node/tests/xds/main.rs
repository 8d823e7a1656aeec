//! The node proxy against a controller: a test double serving delta ADS and the CA over
//! loopback TLS, and the real `zmesh-node` binary. Covers readiness (config and certificates
//! first), workloads arriving at run time, policy pushes closing open connections, serving on
//! while the controller is away and resyncing after, and certificate rotation under an open
//! connection.

mod server;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmesh_proto::type_url::{ADDRESS, AUTHORIZATION};
use zmesh_proto::{security as sec, workload as wl};
use zmesh_tests::{Node, echo_server, http_get, metric_sum, socks5_connect};

use server::{Controller, Pki};

const NODE: &str = "node-x";

/// One run's address range: 127.T.0.2 controller, 127.T.1.1 node, 127.T.1.x workloads.
#[derive(Clone, Copy)]
struct Net(u8);

impl Net {
    fn ip(self, b: u8) -> IpAddr {
        format!("127.{}.1.{b}", self.0).parse().expect("ip")
    }

    fn addr(self, b: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(b), port)
    }
}

fn uid(name: &str) -> String {
    format!("Kubernetes//v1/Pod/demo/{name}")
}

/// A pod of this node in namespace `demo`, with service account `sa`.
fn pod(net: Net, name: &str, sa: &str, host: u8) -> wl::Address {
    let IpAddr::V4(v4) = net.ip(host) else {
        unreachable!("v4 test addresses")
    };
    wl::Address {
        r#type: Some(wl::address::Type::Workload(wl::Workload {
            uid: uid(name),
            name: name.into(),
            namespace: "demo".into(),
            service_account: sa.into(),
            addresses: vec![v4.octets().to_vec().into()],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            node: NODE.into(),
            workload_type: wl::WorkloadType::Pod as i32,
            ..Default::default()
        })),
    }
}

fn put_pod(c: &Controller, net: Net, name: &str, sa: &str, host: u8) {
    c.put(ADDRESS, &uid(name), &pod(net, name, sa, host));
}

/// DENY from the `client` service account, for the whole namespace.
fn deny_client() -> sec::Authorization {
    use sec::string_match::MatchType;
    sec::Authorization {
        name: "deny-client".into(),
        namespace: "demo".into(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(MatchType::Exact(
                            "cluster.local/ns/demo/sa/client".into(),
                        )),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn start_node(
    net: Net,
    driver: &str,
    dir: &std::path::Path,
    root: &std::path::Path,
    token: &std::path::Path,
) -> Node {
    let node_ip = net.ip(1);
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_zmesh-node"))
        .args(["--xds-address", &format!("https://127.{}.0.2:15012", net.0)])
        .arg("--xds-root-cert")
        .arg(root)
        .arg("--token-file")
        .arg(token)
        .args(["--node-name", NODE, "--cluster-id", "test-cluster"])
        .args(["--driver", driver, "--shards", "2", "--no-pin"])
        .args(["--outbound-addr", "off"])
        .args(["--socks5-addr", &format!("{node_ip}:15080")])
        .args(["--admin-addr", &format!("{node_ip}:15000")])
        .args(["--metrics-addr", &format!("{node_ip}:15020")])
        .args(["--readiness-addr", &format!("{node_ip}:15021")])
        .args(["--log", "info,zmesh_node=debug,access=debug"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn zmesh-node");
    Node {
        name: "node-x".into(),
        ip: node_ip,
        child,
        log,
    }
}

fn readiness(node: &Node) -> (u16, String) {
    http_get(node.readiness(), "/healthz/ready").unwrap_or((0, String::new()))
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the last result.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Through the node's SOCKS5 from the `client` pod (127.T.1.10).
async fn connect_from_client(node: &Node, dst: SocketAddr) -> Option<TcpStream> {
    let IpAddr::V4(v4) = node.ip else {
        return None;
    };
    let [a, b, c, _] = v4.octets();
    let client = IpAddr::from([a, b, c, 10]);
    socks5_connect(node.socks5(), client, dst).await.ok()
}

/// Writes `n` bytes and reads them back from an echo server.
async fn roundtrip(s: &mut TcpStream, n: usize) -> bool {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    if s.write_all(&data).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; n];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == data
}

async fn echo_works(node: &Node, dst: SocketAddr) -> bool {
    match connect_from_client(node, dst).await {
        Some(mut s) => roundtrip(&mut s, 1000).await,
        None => false,
    }
}

fn accepts(a: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
}

fn config_dump(node: &Node) -> serde_json::Value {
    let (status, body) = http_get(node.admin(), "/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("config_dump json")
}

fn serial_of(dump: &serde_json::Value, sa: &str) -> Option<String> {
    dump["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["identity"].as_str().is_some_and(|i| i.ends_with(sa)))
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_follows_the_controller_epoll() {
    node_follows_the_controller(Net(90), "epoll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_follows_the_controller_io_uring() {
    node_follows_the_controller(Net(91), "io-uring").await;
}

async fn node_follows_the_controller(net: Net, driver: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl_addr: SocketAddr = format!("127.{}.0.2:15012", net.0).parse().expect("addr");
    let pki = Pki::new(ctl_addr.ip());
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &pki.root_pem).expect("root");
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").expect("token");
    let ctl = Controller::new(pki, vec!["/sa/short".into()]);
    put_pod(&ctl, net, "client", "client", 10);
    put_pod(&ctl, net, "web", "web", 11);
    let _echo_web = echo_server(net.addr(11, 8080)).await;
    let _echo_late = echo_server(net.addr(12, 8080)).await;
    let _echo_short = echo_server(net.addr(14, 8080)).await;

    // 1. No controller yet: the node runs but is not ready, and says it waits for xDS.
    let mut node = start_node(net, driver, dir.path(), &root, &token);
    assert!(
        eventually(Duration::from_secs(10), || readiness(&node).0 == 500).await,
        "readiness never answered"
    );
    let (_, body) = readiness(&node);
    assert!(
        body.contains("not ready, pending:") && body.contains("xds"),
        "{body}"
    );

    // 2. Controller up but the CA refuses: config arrives, readiness waits for certificates.
    ctl.ca_down.store(true, Ordering::SeqCst);
    let running = ctl.start(ctl_addr).await;
    let waiting_for_certs = eventually(Duration::from_secs(15), || {
        let (s, b) = readiness(&node);
        s == 500
            && !b.contains("xds")
            && b.contains("certificate spiffe://cluster.local/ns/demo/sa/web")
    })
    .await;
    assert!(waiting_for_certs, "readiness: {:?}", readiness(&node));
    assert!(
        accepts(net.addr(11, 15008)),
        "web's HBONE listener opens with its config"
    );
    ctl.ca_down.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || readiness(&node).0 == 200).await,
        "never ready: {:?}",
        readiness(&node)
    );
    {
        let s = ctl.lock();
        assert!(
            s.headers
                .iter()
                .all(|(a, c)| a == "Bearer test-token" && c == "test-cluster"),
            "{:?}",
            s.headers
        );
        assert!(
            s.csrs.iter().all(|(san, imp)| san == imp),
            "ImpersonatedIdentity = SAN: {:?}",
            s.csrs
        );
        let node_id = s
            .requests
            .iter()
            .find_map(|r| r.node.as_ref())
            .map(|n| n.id.clone());
        assert!(node_id.is_some_and(
            |id| id.starts_with("ztunnel~") && id.ends_with("~istio-system.svc.cluster.local")
        ));
        let acked = |t: &str| {
            s.requests.iter().any(|r| {
                r.type_url == t && !r.response_nonce.is_empty() && r.error_detail.is_none()
            })
        };
        assert!(acked(ADDRESS) && acked(AUTHORIZATION), "both types ACKed");
    }
    assert!(
        echo_works(&node, net.addr(11, 8080)).await,
        "client → web through HBONE"
    );

    // 3. A workload pushed at run time gets its listener and certificate.
    assert!(
        !accepts(net.addr(12, 15008)),
        "no listener before the workload exists"
    );
    put_pod(&ctl, net, "late", "late", 12);
    assert!(
        eventually(Duration::from_secs(10), || accepts(net.addr(12, 15008))).await,
        "listener for the pushed workload"
    );
    assert!(
        eventually(Duration::from_secs(10), || serial_of(
            &config_dump(&node),
            "/sa/late"
        )
        .is_some())
        .await,
        "no certificate for late"
    );
    assert!(
        echo_works(&node, net.addr(12, 8080)).await,
        "client → late once its certificate arrived"
    );
    let inbound = [
        "reporter=\"destination\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/late\"",
    ];
    assert!(
        metric_sum(
            &node.metrics(),
            "istio_tcp_connections_opened_total",
            &inbound
        ) >= 1.0,
        "through HBONE"
    );
    // And a workload that leaves loses it.
    put_pod(&ctl, net, "gone", "gone", 15);
    assert!(eventually(Duration::from_secs(10), || accepts(net.addr(15, 15008))).await);
    ctl.remove(ADDRESS, &uid("gone"));
    assert!(
        eventually(Duration::from_secs(10), || !accepts(net.addr(15, 15008))).await,
        "listener closed when the workload left"
    );

    // 4. A policy push closes an open connection it now denies, and counts it.
    let mut open = connect_from_client(&node, net.addr(11, 8080))
        .await
        .expect("open connection");
    assert!(roundtrip(&mut open, 5000).await);
    ctl.put(AUTHORIZATION, "demo/deny-client", &deny_client());
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), open.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "open connection not closed: {closed:?}"
    );
    assert!(
        metric_sum(
            &node.metrics(),
            "zmesh_rejections_total",
            &["reason=\"policy_recheck\""]
        ) >= 1.0
    );
    assert!(
        !echo_works(&node, net.addr(11, 8080)).await,
        "new connections are denied too"
    );
    ctl.remove(AUTHORIZATION, "demo/deny-client");
    let mut allowed = false;
    for _ in 0..50 {
        if echo_works(&node, net.addr(11, 8080)).await {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "allowed again once the policy is removed");

    // 5. The controller goes away: the node keeps serving; a change made meanwhile arrives
    //    after it reconnects with the versions it holds.
    let requests_before = ctl.lock().requests.len();
    ctl.stop(running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node.alive(), "node exited without its controller");
    assert!(
        echo_works(&node, net.addr(12, 8080)).await,
        "serving while the controller is away"
    );
    assert_eq!(
        readiness(&node).0,
        200,
        "stays ready on the last good config"
    );
    put_pod(&ctl, net, "after", "late", 13);
    assert!(!accepts(net.addr(13, 15008)));
    let running = ctl.start(ctl_addr).await;
    assert!(
        eventually(Duration::from_secs(30), || accepts(net.addr(13, 15008))).await,
        "change made while away not applied"
    );
    {
        let s = ctl.lock();
        let resync = s.requests[requests_before..]
            .iter()
            .find(|r| r.type_url == ADDRESS && r.response_nonce.is_empty())
            .expect("a new Address subscription");
        assert!(
            resync.initial_resource_versions.contains_key(&uid("late")),
            "{:?}",
            resync.initial_resource_versions
        );
        assert!(!resync.initial_resource_versions.contains_key(&uid("gone")));
    }
    let m = node.metrics();
    assert!(
        metric_sum(&m, "istio_xds_connection_terminations_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "istio_xds_message_total", &["istio.workload.Address"]) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "istio_xds_message_bytes_total",
            &["istio.security.Authorization"]
        ) > 0.0,
        "{m}"
    );
    let dump = config_dump(&node);
    assert_eq!(dump["xds"]["connected"], true, "{}", dump["xds"]);
    assert!(
        dump["xds"]["last_acked_nonce"][ADDRESS].is_string(),
        "{}",
        dump["xds"]
    );

    // 6. A 4-second certificate rotates while a connection stays open; new connections use
    //    the new certificate (the first one has expired by then).
    put_pod(&ctl, net, "short", "short", 14);
    assert!(
        eventually(Duration::from_secs(10), || serial_of(
            &config_dump(&node),
            "/sa/short"
        )
        .is_some())
        .await,
        "no certificate for short"
    );
    assert!(
        echo_works(&node, net.addr(14, 8080)).await,
        "client → short"
    );
    let inbound = [
        "reporter=\"destination\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/short\"",
    ];
    assert!(
        metric_sum(
            &node.metrics(),
            "istio_tcp_connections_opened_total",
            &inbound
        ) >= 1.0,
        "through HBONE"
    );
    let mut held = connect_from_client(&node, net.addr(14, 8080))
        .await
        .expect("open to short");
    assert!(roundtrip(&mut held, 1000).await);
    let first_serial =
        serial_of(&config_dump(&node), "/sa/short").expect("short's cert in config_dump");
    let issued = |c: &Controller| {
        c.lock()
            .issued
            .get("spiffe://cluster.local/ns/demo/sa/short")
            .copied()
            .unwrap_or(0)
    };
    let start = issued(&ctl);
    assert!(
        eventually(Duration::from_secs(15), || issued(&ctl) >= start + 2).await,
        "no rotation"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        serial_of(&config_dump(&node), "/sa/short").as_deref(),
        Some(first_serial.as_str())
    );
    assert!(
        roundtrip(&mut held, 1000).await,
        "open connection survives the rotation"
    );
    assert!(
        echo_works(&node, net.addr(14, 8080)).await,
        "new connection with the rotated certificate"
    );

    ctl.stop(running).await;
    drop(node);
}
