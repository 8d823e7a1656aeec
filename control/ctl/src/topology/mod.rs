//! A Kubernetes-like cluster on one Linux machine, built from network namespaces, veths,
//! bridges and cgroups (root only). Used by `zmeshctl demo`, the end-to-end tests and the
//! benchmarks.
//!
//! ```text
//! fabric netns: bridge fabric0 198.19.0.253/24 fd00:19::fd/64 (also the "outside" host)
//!  ├─ controller netns: eth0 198.19.0.254  zmesh-control :15012, config dir = the YAML
//!  └─ node N netns: eth0 198.19.0.N/24 fd00:19::N/64, bridge cni0 198.18.N.1/24 fd00:18:N::1/64
//!       zmesh-agent (cgroup <root>/nodeN/agent), zmesh-node (cgroup <root>/nodeN/proxy)
//!       └─ pod netns: eth0 198.18.N.k/24 fd00:18:N::k/64, default routes via cni0
//!            cgroup <root>/nodeN/pods/<ns>_<name>/{sandbox (pause), app-1, app-2, …}
//! ```
//!
//! Nodes route each other's pod CIDRs over the fabric. A pod is created as kubelet and a CNI
//! chain would: its Pod object is written to the controller's config directory, then its
//! netns, veth and addresses, its pause process, then `zmesh-cni` ADD, which returns once the
//! node proxy has captured it (or the agent says it is not enrolled). Without the mesh
//! ([`Options::mesh`] false) the same namespaces and pods exist with no controller, agents or
//! proxies: the "no mesh" baseline.
//!
//! Everything is torn down on drop, also after a panic: processes (by PID, then the cgroup
//! tree with `cgroup.kill`), the private bpffs (unmounted after the proxies are gone, so no
//! pin outlives the topology), namespaces (held only by fds and processes), cgroups and the
//! work directory.
//!
//! ```no_run
//! use zmesh_ctl::topology::{Options, PodSpec, Topology};
//! let mut t = Topology::up(Options::default())?;
//! t.apply("ns.yaml", zmesh_ctl::topology::namespace_yaml("demo", true).as_str())?;
//! let server = t.add_pod(PodSpec::new("demo", "server", 2).label("app", "server"))?;
//! let client = t.add_pod(PodSpec::new("demo", "client", 1))?;
//! let _srv = t.spawn(&server, "zmeshctl", &["serve-http", "--port", "8080"])?;
//! let out = t.run(&client, "curl", &["-s", &format!("http://{}:8080/", server.ip4)],
//!     std::time::Duration::from_secs(10))?;
//! # Ok::<(), zmesh_ctl::topology::Error>(())
//! ```

mod bins;
mod footprint;
mod mesh;
mod pod;
mod pods;
pub mod sys;
mod topo;

pub use bins::Bins;
pub use footprint::Footprint;
pub use pod::{Pod, PodSpec, namespace_yaml};
pub use sys::{Bpffs, Finished, Netns, Output, Proc};
pub use topo::Topology;

use std::path::PathBuf;
use std::time::Duration;

/// The controller's address on the fabric.
pub const CONTROLLER_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 0, 254);
/// The fabric's own address: a host outside the mesh (see [`Topology::spawn_outside`]).
pub const OUTSIDE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 0, 253);
/// The outside host's IPv6 address.
pub const OUTSIDE_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0xfd);

/// Node N's address on the fabric.
pub fn node_v4(n: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 19, 0, n as u8)
}

/// Node N's IPv6 address on the fabric.
pub fn node_v6(n: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, n as u16)
}

/// Node N's name (`node1`, `node2`, …), as in Pods' `spec.nodeName`.
pub fn node_name(n: usize) -> String {
    format!("node{n}")
}

/// Capture back end of the node proxies (`zmesh-node --capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Auto,
    Ebpf,
    Nftables,
}

impl Capture {
    pub fn flag(self) -> &'static str {
        match self {
            Capture::Auto => "auto",
            Capture::Ebpf => "ebpf",
            Capture::Nftables => "nftables",
        }
    }
}

/// How to build the topology.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of nodes (1–200).
    pub nodes: usize,
    /// Run the mesh (controller, agents, node proxies); false: namespaces and pods only.
    pub mesh: bool,
    pub capture: Capture,
    /// `zmesh-node --shards`.
    pub shards: usize,
    /// Pin shard threads to cores (off by default: nodes share the machine's cores).
    pub pin_shards: bool,
    /// Pin eBPF links in a private bpffs (`zmesh-node --bpf-pin-dir`), so pods stay captured
    /// (fail closed) while their proxy restarts.
    pub bpf_pin: bool,
    /// Log filter of the node proxies.
    pub proxy_log: String,
    /// Extra `zmesh-node` flags.
    pub proxy_args: Vec<String>,
    /// Where the binaries are; default: [`Bins::discover`].
    pub bins: Option<Bins>,
    /// Keep the work directory (logs) after teardown, at this path.
    pub keep_dir: Option<PathBuf>,
    /// How long a node proxy may take to become ready.
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 2,
            mesh: true,
            capture: Capture::Auto,
            shards: 1,
            pin_shards: false,
            bpf_pin: true,
            proxy_log: "info".into(),
            proxy_args: Vec::new(),
            bins: None,
            keep_dir: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong building or driving the topology.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the topology needs root (network namespaces, cgroups, bpffs, eBPF): run as root")]
    NotRoot,
    #[error("{binary} not found in {dir}: build it with `{build}`")]
    MissingBinary {
        binary: String,
        dir: PathBuf,
        build: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("timed out after {limit:?} waiting for {what}{}", if log.is_empty() { String::new() } else { format!("; log:\n{log}") })]
    Timeout {
        what: String,
        limit: Duration,
        log: String,
    },
    #[error("CNI ADD of {pod} failed: {msg}")]
    Cni { pod: String, msg: String },
    #[error("{0}")]
    Setup(String),
}
