//! What `bench-method` needs from a topology: two pods (client on node 1, server on node 2),
//! processes run or spawned in them, and the node proxies' PIDs and metrics. The real one is
//! the netns topology of `zmesh-ctl` ([`crate::method::netns`]); the steps only see this trait.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// Which pod (the servers are started with the topology, so only the client runs tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Ran {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// A process left running in a pod (killed at the latest when the topology goes down).
pub trait Running {
    /// `Some(status)` once it has exited.
    fn exited(&mut self) -> Option<String>;
    fn kill(&mut self);
}

/// A node proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProc {
    pub node: String,
    pub pid: u32,
}

pub trait Cluster {
    fn server_ip(&self) -> Ipv4Addr;
    /// Starts `program args` in the pod, its stdout and stderr to `log`.
    fn spawn(
        &mut self,
        side: Side,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Box<dyn Running>>;
    /// Runs `program args` in the pod to completion (killed after `timeout`).
    fn run(
        &mut self,
        side: Side,
        program: &str,
        args: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Ran>;
    /// The node proxies serving the pods (none without the mesh).
    fn proxies(&self) -> Vec<ProxyProc>;
    /// A node proxy's Prometheus text (`/metrics`).
    fn metrics(&self, node: &str) -> anyhow::Result<String>;
    /// An error when a node proxy (or another part of the mesh) has died.
    fn check_alive(&mut self) -> anyhow::Result<()>;
}
