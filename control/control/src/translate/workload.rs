//! Pods → `istio.workload.Workload`, for pods enrolled in ambient mode: their namespace (or the
//! pod itself) is labelled `istio.io/dataplane-mode=ambient` and the pod does not opt out with
//! `istio.io/dataplane-mode=none`. With [`MeshOptions::serve_non_mesh_pods`] the other pods are
//! served too, with tunnel protocol NONE, as istiod does: so a mesh client reaching a Service
//! whose pods are outside the mesh finds its endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use zmesh_proto::security::Authorization;
use zmesh_proto::workload::{
    Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::authz::Policies;
use super::peer_authn::PeerAuthn;
use super::service::{Services, TargetPort, ip_bytes};
use super::{MeshOptions, Warning};
use crate::objects::{Kind, ObjectKey, Pod};
use crate::store::Store;

const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

pub(super) struct Context<'a> {
    pub store: &'a Store,
    pub opts: &'a MeshOptions,
    pub services: &'a Services,
    pub policies: &'a Policies,
    pub peer: &'a PeerAuthn<'a>,
}

impl Context<'_> {
    /// Every enrolled pod's workload, and the converted PeerAuthentication policies they use.
    pub fn translate(&self, warnings: &mut Vec<Warning>) -> (Vec<Workload>, Vec<Authorization>) {
        let mut ambient_ns: HashMap<&str, bool> = HashMap::new();
        let mut converted: BTreeMap<String, Authorization> = BTreeMap::new();
        let mut workloads = Vec::new();
        for pod in self.store.pods() {
            let ns = pod.metadata.namespace.as_str();
            let ns_ambient = *ambient_ns.entry(ns).or_insert_with(|| {
                self.store.namespace(ns).is_some_and(|n| {
                    n.metadata
                        .labels
                        .get(DATAPLANE_MODE)
                        .is_some_and(|m| m == "ambient")
                })
            });
            let mesh = enrolled(pod, ns_ambient);
            let eligible = !pod.spec.host_network && !pod.is_terminal();
            if !eligible || !(mesh || self.opts.serve_non_mesh_pods) {
                continue;
            }
            if let Some(w) = self.workload(pod, mesh, &mut converted, warnings) {
                workloads.push(w);
            }
        }
        (workloads, converted.into_values().collect())
    }

    /// A pod's workload; `mesh` tells whether the node proxy captures it (HBONE, policies) or
    /// it is only an endpoint reached in plain TCP.
    fn workload(
        &self,
        pod: &Pod,
        mesh: bool,
        converted: &mut BTreeMap<String, Authorization>,
        warnings: &mut Vec<Warning>,
    ) -> Option<Workload> {
        let meta = &pod.metadata;
        let key = || ObjectKey::new(Kind::Pod, meta.namespace.clone(), meta.name.clone());
        let mut addresses = Vec::new();
        for ip in pod.ips() {
            match ip.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip_bytes(ip).into()),
                Err(_) => warnings.push(Warning::new(
                    key(),
                    format!("pod IP {ip:?} is not an IP; ignored"),
                )),
            }
        }
        if addresses.is_empty() {
            return None; // not running yet: nothing to reach
        }
        let (workload_name, workload_type) = self.workload_name_and_type(pod);
        let mut authorization_policies = Vec::new();
        if mesh {
            authorization_policies = self.policies.selecting(&meta.namespace, &meta.labels);
            if let Some(e) = self.peer.effective(&meta.namespace, &meta.labels) {
                authorization_policies.push(e.key.clone());
                converted.entry(e.key).or_insert(e.policy);
            }
        }
        let labels = &meta.labels;
        let canonical_name = first_label(
            labels,
            &[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ],
        )
        .unwrap_or(&workload_name)
        .to_owned();
        let canonical_revision = first_label(
            labels,
            &[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ],
        )
        .unwrap_or("latest")
        .to_owned();
        Some(Workload {
            uid: format!(
                "{}//v1/Pod/{}/{}",
                self.opts.cluster_id, meta.namespace, meta.name
            ),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            addresses,
            network: self.opts.network.clone(),
            tunnel_protocol: if mesh {
                TunnelProtocol::Hbone
            } else {
                TunnelProtocol::None
            } as i32,
            trust_domain: self.opts.trust_domain.clone(),
            service_account: pod.service_account().to_owned(),
            node: pod.spec.node_name.clone(),
            canonical_name,
            canonical_revision,
            workload_type: workload_type as i32,
            workload_name,
            services: self.services_of(pod),
            authorization_policies,
            status: if pod.is_ready() {
                WorkloadStatus::Healthy
            } else {
                WorkloadStatus::Unhealthy
            } as i32,
            cluster_id: self.opts.cluster_id.clone(),
            ..Default::default()
        })
    }

    /// `ns/hostname → [service port → target port]` for every service selecting the pod. A
    /// named target port is resolved by the pod's container port names; a port the pod does
    /// not name is left out, as istiod does.
    fn services_of(&self, pod: &Pod) -> BTreeMap<String, PortList> {
        let mut map = BTreeMap::new();
        for svc in self.services.in_namespace(&pod.metadata.namespace) {
            if !svc.selects(&pod.metadata.labels) {
                continue;
            }
            let ports = svc
                .ports
                .iter()
                .filter_map(|(port, target)| {
                    let target_port = match target {
                        TargetPort::Number(n) => *n,
                        TargetPort::Named(name) => u32::from(pod.port_by_name(name)?),
                    };
                    Some(Port {
                        service_port: *port,
                        target_port,
                        app_protocol: 0,
                    })
                })
                .collect();
            map.insert(svc.key.clone(), PortList { ports });
        }
        map
    }

    /// From the controlling owner: a ReplicaSet named `<deployment>-<pod-template-hash>` is a
    /// Deployment, a Job one of a CronJob when named `<cronjob>-<digits>`. A pod written by hand
    /// without owners belongs to the Deployment whose selector matches it, if any.
    fn workload_name_and_type(&self, pod: &Pod) -> (String, WorkloadType) {
        let meta = &pod.metadata;
        let owner = meta
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .or(meta.owner_references.first());
        match owner {
            Some(o) if o.kind == "ReplicaSet" => {
                let hash = meta
                    .labels
                    .get("pod-template-hash")
                    .map(String::as_str)
                    .unwrap_or("");
                match o.name.strip_suffix(hash).and_then(|n| n.strip_suffix('-')) {
                    Some(deployment) if !hash.is_empty() => {
                        (deployment.to_owned(), WorkloadType::Deployment)
                    }
                    _ => (meta.name.clone(), WorkloadType::Pod),
                }
            }
            Some(o) if o.kind == "Job" => match cronjob_name(&o.name) {
                Some(cron) => (cron.to_owned(), WorkloadType::Cronjob),
                None => (o.name.clone(), WorkloadType::Job),
            },
            Some(_) => (meta.name.clone(), WorkloadType::Pod),
            None => self
                .store
                .deployments_in(&meta.namespace)
                .find(|d| d.spec.selector.matches(&meta.labels))
                .map(|d| (d.metadata.name.clone(), WorkloadType::Deployment))
                .unwrap_or_else(|| (meta.name.clone(), WorkloadType::Pod)),
        }
    }
}

/// Whether the node proxy captures the pod: enrolled by namespace or pod label, not opted out.
/// (Host-network pods share the node's address and finished pods may have lost theirs: neither
/// is ever a workload.)
fn enrolled(pod: &Pod, namespace_ambient: bool) -> bool {
    match pod.metadata.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => namespace_ambient,
    }
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// CronJobs name their Jobs `<cronjob>-<scheduled time in minutes>`.
fn cronjob_name(job: &str) -> Option<&str> {
    let (name, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}
