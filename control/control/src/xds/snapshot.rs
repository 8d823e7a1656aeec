//! A [`Resources`] encoded once for every stream: each resource as the `Any` that goes on the
//! wire, with a version derived from its content. Versions are content hashes, not counters,
//! so that they survive a controller restart: a node proxy that reconnects with
//! `initial_resource_versions` gets only what really differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;
use zmesh_proto::type_url;

use crate::Resources;

/// One resource as pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Content hash of the resource (hex), the per-resource version of delta xDS.
    pub version: Arc<str>,
    /// The encoded resource with its type URL.
    pub body: Arc<prost_types::Any>,
}

/// Every resource of one type URL, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeSnapshot {
    pub entries: BTreeMap<String, Entry>,
    /// Names added, changed or removed since the snapshot of generation [`Snapshot::base`]:
    /// a stream that holds that generation need look at nothing else.
    pub touched: BTreeSet<String>,
}

/// Every resource the controller serves, encoded, at one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Increases with each new `Resources`; sent as `system_version_info` for debugging.
    pub generation: u64,
    /// The generation `touched` is relative to, if any.
    pub base: Option<u64>,
    pub addresses: TypeSnapshot,
    pub authorizations: TypeSnapshot,
}

/// The type URLs this server serves, in the order a push visits them: policies before the
/// workloads that may name them, so a new workload never arrives before its DENY policy.
pub const TYPE_URLS: [&str; 2] = [type_url::AUTHORIZATION, type_url::ADDRESS];

impl Snapshot {
    /// Encodes `resources` and versions each entry.
    pub fn build(resources: &Resources, generation: u64) -> Snapshot {
        let addresses = resources
            .addresses
            .iter()
            .map(|(name, a)| {
                // `Workload.services` is generated as a BTreeMap, so equal resources encode to
                // equal bytes and the hash of the encoding is a stable version.
                let bytes = a.encode_to_vec();
                let version = hash_hex(&[&bytes]);
                (name.clone(), entry(type_url::ADDRESS, bytes, version))
            })
            .collect();
        let authorizations = resources
            .authorizations
            .iter()
            .map(|(name, a)| {
                let bytes = a.encode_to_vec();
                let version = hash_hex(&[&bytes]);
                (name.clone(), entry(type_url::AUTHORIZATION, bytes, version))
            })
            .collect();
        Snapshot {
            generation,
            base: None,
            addresses: TypeSnapshot {
                entries: addresses,
                touched: BTreeSet::new(),
            },
            authorizations: TypeSnapshot {
                entries: authorizations,
                touched: BTreeSet::new(),
            },
        }
    }

    /// The snapshot following `prev`, recording which names changed since it. Comparing once
    /// here saves every stream a full comparison: a one-pod change costs each stream O(1).
    pub fn build_after(prev: &Snapshot, resources: &Resources) -> Snapshot {
        let mut next = Snapshot::build(resources, prev.generation + 1);
        next.base = Some(prev.generation);
        next.addresses.touched = touched(&prev.addresses, &next.addresses);
        next.authorizations.touched = touched(&prev.authorizations, &next.authorizations);
        next
    }

    /// The resources of `type_url`, or `None` for a type this server does not serve.
    pub fn of_type(&self, type_url: &str) -> Option<&TypeSnapshot> {
        match type_url {
            type_url::ADDRESS => Some(&self.addresses),
            type_url::AUTHORIZATION => Some(&self.authorizations),
            _ => None,
        }
    }
}

fn touched(old: &TypeSnapshot, new: &TypeSnapshot) -> BTreeSet<String> {
    let changed = new
        .entries
        .iter()
        .filter(|(name, e)| old.entries.get(*name).map(|o| &o.version) != Some(&e.version));
    let removed = old.entries.keys().filter(|n| !new.entries.contains_key(*n));
    changed
        .map(|(name, _)| name)
        .chain(removed)
        .cloned()
        .collect()
}

fn entry(type_url: &str, value: Vec<u8>, version: String) -> Entry {
    Entry {
        version: version.into(),
        body: Arc::new(prost_types::Any {
            type_url: type_url.to_string(),
            value,
        }),
    }
}

/// First 128 bits of SHA-256 over the concatenated parts, in hex: wide enough that two
/// different resources never share a version in practice.
fn hash_hex(parts: &[&[u8]]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_proto::workload::{Address, PortList, Workload, address};

    fn workload_with_services(keys: &[&str]) -> Address {
        let mut w = Workload {
            uid: "c//v1/Pod/ns/a".into(),
            name: "a".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        for k in keys {
            w.services.insert(k.to_string(), PortList::default());
        }
        Address {
            r#type: Some(address::Type::Workload(w)),
        }
    }

    #[test]
    fn equal_resources_get_equal_versions_whatever_the_map_order() {
        let keys: Vec<String> = (0..20).map(|i| format!("ns/svc{i}")).collect();
        let fwd: Vec<&str> = keys.iter().map(String::as_str).collect();
        let rev: Vec<&str> = fwd.iter().rev().copied().collect();
        let version = |keys: &[&str]| {
            let mut r = Resources::default();
            r.addresses
                .insert("c//v1/Pod/ns/a".into(), workload_with_services(keys));
            Snapshot::build(&r, 1).addresses.entries["c//v1/Pod/ns/a"]
                .version
                .clone()
        };
        let a = version(&fwd);
        let b = version(&rev);
        assert_eq!(a, b);
        let c = version(&fwd[1..]);
        assert_ne!(a, c, "a changed service map changes the version");
    }

    #[test]
    fn build_encodes_every_resource_with_its_type_url() {
        let mut r = Resources::default();
        r.addresses
            .insert("c//v1/Pod/ns/a".into(), workload_with_services(&["ns/s"]));
        r.authorizations.insert(
            "ns/p".into(),
            zmesh_proto::security::Authorization::default(),
        );
        let s = Snapshot::build(&r, 7);
        assert_eq!(s.generation, 7);
        let a = &s.addresses.entries["c//v1/Pod/ns/a"];
        assert_eq!(a.body.type_url, type_url::ADDRESS);
        assert_eq!(
            Address::decode(a.body.value.as_slice()).expect("decodes"),
            r.addresses["c//v1/Pod/ns/a"]
        );
        assert_eq!(a.version.len(), 32);
        assert_eq!(
            s.authorizations.entries["ns/p"].body.type_url,
            type_url::AUTHORIZATION
        );
        assert!(s.of_type("type.googleapis.com/other").is_none());
    }
}
