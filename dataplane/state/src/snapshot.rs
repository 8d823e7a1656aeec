//! An immutable, validated, indexed view of the mesh, built once per config change and shared
//! by `Arc` between the shards. Every lookup on the data path is a hash lookup.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::identity::Identity;
use crate::model::{Authorization, Scope, Service, Workload, service_key};
use crate::rbac::{Connection, Decision, decide};

mod resolve;
mod validate;

pub use resolve::{Resolution, ResolveError};

/// The position of a rejected resource in the lists given to [`Snapshot::new`], so that a
/// config loader can point at its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Workload(usize),
    Service(usize),
    Policy(usize),
}

/// Why a set of resources does not form a consistent snapshot.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("workload {uid:?}: {reason}")]
    Workload {
        index: usize,
        uid: String,
        reason: String,
    },
    #[error("service {key}: {reason}")]
    Service {
        index: usize,
        key: String,
        reason: String,
    },
    #[error("policy {key}: {reason}")]
    Policy {
        index: usize,
        key: String,
        reason: String,
    },
}

impl StateError {
    /// Which resource was rejected.
    pub fn item(&self) -> Item {
        match self {
            StateError::Workload { index, .. } => Item::Workload(*index),
            StateError::Service { index, .. } => Item::Service(*index),
            StateError::Policy { index, .. } => Item::Policy(*index),
        }
    }
}

type ByAddress<T> = HashMap<String, HashMap<IpAddr, Arc<T>>>;

/// Workloads, services and policies with their indexes.
#[derive(Default)]
pub struct Snapshot {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    policies: Vec<Arc<Authorization>>,
    workload_by_uid: HashMap<String, Arc<Workload>>,
    /// network → workload IP → workload.
    workload_by_ip: ByAddress<Workload>,
    /// `ns/hostname` → workload, for workloads that have a hostname (waypoints by name).
    workload_by_hostname: HashMap<String, Arc<Workload>>,
    /// network → VIP → service.
    service_by_vip: ByAddress<Service>,
    service_by_key: HashMap<String, Arc<Service>>,
    /// Service key → its parsed `subject_alt_names`.
    service_sans: HashMap<String, Vec<Identity>>,
    /// Service key → healthy endpoints with an address, ordered by uid.
    endpoints: HashMap<String, Vec<Arc<Workload>>>,
    policy_by_key: HashMap<String, Arc<Authorization>>,
    /// Namespace → its NAMESPACE-scoped policies.
    namespace_policies: HashMap<String, Vec<Arc<Authorization>>>,
    global_policies: Vec<Arc<Authorization>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("workloads", &self.workloads.len())
            .field("services", &self.services.len())
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Validates the resources and indexes them. Rejects duplicate keys, an address used twice
    /// in one network, identities that would not parse back, and malformed references.
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
    ) -> Result<Snapshot, StateError> {
        let mut snap = Snapshot::default();
        for (index, w) in workloads.into_iter().enumerate() {
            snap.add_workload(index, w)?;
        }
        for (index, s) in services.into_iter().enumerate() {
            snap.add_service(index, s)?;
        }
        for (index, p) in policies.into_iter().enumerate() {
            snap.add_policy(index, p)?;
        }
        for list in snap.endpoints.values_mut() {
            list.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        Ok(snap)
    }

    /// A snapshot with nothing in it: every destination passes through, every connection is
    /// allowed.
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    fn add_workload(&mut self, index: usize, w: Workload) -> Result<(), StateError> {
        let uid = w.uid.clone();
        let err = |reason: String| StateError::Workload {
            index,
            uid: uid.clone(),
            reason,
        };
        validate::workload(&w).map_err(err)?;
        if self.workload_by_uid.contains_key(&w.uid) {
            return Err(err("duplicate uid".to_owned()));
        }
        let w = Arc::new(w);
        let by_ip = self.workload_by_ip.entry(w.network.clone()).or_default();
        for ip in &w.workload_ips {
            match by_ip.entry(*ip) {
                Entry::Occupied(e) if e.get().uid != w.uid => {
                    return Err(err(format!(
                        "address {}/{ip} is already used by workload {:?}",
                        w.network,
                        e.get().uid
                    )));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(w.clone());
                }
            }
        }
        if !w.hostname.is_empty() {
            self.workload_by_hostname
                .entry(service_key(&w.namespace, &w.hostname))
                .or_insert_with(|| w.clone());
        }
        if w.status == crate::model::WorkloadStatus::Healthy && !w.workload_ips.is_empty() {
            for key in w.services.keys() {
                self.endpoints
                    .entry(key.clone())
                    .or_default()
                    .push(w.clone());
            }
        }
        self.workload_by_uid.insert(w.uid.clone(), w.clone());
        self.workloads.push(w);
        Ok(())
    }

    fn add_service(&mut self, index: usize, s: Service) -> Result<(), StateError> {
        let key = s.key();
        let err = |reason: String| StateError::Service {
            index,
            key: key.clone(),
            reason,
        };
        let sans = validate::service(&s).map_err(err)?;
        if self.service_by_key.contains_key(&key) {
            return Err(err("duplicate service (namespace/hostname)".to_owned()));
        }
        for vip in &s.vips {
            let in_use = self
                .workload_by_ip
                .get(&vip.network)
                .and_then(|m| m.get(&vip.address))
                .map(|w| format!("workload {:?}", w.uid))
                .or_else(|| {
                    let m = self.service_by_vip.get(&vip.network)?;
                    m.get(&vip.address).map(|s| format!("service {}", s.key()))
                });
            if let Some(other) = in_use {
                return Err(err(format!(
                    "VIP {}/{} is already used by {other}",
                    vip.network, vip.address
                )));
            }
        }
        let s = Arc::new(s);
        for vip in &s.vips {
            self.service_by_vip
                .entry(vip.network.clone())
                .or_default()
                .insert(vip.address, s.clone());
        }
        self.service_sans.insert(key.clone(), sans);
        self.service_by_key.insert(key, s.clone());
        self.services.push(s);
        Ok(())
    }

    fn add_policy(&mut self, index: usize, p: Authorization) -> Result<(), StateError> {
        let key = p.key();
        let err = |reason: &str| StateError::Policy {
            index,
            key: key.clone(),
            reason: reason.to_owned(),
        };
        if p.name.is_empty() {
            return Err(err("empty name"));
        }
        if p.namespace.is_empty() {
            return Err(err("empty namespace"));
        }
        if self.policy_by_key.contains_key(&key) {
            return Err(err("duplicate policy (namespace/name)"));
        }
        let p = Arc::new(p);
        match p.scope {
            Scope::Global => self.global_policies.push(p.clone()),
            Scope::Namespace => self
                .namespace_policies
                .entry(p.namespace.clone())
                .or_default()
                .push(p.clone()),
            Scope::WorkloadSelector => {}
        }
        self.policy_by_key.insert(key, p.clone());
        self.policies.push(p);
        Ok(())
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.iter()
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workload_by_uid.get(uid)
    }

    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(network)?.get(&ip)
    }

    /// A workload by `namespace/hostname` (only workloads that set `hostname`).
    pub fn workload_by_hostname(&self, key: &str) -> Option<&Arc<Workload>> {
        self.workload_by_hostname.get(key)
    }

    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.get(network)?.get(&ip)
    }

    /// A service by `namespace/hostname`.
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.service_by_key.get(key)
    }

    /// The identities a service's endpoints may present besides their own, from its
    /// `subject_alt_names`.
    pub fn service_sans(&self, key: &str) -> &[Identity] {
        self.service_sans.get(key).map_or(&[], Vec::as_slice)
    }

    /// The healthy workloads with an address whose `services` map lists the service key,
    /// ordered by uid.
    pub fn endpoints(&self, service_key: &str) -> &[Arc<Workload>] {
        self.endpoints.get(service_key).map_or(&[], Vec::as_slice)
    }

    pub fn policy_by_key(&self, key: &str) -> Option<&Arc<Authorization>> {
        self.policy_by_key.get(key)
    }

    /// The policies that apply to a destination workload: NAMESPACE scope in its namespace,
    /// every GLOBAL one, and the keys it lists (unknown keys are skipped, as ztunnel does while
    /// a policy is in flight). A policy may appear twice; that does not change a decision.
    pub fn applicable_policies<'s>(
        &'s self,
        dst: &'s Workload,
    ) -> impl Iterator<Item = &'s Authorization> + 's {
        let namespace = self
            .namespace_policies
            .get(&dst.namespace)
            .map_or(&[][..], Vec::as_slice);
        let selected = dst
            .authorization_policies
            .iter()
            .filter_map(|k| self.policy_by_key.get(k));
        namespace
            .iter()
            .chain(&self.global_policies)
            .chain(selected)
            .map(|p| &**p)
    }

    /// Inbound L4 authorization of `conn` to the workload `dst`; see [`crate::rbac::decide`].
    pub fn authorize(&self, dst: &Workload, conn: &Connection<'_>) -> Decision {
        decide(self.applicable_policies(dst), conn)
    }
}

#[cfg(test)]
mod tests;
