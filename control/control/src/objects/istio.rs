//! `security.istio.io` AuthorizationPolicy and PeerAuthentication (v1 and v1beta1 share one
//! schema). Field names follow Istio's API; values are checked by [`super::validate`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::ObjectMeta;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// Waypoint / gateway policies: enforced by an L7 proxy, never by the node proxy.
    pub target_ref: Option<serde_json::Value>,
    pub target_refs: Vec<serde_json::Value>,
    pub action: Action,
    pub provider: Option<serde_json::Value>,
    /// No rules (absent or `[]`): the policy matches nothing, so an ALLOW denies all.
    pub rules: Vec<Rule>,
}

/// Istio's `WorkloadSelector`: only `matchLabels`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Every selector label is on the workload (an empty selector selects every workload).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// A rule matches when its `from`, `to` and `when` all match. `None` = the field is absent;
/// `Some(vec![])` = written as an empty list, which Istio rejects.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Rule {
    pub from: Option<Vec<RuleFrom>>,
    pub to: Option<Vec<RuleTo>>,
    pub when: Option<Vec<Condition>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    /// Istio's API has strings here; numbers are accepted too.
    #[serde(deserialize_with = "strings_or_numbers")]
    pub ports: Vec<String>,
    #[serde(deserialize_with = "strings_or_numbers")]
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub key: String,
    #[serde(deserialize_with = "strings_or_numbers")]
    pub values: Vec<String>,
    #[serde(deserialize_with = "strings_or_numbers")]
    pub not_values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    pub spec: PeerAuthenticationSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<PortMtls>,
    /// Keyed by the workload (target) port; Istio writes the keys as numbers.
    #[serde(deserialize_with = "port_map")]
    pub port_level_mtls: BTreeMap<u32, PortMtls>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PortMtls {
    pub mode: MtlsMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh); PERMISSIVE when nothing is set.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerAuthenticationSpec {
    pub fn mode(&self) -> MtlsMode {
        self.mtls.map(|m| m.mode).unwrap_or_default()
    }
}

/// A list whose items may be written as strings or numbers (`ports: [80, "443"]`).
fn strings_or_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        S(String),
        N(i64),
    }
    let items: Vec<Item> = Vec::deserialize(d)?;
    Ok(items
        .into_iter()
        .map(|i| match i {
            Item::S(s) => s,
            Item::N(n) => n.to_string(),
        })
        .collect())
}

/// `portLevelMtls` keys: numbers (or numeric strings), 1–65535 checked by validation.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, PortMtls>, D::Error> {
    use serde::de::Error;
    let raw: BTreeMap<String, PortMtls> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<u32>()
                .map(|p| (p, v))
                .map_err(|_| D::Error::custom(format!("portLevelMtls key {k:?} is not a port")))
        })
        .collect()
}
