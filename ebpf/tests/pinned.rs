//! Pinned capture (`LoadConfig::pin_dir`) on a private bpffs (needs root; fails otherwise):
//! the pod's links outlive the `Capture` that made them, the next load of the same object
//! adopts them, and a different object (an upgrade) replaces them.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use zmesh_ctl::topology::Bpffs;
use zmesh_ebpf::{Capture, LoadConfig, PodCapture, PodSpec, Ports};

struct Pod {
    topo: Topology,
    cgroup: PodCgroup,
    proxy: Server,
}

fn load(dir: &Path, ports: Ports) -> Capture {
    Capture::load(LoadConfig {
        ports,
        proxy_cgroup: Some(proxy_cgroup().to_owned()),
        pin_dir: Some(dir.to_owned()),
    })
    .expect("load the capture programs, pinned")
}

fn capture(c: &Capture, pod: &Pod) -> PodCapture {
    let ips = [IpAddr::V4(POD_V4), IpAddr::V6(POD_V6)];
    c.capture_pod(&PodSpec {
        netns: pod.topo.pod.as_fd(),
        cgroup: &pod.cgroup.0,
        ips: &ips,
        inbound_v4: Some(pod.proxy.listener(0)),
        inbound_v6: Some(pod.proxy.listener(1)),
    })
    .expect("capture the pod")
}

/// Ids of the bpf links on the pod's cgroup and netns, sorted.
fn pod_links(pod: &Pod) -> Vec<u64> {
    let cgroup = std::fs::metadata(&pod.cgroup.0).unwrap().ino();
    let netns = std::fs::File::from(pod.topo.pod.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino();
    let links: serde_json::Value =
        serde_json::from_str(&run("bpftool", &["link", "show", "-j"])).unwrap();
    let mut ids: Vec<u64> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["cgroup_id"].as_u64() == Some(cgroup) || l["netns_ino"].as_u64() == Some(netns)
        })
        .filter_map(|l| l["id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const CAPTURED: &str = "peer=198.18.0.1:80 reply=outbound 198.18.0.1:80 sockopt";

#[test]
fn pinned_links_outlive_the_loader_are_adopted_and_replaced_on_upgrade() {
    require_root();
    let pod = Pod {
        topo: Topology::new(),
        cgroup: PodCgroup::new(),
        proxy: Server::none(),
    };
    let pod = Pod {
        proxy: start_proxy(pod.topo.pod.as_fd()),
        ..pod
    };
    let tmp = tempfile::tempdir().unwrap();
    let fs = Bpffs::mount(&tmp.path().join("bpffs")).unwrap();
    let dir = fs.path().join("node");
    let connect = || {
        probe(
            pod.topo.pod.as_fd(),
            Some(&pod.cgroup.0),
            &["connect", "198.18.0.1:80"],
        )
    };

    let c = load(&dir, Ports::default());
    let p = capture(&c, &pod);
    assert_eq!(connect(), CAPTURED);
    let links = pod_links(&pod);
    assert_eq!(links.len(), 8, "6 sock_addr + sockops + sk_lookup");
    let versions = entries(&dir);
    assert_eq!(versions.len(), 1, "one object version: {versions:?}");
    let pods = dir.join(&versions[0]).join("pods");
    assert_eq!(entries(&pods).len(), 1, "one pod pinned");
    assert_eq!(
        entries(&dir.join(&versions[0]).join("maps")),
        [
            "zm_captured",
            "zm_inbound",
            "zm_orig_dst",
            "zm_pods",
            "zm_proxy_flows",
            "zm_sk_orig"
        ]
    );

    // The loader goes away as a process exit would take it: the pod stays captured.
    drop(p);
    drop(c);
    assert_eq!(pod_links(&pod), links, "the pins keep the pod's links");
    let out = connect();
    assert!(
        out.starts_with("peer=198.18.0.1:80 reply=outbound"),
        "still redirected: {out}"
    );

    // The same object again: adopted, not attached twice; the shared maps answer again.
    let c = load(&dir, Ports::default());
    let p = capture(&c, &pod);
    assert_eq!(pod_links(&pod), links, "adopted");
    eprintln!("DEBUG {}", run("bpftool", &["prog", "show"]));
    eprintln!("DEBUG {}", run("bpftool", &["link", "show"]));
    assert_eq!(connect(), CAPTURED);
    drop(p);
    drop(c);

    // Another object (other ports here, a new build in an upgrade): replaced, old pins gone.
    let upgraded = Ports {
        hbone: 15009,
        ..Ports::default()
    };
    let c = load(&dir, upgraded);
    let p = capture(&c, &pod);
    let new = pod_links(&pod);
    assert_eq!(new.len(), 8, "exactly one set of links: {new:?}");
    assert!(new.iter().all(|l| !links.contains(l)), "old links replaced");
    let now = entries(&dir);
    assert!(
        now.len() == 1 && now != versions,
        "the old version's pins are gone: {now:?}"
    );
    assert_eq!(connect(), CAPTURED);

    p.release().unwrap();
    assert!(pod_links(&pod).is_empty(), "release detaches");
    assert!(
        entries(&dir.join(&now[0]).join("pods")).is_empty(),
        "and unpins"
    );
    drop(c);
}
