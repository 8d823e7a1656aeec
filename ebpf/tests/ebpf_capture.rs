//! The eBPF back end on a real pod/node namespace pair (needs root; fails otherwise).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use common::*;
use zmesh_ebpf::{Capture, Capturer, LoadConfig, PodCapture, PodSpec};

struct Pod {
    topo: Topology,
    cgroup: PodCgroup,
    /// Neither the pod's nor the proxy's: for clients on the node and processes outside the
    /// pod (threads of the test run in the proxy's cgroup).
    other: PodCgroup,
    proxy: Server,
    _app: Server,
    _node_server: Server,
}

fn setup() -> Pod {
    require_root();
    let topo = Topology::new();
    let cgroup = PodCgroup::new();
    let proxy = start_proxy(topo.pod.as_fd());
    let app = start_app(topo.pod.as_fd());
    let node_server = start_node_server(topo.node.as_fd());
    Pod {
        topo,
        cgroup,
        other: PodCgroup::new(),
        proxy,
        _app: app,
        _node_server: node_server,
    }
}

fn load() -> Capture {
    Capture::load(LoadConfig {
        proxy_cgroup: Some(proxy_cgroup().to_owned()),
        ..LoadConfig::default()
    })
    .expect("load the capture programs")
}

fn capture(capture: &Capture, pod: &Pod) -> PodCapture {
    let ips = [IpAddr::V4(POD_V4), IpAddr::V6(POD_V6)];
    capture
        .capture_pod(&PodSpec {
            netns: pod.topo.pod.as_fd(),
            cgroup: &pod.cgroup.0,
            ips: &ips,
            inbound_v4: Some(pod.proxy.listener(0)),
            inbound_v6: Some(pod.proxy.listener(1)),
        })
        .expect("capture the pod")
}

fn app_connect(pod: &Pod, to: &str) -> String {
    probe(pod.topo.pod.as_fd(), Some(&pod.cgroup.0), &["connect", to])
}

#[test]
fn outbound_is_captured_with_the_original_destination() {
    let pod = setup();
    let c = load();
    let _captured = capture(&c, &pod);
    assert_eq!(
        app_connect(&pod, "198.18.0.1:80"),
        "peer=198.18.0.1:80 reply=outbound 198.18.0.1:80 sockopt"
    );
    assert_eq!(
        app_connect(&pod, "[fd00::1]:443"),
        "peer=[fd00::1]:443 reply=outbound [fd00::1]:443 sockopt"
    );
    // A dual-stack socket connecting to an IPv4 address stays IPv4 end to end.
    assert_eq!(
        app_connect(&pod, "[::ffff:198.18.0.1]:8443"),
        "peer=[::ffff:198.18.0.1]:8443 reply=outbound 198.18.0.1:8443 sockopt"
    );
}

#[test]
fn only_the_pods_cgroup_and_only_remote_destinations_are_captured() {
    let pod = setup();
    let c = load();
    let _captured = capture(&c, &pod);
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    // Outside the pod's cgroup (same netns): straight to the node's server.
    assert_eq!(
        probe(
            pod.topo.pod.as_fd(),
            Some(&pod.other.0),
            &["connect", &node]
        ),
        format!("peer={node} reply=node")
    );
    // Inside the cgroup, loopback stays inside the pod.
    assert_eq!(
        app_connect(&pod, "127.0.0.1:8080"),
        "peer=127.0.0.1:8080 reply=app"
    );
    assert_eq!(app_connect(&pod, "[::1]:8080"), "peer=[::1]:8080 reply=app");
    // A connection that was not redirected gets no original destination from the hook, even
    // on the proxy's own port: the proxy falls back to the local address.
    assert_eq!(
        app_connect(&pod, "127.0.0.1:15001"),
        "peer=127.0.0.1:15001 reply=outbound 127.0.0.1:15001 local"
    );
}

fn node_connect(pod: &Pod, to: &str) -> String {
    probe(pod.topo.node.as_fd(), Some(&pod.other.0), &["connect", to])
}

#[test]
fn inbound_goes_to_the_inbound_listener_except_hbone_and_the_proxys_own() {
    let pod = setup();
    let c = load();
    let _captured = capture(&c, &pod);
    // sk_lookup does not rewrite: the local address is the original destination.
    assert_eq!(
        node_connect(&pod, "198.18.0.2:8080"),
        "peer=198.18.0.2:8080 reply=inbound 198.18.0.2:8080 local"
    );
    assert_eq!(
        node_connect(&pod, "[fd00::2]:8080"),
        "peer=[fd00::2]:8080 reply=inbound [fd00::2]:8080 local"
    );
    // A port nobody listens on is captured too: the proxy decides.
    assert_eq!(
        node_connect(&pod, "198.18.0.2:7777"),
        "peer=198.18.0.2:7777 reply=inbound 198.18.0.2:7777 local"
    );
    assert_eq!(
        node_connect(&pod, "198.18.0.2:15008"),
        "peer=198.18.0.2:15008 reply=proxy:15008"
    );
    // The proxy's own connections to the app (from the proxy's cgroup, inside the pod's
    // netns): not captured, so no loop.
    let v4 = SocketAddr::new(IpAddr::V4(POD_V4), APP_PORT);
    let v6 = SocketAddr::new(IpAddr::V6(POD_V6), APP_PORT);
    assert_eq!(connect_from(pod.topo.pod.as_fd(), v4, None), "app");
    assert_eq!(connect_from(pod.topo.pod.as_fd(), v6, None), "app");
    // ... while the same connection from another process in the pod's netns is captured.
    assert_eq!(
        probe(
            pod.topo.pod.as_fd(),
            Some(&pod.other.0),
            &["connect", "198.18.0.2:8080"]
        ),
        "peer=198.18.0.2:8080 reply=inbound 198.18.0.2:8080 local"
    );
}

#[test]
fn inbound_fails_closed_while_the_proxy_listener_is_gone() {
    let mut pod = setup();
    let c = load();
    let _captured = capture(&c, &pod);
    // The proxy stops (or restarts): its listeners close and the kernel drops them from the
    // map. Traffic for the pod must not reach the app around the proxy.
    let proxy = std::mem::replace(&mut pod.proxy, Server::none());
    drop(proxy);
    let out = node_connect(&pod, "198.18.0.2:8080");
    assert_eq!(out, "error: connect: Connection refused (os error 111)");
}

#[test]
fn apps_cannot_bind_the_proxy_ports() {
    let pod = setup();
    let c = load();
    let _captured = capture(&c, &pod);
    let netns = pod.topo.pod.as_fd();
    for port in ["15001", "15006", "15008"] {
        let out = probe(netns, Some(&pod.cgroup.0), &["bind", port]);
        assert!(
            out.contains("Operation not permitted"),
            "bind {port}: {out}"
        );
    }
    assert_eq!(probe(netns, Some(&pod.cgroup.0), &["bind", "8081"]), "ok");
}

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = run("bpftool", args);
    if out.trim().is_empty() {
        // `bpftool cgroup show -j` prints nothing at all for a cgroup without programs.
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&out).expect("bpftool output is JSON")
}

#[test]
fn release_leaves_no_links_programs_or_pinned_maps() {
    let pod = setup();
    let c = load();
    let ids = c.program_ids();
    assert_eq!(ids.len(), 10, "all programs loaded");
    let captured = capture(&c, &pod);
    let cgroup = pod.cgroup.0.display().to_string();
    let attached = bpftool_json(&["cgroup", "show", &cgroup, "-j"]);
    assert_eq!(
        attached.as_array().map(Vec::len),
        Some(7),
        "6 sock_addr hooks + sockops on the pod cgroup: {attached}"
    );
    let links_of = |ids: &[u32]| -> usize {
        bpftool_json(&["link", "show", "-j"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                l["prog_id"]
                    .as_u64()
                    .is_some_and(|p| ids.contains(&(p as u32)))
            })
            .count()
    };
    assert_eq!(
        links_of(&ids),
        10,
        "7 pod cgroup links + sk_lookup + the proxy's getsockopt and sockops"
    );

    captured.release().expect("release");
    let attached = bpftool_json(&["cgroup", "show", &cgroup, "-j"]);
    assert!(
        attached.as_array().is_none_or(Vec::is_empty),
        "cgroup still has programs: {attached}"
    );
    assert_eq!(links_of(&ids), 2, "only the proxy-side links are left");
    // Released: the app's connects go where it asked.
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    assert_eq!(app_connect(&pod, &node), format!("peer={node} reply=node"));

    drop(c);
    assert_eq!(links_of(&ids), 0);
    let still_loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(still_loaded.is_empty(), "programs left: {still_loaded:?}");
    let pinned = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("zm"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(pinned, 0, "nothing pinned under /sys/fs/bpf");
}

#[test]
fn dropping_the_pod_capture_also_releases() {
    let pod = setup();
    let c = load();
    drop(capture(&c, &pod));
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    assert_eq!(app_connect(&pod, &node), format!("peer={node} reply=node"));
    assert_eq!(
        node_connect(&pod, "198.18.0.2:8080"),
        "peer=198.18.0.2:8080 reply=app"
    );
}

#[test]
fn a_listener_outside_the_pod_is_refused() {
    let pod = setup();
    let c = load();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ips = [IpAddr::V4(POD_V4)];
    let err = c
        .capture_pod(&PodSpec {
            netns: pod.topo.pod.as_fd(),
            cgroup: &pod.cgroup.0,
            ips: &ips,
            inbound_v4: Some(elsewhere.as_fd()),
            inbound_v6: None,
        })
        .unwrap_err();
    assert!(matches!(err, zmesh_ebpf::Error::ListenerNotInPod), "{err}");
    // Nothing was left attached by the failed attempt.
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    assert_eq!(app_connect(&pod, &node), format!("peer={node} reply=node"));
}

#[test]
fn a_pod_cgroup_inside_the_proxys_is_refused() {
    let pod = setup();
    let c = load();
    let inner = proxy_cgroup().join(format!("pod-inside-{}", std::process::id()));
    std::fs::create_dir(&inner).unwrap();
    let ips = [IpAddr::V4(POD_V4)];
    let result = c.capture_pod(&PodSpec {
        netns: pod.topo.pod.as_fd(),
        cgroup: &inner,
        ips: &ips,
        inbound_v4: Some(pod.proxy.listener(0)),
        inbound_v6: None,
    });
    std::fs::remove_dir(&inner).unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(err, zmesh_ebpf::Error::PodCgroupInsideProxy(_)),
        "{err}"
    );
}

#[test]
fn detect_reports_the_hooks_usable_here() {
    require_root();
    zmesh_ebpf::Capture::detect().expect("eBPF capture is usable on this machine");
}

#[test]
fn start_up_chooses_ebpf_here_and_captures_through_it() {
    let pod = setup();
    let capturer = Capturer::choose(LoadConfig {
        proxy_cgroup: Some(proxy_cgroup().to_owned()),
        ..LoadConfig::default()
    })
    .expect("a capture back end");
    assert_eq!(capturer.name(), "ebpf");
    let ips = [IpAddr::V4(POD_V4)];
    let guard = capturer
        .capture_pod(&PodSpec {
            netns: pod.topo.pod.as_fd(),
            cgroup: &pod.cgroup.0,
            ips: &ips,
            inbound_v4: Some(pod.proxy.listener(0)),
            inbound_v6: None,
        })
        .expect("capture the pod");
    assert_eq!(
        app_connect(&pod, "198.18.0.1:80"),
        "peer=198.18.0.1:80 reply=outbound 198.18.0.1:80 sockopt"
    );
    guard.release().expect("release");
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    assert_eq!(app_connect(&pod, &node), format!("peer={node} reply=node"));
}
