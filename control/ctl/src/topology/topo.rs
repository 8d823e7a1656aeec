//! [`Topology`]: building it, driving it, tearing it down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mesh::{Controller, Node, new_node};
use super::pod::Pod;
use super::sys::{self, Finished, Netns, Output, Proc};
use super::{Bins, CONTROLLER_V4, Error, Footprint, OUTSIDE_V4, OUTSIDE_V6, Options};

/// A pod's resources, owned by the topology.
pub(super) struct PodState {
    pub pod: Pod,
    pub spec: super::pod::PodSpec,
    pub netns: Netns,
    pub cgroup: PathBuf,
    pub pause: Option<Proc>,
    pub apps: u32,
}

/// The running cluster. See the [module docs](super).
pub struct Topology {
    pub(super) opts: Options,
    pub(super) bins: Bins,
    pub(super) dir: Option<tempfile::TempDir>,
    pub(super) work: PathBuf,
    pub(super) cgroup: PathBuf,
    pub(super) fabric: Netns,
    pub(super) controller: Option<Controller>,
    pub(super) nodes: Vec<Node>,
    pub(super) pods: Vec<PodState>,
    pub(super) bpffs: Option<sys::Bpffs>,
    pub(super) seq: u32,
    pub(super) inodes: Vec<u64>,
    /// Processes handed over with [`Topology::keep`].
    pub(super) kept: Vec<Proc>,
}

impl Topology {
    /// Builds the fabric, the nodes and (with [`Options::mesh`]) the controller, the node
    /// agents and the node proxies, each ready before this returns.
    pub fn up(opts: Options) -> Result<Topology, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        if opts.nodes == 0 || opts.nodes > 200 {
            return Err(Error::Setup(format!("{} nodes: 1 to 200", opts.nodes)));
        }
        let bins = match &opts.bins {
            Some(b) => b.clone(),
            None => Bins::discover()?,
        };
        if opts.mesh {
            bins.check_mesh()?;
        }
        let dir = tempfile::Builder::new()
            .prefix("zmesh-topo-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "temp dir".into(),
                source,
            })?;
        let work = dir.path().to_path_buf();
        let cgroup = sys::cgroup2_root()?.join(format!(
            "zmesh-topo-{}-{}",
            std::process::id(),
            work.file_name().map_or("x".into(), |n| n.to_string_lossy())
        ));
        sys::cgroup_create(&cgroup)?;
        let fabric = Netns::new()?;
        let mut t = Topology {
            inodes: vec![fabric.ino()],
            opts,
            bins,
            dir: Some(dir),
            work,
            cgroup,
            fabric,
            controller: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            bpffs: None,
            seq: 0,
            kept: Vec::new(),
        };
        t.build()?;
        Ok(t)
    }

    fn build(&mut self) -> Result<(), Error> {
        self.fabric.ip(&[
            "link add fabric0 type bridge".into(),
            format!("addr add {OUTSIDE_V4}/24 dev fabric0"),
            format!("addr add {OUTSIDE_V6}/64 dev fabric0 nodad"),
            "link set fabric0 up".into(),
        ])?;
        for n in 1..=self.opts.nodes {
            self.add_node(n)?;
        }
        std::fs::create_dir_all(self.config_dir()).map_err(|source| Error::Io {
            what: "config dir".into(),
            source,
        })?;
        if !self.opts.mesh {
            return Ok(());
        }
        let ns = self.attach_to_fabric("ctl", CONTROLLER_V4.to_string(), "fd00:19::fe".into())?;
        self.controller = Some(Controller::start(&self.bins, ns, &self.work)?);
        if self.opts.bpf_pin {
            self.mount_bpffs()?;
        }
        for i in 0..self.nodes.len() {
            self.start_node_mesh(i)?;
        }
        Ok(())
    }

    /// A new netns joined to the fabric bridge as `eth0` with these addresses.
    fn attach_to_fabric(&mut self, port: &str, v4: String, v6: String) -> Result<Netns, Error> {
        let ns = Netns::new()?;
        self.inodes.push(ns.ino());
        self.fabric.ip(&[
            format!(
                "link add {port} type veth peer name eth0 netns {}",
                ns.path()
            ),
            format!("link set {port} master fabric0 up"),
        ])?;
        ns.ip(&[
            format!("addr add {v4}/24 dev eth0"),
            format!("addr add {v6}/64 dev eth0 nodad"),
            "link set eth0 up".into(),
        ])?;
        Ok(ns)
    }

    fn add_node(&mut self, n: usize) -> Result<(), Error> {
        let ns = self.attach_to_fabric(
            &format!("n{n}"),
            super::node_v4(n).to_string(),
            super::node_v6(n).to_string(),
        )?;
        let mut lines = vec![
            "link add cni0 type bridge".to_string(),
            format!("addr add 198.18.{n}.1/24 dev cni0"),
            format!("addr add fd00:18:{n}::1/64 dev cni0 nodad"),
            "link set cni0 up".into(),
        ];
        for m in (1..=self.opts.nodes).filter(|m| *m != n) {
            lines.push(format!("route add 198.18.{m}.0/24 via 198.19.0.{m}"));
            lines.push(format!("route add fd00:18:{m}::/64 via fd00:19::{m:x}"));
        }
        ns.ip(&lines)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.fabric.ip(&[
            format!("route add 198.18.{n}.0/24 via 198.19.0.{n}"),
            format!("route add fd00:18:{n}::/64 via fd00:19::{n:x}"),
        ])?;
        let node = new_node(n, ns, &self.cgroup, &self.work);
        std::fs::create_dir_all(&node.dir).map_err(|source| Error::Io {
            what: "node dir".into(),
            source,
        })?;
        sys::cgroup_create(&node.cgroup.join("pods"))?;
        self.nodes.push(node);
        Ok(())
    }

    fn mount_bpffs(&mut self) -> Result<(), Error> {
        let dir = self.work.join("bpffs");
        self.bpffs = Some(sys::Bpffs::mount(&dir)?);
        for node in &self.nodes {
            std::fs::create_dir_all(dir.join(&node.name)).map_err(|source| Error::Io {
                what: "bpffs node dir".into(),
                source,
            })?;
        }
        Ok(())
    }

    fn start_node_mesh(&mut self, i: usize) -> Result<(), Error> {
        let Some(ctl) = &self.controller else {
            return Ok(());
        };
        let root_cert = ctl.data_dir.join("root-cert.pem");
        let token = ctl.node_token(&self.bins, &self.nodes[i].name)?;
        let config_dir = ctl.config_dir.clone();
        let node = &mut self.nodes[i];
        node.build_proxy_args(
            &self.opts,
            &root_cert,
            &token,
            self.bpffs.as_ref().map(sys::Bpffs::path),
        );
        node.start_agent(&self.bins, &config_dir)?;
        node.start_proxy(&self.bins, self.opts.ready_timeout)
    }

    // ---- config ----

    /// The directory the controller and the agents read (Kubernetes YAML).
    pub fn config_dir(&self) -> PathBuf {
        self.controller
            .as_ref()
            .map_or_else(|| self.work.join("config"), |c| c.config_dir.clone())
    }

    /// Writes (or replaces, atomically like `kubectl apply` of a whole file) a YAML file.
    pub fn apply(&self, file: &str, yaml: &str) -> Result<(), Error> {
        let dir = self.config_dir();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)
            .and_then(|()| std::fs::rename(&tmp, dir.join(file)))
            .map_err(|source| Error::Io {
                what: format!("write {file}"),
                source,
            })
    }

    /// Removes a YAML file (its objects are deleted).
    pub fn remove(&self, file: &str) -> Result<(), Error> {
        std::fs::remove_file(self.config_dir().join(file)).map_err(|source| Error::Io {
            what: format!("remove {file}"),
            source,
        })
    }

    // ---- nodes and proxies ----

    pub(super) fn node(&self, n: usize) -> Result<&Node, Error> {
        n.checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| Error::Setup(format!("no node {n}")))
    }

    pub(super) fn node_mut(&mut self, n: usize) -> Result<&mut Node, Error> {
        n.checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Setup(format!("no node {n}")))
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node N's network namespace (its fabric link is `eth0`, its pod bridge `cni0`).
    pub fn node_netns(&self, n: usize) -> Result<&Netns, Error> {
        Ok(&self.node(n)?.netns)
    }

    /// The node proxy's PID (for CPU and RSS), if it runs.
    pub fn proxy_pid(&self, n: usize) -> Option<u32> {
        self.node(n).ok()?.proxy.as_ref().map(Proc::pid)
    }

    /// The node agent's PID, if it runs.
    pub fn agent_pid(&self, n: usize) -> Option<u32> {
        self.node(n).ok()?.agent.as_ref().map(Proc::pid)
    }

    /// The node proxy's Prometheus text (`:15020/metrics` in the node's netns).
    pub fn metrics(&self, n: usize) -> Result<String, Error> {
        self.proxy_get(n, "127.0.0.1:15020", "/metrics")
    }

    /// A GET on the node proxy's admin API (`127.0.0.1:15000`), e.g. `/config_dump`.
    pub fn admin(&self, n: usize, path: &str) -> Result<String, Error> {
        self.proxy_get(n, "127.0.0.1:15000", path)
    }

    fn proxy_get(&self, n: usize, addr: &str, path: &str) -> Result<String, Error> {
        let (status, body) = self.node(n)?.netns.http_get(addr, path)?;
        if status != 200 {
            return Err(Error::Setup(format!(
                "GET {path} on node {n}: status {status}"
            )));
        }
        Ok(body)
    }

    /// Stops node N's proxy: SIGTERM and wait (`graceful`), or SIGKILL (a crash).
    pub fn stop_proxy(&mut self, n: usize, graceful: bool) -> Result<(), Error> {
        self.node_mut(n)?.stop_proxy(graceful);
        Ok(())
    }

    /// Starts node N's proxy again (same flags) and waits until it is ready.
    pub fn start_proxy(&mut self, n: usize) -> Result<(), Error> {
        let (bins, limit) = (self.bins.clone(), self.opts.ready_timeout);
        self.node_mut(n)?.start_proxy(&bins, limit)
    }

    /// Kills node N's proxy (SIGKILL) and starts it again.
    pub fn restart_proxy(&mut self, n: usize) -> Result<(), Error> {
        self.stop_proxy(n, false)?;
        self.start_proxy(n)
    }

    /// Starts a program in node N's netns (outside every pod), e.g. tcpdump on `eth0`.
    pub fn node_spawn(
        &self,
        n: usize,
        program: &str,
        args: &[&str],
        out: Output,
    ) -> Result<Proc, Error> {
        let node = self.node(n)?;
        Proc::spawn(
            &node.netns,
            None,
            &self.bins.resolve(program),
            &owned(args),
            &[],
            &out,
        )
    }

    /// Runs a program in node N's netns to completion (bounded by `limit`).
    pub fn node_run(
        &self,
        n: usize,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<Finished, Error> {
        self.node_spawn(n, program, args, Output::Piped)?
            .finish(limit)
    }

    /// The host outside the mesh: the fabric namespace ([`OUTSIDE_V4`], [`OUTSIDE_V6`]),
    /// which routes to every pod.
    pub fn outside_netns(&self) -> &Netns {
        &self.fabric
    }

    /// Starts a program on the outside host.
    pub fn spawn_outside(&self, program: &str, args: &[&str], out: Output) -> Result<Proc, Error> {
        Proc::spawn(
            &self.fabric,
            None,
            &self.bins.resolve(program),
            &owned(args),
            &[],
            &out,
        )
    }

    // ---- logs and teardown ----

    /// The work directory (logs, config, controller data).
    pub fn dir(&self) -> &Path {
        &self.work
    }

    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    pub fn proxy_log(&self, n: usize) -> Result<PathBuf, Error> {
        Ok(self.node(n)?.proxy_log())
    }

    pub fn agent_log(&self, n: usize) -> Result<PathBuf, Error> {
        Ok(self.node(n)?.agent_log())
    }

    /// The last lines of every log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        if let Some(c) = &self.controller {
            out.push_str(&format!(
                "---- controller ----\n{}\n",
                sys::tail(&c.log, lines)
            ));
        }
        for n in &self.nodes {
            for (what, path) in [("agent", n.agent_log()), ("proxy", n.proxy_log())] {
                if path.exists() {
                    let t = sys::tail(&path, lines);
                    out.push_str(&format!("---- {} {what} ----\n{t}\n", n.name));
                }
            }
        }
        out
    }

    /// What this topology made, to check after it is gone that nothing is left.
    pub fn footprint(&self) -> Footprint {
        let mut inodes = self.inodes.clone();
        inodes.extend(self.pods.iter().map(|p| p.netns.ino()));
        Footprint {
            netns_inodes: inodes,
            cgroup: self.cgroup.clone(),
            bpffs: self.bpffs.as_ref().map(|b| b.path().to_owned()),
            work: self.work.clone(),
        }
    }

    /// Hands a process over to the topology: it runs until the topology is torn down (or its
    /// pod deleted), then is killed and reaped.
    pub fn keep(&mut self, p: Proc) {
        self.kept.push(p);
    }

    fn teardown(&mut self) {
        self.kept.clear();
        for node in &mut self.nodes {
            // SIGTERM with a short grace: a clean exit when it is quick, never a long drain.
            if let Some(p) = node.proxy.take() {
                p.stop(Duration::from_millis(500));
            }
            node.agent.take();
        }
        if let Some(c) = &mut self.controller {
            c.proc.take();
        }
        for p in &mut self.pods {
            p.pause.take();
        }
        if let Err(e) = sys::cgroup_remove(&self.cgroup) {
            eprintln!("topology teardown: {e}");
        }
        // After the proxies: unmounting frees every pin they left.
        self.bpffs = None;
        self.pods.clear();
        self.nodes.clear();
        self.controller = None;
        if let (Some(keep), Some(dir)) = (&self.opts.keep_dir, self.dir.take()) {
            let from = dir.keep();
            let _ = std::fs::rename(&from, keep);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        self.teardown();
    }
}

pub(super) fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
