//! The mesh on the netns topology (`zmesh_ctl::topology`), end to end and as root: the real
//! controller, a node agent and a node proxy per node, pods created through `zmesh-cni`,
//! real curl, iperf3 and tcpdump. Root only: fails, never skips, without it.
//!
//! The tests take turns (one topology at a time: each runs five daemons on a small machine);
//! each ends by checking its topology left nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use zmesh_ctl::topology::{
    Capture, OUTSIDE_V4, OUTSIDE_V6, Options, Pod, PodSpec, Topology, namespace_yaml,
};
use zmesh_tests::topo::{
    BpfIds, Tcpdump, WEB_VIP4, WEB_VIP6, contains, curl, curl_until_ok, finish, metric, ports_of,
    wait_captured, web_service,
};

static SERIAL: Mutex<()> = Mutex::new(());

const OPENED: &str = "istio_tcp_connections_opened_total";
const MODE: &str = "istio.io/dataplane-mode";
/// Time for config (xDS) and enrollment (agent) changes to take effect.
const SETTLE: Duration = Duration::from_secs(15);

fn mesh(capture: Capture) -> Topology {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the topology tests need root (network namespaces, cgroups, eBPF): run them as root, \
         as CI does"
    );
    Topology::up(Options {
        capture,
        shards: 1,
        proxy_log: "info,access=debug".into(),
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("topology up: {e}"))
}

/// The sample app in namespace `demo` (labelled ambient): `web` on node 2 behind the
/// Service VIPs, serving HTTP on 8080, and a `client` on node 1.
struct App {
    client: Pod,
    web: Pod,
}

fn sample(t: &mut Topology) -> App {
    t.apply("ns-demo.yaml", &namespace_yaml("demo", true))
        .unwrap();
    t.apply("svc-web.yaml", &web_service("demo")).unwrap();
    let web = t
        .add_pod(
            PodSpec::new("demo", "web-2", 2)
                .label("app", "web")
                .port(8080),
        )
        .unwrap();
    serve(t, &web, "web-2");
    let client = t.add_pod(PodSpec::new("demo", "client", 1)).unwrap();
    for p in [&web, &client] {
        t.wait_known(p, SETTLE).unwrap();
    }
    let first = curl_until_ok(t, &client, &format!("http://{WEB_VIP4}/"), SETTLE);
    assert_eq!(first.status, 200, "client → web VIP: {first:?}");
    App { client, web }
}

fn serve(t: &mut Topology, pod: &Pod, name: &str) {
    let p = t
        .spawn(
            pod,
            "zmeshctl",
            &["serve-http", "--port", "8080", "--name", name],
        )
        .unwrap();
    t.keep(p);
}

#[test]
fn cross_node_vip_is_tls_only_on_the_wire_and_same_node_and_ipv6_work() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = mesh(Capture::Ebpf);
    let app = sample(&mut t);
    let seen = BpfIds::of(&t.footprint());
    assert!(!seen.links.is_empty(), "eBPF links on the pods: {seen:?}");

    // Cross-node through the VIP, with a capture on node 1's fabric link (the controller's
    // xDS traffic left out).
    let dump = Tcpdump::start(&t, 1, "tcp and not host 198.19.0.254");
    let marker = format!("zmesh-marker-{}", std::process::id());
    let mtls_before = metric(
        &t,
        2,
        OPENED,
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    let r = curl(&mut t, &app.client, &format!("http://{WEB_VIP4}/{marker}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("hello from web-2"), "{r:?}");
    // Not asserted: ztunnel keeps the client's address towards the app; zmesh-node in in-pod
    // mode connects from the server pod's own address today (a known gap).
    eprintln!("cross-node via the VIP: {}", r.body.trim());
    let (packets, raw) = dump.stop();
    assert!(
        ports_of(&packets[0]).is_some(),
        "tcpdump on node 1's eth0: {packets:?}"
    );
    for p in &packets {
        let (a, b) = ports_of(p).unwrap_or_else(|| panic!("not TCP/IP: {p}"));
        assert!(
            a == 15008 || b == 15008,
            "non-HBONE packet on the fabric: {p}"
        );
        assert!(
            p.contains(&app.client.ip4.to_string()) && p.contains(&app.web.ip4.to_string()),
            "between the pods: {p}"
        );
    }
    assert!(
        !contains(&raw, marker.as_bytes()),
        "the request crossed in plaintext"
    );
    assert!(
        !contains(&raw, b"hello from"),
        "the response crossed in plaintext"
    );
    let client_id = format!("source_principal=\"{}\"", app.client.spiffe());
    let mtls = metric(
        &t,
        2,
        OPENED,
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert!(mtls > mtls_before, "node 2 accepted the request over mTLS");
    let with_id = metric(&t, 2, OPENED, &["reporter=\"destination\"", &client_id]);
    assert!(with_id >= 1.0, "node 2 saw the client's SPIFFE identity");

    // Same node: client → a pod on node 1.
    let local = t
        .add_pod(
            PodSpec::new("demo", "local", 1)
                .label("app", "local")
                .port(8080),
        )
        .unwrap();
    serve(&mut t, &local, "local");
    // Until node 1 knows the new workload, the client's connection passes through as
    // plaintext: retry until it goes over HBONE.
    let mtls_in = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let before = metric(&t, 1, OPENED, &mtls_in);
        let r = curl(&mut t, &app.client, &format!("http://{}:8080/", local.ip4));
        assert_eq!(r.status, 200, "same node: {r:?}");
        if metric(&t, 1, OPENED, &mtls_in) > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "same-node traffic never went over HBONE"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // IPv6: the VIP and a pod address.
    let r = curl_until_ok(
        &mut t,
        &app.client,
        &format!("http://[{WEB_VIP6}]/"),
        SETTLE,
    );
    assert_eq!(r.status, 200, "IPv6 VIP: {r:?}");
    // Not asserted: the app sees the client's IPv6 address (ztunnel keeps it); zmesh-node
    // connects from the server pod's own address for IPv6 today.
    eprintln!("IPv6 via the VIP: {}", r.body.trim());
    let r = curl(
        &mut t,
        &app.client,
        &format!("http://[{}]:8080/", local.ip6),
    );
    assert_eq!(r.status, 200, "IPv6 same node: {r:?}");
    finish(t, seen);
}

#[test]
fn unlabelled_namespace_is_not_captured_and_outside_traffic_passes_through() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = mesh(Capture::Nftables);
    let app = sample(&mut t);
    t.apply("ns-plain.yaml", &namespace_yaml("plain", false))
        .unwrap();
    let pc = t.add_pod(PodSpec::new("plain", "plain-client", 1)).unwrap();
    let ps = t
        .add_pod(PodSpec::new("plain", "plain-web", 2).port(8080))
        .unwrap();
    serve(&mut t, &ps, "plain-web");
    let tables = t
        .pod_netns(&pc)
        .unwrap()
        .cmd("nft", &["list", "tables"])
        .unwrap();
    assert!(
        tables.trim().is_empty(),
        "no capture rules in an unlabelled pod: {tables}"
    );
    let total = |t: &Topology| metric(t, 1, OPENED, &[]) + metric(t, 2, OPENED, &[]);
    let before = total(&t);
    let r = curl(&mut t, &pc, &format!("http://{}:8080/", ps.ip4));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(&format!("you are {}", pc.ip4)), "{r:?}");
    assert_eq!(
        total(&t),
        before,
        "no proxy saw the unlabelled pods' connection"
    );

    // A captured pod to a host outside the mesh: the proxy passes it through unchanged
    // (plaintext, same destination port, the pod's own source address).
    let outside = t
        .spawn_outside(
            "zmeshctl",
            &["serve-http", "--port", "8080", "--name", "outside"],
            zmesh_ctl::topology::Output::Null,
        )
        .unwrap();
    let dump = Tcpdump::start(&t, 1, "tcp and host 198.19.0.253");
    let source_before = metric(&t, 1, OPENED, &["reporter=\"source\""]);
    let r = curl_until_ok(
        &mut t,
        &app.client,
        &format!("http://{OUTSIDE_V4}:8080/outside-marker"),
        SETTLE,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(&format!("you are {}", app.client.ip4)),
        "{r:?}"
    );
    let (packets, raw) = dump.stop();
    assert!(
        contains(&raw, b"outside-marker"),
        "the request crossed as it was (plaintext)"
    );
    assert!(
        packets
            .iter()
            .all(|p| ports_of(p).is_some_and(|(a, b)| a == 8080 || b == 8080)),
        "{packets:#?}"
    );
    assert!(
        metric(&t, 1, OPENED, &["reporter=\"source\""]) > source_before,
        "it went through node 1's proxy"
    );
    let r = curl(&mut t, &app.client, &format!("http://[{OUTSIDE_V6}]:8080/"));
    assert_eq!(r.status, 200, "IPv6 outside: {r:?}");
    drop(outside);
    finish(t, BpfIds::default());
}

#[test]
fn iperf3_for_ten_seconds_through_the_mesh() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = mesh(Capture::Ebpf);
    let app = sample(&mut t);
    let server = t
        .spawn_with(
            &app.web,
            "iperf3",
            &["-s", "-1", "-J", "-p", "5201"],
            zmesh_ctl::topology::Output::Piped,
        )
        .expect("iperf3 -s (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let before = metric(
        &t,
        2,
        "istio_tcp_received_bytes_total",
        &["reporter=\"destination\""],
    );
    let target = app.web.ip4.to_string();
    let client = t
        .run(
            &app.client,
            "iperf3",
            &["-c", &target, "-p", "5201", "-t", "10", "-J"],
            Duration::from_secs(40),
        )
        .unwrap();
    assert!(
        client.success,
        "iperf3 client: {}{}",
        client.stdout, client.stderr
    );
    let server = server.finish(Duration::from_secs(10)).unwrap();
    assert!(
        server.success,
        "iperf3 server: {}{}",
        server.stdout, server.stderr
    );
    let c: serde_json::Value = serde_json::from_str(&client.stdout).unwrap();
    let s: serde_json::Value = serde_json::from_str(&server.stdout).unwrap();
    let sent = c["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    let received = s["end"]["sum_received"]["bytes"].as_u64().unwrap();
    eprintln!("iperf3 through the mesh: {sent} bytes sent, {received} received");
    assert!(sent > 0);
    // iperf3 ends a timed test with a message on its control connection, and the server
    // stops reading when it arrives: bytes still in flight then (socket buffers, and here the
    // two proxies' buffers and HTTP/2 windows) are sent but never counted as received, with
    // or without a mesh. So: nothing more than sent, and no more missing than can be in
    // flight (a loss or a stall would show as far more).
    const IN_FLIGHT: u64 = 64 << 20;
    assert!(
        received <= sent && sent - received <= IN_FLIGHT,
        "iperf3: {sent} bytes sent, {received} received"
    );
    let through = metric(
        &t,
        2,
        "istio_tcp_received_bytes_total",
        &["reporter=\"destination\""],
    ) - before;
    assert!(
        through >= received as f64,
        "the bytes went through node 2's proxy ({through} < {sent})"
    );
    finish(t, BpfIds::default());
}

/// One request from the client to web's pod address; whether node 1's proxy carried it.
fn via_proxy(t: &mut Topology, app: &App, step: &str) -> bool {
    let before = metric(t, 1, OPENED, &["reporter=\"source\""]);
    let r = curl(t, &app.client, &format!("http://{}:8080/", app.web.ip4));
    assert_eq!(r.status, 200, "{step}: {r:?}");
    metric(t, 1, OPENED, &["reporter=\"source\""]) > before
}

fn release(capture: Capture) {
    let mut t = mesh(capture);
    let app = sample(&mut t);
    let mut seen = BpfIds::of(&t.footprint());
    wait_captured(&t, &app.client, capture, true);
    assert!(
        via_proxy(&mut t, &app, "captured at first"),
        "captured at first"
    );

    t.set_pod_label(&app.client, MODE, Some("none")).unwrap();
    wait_captured(&t, &app.client, capture, false);
    assert!(
        !via_proxy(&mut t, &app, "pod label none: released"),
        "pod label none: released"
    );
    t.set_pod_label(&app.client, MODE, None).unwrap();
    wait_captured(&t, &app.client, capture, true);
    // The first connection right after re-enrollment may be refused (IDENTITY_ERROR: the
    // proxy captures the pod before xDS brings its workload back; ztunnel waits for it
    // instead): retry, bounded.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let before = metric(&t, 1, OPENED, &["reporter=\"source\""]);
        let r = curl(
            &mut t,
            &app.client,
            &format!("http://{}:8080/", app.web.ip4),
        );
        if r.status == 200 && metric(&t, 1, OPENED, &["reporter=\"source\""]) > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "label removed: never captured again: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    t.apply("ns-demo.yaml", &namespace_yaml("demo", false))
        .unwrap();
    wait_captured(&t, &app.client, capture, false);
    wait_captured(&t, &app.web, capture, false);
    assert!(
        !via_proxy(&mut t, &app, "namespace label removed"),
        "namespace label removed: released"
    );
    t.apply("ns-demo.yaml", &namespace_yaml("demo", true))
        .unwrap();
    wait_captured(&t, &app.client, capture, true);
    wait_captured(&t, &app.web, capture, true);
    let r = curl_until_ok(&mut t, &app.client, &format!("http://{WEB_VIP4}/"), SETTLE);
    assert_eq!(r.status, 200, "re-enrolled: {r:?}");

    let pod_links = BpfIds::of_pod(&t, &app.client);
    assert_eq!(pod_links.links.is_empty(), capture == Capture::Nftables);
    seen.links.extend(BpfIds::of(&t.footprint()).links);
    t.delete_pod(&app.client).unwrap();
    assert!(
        pod_links
            .still_there()
            .iter()
            .all(|l| !l.starts_with("bpf link")),
        "links of the deleted pod: {:?}",
        pod_links.still_there()
    );
    finish(t, seen);
}

#[test]
fn label_removal_and_pod_deletion_release_capture_ebpf() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    release(Capture::Ebpf);
}

#[test]
fn label_removal_and_pod_deletion_release_capture_nftables() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    release(Capture::Nftables);
}

fn proxy_restart(capture: Capture) {
    let mut t = mesh(capture);
    let app = sample(&mut t);
    let seen = BpfIds::of(&t.footprint());
    let url = format!("http://{WEB_VIP4}/");
    t.stop_proxy(1, false).unwrap();
    let r = curl(&mut t, &app.client, &url);
    assert_ne!(
        r.status, 200,
        "with its proxy dead the pod fails closed: {r:?}"
    );
    t.start_proxy(1).unwrap();
    let r = curl_until_ok(&mut t, &app.client, &url, SETTLE);
    assert_eq!(r.status, 200, "client's proxy back: {r:?}");
    t.restart_proxy(2).unwrap();
    let r = curl_until_ok(&mut t, &app.client, &url, SETTLE);
    assert_eq!(r.status, 200, "server's proxy back: {r:?}");
    assert!(
        via_proxy(&mut t, &app, "still captured after the restarts"),
        "still captured after the restarts"
    );
    finish(t, seen);
}

#[test]
fn proxy_restart_pods_connect_again_ebpf() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    proxy_restart(Capture::Ebpf);
}

#[test]
fn proxy_restart_pods_connect_again_nftables() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    proxy_restart(Capture::Nftables);
}

#[test]
fn no_mesh_baseline_routes_pods_directly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topology::up(Options {
        mesh: false,
        ..Options::default()
    })
    .expect("topology");
    let server = t.add_pod(PodSpec::new("demo", "server", 2)).unwrap();
    let client = t.add_pod(PodSpec::new("demo", "client", 1)).unwrap();
    serve(&mut t, &server, "s");
    for url in [
        format!("http://{}:8080/", server.ip4),
        format!("http://[{}]:8080/", server.ip6),
    ] {
        let r = curl_until_ok(&mut t, &client, &url, Duration::from_secs(5));
        assert_eq!(r.status, 200, "{url}: {r:?}");
    }
    assert!(t.proxy_pid(1).is_none());
    finish(t, BpfIds::default());
}
