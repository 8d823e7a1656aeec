//! Checks on one resource at a time; cross-resource checks (duplicates) live in the builder.

use crate::identity::Identity;
use crate::model::{GatewayAddress, GatewayDestination, Service, Workload};

pub(super) fn workload(w: &Workload) -> Result<(), String> {
    if w.uid.is_empty() {
        return Err("empty uid".to_owned());
    }
    if w.namespace.is_empty() {
        return Err("empty namespace".to_owned());
    }
    w.identity()
        .validate()
        .map_err(|e| format!("bad identity: {e}"))?;
    for key in w.services.keys() {
        namespaced(key).map_err(|e| format!("services: {e}"))?;
    }
    for key in &w.authorization_policies {
        namespaced(key).map_err(|e| format!("authorizationPolicies: {e}"))?;
    }
    if let Some(wp) = &w.waypoint {
        gateway(wp)?;
    }
    Ok(())
}

/// Returns the parsed `subject_alt_names`.
pub(super) fn service(s: &Service) -> Result<Vec<Identity>, String> {
    if s.namespace.is_empty() {
        return Err("empty namespace".to_owned());
    }
    if s.hostname.is_empty() {
        return Err("empty hostname".to_owned());
    }
    if s.ports.contains_key(&0) {
        return Err("service port 0".to_owned());
    }
    if let Some(wp) = &s.waypoint {
        gateway(wp)?;
    }
    s.subject_alt_names
        .iter()
        .map(|san| Identity::parse(san).map_err(|e| format!("subjectAltNames: {e}")))
        .collect()
}

fn gateway(wp: &GatewayAddress) -> Result<(), String> {
    if wp.hbone_mtls_port == 0 {
        return Err("waypoint: hbone port 0".to_owned());
    }
    match &wp.destination {
        GatewayDestination::Address(..) => Ok(()),
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } if namespace.is_empty() || hostname.is_empty() => {
            Err("waypoint: empty namespace or hostname".to_owned())
        }
        GatewayDestination::Hostname { .. } => Ok(()),
    }
}

/// A key of the form `namespace/name`, both parts non-empty.
fn namespaced(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(()),
        _ => Err(format!("{key:?} is not of the form namespace/name")),
    }
}
