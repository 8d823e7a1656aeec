//! The agent with the real node proxy (`zmesh-node --zds-socket`, eBPF capture): CNI ADD
//! returns with the pod's cgroup hooks attached, a restarted proxy gets the pod back, and CNI
//! DEL returns with them gone. `zmesh-node` is built by a nested `cargo build` (a no-op when
//! it is up to date, as in CI after `cargo build --workspace --bins`).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Agent, finish, namespace, pod_object, require_root};
use crate::pod::{self, Pod};

/// `zmesh-node` beside our binaries, built (or found up to date) by cargo.
fn node_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_zmesh-agent"))
        .parent()
        .expect("target dir")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "zmesh-node",
        "--bin",
        "zmesh-node",
        "--target-dir",
    ])
    .arg(dir.parent().expect("target dir"));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p zmesh-node");
    assert!(status.success(), "cargo build -p zmesh-node failed");
    dir.join("zmesh-node")
}

/// Programs attached to a cgroup.
fn attached(cgroup: &Path) -> usize {
    let out = Command::new("bpftool")
        .args(["cgroup", "show", &cgroup.display().to_string(), "-j"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("bpftool JSON");
    v.as_array().map_or(0, Vec::len)
}

/// The node proxy in its own netns and cgroup; killed (and its cgroup removed) on drop.
struct NodeProxy {
    bin: PathBuf,
    args: Vec<String>,
    netns: OwnedFd,
    cgroup: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProxy {
    fn start(agent: &Agent) -> NodeProxy {
        let dir = agent.dir.path();
        let config = dir.join("node.yaml");
        std::fs::write(
            &config,
            "workloads:\n- uid: Kubernetes//v1/Pod/demo/web\n  name: web\n  namespace: demo\n  serviceAccount: web-sa\n  workloadIps: [\"198.18.1.2\"]\n  protocol: HBONE\n  node: node1\n",
        )
        .expect("node config");
        let root = zmesh_agent::podns::cgroup2_mount().expect("cgroup v2");
        let cgroup = root.join(format!("zmesh-agent-test-{}-node", std::process::id()));
        std::fs::create_dir(&cgroup).expect("node cgroup");
        let args = [
            "--config",
            &config.display().to_string(),
            "--dev-ca",
            &dir.join("ca").display().to_string(),
            "--node-name",
            "node1",
            "--shards",
            "1",
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
            "ebpf",
            "--zds-socket",
            &agent.zds.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut node = NodeProxy {
            bin: node_binary(),
            args,
            netns: pod::new_netns(),
            cgroup,
            log: dir.join("node.log"),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        self.stop();
        let procs = self.cgroup.join("cgroup.procs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        let child = pod::in_netns(self.netns.as_fd(), || {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {} && exec \"$0\" \"$@\"",
                    procs.display()
                ))
                .arg(&self.bin)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start zmesh-node")
        });
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- zmesh-node log ---\n{}", self.log());
        }
        for _ in 0..200 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_real_node_proxy_captures_before_add_returns_and_releases_before_del_returns() {
    require_root();
    let agent = Agent::start(&format!(
        "{}{}",
        namespace("demo", true),
        pod_object("demo", "web", "web-sa")
    ));
    let web = Pod::start("node", "demo", "web");
    pod::in_netns(web.netns.as_fd(), || {
        for args in [
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ][..],
            &["addr", "add", "198.18.1.2/24", "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["link", "set", "eth0p", "up"],
        ] {
            let ok = Command::new("ip").args(args).status().expect("ip");
            assert!(ok.success(), "ip {args:?}");
        }
    });
    let mut node = NodeProxy::start(&agent);
    wait_for("the node proxy's first snapshot", || {
        agent.log().contains("snapshot acked")
    });
    assert_eq!(attached(&web.cgroup), 0, "nothing attached before ADD");

    let t = Instant::now();
    let (code, out) = finish(agent.cni("ADD", &web, 20));
    // Measured, not asserted: how long a pod's start waits for capture (plugin process start,
    // agent, one shard's listeners and the eBPF attach).
    eprintln!("CNI ADD with the real node proxy: {:?}", t.elapsed());
    assert_eq!(code, 0, "{out}\n{}", node.log());
    assert!(
        attached(&web.cgroup) > 0,
        "eBPF hooks on the pod cgroup when ADD returned"
    );

    // Without --bpf-pin-dir the hooks die with the proxy; the agent re-sends the pod to the
    // new one, which attaches them again.
    node.spawn();
    wait_for("the pod re-sent to the restarted proxy", || {
        agent
            .log()
            .matches("pod captured by the node proxy")
            .count()
            == 2
    });
    assert!(
        attached(&web.cgroup) > 0,
        "hooks back after the proxy restart"
    );

    let (code, out) = finish(agent.cni("DEL", &web, 20));
    assert_eq!((code, out), (0, serde_json::Value::Null));
    assert_eq!(attached(&web.cgroup), 0, "hooks gone when DEL returned");
}
