//! Helpers for the tests on the netns topology (`zmesh_ctl::topology`): the sample app's YAML,
//! curl in a pod, tcpdump on a node's fabric link, and what eBPF a topology holds.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zmesh_ctl::topology::{Capture, Footprint, Output, Pod, Proc, Topology};

/// The sample app's Service VIPs (not routed anywhere: only the mesh knows them).
pub const WEB_VIP4: &str = "198.19.1.10";
pub const WEB_VIP6: &str = "fd00:19:1::10";

/// A Service `web` (port 80 → the pods' 8080) with IPv4 and IPv6 VIPs, and ServiceAccounts.
pub fn web_service(namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {namespace}}}\nspec:\n  \
         selector: {{app: web}}\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {WEB_VIP4}\n  \
         clusterIPs: [{WEB_VIP4}, \"{WEB_VIP6}\"]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n"
    )
}

/// What one curl run gave.
#[derive(Debug)]
pub struct CurlOut {
    /// curl's exit code (0: a response; 7: refused; 28: timeout; 52/56: closed or reset).
    pub exit: i32,
    pub status: u16,
    pub body: String,
}

/// Runs the real curl in `pod` (so its connect goes through the pod's capture).
pub fn curl(t: &mut Topology, pod: &Pod, url: &str) -> CurlOut {
    let out = t
        .run(
            pod,
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                url,
            ],
            Duration::from_secs(15),
        )
        .expect("run curl in the pod (apt-get install curl)");
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    CurlOut {
        exit: out.code.unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: format!("{body}{}", out.stderr),
    }
}

/// Retries curl until it gets 200 or `limit` passes; the last result.
pub fn curl_until_ok(t: &mut Topology, pod: &Pod, url: &str, limit: Duration) -> CurlOut {
    let deadline = Instant::now() + limit;
    loop {
        let c = curl(t, pod, url);
        if c.status == 200 || Instant::now() >= deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sum of the samples of `name` whose labels contain all of `labels` on node `n`'s proxy.
pub fn metric(t: &Topology, n: usize, name: &str, labels: &[&str]) -> f64 {
    crate::metric_sum(&t.metrics(n).expect("scrape metrics"), name, labels)
}

/// tcpdump on a node's fabric link (`eth0`), writing a pcap.
pub struct Tcpdump {
    proc: Option<Proc>,
    pub pcap: PathBuf,
    pub log: PathBuf,
}

impl Tcpdump {
    /// Starts capturing on node `n`'s `eth0` with a pcap filter; returns once tcpdump listens.
    pub fn start(t: &Topology, n: usize, filter: &str) -> Tcpdump {
        let pcap = t.dir().join(format!("node{n}-{}.pcap", std::process::id()));
        let log = t.dir().join(format!("tcpdump-node{n}.log"));
        let pcap_s = pcap.display().to_string();
        // -Z root: tcpdump would otherwise drop to its own user before writing the file, which
        // cannot write into the topology's private work directory.
        let mut args = vec![
            "-i",
            "eth0",
            "-nn",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &pcap_s,
        ];
        args.extend(filter.split_whitespace());
        let proc = t
            .node_spawn(n, "tcpdump", &args, Output::Log(log.clone()))
            .expect("start tcpdump (apt-get install tcpdump)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")) {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start: {:?}",
                std::fs::read_to_string(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Tcpdump {
            proc: Some(proc),
            pcap,
            log,
        }
    }

    /// Stops the capture (SIGINT: tcpdump flushes) and returns its one-line summaries
    /// (`tcpdump -r -nn -q`) and the raw pcap bytes.
    pub fn stop(mut self) -> (Vec<String>, Vec<u8>) {
        if let Some(p) = self.proc.take() {
            std::thread::sleep(Duration::from_millis(200));
            let _ = p.signal(Signal::SIGINT);
            p.finish(Duration::from_secs(5))
                .expect("tcpdump exits on SIGINT");
        }
        let out = std::process::Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.pcap)
            .args(["-nn", "-q"])
            .output()
            .expect("tcpdump -r");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            // Say why in the failure message.
            lines.push(format!(
                "(no packets) tcpdump log: {} / -r: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        (lines, std::fs::read(&self.pcap).unwrap_or_default())
    }
}

/// `tcpdump -q` line `… IP 198.18.1.2.40000 > 198.18.2.2.15008: tcp 0` → the two ports.
pub fn ports_of(line: &str) -> Option<(u16, u16)> {
    let (_, rest) = line.split_once(" IP")?;
    let rest = rest.trim_start_matches('6').trim();
    let (a, rest) = rest.split_once(" > ")?;
    let b = rest.split(':').next()?;
    let port = |s: &str| s.rsplit('.').next()?.parse().ok();
    Some((port(a)?, port(b)?))
}

/// True when `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The eBPF objects tied to a topology: links on its namespaces or cgroups, their programs
/// and those programs' maps.
#[derive(Debug, Default, Clone)]
pub struct BpfIds {
    pub links: BTreeSet<u64>,
    pub progs: BTreeSet<u64>,
    pub maps: BTreeSet<u64>,
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .arg("-j")
        .output()
        .expect("run bpftool (apt-get install bpftool)");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Cgroup ids (inode numbers) of every directory under `root`.
fn cgroup_ids(root: &std::path::Path, out: &mut BTreeSet<u64>) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(root) {
        out.insert(m.ino());
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_ids(&e.path(), out);
        }
    }
}

impl BpfIds {
    /// What is attached now to the topology's namespaces and cgroups.
    pub fn of(fp: &Footprint) -> BpfIds {
        let mut cgroups = BTreeSet::new();
        cgroup_ids(&fp.cgroup, &mut cgroups);
        let mut ids = BpfIds::default();
        for l in bpftool(&["link", "show"]).as_array().into_iter().flatten() {
            let on_ns = l["netns_ino"]
                .as_u64()
                .is_some_and(|i| fp.netns_inodes.contains(&i));
            let on_cg = l["cgroup_id"]
                .as_u64()
                .is_some_and(|i| cgroups.contains(&i));
            if on_ns || on_cg {
                ids.links.extend(l["id"].as_u64());
                ids.progs.extend(l["prog_id"].as_u64());
            }
        }
        for p in bpftool(&["prog", "show"]).as_array().into_iter().flatten() {
            if p["id"].as_u64().is_some_and(|i| ids.progs.contains(&i)) {
                for m in p["map_ids"].as_array().into_iter().flatten() {
                    ids.maps.extend(m.as_u64());
                }
            }
        }
        ids
    }

    /// Links attached to one pod (its netns or cgroup).
    pub fn of_pod(t: &Topology, pod: &Pod) -> BpfIds {
        let fp = Footprint {
            netns_inodes: vec![t.pod_netns(pod).expect("pod netns").ino()],
            cgroup: t.pod_cgroup(pod).expect("pod cgroup"),
            bpffs: None,
            work: PathBuf::new(),
        };
        BpfIds::of(&fp)
    }

    /// Which of these still exist.
    pub fn still_there(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ids = |v: serde_json::Value| -> BTreeSet<u64> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["id"].as_u64())
                .collect()
        };
        let (links, progs, maps) = (
            ids(bpftool(&["link", "show"])),
            ids(bpftool(&["prog", "show"])),
            ids(bpftool(&["map", "show"])),
        );
        left.extend(
            self.links
                .intersection(&links)
                .map(|i| format!("bpf link {i}")),
        );
        left.extend(
            self.progs
                .intersection(&progs)
                .map(|i| format!("bpf prog {i}")),
        );
        left.extend(
            self.maps
                .intersection(&maps)
                .map(|i| format!("bpf map {i}")),
        );
        left
    }
}

/// Drops the topology and checks nothing of it is left: processes, namespaces, cgroups,
/// bpffs, and the eBPF links, programs and maps seen while it ran.
pub fn finish(t: Topology, mut seen: BpfIds) {
    let fp = t.footprint();
    let now = BpfIds::of(&fp);
    seen.links.extend(now.links);
    seen.progs.extend(now.progs);
    seen.maps.extend(now.maps);
    drop(t);
    let mut left = Vec::new();
    for _ in 0..100 {
        left = fp.leftovers();
        left.extend(seen.still_there());
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    if std::env::var_os("CI").is_some() {
        // Test binaries run one at a time in CI, and these tests one after another: no zmesh
        // program may stay loaded at all.
        let out = std::process::Command::new("bpftool")
            .args(["prog", "show"])
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(" name zm_"),
            "zmesh programs still loaded:\n{text}"
        );
    }
}

/// Whether the pod's capture is in place: its eBPF links, or the nftables table in its netns.
pub fn captured(t: &Topology, pod: &Pod, capture: Capture) -> bool {
    match capture {
        Capture::Nftables => {
            let tables = t
                .pod_netns(pod)
                .expect("pod netns")
                .cmd("nft", &["list", "tables"])
                .expect("nft list tables in the pod");
            !tables.trim().is_empty()
        }
        _ => !BpfIds::of_pod(t, pod).links.is_empty(),
    }
}

/// Waits until the pod's capture is there (`want`) or gone.
pub fn wait_captured(t: &Topology, pod: &Pod, capture: Capture, want: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while captured(t, pod, capture) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: capture present != {want}",
            pod.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
