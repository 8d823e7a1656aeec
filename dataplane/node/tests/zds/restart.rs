//! Capture across a node proxy restart (`--bpf-pin-dir` on a private bpffs for eBPF; the
//! in-pod rules for nftables): while the proxy is down a captured pod fails closed (no
//! bypass), a restarted proxy adopts the pods the agent re-sends, `del` and a pod missing from
//! the snapshot release everything, and nothing of ours is left at the end.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::topology::{Proc, netns_ino, run};
use crate::{
    MTLS_IN, World, agent, app, bpf_attached, client_from_node, client_in, nft_table, spawn_node,
    start, wait_for,
};
use zmesh_ctl::topology::Bpffs;

const TALLY_PORT: u16 = 8081;

/// Echo server that also appends one line per accepted connection to `file`: what the
/// destination app really saw.
pub fn tally(addr: &str, file: &str) {
    let l = TcpListener::bind(addr).expect("bind");
    std::fs::write(file, "").expect("tally file");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        writeln!(f, "{:?}", s.peer_addr()).unwrap();
        std::thread::spawn(move || {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// A private bpffs mounted on a temporary directory, unmounted on drop (which frees every pin
/// The pods' pin directories: `<root>/obj-*/pods/<cookie>`, with how many pins each holds.
fn pinned_pods(root: &Path) -> Vec<usize> {
    let mut pods = Vec::new();
    for v in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for p in std::fs::read_dir(v.path().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            pods.push(std::fs::read_dir(p.path()).map_or(0, |d| d.count()));
        }
    }
    pods
}

/// (link id, program id) of every bpf link on the pods' cgroups and netns.
fn pod_links(w: &World) -> Vec<(u64, u64)> {
    let cgroups: Vec<u64> = [&w.a, &w.b]
        .iter()
        .map(|p| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p.cgroup.0).unwrap()))
        .collect();
    let netns: Vec<u64> = [&w.a, &w.b]
        .iter()
        .map(|p| netns_ino(p.netns.as_fd()))
        .collect();
    let links: serde_json::Value =
        serde_json::from_str(&run("bpftool", &["link", "show", "-j"])).unwrap_or_default();
    let mut ours: Vec<(u64, u64)> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["cgroup_id"]
                .as_u64()
                .is_some_and(|c| cgroups.contains(&c))
                || l["netns_ino"].as_u64().is_some_and(|n| netns.contains(&n))
        })
        .map(|l| (l["id"].as_u64().unwrap(), l["prog_id"].as_u64().unwrap()))
        .collect();
    ours.sort_unstable();
    ours
}

fn ids(kind: &str) -> Vec<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&run("bpftool", &[kind, "show", "-j"])).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

fn tallied(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |s| s.lines().count())
}

/// Kills the node proxy with SIGKILL: no clean-up code runs.
fn kill_9(w: &mut World) {
    w.node.proc.child.kill().unwrap();
    w.node.proc.child.wait().unwrap();
}

fn restart_node(w: &mut World, log: &str) -> agent::Session {
    let log = w.dir.path().join(log);
    w.node = spawn_node(&w.node_ns, &w.node_cg, &w.args, &log);
    w.agent.accept(Duration::from_secs(30))
}

pub fn capture_survives_restart(backend: &str) {
    let ebpf = backend == "ebpf";
    let tmp = tempfile::tempdir().unwrap();
    let fs = Bpffs::mount(&tmp.path().join("bpffs")).unwrap();
    let pin_dir = fs.path().join("node1");
    if ebpf {
        not_bpffs_is_an_error();
    }
    let extra = ["--bpf-pin-dir".to_owned(), pin_dir.display().to_string()];
    let (mut w, session) = start(backend, &extra);
    let (a, b) = (&w.a, &w.b);
    assert_eq!(
        session.add("pod-a-uid", "a", a.netns.as_fd(), &a.cgroup.0),
        ""
    );
    assert_eq!(
        session.add("pod-b-uid", "b", b.netns.as_fd(), &b.cgroup.0),
        ""
    );
    assert_eq!(session.snapshot_sent(), "");
    let tally_file = w.dir.path().join("tally-b");
    let tally_server = app(
        b,
        "tally",
        &[
            format!("0.0.0.0:{TALLY_PORT}"),
            tally_file.display().to_string(),
        ],
    );
    wait_for("the tally server", Duration::from_secs(10), || {
        tally_file.exists()
    });
    let mtls = w.node.opened(&MTLS_IN);
    client_in(a, b.ip, 1000);
    assert_eq!(
        w.node.opened(&MTLS_IN),
        mtls + 1.0,
        "a → b through the proxy"
    );
    let attached = (bpf_attached(a), bpf_attached(b));
    let links = pod_links(&w);
    if ebpf {
        assert_eq!(pinned_pods(&pin_dir), [8, 8], "a's and b's links pinned");
        assert_eq!(links.len(), 16, "8 links per pod: {links:?}");
    }

    // The proxy dies: a and b stay captured and fail closed.
    kill_9(&mut w);
    let (a, b) = (&w.a, &w.b);
    let to_b = [format!("{}:{TALLY_PORT}", b.ip), "100".to_owned()];
    let (ok, out) = app(a, "client", &to_b).finish_status(Duration::from_secs(20));
    assert!(!ok, "a → b with the proxy down must be refused: {out}");
    let (ok, out) = client_from_node(&w, SocketAddr::from((b.ip, TALLY_PORT)));
    assert!(!ok, "node → b with the proxy down must be refused: {out}");
    assert_eq!(
        tallied(&tally_file),
        0,
        "b's app saw no connection: no bypass"
    );
    if ebpf {
        assert_eq!((bpf_attached(a), bpf_attached(b)), attached, "hooks stay");
        assert_eq!(pod_links(&w), links, "the same links stay");
        assert_eq!(pinned_pods(&pin_dir), [8, 8], "pins stay");
    } else {
        assert!(nft_table(a) && nft_table(b), "the in-pod rules stay");
    }

    // Back: the agent re-sends the pods, the proxy adopts them.
    let t = Instant::now();
    let session = restart_node(&mut w, "node-2.log");
    let (a, b) = (&w.a, &w.b);
    let t_add = Instant::now();
    assert_eq!(
        session.add("pod-a-uid", "a", a.netns.as_fd(), &a.cgroup.0),
        ""
    );
    eprintln!(
        "{backend}: restart → a re-captured in {:?} (add → ack {:?})",
        t.elapsed(),
        t_add.elapsed()
    );
    assert_eq!(
        session.add("pod-b-uid", "b", b.netns.as_fd(), &b.cgroup.0),
        ""
    );
    assert_eq!(session.snapshot_sent(), "");
    if ebpf {
        assert_eq!(
            pod_links(&w),
            links,
            "adopted: no new or duplicate attachment"
        );
        assert_eq!((bpf_attached(a), bpf_attached(b)), attached);
        let log = std::fs::read_to_string(&w.node.log).unwrap();
        assert!(log.contains("adopted_links=8"), "adoption logged:\n{log}");
    } else {
        let rules = crate::topology::in_netns(a.netns.as_fd(), || {
            run(
                "nft",
                &["list", "table", "inet", zmesh_ebpf::nftables::TABLE],
            )
        });
        assert_eq!(
            rules.matches("redirect").count(),
            2,
            "rules replaced, not added twice:\n{rules}"
        );
    }
    wait_for("metrics", Duration::from_secs(10), || {
        w.node.metrics().contains("istio_active_proxy_count")
    });
    let mtls = w.node.opened(&MTLS_IN);
    let args = [format!("{}:{TALLY_PORT}", b.ip), "1000".to_owned()];
    let out = app(a, "client", &args).finish(Duration::from_secs(20));
    assert_eq!(out.trim(), "ok 1000");
    assert_eq!(
        w.node.opened(&MTLS_IN),
        mtls + 1.0,
        "a → b through the new proxy"
    );
    assert_eq!(
        tallied(&tally_file),
        1,
        "b's app got exactly that connection"
    );

    // del releases a for good.
    assert_eq!(session.del("pod-a-uid"), "");
    assert_eq!(bpf_attached(a), (0, 0), "a released");
    if ebpf {
        assert_eq!(pinned_pods(&pin_dir), [8], "a's pins gone, b's stay");
    } else {
        assert!(!nft_table(a), "a's rules gone");
    }
    if ebpf {
        // b is not listed again after the next restart (deleted while the proxy was down).
        kill_9(&mut w);
        let session = restart_node(&mut w, "node-3.log");
        assert_eq!(session.snapshot_sent(), "");
        assert_eq!(bpf_attached(&w.b), (0, 0), "b released after the snapshot");
        assert!(pinned_pods(&pin_dir).is_empty(), "no pod pins left");
        kill_9(&mut w);
        let (live_links, live_progs) = (ids("link"), ids("prog"));
        for (link, prog) in &links {
            assert!(!live_links.contains(link), "link {link} left");
            assert!(!live_progs.contains(prog), "program {prog} left");
        }
        // The maps stay pinned while the directory does; unmounting the bpffs frees them.
        let maps = pinned_maps(&pin_dir);
        assert_eq!(maps.len(), 6, "the six shared maps are pinned: {maps:?}");
        drop(tally_server);
        drop(w);
        drop(fs);
        wait_for(
            "the pinned maps to be freed",
            Duration::from_secs(10),
            || {
                let live = ids("map");
                maps.iter().all(|m| !live.contains(m))
            },
        );
    } else {
        assert_eq!(session.del("pod-b-uid"), "");
        assert!(!nft_table(&w.b), "b's rules gone");
        kill_9(&mut w);
    }
}

/// Ids of the maps pinned under `<root>/obj-*/maps/`.
fn pinned_maps(root: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for v in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for m in std::fs::read_dir(v.path().join("maps"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = m.path().display().to_string();
            let info: serde_json::Value =
                serde_json::from_str(&run("bpftool", &["map", "show", "pinned", &path, "-j"]))
                    .unwrap();
            out.extend(info["id"].as_u64());
        }
    }
    out
}

/// `--bpf-pin-dir` on a directory that is not a bpffs: the proxy does not start.
fn not_bpffs_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, crate::MESH).unwrap();
    let log = dir.path().join("out.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_zmesh-node"))
        .arg("--config")
        .arg(&config)
        .args(["--node-name", "n", "--metrics-addr", "off", "--dev-ca"])
        .arg(dir.path().join("ca"))
        .args([
            "--zds-socket",
            "/nonexistent.sock",
            "--capture",
            "ebpf",
            "--bpf-pin-dir",
        ])
        .arg(dir.path())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let (ok, _) = Proc { child }.finish_status(Duration::from_secs(20));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!ok, "started with a plain pin dir: {text}");
    assert!(
        text.contains("not on a bpffs"),
        "the error says why: {text}"
    );
}
