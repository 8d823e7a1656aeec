//! What a shard reads for every new connection: the mesh snapshot plus this node's
//! certificates, published as one immutable value. Readers load a pointer; the control thread
//! swaps in a new one (RCU), so shards never wait for the control thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use zmesh_hbone::WorkloadCert;
use zmesh_hbone::ca::DevCa;
use zmesh_state::{Identity, Snapshot, Workload};

/// A local identity's certificate with its server configuration built once.
#[derive(Debug)]
pub struct IdentityCert {
    pub cert: WorkloadCert,
    pub server: Arc<ServerConfig>,
}

/// Everything a connection needs to know, at one version.
#[derive(Debug)]
pub struct NodeState {
    pub mesh: Arc<Snapshot>,
    pub certs: HashMap<Identity, Arc<IdentityCert>>,
    pub node_name: String,
    pub network: String,
    pub cluster_id: String,
    pub version: u64,
}

impl NodeState {
    /// Workloads scheduled on this node.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.mesh
            .workloads()
            .filter(move |w| w.node == self.node_name)
    }

    /// The local workload that owns `ip`.
    pub fn local_workload(&self, ip: std::net::IpAddr) -> Option<&Arc<Workload>> {
        self.mesh
            .workload_by_ip(&self.network, ip)
            .filter(|w| w.node == self.node_name)
    }

    /// The local workload of an enrolled pod, matched by namespace and name (the node agent
    /// knows the pod by its Kubernetes uid, not the workload's uid): found by the pod's
    /// addresses, else by a scan of the local workloads.
    pub fn pod_workload(&self, pod: &crate::podns::Pod) -> Option<&Arc<Workload>> {
        let by_ip = pod
            .ips
            .get()
            .into_iter()
            .flatten()
            .filter_map(|ip| self.local_workload(*ip))
            .find(|w| pod.owns(w));
        by_ip.or_else(|| self.local_workloads().find(|w| pod.owns(w)))
    }

    pub fn cert(&self, id: &Identity) -> Option<&Arc<IdentityCert>> {
        self.certs.get(id)
    }
}

/// The published state.
pub type SharedState = Arc<ArcSwap<NodeState>>;

/// Where certificates come from.
#[derive(Debug)]
pub enum CertSource {
    Dev { ca: Box<DevCa>, ttl: Duration },
    Dir(std::path::PathBuf),
}

impl CertSource {
    /// Certificates for every identity of a local workload.
    pub fn certs_for<'a>(
        &self,
        workloads: impl Iterator<Item = &'a Arc<Workload>>,
    ) -> anyhow::Result<HashMap<Identity, Arc<IdentityCert>>> {
        let mut out = HashMap::new();
        for w in workloads {
            let id = w.identity();
            if out.contains_key(&id) {
                continue;
            }
            let cert = match self {
                CertSource::Dev { ca, ttl } => ca.issue(&id, *ttl)?,
                CertSource::Dir(dir) => load_cert_dir(dir, &id)?,
            };
            if cert.identity != id {
                anyhow::bail!("certificate for {id} holds identity {}", cert.identity);
            }
            let server = zmesh_hbone::tls::server_config(&cert)?;
            out.insert(id, Arc::new(IdentityCert { cert, server }));
        }
        Ok(out)
    }
}

fn load_cert_dir(dir: &Path, id: &Identity) -> anyhow::Result<WorkloadCert> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e} (certificate for {id})", p.display()))
    };
    let base = dir.join(&id.namespace).join(&id.service_account);
    let chain = read(&base.join("cert-chain.pem"))?;
    let key = read(&base.join("key.pem"))?;
    let roots = read(&dir.join("root-cert.pem"))?;
    WorkloadCert::from_pem(&chain, &key, &roots)
        .map_err(|e| anyhow::anyhow!("{}: {e}", base.display()))
}
