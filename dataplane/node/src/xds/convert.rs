//! Istio's xDS resources (`istio.workload.Address`, `istio.security.Authorization`) → zmesh's
//! mesh model. Sans-IO: bytes in, model values or a reason out. Checks that need the other
//! resources (duplicate addresses, unknown references) are left to `Snapshot::new`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use prost::Message;
use zmesh_proto::{security as sec, workload as wl};
use zmesh_state::{
    Action, Authorization, Clause, GatewayAddress, GatewayDestination, Match, NetworkAddress, Rule,
    Scope, Service, ServiceAccountMatch, StringMatch, TunnelProtocol, Workload, WorkloadStatus,
};

/// Why one resource cannot be used; the text goes into the NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("unexpected type url {0}")]
    TypeUrl(String),
    #[error("Address has neither workload nor service")]
    EmptyAddress,
    #[error("{field}: address of {len} bytes (want 4 or 16)")]
    IpLength { field: &'static str, len: usize },
    #[error("{field}: prefix length {len} too long for {ip}")]
    Prefix {
        field: &'static str,
        ip: IpAddr,
        len: u32,
    },
    #[error("{field}: port {port} out of range")]
    Port { field: &'static str, port: u32 },
    #[error("{field}: unknown enum value {value}")]
    Enum { field: &'static str, value: i32 },
    #[error("{field}: string match with no value")]
    EmptyStringMatch { field: &'static str },
}

/// One decoded `Address` resource. (Unboxed: a few hundred bytes per stored resource do not
/// matter, and the store moves them rarely.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

/// Decodes an `Address` (or a bare `Workload`, which Istio may also send) from an `Any`.
pub fn address(any: &prost_types::Any) -> Result<AddressResource, ConvertError> {
    const WORKLOAD_URL: &str = "type.googleapis.com/istio.workload.Workload";
    if any.type_url == WORKLOAD_URL {
        let w = wl::Workload::decode(any.value.as_slice()).map_err(decode("Workload"))?;
        return workload(w).map(AddressResource::Workload);
    }
    if any.type_url != zmesh_proto::type_url::ADDRESS {
        return Err(ConvertError::TypeUrl(any.type_url.clone()));
    }
    let a = wl::Address::decode(any.value.as_slice()).map_err(decode("Address"))?;
    match a.r#type {
        Some(wl::address::Type::Workload(w)) => workload(w).map(AddressResource::Workload),
        Some(wl::address::Type::Service(s)) => service(s).map(AddressResource::Service),
        None => Err(ConvertError::EmptyAddress),
    }
}

/// Decodes an `Authorization` from an `Any`.
pub fn authorization(any: &prost_types::Any) -> Result<Authorization, ConvertError> {
    if any.type_url != zmesh_proto::type_url::AUTHORIZATION {
        return Err(ConvertError::TypeUrl(any.type_url.clone()));
    }
    let p = sec::Authorization::decode(any.value.as_slice()).map_err(decode("Authorization"))?;
    policy(p)
}

fn decode(what: &'static str) -> impl Fn(prost::DecodeError) -> ConvertError {
    move |e| ConvertError::Decode {
        what,
        reason: e.to_string(),
    }
}

fn ip(field: &'static str, b: &[u8]) -> Result<IpAddr, ConvertError> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default())),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default())),
        len => Err(ConvertError::IpLength { field, len }),
    }
}

fn port(field: &'static str, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| ConvertError::Port { field, port: p })
}

pub fn workload(w: wl::Workload) -> Result<Workload, ConvertError> {
    let protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        // Legacy sidecar mTLS is not spoken here: such workloads are reached in plain TCP,
        // which their sidecar accepts in PERMISSIVE mode.
        Ok(wl::TunnelProtocol::None | wl::TunnelProtocol::LegacyIstioMtls) => TunnelProtocol::None,
        Err(_) => {
            return Err(ConvertError::Enum {
                field: "tunnel_protocol",
                value: w.tunnel_protocol,
            });
        }
    };
    let status = match wl::WorkloadStatus::try_from(w.status) {
        Ok(wl::WorkloadStatus::Healthy) => WorkloadStatus::Healthy,
        Ok(wl::WorkloadStatus::Unhealthy) => WorkloadStatus::Unhealthy,
        Err(_) => {
            return Err(ConvertError::Enum {
                field: "status",
                value: w.status,
            });
        }
    };
    let workload_type = match wl::WorkloadType::try_from(w.workload_type) {
        Ok(wl::WorkloadType::Deployment) => "deployment",
        Ok(wl::WorkloadType::Cronjob) => "cronjob",
        Ok(wl::WorkloadType::Pod) => "pod",
        Ok(wl::WorkloadType::Job) => "job",
        Err(_) => {
            return Err(ConvertError::Enum {
                field: "workload_type",
                value: w.workload_type,
            });
        }
    };
    let workload_ips = w
        .addresses
        .iter()
        .map(|a| ip("addresses", a))
        .collect::<Result<_, _>>()?;
    let mut services = BTreeMap::new();
    for (key, list) in w.services {
        let mut ports = BTreeMap::new();
        for p in list.ports {
            ports.insert(
                port("services.service_port", p.service_port)?,
                port("services.target_port", p.target_port)?,
            );
        }
        services.insert(key, ports);
    }
    Ok(Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account,
        trust_domain: w.trust_domain,
        workload_ips,
        protocol,
        node: w.node,
        network: w.network,
        services,
        authorization_policies: w.authorization_policies,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_name: w.workload_name,
        workload_type: workload_type.to_owned(),
        cluster_id: w.cluster_id,
        hostname: w.hostname,
        status,
        waypoint: w.waypoint.map(gateway).transpose()?,
    })
}

pub fn service(s: wl::Service) -> Result<Service, ConvertError> {
    let vips = s
        .addresses
        .iter()
        .map(|a| {
            Ok(NetworkAddress {
                network: a.network.clone(),
                address: ip("addresses", &a.address)?,
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let mut ports = BTreeMap::new();
    for p in &s.ports {
        ports.insert(
            port("ports.service_port", p.service_port)?,
            port("ports.target_port", p.target_port)?,
        );
    }
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        subject_alt_names: s.subject_alt_names,
        waypoint: s.waypoint.map(gateway).transpose()?,
    })
}

fn gateway(g: wl::GatewayAddress) -> Result<GatewayAddress, ConvertError> {
    let destination = match g.destination {
        Some(wl::gateway_address::Destination::Hostname(h)) => GatewayDestination::Hostname {
            namespace: h.namespace,
            hostname: h.hostname,
        },
        Some(wl::gateway_address::Destination::Address(a)) => {
            GatewayDestination::Address(a.network, ip("waypoint.address", &a.address)?)
        }
        None => {
            return Err(ConvertError::Decode {
                what: "GatewayAddress",
                reason: "no destination".to_owned(),
            });
        }
    };
    let hbone_mtls_port = match g.hbone_mtls_port {
        0 => zmesh_state::HBONE_PORT,
        p => port("waypoint.hbone_mtls_port", p)?,
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

pub fn policy(p: sec::Authorization) -> Result<Authorization, ConvertError> {
    let scope = match sec::Scope::try_from(p.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => {
            return Err(ConvertError::Enum {
                field: "scope",
                value: p.scope,
            });
        }
    };
    let action = match sec::Action::try_from(p.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => {
            return Err(ConvertError::Enum {
                field: "action",
                value: p.action,
            });
        }
    };
    let rules = p
        .rules
        .into_iter()
        .map(|r| {
            let clauses = r
                .clauses
                .into_iter()
                .map(|c| {
                    let matches = c
                        .matches
                        .into_iter()
                        .map(rbac_match)
                        .collect::<Result<_, _>>()?;
                    Ok(Clause { matches })
                })
                .collect::<Result<_, ConvertError>>()?;
            Ok(Rule { clauses })
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        dry_run: p.dry_run,
        rules,
    })
}

fn rbac_match(m: sec::Match) -> Result<Match, ConvertError> {
    Ok(Match {
        namespaces: strings("namespaces", m.namespaces)?,
        not_namespaces: strings("not_namespaces", m.not_namespaces)?,
        principals: strings("principals", m.principals)?,
        not_principals: strings("not_principals", m.not_principals)?,
        source_ips: cidrs("source_ips", m.source_ips)?,
        not_source_ips: cidrs("not_source_ips", m.not_source_ips)?,
        destination_ips: cidrs("destination_ips", m.destination_ips)?,
        not_destination_ips: cidrs("not_destination_ips", m.not_destination_ips)?,
        destination_ports: ports("destination_ports", m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", m.not_destination_ports)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
    })
}

fn strings(
    field: &'static str,
    list: Vec<sec::StringMatch>,
) -> Result<Vec<StringMatch>, ConvertError> {
    use sec::string_match::MatchType;
    list.into_iter()
        .map(|s| match s.match_type {
            Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
            Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
            Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v)),
            Some(MatchType::Presence(_)) => Ok(StringMatch::Presence),
            None => Err(ConvertError::EmptyStringMatch { field }),
        })
        .collect()
}

fn cidrs(field: &'static str, list: Vec<sec::Address>) -> Result<Vec<IpNet>, ConvertError> {
    list.into_iter()
        .map(|a| {
            let addr = ip(field, &a.address)?;
            let len = u8::try_from(a.length).ok();
            len.and_then(|l| IpNet::new(addr, l).ok())
                .ok_or(ConvertError::Prefix {
                    field,
                    ip: addr,
                    len: a.length,
                })
        })
        .collect()
}

fn ports(field: &'static str, list: Vec<u32>) -> Result<Vec<u16>, ConvertError> {
    list.into_iter().map(|p| port(field, p)).collect()
}

fn accounts(list: Vec<sec::ServiceAccountMatch>) -> Vec<ServiceAccountMatch> {
    list.into_iter()
        .map(|a| ServiceAccountMatch {
            namespace: a.namespace,
            service_account: a.service_account,
        })
        .collect()
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
