//! The resources received over delta ADS, by type and name, and the snapshot they form.
//! Sans-IO: a response goes in, the ACK/NACK to send comes out.
//!
//! Resources that do not convert are NACKed by name and not stored; the good ones of the same
//! response are applied. A resource that converts but clashes with another (an address used
//! twice) stays stored but is left out of the snapshot until the clash is gone; when it came in
//! this response it is NACKed too.

use std::collections::{BTreeMap, HashMap};

use zmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use zmesh_proto::type_url::{ADDRESS, AUTHORIZATION};
use zmesh_state::{Authorization, Item, Snapshot};

use super::convert::{self, AddressResource};

/// gRPC's INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// The types subscribed to, in the order they are requested.
pub const TYPES: [&str; 2] = [ADDRESS, AUTHORIZATION];

#[derive(Debug, Clone)]
struct Entry<T> {
    version: String,
    value: T,
}

/// What applying one response did.
#[derive(Debug)]
pub struct Applied {
    /// The ACK (no `error_detail`) or NACK to send back.
    pub reply: DeltaDiscoveryRequest,
    /// Resources added, changed or removed: a new snapshot is due.
    pub changed: bool,
    /// `(name, reason)` of every rejected resource.
    pub rejected: Vec<(String, String)>,
}

/// Every resource known, by type and name.
#[derive(Debug, Default)]
pub struct Store {
    addresses: BTreeMap<String, Entry<AddressResource>>,
    policies: BTreeMap<String, Entry<Authorization>>,
}

impl Store {
    /// The first request of each type on a new stream: a wildcard subscription and the
    /// versions already held, so the server sends only what changed while we were away.
    pub fn initial_requests(&self, node: &Node) -> Vec<DeltaDiscoveryRequest> {
        TYPES
            .iter()
            .map(|t| DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: (*t).to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                initial_resource_versions: self.versions(t),
                ..Default::default()
            })
            .collect()
    }

    fn versions(&self, type_url: &str) -> HashMap<String, String> {
        match type_url {
            ADDRESS => versions_of(&self.addresses),
            AUTHORIZATION => versions_of(&self.policies),
            _ => HashMap::new(),
        }
    }

    pub fn len(&self, type_url: &str) -> usize {
        match type_url {
            ADDRESS => self.addresses.len(),
            AUTHORIZATION => self.policies.len(),
            _ => 0,
        }
    }

    /// Applies one response and says what to answer.
    pub fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Applied {
        let mut rejected = Vec::new();
        let mut changed = false;
        match resp.type_url.as_str() {
            ADDRESS => apply_type(
                &mut self.addresses,
                resp,
                &mut rejected,
                &mut changed,
                |a| {
                    convert::address(a).map(|r| {
                        let key = match &r {
                            AddressResource::Workload(w) => w.uid.clone(),
                            AddressResource::Service(s) => s.key(),
                        };
                        (key, r)
                    })
                },
            ),
            AUTHORIZATION => {
                apply_type(&mut self.policies, resp, &mut rejected, &mut changed, |a| {
                    convert::authorization(a).map(|p| (p.key(), p))
                })
            }
            other => rejected.push((String::new(), format!("type {other} was not subscribed"))),
        }
        if changed {
            // Clashes among resources of this response are rejected as well.
            let (_, evicted) = self.snapshot();
            let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
            rejected.extend(
                evicted
                    .into_iter()
                    .filter(|(n, _)| names.contains(&n.as_str())),
            );
        }
        let error_detail = (!rejected.is_empty()).then(|| Status {
            code: INVALID_ARGUMENT,
            message: rejected
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
            details: Vec::new(),
        });
        Applied {
            reply: DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail,
                ..Default::default()
            },
            changed,
            rejected,
        }
    }

    /// The consistent snapshot of everything stored, and the `(name, reason)` of resources
    /// left out because they clash with others.
    pub fn snapshot(&self) -> (Snapshot, Vec<(String, String)>) {
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        for (name, e) in &self.addresses {
            match &e.value {
                AddressResource::Workload(w) => workloads.push((name.clone(), w.clone())),
                AddressResource::Service(s) => services.push((name.clone(), s.clone())),
            }
        }
        let mut policies: Vec<_> = self
            .policies
            .iter()
            .map(|(n, e)| (n.clone(), e.value.clone()))
            .collect();
        let mut evicted = Vec::new();
        // Each failed attempt removes one resource, so this ends.
        loop {
            let built = Snapshot::new(
                workloads.iter().map(|(_, w)| w.clone()).collect(),
                services.iter().map(|(_, s)| s.clone()).collect(),
                policies.iter().map(|(_, p)| p.clone()).collect(),
            );
            match built {
                Ok(s) => return (s, evicted),
                Err(e) => {
                    let name = match e.item() {
                        Item::Workload(i) => workloads.remove(i).0,
                        Item::Service(i) => services.remove(i).0,
                        Item::Policy(i) => policies.remove(i).0,
                    };
                    evicted.push((name, e.to_string()));
                }
            }
        }
    }
}

fn versions_of<T>(m: &BTreeMap<String, Entry<T>>) -> HashMap<String, String> {
    m.iter()
        .map(|(k, e)| (k.clone(), e.version.clone()))
        .collect()
}

fn apply_type<T>(
    map: &mut BTreeMap<String, Entry<T>>,
    resp: &DeltaDiscoveryResponse,
    rejected: &mut Vec<(String, String)>,
    changed: &mut bool,
    convert: impl Fn(&prost_types::Any) -> Result<(String, T), convert::ConvertError>,
) {
    for name in &resp.removed_resources {
        *changed |= map.remove(name).is_some();
    }
    for r in &resp.resources {
        let Some(any) = &r.resource else {
            rejected.push((r.name.clone(), "resource has no body".to_owned()));
            continue;
        };
        match convert(any) {
            Ok((key, value)) => {
                let name = if r.name.is_empty() {
                    key
                } else {
                    r.name.clone()
                };
                map.insert(
                    name,
                    Entry {
                        version: r.version.clone(),
                        value,
                    },
                );
                *changed = true;
            }
            Err(e) => {
                tracing::warn!(resource = %r.name, type_url = %resp.type_url, error = %e, "rejected xDS resource");
                rejected.push((r.name.clone(), e.to_string()));
            }
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
