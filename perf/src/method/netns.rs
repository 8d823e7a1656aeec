//! The netns topology of `zmesh-ctl` ([`zmesh_ctl::topology`]) as a [`Cluster`]: two nodes,
//! a client pod on node 1 and a server pod on node 2 in namespace `bench`, labelled ambient
//! when the mesh runs (so both pods are captured), and the servers started in the server pod:
//! iperf3, sockperf, nginx (one process, no keep-alive) and `zmesh-perf serve`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use zmesh_ctl::topology::{
    Bins, Capture, Options, Pod, PodSpec, Proc, Topology, namespace_yaml, sys::Output,
};

use crate::method::cli::{Settings, SystemKind};
use crate::method::cluster::{Cluster, ProxyProc, Ran, Running, Side};
use crate::method::steps::{HOLD_PORT, HTTP_PORT, IPERF_PORT, SOCKPERF_PORT};

const NAMESPACE: &str = "bench";
/// How long the servers may take to listen.
const SERVERS_READY: Duration = Duration::from_secs(20);

/// The mesh binaries must exist before anything starts (a clear error, not a half-run).
pub fn check_binaries(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.bin_dir.is_dir(),
        "--bin-dir {} is not a directory",
        s.bin_dir.display()
    );
    if s.systems.iter().any(|k| *k != SystemKind::Direct) {
        Bins::in_dir(&s.bin_dir).check_mesh()?;
    }
    Ok(())
}

struct Netns {
    /// The servers in the server pod, kept running for the whole system's turn (dropped,
    /// so killed, before the topology).
    servers: Vec<(String, Proc)>,
    t: Topology,
    client: Pod,
    server: Pod,
    logs: std::path::PathBuf,
}

impl Drop for Netns {
    /// Copies the node proxies' logs out first: the topology's work directory may live on
    /// another file system, where its rename to `keep_dir` fails.
    fn drop(&mut self) {
        for n in 1..=self.t.node_count() {
            if let Ok(log) = self.t.proxy_log(n) {
                let _ = std::fs::copy(&log, self.logs.join(format!("zmesh-node-{n}.log")));
            }
        }
    }
}

/// A process in a pod; dropping the topology's `Proc` kills and reaps it.
struct Spawned(Option<Proc>);

impl Running for Spawned {
    fn exited(&mut self) -> Option<String> {
        match self.0.as_mut().map(Proc::alive) {
            Some(true) => None,
            Some(false) => Some("exited".into()),
            None => Some("killed".into()),
        }
    }
    fn kill(&mut self) {
        self.0.take();
    }
}

/// Brings the topology up for one system, with its pods and servers; `logs` keeps the
/// topology's work directory (node, agent, controller and server logs) after teardown.
pub fn up(s: &Settings, sys: SystemKind, logs: &Path) -> anyhow::Result<Box<dyn Cluster>> {
    let mesh = sys != SystemKind::Direct;
    let opts = Options {
        nodes: 2,
        mesh,
        capture: if sys == SystemKind::ZmeshNftables {
            Capture::Nftables
        } else {
            Capture::Ebpf
        },
        shards: s.shards as usize,
        proxy_args: s.node_args.clone(),
        // Pinning only matters across proxy restarts, which a benchmark does not do.
        bpf_pin: false,
        // The topology waits for an info line ("connected to the node agent").
        proxy_log: "info".into(),
        bins: Some(Bins::in_dir(&s.bin_dir)),
        // Renamed there at teardown: the path must not exist yet.
        keep_dir: Some(logs.join("topology")),
        ..Options::default()
    };
    std::fs::create_dir_all(logs)?;
    let mut t = Topology::up(opts).context("bringing the topology up")?;
    t.apply("namespace-bench.yaml", &namespace_yaml(NAMESPACE, mesh))?;
    let server = t.add_pod(
        PodSpec::new(NAMESPACE, "server", 2)
            .label("app", "server")
            .port(IPERF_PORT)
            .port(SOCKPERF_PORT)
            .port(HTTP_PORT)
            .port(HOLD_PORT),
    )?;
    let client = t.add_pod(PodSpec::new(NAMESPACE, "client", 1).label("app", "client"))?;
    if mesh {
        // Captured is not yet known: until its proxy has the pod's workload and certificate,
        // its connections fail. Nothing is timed before both proxies know both pods.
        for pod in [&client, &server] {
            t.wait_known(pod, Duration::from_secs(30))?;
        }
    }
    let mut n = Netns {
        t,
        client,
        server,
        servers: Vec::new(),
        logs: logs.to_path_buf(),
    };
    n.start_servers(logs)?;
    Ok(Box::new(n))
}

impl Netns {
    fn start_servers(&mut self, logs: &Path) -> anyhow::Result<()> {
        let conf = logs.join("nginx");
        std::fs::create_dir_all(&conf)?;
        std::fs::write(conf.join("nginx.conf"), nginx_conf(&conf, self.server.ip4))?;
        let perf = std::env::current_exe()?.to_string_lossy().into_owned();
        let hold = format!("{}:{HOLD_PORT}", self.server.ip4);
        let ip = self.server.ip4.to_string();
        let conf_file = conf.join("nginx.conf").to_string_lossy().into_owned();
        let conf_dir = conf.to_string_lossy().into_owned();
        let cmds: Vec<(&str, &str, Vec<&str>)> = vec![
            ("iperf3", "iperf3", vec!["-s", "-p", "5201"]),
            (
                "sockperf",
                "sockperf",
                vec!["server", "--tcp", "-i", &ip, "-p", "11111"],
            ),
            ("nginx", "nginx", vec!["-c", &conf_file, "-p", &conf_dir]),
            ("serve", &perf, vec!["serve", "--listen", &hold]),
        ];
        for (name, program, args) in cmds {
            let out = Output::Log(logs.join(format!("server-{name}.log")));
            let p = self.t.spawn_with(&self.server, program, &args, out)?;
            self.servers.push((name.to_string(), p));
        }
        self.wait_listening(&[IPERF_PORT, SOCKPERF_PORT, HTTP_PORT, HOLD_PORT], logs)
    }

    /// Polls `ss` in the server pod until every port listens (or a server exits).
    fn wait_listening(&mut self, ports: &[u16], logs: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVERS_READY;
        loop {
            for (name, p) in &mut self.servers {
                if !p.alive() {
                    let log = std::fs::read_to_string(logs.join(format!("server-{name}.log")))
                        .unwrap_or_default();
                    anyhow::bail!("{name} exited in the server pod:\n{log}");
                }
            }
            let ss = self
                .t
                .run(&self.server, "ss", &["-Hltn"], Duration::from_secs(5))?;
            let missing: Vec<u16> = (ports.iter().copied())
                .filter(|p| !ss.stdout.contains(&format!(":{p} ")))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "servers in the server pod not listening on {missing:?} after {SERVERS_READY:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pod(&self, side: Side) -> Pod {
        match side {
            Side::Client => self.client.clone(),
        }
    }
}

/// nginx as one process (no master: killing its PID ends it), no keep-alive, a fixed answer.
fn nginx_conf(dir: &Path, ip: Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 0;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{ listen {ip}:{HTTP_PORT}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    )
}

impl Cluster for Netns {
    fn server_ip(&self) -> Ipv4Addr {
        self.server.ip4
    }

    fn spawn(
        &mut self,
        side: Side,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Box<dyn Running>> {
        let pod = self.pod(side);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = (self.t).spawn_with(&pod, program, &args, Output::Log(log.to_path_buf()))?;
        Ok(Box::new(Spawned(Some(p))))
    }

    fn run(
        &mut self,
        side: Side,
        program: &str,
        args: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Ran> {
        let pod = self.pod(side);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let f = self.t.run(&pod, program, &args, timeout)?;
        Ok(Ran {
            success: f.success,
            status: f
                .code
                .map_or("killed by a signal".into(), |c| format!("exit code {c}")),
            stdout: f.stdout,
            stderr: f.stderr,
        })
    }

    fn proxies(&self) -> Vec<ProxyProc> {
        (1..=self.t.node_count())
            .filter_map(|n| {
                Some(ProxyProc {
                    node: zmesh_ctl::topology::node_name(n),
                    pid: self.t.proxy_pid(n)?,
                })
            })
            .collect()
    }

    fn metrics(&self, node: &str) -> anyhow::Result<String> {
        let n: usize = node.trim_start_matches("node").parse()?;
        Ok(self.t.metrics(n)?)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.proxies() {
            // The topology reaps its children only when it stops them: a dead proxy is a
            // zombie (state Z) until then.
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            anyhow::ensure!(
                matches!(state, Some(s) if s != "Z" && s != "X"),
                "the node proxy on {} (pid {}) died; its log:\n{}",
                p.node,
                p.pid,
                self.t.log_tails(30)
            );
        }
        for (name, p) in &mut self.servers {
            anyhow::ensure!(p.alive(), "{name} in the server pod exited");
        }
        Ok(())
    }
}
