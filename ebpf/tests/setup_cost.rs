//! Benchmark, not a check: the cost of capture itself on connection setup. An app in a pod
//! connects, the proxy accepts, recovers the original destination (`SO_ORIGINAL_DST`, falling
//! back to the local address) and sends one byte; the app times connect → first byte.
//!
//! - none:     the app connects to the proxy's 127.0.0.1:15001 itself (no capture installed)
//! - ebpf:     the app connects to 198.18.0.1:80, redirected by the eBPF hooks
//! - nftables: the same, redirected by the in-pod nftables rules
//!
//! Each mode runs in its own pod; rounds are interleaved so drift hits all modes alike. Prints
//! the median and p90 per mode. Run it with
//! `cargo test -p zmesh-ebpf --test setup_cost -- --nocapture`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::os::fd::AsFd;

use common::*;
use zmesh_ebpf::nftables::Nftables;
use zmesh_ebpf::{Capture, LoadConfig, PROXY_MARK, PodSpec, Ports};

const ROUNDS: usize = 7;
const CONNECTIONS: usize = 300;

struct Pod {
    topo: Topology,
    cgroup: PodCgroup,
    proxy: Server,
}

fn pod() -> Pod {
    let topo = Topology::new();
    let proxy = start_proxy(topo.pod.as_fd());
    Pod {
        topo,
        cgroup: PodCgroup::new(),
        proxy,
    }
}

fn spec<'a>(pod: &'a Pod, ips: &'a [IpAddr]) -> PodSpec<'a> {
    PodSpec {
        netns: pod.topo.pod.as_fd(),
        cgroup: &pod.cgroup.0,
        ips,
        inbound_v4: Some(pod.proxy.listener(0)),
        inbound_v6: Some(pod.proxy.listener(1)),
    }
}

fn samples(pod: &Pod, to: &str) -> Vec<u64> {
    let n = CONNECTIONS.to_string();
    let out = probe(
        pod.topo.pod.as_fd(),
        Some(&pod.cgroup.0),
        &["bench", to, &n],
    );
    let v: Vec<u64> = out.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(v.len(), CONNECTIONS, "probe failed: {out}");
    v
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[test]
fn connection_setup_cost() {
    require_root();
    let ips = [IpAddr::V4(POD_V4), IpAddr::V6(POD_V6)];
    let plain = pod();
    let ebpf_pod = pod();
    let nft_pod = pod();
    let capture = Capture::load(LoadConfig {
        proxy_cgroup: Some(proxy_cgroup().to_owned()),
        ..LoadConfig::default()
    })
    .expect("load the capture programs");
    let _ebpf = capture.capture_pod(&spec(&ebpf_pod, &ips)).unwrap();
    let _nft = Nftables::new(Ports::default(), PROXY_MARK)
        .capture_pod(&spec(&nft_pod, &ips))
        .unwrap();

    let modes: [(&str, &Pod, &str); 3] = [
        ("none", &plain, "127.0.0.1:15001"),
        ("ebpf", &ebpf_pod, "198.18.0.1:80"),
        ("nftables", &nft_pod, "198.18.0.1:80"),
    ];
    // Warm-up: first connections pay for page faults and conntrack/map allocation.
    for (_, pod, to) in modes {
        samples(pod, to);
    }
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for (i, (_, pod, to)) in modes.iter().enumerate() {
            all[i].extend(samples(pod, to));
        }
    }
    println!(
        "connection setup (connect -> first byte from the proxy), {ROUNDS} x {CONNECTIONS} \
         connections per mode"
    );
    let mut medians = Vec::new();
    for ((name, _, _), v) in modes.iter().zip(&mut all) {
        v.sort_unstable();
        let (p50, p90) = (percentile(v, 0.5), percentile(v, 0.9));
        medians.push(p50);
        println!("  {name:<9} median {p50:7.1} us   p90 {p90:7.1} us");
    }
    println!(
        "  added by capture (median): ebpf {:+.1} us, nftables {:+.1} us",
        medians[1] - medians[0],
        medians[2] - medians[0]
    );
}
