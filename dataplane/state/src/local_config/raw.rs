//! The YAML shapes of ztunnel's `LocalConfig` (camelCase, unknown fields rejected) and their
//! conversion into the model. Values are checked while they are read, so that a bad IP, CIDR,
//! enum value or principal is reported at its own line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::identity::Identity;
use crate::model;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<Spanned<LocalWorkload>>,
    #[serde(default)]
    pub policies: Vec<Spanned<Policy>>,
    #[serde(default)]
    pub services: Vec<Spanned<Service>>,
}

/// A workload plus the services it is an endpoint of. Keys that zmesh does not use are
/// accepted and ignored, so that ztunnel's files load unchanged.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalWorkload {
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    waypoint: Option<Gateway>,
    // Accepted for compatibility, not used by zmesh.
    #[serde(default)]
    #[allow(dead_code)]
    network_gateway: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    application_tunnel: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    locality: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    capacity: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    native_tunnel: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    network_mode: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Service {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<NetAddr>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<Gateway>,
    // Accepted for compatibility, not used by zmesh (endpoints come from the workloads).
    #[serde(default)]
    #[allow(dead_code)]
    canonical: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    load_balancer: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    ip_families: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    visibility: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    endpoints: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Policy {
    name: String,
    namespace: String,
    scope: Scope,
    action: Action,
    #[serde(default)]
    dry_run: bool,
    /// rule → clause → match.
    #[serde(default)]
    rules: Vec<Vec<Vec<Match>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Match {
    #[serde(default)]
    namespaces: Vec<StringMatch>,
    #[serde(default)]
    not_namespaces: Vec<StringMatch>,
    #[serde(default)]
    principals: Vec<Principal>,
    #[serde(default)]
    not_principals: Vec<Principal>,
    #[serde(default)]
    source_ips: Vec<Cidr>,
    #[serde(default)]
    not_source_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ips: Vec<Cidr>,
    #[serde(default)]
    not_destination_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default)]
    not_service_accounts: Vec<ServiceAccountMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceAccountMatch {
    namespace: String,
    service_account: String,
}

#[derive(Deserialize, Default)]
enum Protocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[default]
    #[serde(rename = "TCP", alias = "NONE")]
    Tcp,
}

#[derive(Deserialize, Default)]
enum Status {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Deserialize)]
enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Deserialize)]
enum Action {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Gateway {
    destination: GatewayDestination,
    #[serde(default = "hbone_port", alias = "hbone_mtls_port")]
    hbone_mtls_port: u16,
}

fn hbone_port() -> u16 {
    model::HBONE_PORT
}

/// `{Exact: x}`, `{Prefix: x}`, `{Suffix: x}` or `{Presence: []}` (also `{}` or null).
#[derive(Deserialize)]
enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(Empty),
}

/// A string match on a principal, `trust-domain/ns/<ns>/sa/<sa>` without the scheme.
struct Principal(model::StringMatch);

/// A CIDR, or a bare address meaning that one host.
struct Cidr(IpNet);

/// `"network/IP"`; `"/IP"` and a bare IP are in the default network.
struct NetAddr(model::NetworkAddress);

/// `"network/IP"` or `{namespace, hostname}`.
struct GatewayDestination(model::GatewayDestination);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespacedHostname {
    namespace: String,
    hostname: String,
}

/// `[]`, `{}` or null.
struct Empty;

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Empty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty value: [], {} or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Empty, A::Error> {
                match seq.next_element::<IgnoredAny>()? {
                    None => Ok(Empty),
                    Some(_) => Err(de::Error::invalid_length(1, &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Empty, A::Error> {
                match map.next_key::<IgnoredAny>()? {
                    None => Ok(Empty),
                    Some(_) => Err(de::Error::invalid_length(1, &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = StringMatch::deserialize(d)?.into_model();
        check_principal(&m).map_err(de::Error::custom)?;
        Ok(Principal(m))
    }
}

fn check_principal(m: &model::StringMatch) -> Result<(), String> {
    let (model::StringMatch::Exact(s) | model::StringMatch::Prefix(s)) = m else {
        return Ok(());
    };
    if s.starts_with("spiffe:") {
        return Err(format!(
            "principal {s:?} must not include the spiffe:// scheme \
             (write <trust domain>/ns/<namespace>/sa/<service account>)"
        ));
    }
    if matches!(m, model::StringMatch::Exact(_))
        && Identity::parse(&format!("spiffe://{s}")).is_err()
    {
        return Err(format!(
            "principal {s:?} is not of the form <trust domain>/ns/<namespace>/sa/<service account>"
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid CIDR {s:?} (expected an address/prefix length like 10.0.0.0/8)"
                ))
            })?;
        Ok(Cidr(net))
    }
}

fn parse_net_addr(s: &str) -> Result<model::NetworkAddress, String> {
    let (network, ip) = s.rsplit_once('/').unwrap_or(("", s));
    let address = ip.parse().map_err(|_| {
        format!("invalid network address {s:?} (expected \"network/IP\", e.g. \"/10.0.0.1\")")
    })?;
    Ok(model::NetworkAddress {
        network: network.to_owned(),
        address,
    })
}

impl<'de> Deserialize<'de> for NetAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_net_addr(&s).map(NetAddr).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for GatewayDestination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GatewayDestination;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"network/IP\" or {namespace, hostname}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let a = parse_net_addr(s).map_err(E::custom)?;
                Ok(GatewayDestination(model::GatewayDestination::Address(
                    a.network, a.address,
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let h =
                    NamespacedHostname::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(GatewayDestination(model::GatewayDestination::Hostname {
                    namespace: h.namespace,
                    hostname: h.hostname,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

impl StringMatch {
    fn into_model(self) -> model::StringMatch {
        match self {
            StringMatch::Exact(s) => model::StringMatch::Exact(s),
            StringMatch::Prefix(s) => model::StringMatch::Prefix(s),
            StringMatch::Suffix(s) => model::StringMatch::Suffix(s),
            StringMatch::Presence(Empty) => model::StringMatch::Presence,
        }
    }
}

impl Gateway {
    fn into_model(self) -> model::GatewayAddress {
        model::GatewayAddress {
            destination: self.destination.0,
            hbone_mtls_port: self.hbone_mtls_port,
        }
    }
}

impl LocalWorkload {
    pub(super) fn uid(&self) -> &str {
        &self.uid
    }

    pub(super) fn into_model(self) -> model::Workload {
        model::Workload {
            uid: self.uid,
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
            trust_domain: self.trust_domain,
            workload_ips: self.workload_ips,
            protocol: match self.protocol {
                Protocol::Hbone => model::TunnelProtocol::Hbone,
                Protocol::Tcp => model::TunnelProtocol::None,
            },
            node: self.node,
            network: self.network,
            services: self.services,
            authorization_policies: self.authorization_policies,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_name: self.workload_name,
            workload_type: self.workload_type,
            cluster_id: self.cluster_id,
            hostname: self.hostname,
            status: match self.status {
                Status::Healthy => model::WorkloadStatus::Healthy,
                Status::Unhealthy => model::WorkloadStatus::Unhealthy,
            },
            waypoint: self.waypoint.map(Gateway::into_model),
        }
    }
}

impl Service {
    pub(super) fn key(&self) -> String {
        model::service_key(&self.namespace, &self.hostname)
    }

    pub(super) fn into_model(self) -> model::Service {
        model::Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips: self.vips.into_iter().map(|v| v.0).collect(),
            ports: self.ports,
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint.map(Gateway::into_model),
        }
    }
}

impl Policy {
    pub(super) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(super) fn into_model(self) -> model::Authorization {
        let rules = self.rules.into_iter().map(|clauses| model::Rule {
            clauses: clauses
                .into_iter()
                .map(|matches| model::Clause {
                    matches: matches.into_iter().map(Match::into_model).collect(),
                })
                .collect(),
        });
        model::Authorization {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                Scope::Global => model::Scope::Global,
                Scope::Namespace => model::Scope::Namespace,
                Scope::WorkloadSelector => model::Scope::WorkloadSelector,
            },
            action: match self.action {
                Action::Allow => model::Action::Allow,
                Action::Deny => model::Action::Deny,
            },
            dry_run: self.dry_run,
            rules: rules.collect(),
        }
    }
}

impl Match {
    fn into_model(self) -> model::Match {
        let strings = |v: Vec<StringMatch>| v.into_iter().map(StringMatch::into_model).collect();
        let principals = |v: Vec<Principal>| v.into_iter().map(|p| p.0).collect();
        let cidrs = |v: Vec<Cidr>| v.into_iter().map(|c| c.0).collect();
        let sas = |v: Vec<ServiceAccountMatch>| {
            v.into_iter()
                .map(|s| model::ServiceAccountMatch {
                    namespace: s.namespace,
                    service_account: s.service_account,
                })
                .collect()
        };
        model::Match {
            namespaces: strings(self.namespaces),
            not_namespaces: strings(self.not_namespaces),
            principals: principals(self.principals),
            not_principals: principals(self.not_principals),
            source_ips: cidrs(self.source_ips),
            not_source_ips: cidrs(self.not_source_ips),
            destination_ips: cidrs(self.destination_ips),
            not_destination_ips: cidrs(self.not_destination_ips),
            destination_ports: self.destination_ports,
            not_destination_ports: self.not_destination_ports,
            service_accounts: sas(self.service_accounts),
            not_service_accounts: sas(self.not_service_accounts),
        }
    }
}
