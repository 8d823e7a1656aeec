//! The real `zmesh-agent` and `zmesh-cni` binaries with a node proxy test double on the ZDS
//! socket, real network namespaces, cgroups and pause processes for the pods, and config YAML
//! in a temp dir (root only; fails, never skips, without it).
//!
//! `cargo test -p zmesh-agent --test agent` (as root). The agent's log is printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod node;
mod pod;
mod proxy;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pod::Pod;
use proxy::{Got, Proxy};
use serde_json::{Value, json};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent test needs root (network namespaces, cgroups): run it as root, as CI does"
    );
}

fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "  labels:\n    istio.io/dataplane-mode: ambient\n"
    } else {
        "  labels:\n    team: x\n"
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{labels}")
}

fn pod_object(ns: &str, name: &str, sa: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  nodeName: node1\n  serviceAccountName: {sa}\nstatus:\n  podIP: 198.18.1.2\n"
    )
}

/// The agent process, killed on drop (its log printed if the test failed).
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    zds: PathBuf,
    cni: PathBuf,
    runs: u32,
}

impl Agent {
    fn start(yaml: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        let tmp = config.join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, config.join("mesh.yaml")).expect("rename config");
        let mut agent = Agent {
            child: Command::new("true").spawn().expect("placeholder"),
            zds: dir.path().join("zds.sock"),
            cni: dir.path().join("cni.sock"),
            config,
            dir,
            runs: 0,
        };
        agent.spawn();
        agent
    }

    /// Starts (again) and waits until it logs that it is ready.
    fn spawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.runs += 1;
        self.child = Command::new(env!("CARGO_BIN_EXE_zmesh-agent"))
            .args(["--node-name", "node1", "--config-dir"])
            .arg(&self.config)
            .arg("--zds-socket")
            .arg(&self.zds)
            .arg("--cni-socket")
            .arg(&self.cni)
            .args(["--log", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).expect("log file"))
            .spawn()
            .expect("start zmesh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains("node agent ready") {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("zmesh-agent exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "agent not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.zds.exists() && self.cni.exists(),
            "sockets bound before ready"
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.runs))
    }

    /// Replaces the config (write then rename, as a ConfigMap update does).
    fn write_config(&self, yaml: &str) {
        let tmp = self.config.join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config.join("mesh.yaml")).expect("rename config");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn proxy(&self) -> Proxy {
        Proxy::connect(&self.zds)
    }

    /// Starts `zmesh-cni` for `pod`; finish it with [`finish`].
    fn cni(&self, command: &str, pod: &Pod, timeout_seconds: u64) -> Child {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "zmesh-cni",
            "agent_socket": self.cni, "timeout_seconds": timeout_seconds,
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": pod.netns_path()}],
                "ips": [{"address": "198.18.1.2/24", "interface": 0}]}
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_zmesh-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id())
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", pod.cni_args())
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start zmesh-cni");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(conf.to_string().as_bytes())
            .expect("netconf");
        child
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- zmesh-agent log ---\n{}", self.log());
        }
    }
}

/// Waits (bounded) for the plugin: its exit code and stdout as JSON (`Null` when empty).
fn finish(mut child: Child) -> (i32, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("zmesh-cni did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout {stdout:?}: {e}"))
    };
    (out.status.code().expect("exit code"), v)
}

fn still_running(child: &mut Child) -> bool {
    child.try_wait().expect("wait").is_none()
}

/// Receives an `add` for `pod` and checks what a node proxy needs: the pod's own netns (the
/// fd's inode), its cgroup, its identity.
fn expect_add(proxy: &Proxy, pod: &Pod, sa: &str) {
    match proxy.recv() {
        Got::Add {
            uid,
            name,
            namespace,
            service_account,
            cgroup,
            netns,
        } => {
            assert_eq!(uid, pod.uid);
            assert_eq!(
                (namespace.as_str(), name.as_str()),
                (pod.namespace.as_str(), pod.name.as_str())
            );
            assert_eq!(service_account, sa);
            assert_eq!(
                Path::new(&cgroup),
                pod.cgroup,
                "the pod cgroup (parent of the sandbox's)"
            );
            let fd = netns.expect("add carries the netns fd");
            assert_eq!(pod::ino(fd.as_fd()), pod.netns_ino(), "the pod's own netns");
        }
        other => panic!("expected add {}, got {other:?}", pod.uid),
    }
}

#[test]
fn ambient_pod_is_captured_before_add_returns_and_follows_labels_and_reconnects() {
    require_root();
    let config = |ambient| {
        format!(
            "{}{}{}",
            namespace("demo", ambient),
            namespace("plain", false),
            pod_object("demo", "web", "web-sa")
        )
    };
    let mut agent = Agent::start(&config(true));
    let proxy = agent.proxy();
    proxy.expect_snapshot();

    let web = Pod::start("flow", "demo", "web");
    let mut add = agent.cni("ADD", &web, 10);
    expect_add(&proxy, &web, "web-sa");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        still_running(&mut add),
        "ADD returned before the node proxy acked"
    );
    proxy.ack("");
    let (code, out) = finish(add);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out["ips"][0]["address"], "198.18.1.2/24",
        "prevResult passed on: {out}"
    );

    // A pod outside the mesh: ADD returns at once, the proxy hears nothing.
    let plain = Pod::start("flow", "plain", "other");
    let started = Instant::now();
    let (code, out) = finish(agent.cni("ADD", &plain, 10));
    assert_eq!(code, 0, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "non-mesh ADD waited"
    );
    proxy.expect_nothing();
    let (code, _) = finish(agent.cni("CHECK", &plain, 10));
    assert_eq!(code, 0);
    let (code, _) = finish(agent.cni("CHECK", &web, 10));
    assert_eq!(code, 0);

    // Label removed: released; label back: added again with the kept netns fd.
    agent.write_config(&config(false));
    proxy.expect_del(&web.uid);
    agent.write_config(&config(true));
    expect_add(&proxy, &web, "web-sa");
    proxy.ack("");

    // The node proxy restarts: every enrolled pod again, then the snapshot marker.
    drop(proxy);
    let proxy = agent.proxy();
    expect_add(&proxy, &web, "web-sa");
    proxy.ack("");
    proxy.expect_snapshot();
    proxy.expect_nothing();

    // The agent restarts: it remembers the running pod and re-sends it with its netns, so the
    // proxy's new snapshot does not release it.
    agent.spawn();
    let proxy = agent.proxy();
    expect_add(&proxy, &web, "web-sa");
    proxy.ack("");
    proxy.expect_snapshot();
    proxy.expect_nothing();
    assert!(agent.log().contains("pod restored"), "{}", agent.log());

    // DEL releases; a second DEL (unknown pod now) still succeeds.
    let mut del = agent.cni("DEL", &web, 10);
    match proxy.recv() {
        Got::Del(uid) => assert_eq!(uid, web.uid),
        other => panic!("expected del, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        still_running(&mut del),
        "DEL returned before the proxy released the pod"
    );
    proxy.ack("");
    assert_eq!(finish(del), (0, Value::Null));
    assert_eq!(finish(agent.cni("DEL", &web, 10)), (0, Value::Null));
    let (code, out) = finish(agent.cni("CHECK", &web, 10));
    assert_eq!(code, 1, "CHECK of a deleted pod: {out}");
    assert_eq!(finish(agent.cni("DEL", &plain, 10)).0, 0);
    proxy.expect_nothing();
}

#[test]
fn add_fails_clearly_without_a_proxy_or_when_capture_fails() {
    require_root();
    let agent = Agent::start(&namespace("demo", true));
    let lonely = Pod::start("fail", "demo", "lonely");
    let started = Instant::now();
    let (code, out) = finish(agent.cni("ADD", &lonely, 2));
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["code"], 100, "{out}");
    let msg = out["msg"].as_str().expect("msg");
    assert!(msg.contains("no node proxy connected"), "{msg}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "failed before its bound"
    );

    // A proxy connecting later gets the pod anyway (it runs, so it is enrolled).
    let proxy = agent.proxy();
    expect_add(&proxy, &lonely, "default");
    proxy.ack("");
    proxy.expect_snapshot();

    let refused = Pod::start("fail", "demo", "refused");
    let add = agent.cni("ADD", &refused, 10);
    expect_add(&proxy, &refused, "default");
    proxy.ack("capture: attach connect4: permission denied");
    let (code, out) = finish(add);
    assert_eq!(code, 1, "{out}");
    let msg = out["msg"].as_str().expect("msg");
    assert!(
        msg.contains("demo/refused") && msg.contains("permission denied"),
        "{msg}"
    );
    // A pause process outside a pod cgroup: capture would attach to the wrong cgroup (ours or
    // the root), so ADD refuses and the proxy hears nothing.
    let stray = Pod::start_uncontained("fail", "demo", "stray");
    let (code, out) = finish(agent.cni("ADD", &stray, 10));
    assert_eq!(code, 1, "{out}");
    let msg = out["msg"].as_str().expect("msg");
    assert!(
        msg.contains("demo/stray") && msg.contains("cgroup"),
        "{msg}"
    );
    eprintln!("stray pod: {msg}");
    proxy.expect_nothing();
}

#[test]
fn plugin_reports_bad_input_and_a_missing_agent() {
    let run = |env: &[(&str, &str)], stdin: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zmesh-cni"))
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start zmesh-cni");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        finish(c)
    };
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=a"),
    ];
    let (code, out) = run(&add, "{\"cniVersion\":");
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"zmesh-cni","agent_socket":"/nonexistent/cni.sock"}"#;
    let (code, out) = run(&add, conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .expect("msg")
            .contains("/nonexistent/cni.sock"),
        "{out}"
    );
    let (code, out) = run(&add[1..], conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(4)), "{out}");
    let (code, out) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(
        (code, out["cniVersion"].as_str()),
        (0, Some("1.0.0")),
        "{out}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_zmesh-cni"))
        .arg("--help")
        .output()
        .expect("help");
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("CNI_COMMAND"));
    let help = Command::new(env!("CARGO_BIN_EXE_zmesh-agent"))
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--node-name",
        "--config-dir",
        "--zds-socket",
        "--cni-socket",
        "--log",
    ] {
        assert!(text.contains(flag), "agent --help lacks {flag}: {text}");
    }
}
