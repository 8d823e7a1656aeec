//! The mesh's processes: the controller on the fabric, and per node the agent and the proxy
//! (each in the node's netns and its own cgroup).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sys::{Netns, Output, Proc, tail, wait_until};
use super::{Bins, CONTROLLER_V4, Error, Options, node_name, node_v4};

pub const CONTROLLER_PORT: u16 = 15012;

/// `zmesh-control` in its own netns on the fabric.
pub struct Controller {
    pub netns: Netns,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub proc: Option<Proc>,
}

impl Controller {
    pub fn start(bins: &Bins, netns: Netns, dir: &Path) -> Result<Controller, Error> {
        let config_dir = dir.join("config");
        let data_dir = dir.join("control-data");
        std::fs::create_dir_all(&config_dir).map_err(|source| Error::Io {
            what: format!("mkdir {}", config_dir.display()),
            source,
        })?;
        let log = dir.join("controller.log");
        let listen = format!("{CONTROLLER_V4}:{CONTROLLER_PORT}");
        let args: Vec<String> = vec![
            "--config-dir".into(),
            config_dir.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--log".into(),
            "info".into(),
        ];
        let proc = Proc::spawn(
            &netns,
            None,
            &bins.get("zmesh-control")?,
            &args,
            &[],
            &Output::Log(log.clone()),
        )?;
        let c = Controller {
            netns,
            config_dir,
            data_dir,
            log,
            proc: Some(proc),
        };
        let addr: std::net::SocketAddr = (CONTROLLER_V4, CONTROLLER_PORT).into();
        let up = wait_until(Duration::from_secs(20), || {
            c.netns
                .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                .is_ok_and(|r| r.is_ok())
        });
        if !up {
            return Err(Error::Timeout {
                what: format!("zmesh-control to listen on {listen}"),
                limit: Duration::from_secs(20),
                log: tail(&c.log, 30),
            });
        }
        Ok(c)
    }

    /// The token file a node proxy authenticates with.
    pub fn node_token(&self, bins: &Bins, node: &str) -> Result<PathBuf, Error> {
        let bin = bins.get("zmesh-control")?;
        let out = std::process::Command::new(&bin)
            .arg("node-token")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg(node)
            .output()
            .map_err(|source| Error::Io {
                what: "zmesh-control node-token".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                cmd: "zmesh-control node-token".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

/// One node: its namespace, cgroups, files and mesh processes.
pub struct Node {
    pub index: usize,
    pub name: String,
    pub netns: Netns,
    /// `<root>/nodeN`: `proxy`, `agent` and `pods/…` below.
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    pub agent: Option<Proc>,
    pub proxy: Option<Proc>,
    /// The proxy's command line, kept for restarts.
    pub proxy_args: Vec<String>,
    /// Next pod host number (2 and up; 1 is the bridge).
    pub next_pod: u8,
}

impl Node {
    pub fn zds_socket(&self) -> PathBuf {
        self.dir.join("zds.sock")
    }

    pub fn cni_socket(&self) -> PathBuf {
        self.dir.join("cni.sock")
    }

    pub fn proxy_log(&self) -> PathBuf {
        self.dir.join("proxy.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn proxy_cgroup(&self) -> PathBuf {
        self.cgroup.join("proxy")
    }

    /// Starts `zmesh-agent` and waits until it serves both sockets.
    pub fn start_agent(&mut self, bins: &Bins, config_dir: &Path) -> Result<(), Error> {
        let cg = self.cgroup.join("agent");
        super::sys::cgroup_create(&cg)?;
        let args: Vec<String> = vec![
            "--node-name".into(),
            self.name.clone(),
            "--config-dir".into(),
            config_dir.display().to_string(),
            "--zds-socket".into(),
            self.zds_socket().display().to_string(),
            "--cni-socket".into(),
            self.cni_socket().display().to_string(),
            "--log".into(),
            "info".into(),
        ];
        let log = self.agent_log();
        self.agent = Some(Proc::spawn(
            &self.netns,
            Some(&cg),
            &bins.get("zmesh-agent")?,
            &args,
            &[],
            &Output::Log(log.clone()),
        )?);
        let limit = Duration::from_secs(20);
        let ready = wait_until(limit, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("node agent ready"))
        });
        if !ready {
            return Err(Error::Timeout {
                what: format!("zmesh-agent on {} to log `node agent ready`", self.name),
                limit,
                log: tail(&log, 30),
            });
        }
        Ok(())
    }

    /// The proxy's flags for this node.
    pub fn build_proxy_args(
        &mut self,
        opts: &Options,
        root_cert: &Path,
        token: &Path,
        bpffs: Option<&Path>,
    ) {
        let mut a: Vec<String> = [
            "--node-name",
            &self.name,
            "--xds-address",
            &format!("https://{CONTROLLER_V4}:{CONTROLLER_PORT}"),
            "--xds-root-cert",
            &root_cert.display().to_string(),
            "--token-file",
            &token.display().to_string(),
            "--instance-ip",
            &node_v4(self.index).to_string(),
            "--pod-name",
            &format!("zmesh-node-{}", self.name),
            "--shards",
            &opts.shards.to_string(),
            "--outbound-addr",
            "off",
            "--socks5-addr",
            "off",
            "--zds-socket",
            &self.zds_socket().display().to_string(),
            "--capture",
            opts.capture.flag(),
            "--log",
            &opts.proxy_log,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !opts.pin_shards {
            a.push("--no-pin".into());
        }
        if let Some(dir) = bpffs {
            a.push("--bpf-pin-dir".into());
            a.push(dir.join(&self.name).display().to_string());
        }
        a.extend(opts.proxy_args.iter().cloned());
        self.proxy_args = a;
    }

    /// Starts the proxy and waits until it is ready and connected to the agent.
    pub fn start_proxy(&mut self, bins: &Bins, limit: Duration) -> Result<(), Error> {
        let cg = self.proxy_cgroup();
        super::sys::cgroup_create(&cg)?;
        let log = self.proxy_log();
        let before = std::fs::read_to_string(&log).map_or(0, |l| l.len());
        self.proxy = Some(Proc::spawn(
            &self.netns,
            Some(&cg),
            &bins.get("zmesh-node")?,
            &self.proxy_args,
            &[],
            &Output::Log(log.clone()),
        )?);
        let netns = &self.netns;
        let ready = wait_until(limit, || {
            let connected = std::fs::read_to_string(&log).is_ok_and(|l| {
                l.get(before..)
                    .is_some_and(|l| l.contains("connected to the node agent"))
            });
            connected
                && netns
                    .http_get("127.0.0.1:15021", "/healthz/ready")
                    .is_ok_and(|(s, _)| s == 200)
        });
        if !ready {
            let exited = self.proxy.as_mut().is_some_and(|p| !p.alive());
            return Err(Error::Timeout {
                what: format!(
                    "zmesh-node on {} to be ready and connected to its agent{}",
                    self.name,
                    if exited { " (it exited)" } else { "" }
                ),
                limit,
                log: tail(&log, 40),
            });
        }
        Ok(())
    }

    /// Stops the proxy: SIGTERM and up to 5 s to drain (`graceful`), or SIGKILL.
    pub fn stop_proxy(&mut self, graceful: bool) {
        // Dropping the process kills it (SIGKILL); a graceful stop sends SIGTERM first.
        if let Some(p) = self.proxy.take()
            && graceful
        {
            p.stop(Duration::from_secs(5));
        }
    }
}

/// Node N's name, index and empty state.
pub fn new_node(index: usize, netns: Netns, root_cgroup: &Path, dir: &Path) -> Node {
    let name = node_name(index);
    Node {
        index,
        cgroup: root_cgroup.join(&name),
        dir: dir.join(&name),
        name,
        netns,
        agent: None,
        proxy: None,
        proxy_args: Vec::new(),
        next_pod: 2,
    }
}
