//! The systems of the suite: each an endpoint pair (the client's [`Target`]; the server's
//! address is the suite's) plus the processes whose CPU and memory count for it.

use std::net::SocketAddr;

use crate::procfs::{Proc, with_descendants};
use crate::proxy::{self, ProxySpec};
use crate::shards::{self, Scrape};
use crate::systems::Target;
use crate::zmesh::Nodes;

/// Where the two nodes serve their metrics (see [`crate::zmesh`]).
const NODE_METRICS: [(&str, [u8; 4]); 2] = [("node-a", [127, 0, 1, 1]), ("node-b", [127, 0, 2, 1])];

/// How a system's processes run.
pub enum Procs {
    None,
    Zmesh(Box<Nodes>),
    Proxy(Box<proxy::Running>),
}

/// One system under test.
pub struct Sys {
    pub name: String,
    pub target: Target,
    pub procs: Procs,
}

impl Sys {
    /// The processes whose CPU and memory count for this system, at this moment.
    pub fn pids(&self) -> Vec<u32> {
        match &self.procs {
            Procs::None => Vec::new(),
            Procs::Zmesh(n) => n.pids(),
            Procs::Proxy(p) => with_descendants(p.proc.pid()),
        }
    }

    pub fn procs(&self) -> Vec<&Proc> {
        match &self.procs {
            Procs::None => Vec::new(),
            Procs::Zmesh(n) => n.procs.iter().collect(),
            Procs::Proxy(p) => vec![&p.proc],
        }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.procs {
            Procs::None => Ok(()),
            Procs::Zmesh(n) => n.check_alive(),
            Procs::Proxy(p) => p.proc.check_alive(),
        }
    }

    pub fn scrape(&self) -> Option<Vec<Scrape>> {
        let Procs::Zmesh(_) = self.procs else {
            return None;
        };
        NODE_METRICS
            .iter()
            .map(|(n, ip)| shards::scrape(n, SocketAddr::from((*ip, 15020))).ok())
            .collect()
    }
}

/// The built-in plain relay as a proxy template.
pub fn relay_spec(threads: u32) -> ProxySpec {
    ProxySpec {
        name: "relay".into(),
        listen: "127.0.3.1:{port}".into(),
        config: None,
        cmd: format!(
            "{{perf}} relay --listen {{listen}} --upstream {{upstream}} --threads {threads}"
        ),
    }
}
