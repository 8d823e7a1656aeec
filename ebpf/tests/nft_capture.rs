//! The nftables fallback passes the same capture checks as the eBPF back end (needs root;
//! fails otherwise). Differences by design: it captures every process in the pod's netns (not
//! only the pod's cgroup), it skips the proxy's sockets by their SO_MARK, and it has no bind
//! guard.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use common::*;
use zmesh_ebpf::nftables::{NftCapture, Nftables, TABLE};
use zmesh_ebpf::{PROXY_MARK, PodSpec, Ports};

struct Pod {
    topo: Topology,
    cgroup: PodCgroup,
    _proxy: Server,
    _app: Server,
    _node_server: Server,
}

fn setup() -> Pod {
    require_root();
    let topo = Topology::new();
    let proxy = start_proxy(topo.pod.as_fd());
    let app = start_app(topo.pod.as_fd());
    let node_server = start_node_server(topo.node.as_fd());
    Pod {
        topo,
        cgroup: PodCgroup::new(),
        _proxy: proxy,
        _app: app,
        _node_server: node_server,
    }
}

fn capture(pod: &Pod) -> NftCapture {
    let ips = [IpAddr::V4(POD_V4), IpAddr::V6(POD_V6)];
    Nftables::new(Ports::default(), PROXY_MARK)
        .capture_pod(&PodSpec {
            netns: pod.topo.pod.as_fd(),
            cgroup: &pod.cgroup.0,
            ips: &ips,
            inbound_v4: None,
            inbound_v6: None,
        })
        .expect("load the in-pod ruleset")
}

fn app_connect(pod: &Pod, to: &str) -> String {
    probe(pod.topo.pod.as_fd(), Some(&pod.cgroup.0), &["connect", to])
}

fn node_connect(pod: &Pod, to: &str) -> String {
    probe(pod.topo.node.as_fd(), Some(&pod.cgroup.0), &["connect", to])
}

#[test]
fn outbound_is_captured_with_the_original_destination() {
    let pod = setup();
    let _captured = capture(&pod);
    assert_eq!(
        app_connect(&pod, "198.18.0.1:80"),
        "peer=198.18.0.1:80 reply=outbound 198.18.0.1:80 sockopt"
    );
    assert_eq!(
        app_connect(&pod, "[fd00::1]:443"),
        "peer=[fd00::1]:443 reply=outbound [fd00::1]:443 sockopt"
    );
    assert_eq!(
        app_connect(&pod, "[::ffff:198.18.0.1]:8443"),
        "peer=[::ffff:198.18.0.1]:8443 reply=outbound 198.18.0.1:8443 sockopt"
    );
    // Loopback stays inside the pod.
    assert_eq!(
        app_connect(&pod, "127.0.0.1:8080"),
        "peer=127.0.0.1:8080 reply=app"
    );
    assert_eq!(app_connect(&pod, "[::1]:8080"), "peer=[::1]:8080 reply=app");
    // The proxy's own (marked) connections leave the pod untouched.
    let node = SocketAddr::new(IpAddr::V4(NODE_V4), NODE_SERVER_PORT);
    assert_eq!(
        connect_from(pod.topo.pod.as_fd(), node, Some(PROXY_MARK)),
        "node"
    );
}

#[test]
fn inbound_goes_to_the_inbound_listener_except_hbone_and_the_proxys_own() {
    let pod = setup();
    let _captured = capture(&pod);
    assert_eq!(
        node_connect(&pod, "198.18.0.2:8080"),
        "peer=198.18.0.2:8080 reply=inbound 198.18.0.2:8080 sockopt"
    );
    assert_eq!(
        node_connect(&pod, "[fd00::2]:8080"),
        "peer=[fd00::2]:8080 reply=inbound [fd00::2]:8080 sockopt"
    );
    assert_eq!(
        node_connect(&pod, "198.18.0.2:15008"),
        "peer=198.18.0.2:15008 reply=proxy:15008"
    );
    let v4 = SocketAddr::new(IpAddr::V4(POD_V4), APP_PORT);
    let v6 = SocketAddr::new(IpAddr::V6(POD_V6), APP_PORT);
    assert_eq!(
        connect_from(pod.topo.pod.as_fd(), v4, Some(PROXY_MARK)),
        "app"
    );
    assert_eq!(
        connect_from(pod.topo.pod.as_fd(), v6, Some(PROXY_MARK)),
        "app"
    );
}

#[test]
fn release_removes_the_ruleset() {
    let pod = setup();
    let captured = capture(&pod);
    let tables = || in_netns(pod.topo.pod.as_fd(), || run("nft", &["list", "tables"]));
    assert!(tables().contains(TABLE), "{}", tables());
    // Loading the ruleset again replaces it rather than adding a second copy.
    let rules = Nftables::new(Ports::default(), PROXY_MARK).ruleset();
    in_netns(pod.topo.pod.as_fd(), || {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    });
    let ruleset = in_netns(pod.topo.pod.as_fd(), || run("nft", &["list", "ruleset"]));
    assert_eq!(
        ruleset.matches("redirect to :15001").count(),
        1,
        "{ruleset}"
    );

    captured.release().expect("release");
    assert!(!tables().contains(TABLE), "{}", tables());
    let node = format!("{NODE_V4}:{NODE_SERVER_PORT}");
    assert_eq!(app_connect(&pod, &node), format!("peer={node} reply=node"));
    assert_eq!(
        node_connect(&pod, "198.18.0.2:8080"),
        "peer=198.18.0.2:8080 reply=app"
    );
}
