//! The controller side of the harness: a real `zmesh-control` process serving a directory of
//! Kubernetes YAML, and node proxies that take their config and certificates from it.
//!
//! Addresses follow the loopback plan of the crate: the controller listens on `127.T.0.1:15012`,
//! node N on `127.T.N.1`, its pods on `127.T.N.10` and up.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Node, NodeOpts, bin, with_id};

/// A running `zmesh-control`.
pub struct Control {
    pub addr: SocketAddr,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Control {
    /// Starts the controller on `127.T.0.1:15012` with `dir` as its config directory and
    /// waits until it accepts connections.
    pub fn start(test_id: u8, dir: &Path) -> Control {
        let config_dir = dir.join("config");
        let data_dir = dir.join("control-data");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        let mut c = Control {
            addr: format!("127.{test_id}.0.1:15012")
                .parse()
                .expect("control addr"),
            config_dir,
            data_dir,
            log: dir.join("control.log"),
            child: None,
        };
        c.restart();
        c
    }

    /// (Re)starts the process with the same directories, so the CA root is kept.
    pub fn restart(&mut self) {
        self.stop();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("control log");
        let err = out.try_clone().expect("control log");
        let child = Command::new(bin("zmesh-control"))
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--log")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn zmesh-control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "zmesh-control not listening on {} in 20s; log:\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGKILL: a controller that dies must not hurt the data path).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes (or replaces) a file in the config directory, atomically like an editor.
    pub fn apply(&self, name: &str, yaml: &str) {
        let tmp = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config_dir.join(name)).expect("rename config");
    }

    /// Removes a file from the config directory.
    pub fn delete(&self, name: &str) {
        std::fs::remove_file(self.config_dir.join(name)).expect("delete config");
    }

    /// The token file a node proxy named `node` authenticates with (created on demand by
    /// `zmesh-control node-token`).
    pub fn node_token(&self, node: &str) -> PathBuf {
        let out = Command::new(bin("zmesh-control"))
            .arg("node-token")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg(node)
            .output()
            .expect("run zmesh-control node-token");
        assert!(
            out.status.success(),
            "node-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    pub fn root_cert(&self) -> PathBuf {
        self.data_dir.join("root-cert.pem")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The flags that point a node proxy named `node` at this controller.
    pub fn node_args(&self, node: &str) -> Vec<String> {
        vec![
            "--xds-address".into(),
            format!("https://{}", self.addr),
            "--xds-root-cert".into(),
            self.root_cert().display().to_string(),
            "--token-file".into(),
            self.node_token(node).display().to_string(),
        ]
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- zmesh-control log (last lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A controller plus node proxies configured from it.
pub struct ControlledMesh {
    pub test_id: u8,
    pub dir: tempfile::TempDir,
    pub control: Control,
    pub nodes: Vec<Node>,
}

impl ControlledMesh {
    /// Starts the controller with `files` (name, YAML with `{T}`) in its config directory,
    /// then node i+1 on `127.T.(i+1).1` named `nodes[i]`, each ready (config and certificates
    /// received) before this returns.
    pub fn start(
        test_id: u8,
        files: &[(&str, &str)],
        nodes: &[&str],
        opts: &NodeOpts,
    ) -> ControlledMesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = Control::start(test_id, dir.path());
        for (name, yaml) in files {
            control.apply(name, &with_id(yaml, test_id));
        }
        let mut mesh = ControlledMesh {
            test_id,
            dir,
            control,
            nodes: Vec::new(),
        };
        for (i, name) in nodes.iter().enumerate() {
            let ip: IpAddr = format!("127.{test_id}.{}.1", i + 1)
                .parse()
                .expect("node ip");
            let mut args = mesh.control.node_args(name);
            args.extend(opts.extra.iter().cloned());
            let opts = NodeOpts {
                extra: args,
                ..opts.clone()
            };
            let node = Node::spawn(mesh.dir.path(), name, ip, None, &opts);
            mesh.nodes.push(node);
        }
        for n in &mesh.nodes {
            crate::wait_ready(n);
        }
        mesh
    }

    /// Applies a config file (with `{T}` replaced).
    pub fn apply(&self, name: &str, yaml: &str) {
        self.control.apply(name, &with_id(yaml, self.test_id));
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    /// An IP in this test's range: `127.T.a.b`.
    pub fn ip(&self, a: u8, b: u8) -> IpAddr {
        format!("127.{}.{a}.{b}", self.test_id).parse().expect("ip")
    }
}
