//! The node proxy's view of the mesh: workloads, services and authorization policies, close to
//! Istio's workload API (`istio.workload`, `istio.security`) so that xDS resources map 1:1.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::identity::Identity;

/// The port on which every mesh workload (and waypoint) accepts HBONE.
pub const HBONE_PORT: u16 = 15008;

/// How a workload accepts inbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not captured by a mesh proxy.
    #[default]
    None,
    /// HTTP/2 CONNECT over mTLS on port 15008.
    Hbone,
}

/// Whether a workload may receive load-balanced traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WorkloadStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// An IP address qualified by the network it is reachable in (`""` is the default network).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

/// Where a waypoint (or gateway) is found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    /// A service VIP or workload IP in a network: `(network, ip)`.
    Address(String, IpAddr),
    /// A service (or workload) by hostname.
    Hostname { namespace: String, hostname: String },
}

/// A waypoint reference, as in `istio.workload.GatewayAddress`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    /// The HBONE port of the waypoint, 15008 unless set.
    pub hbone_mtls_port: u16,
}

/// A pod or VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Unique key, e.g. `cluster1//v1/Pod/default/name`.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Empty means `default`.
    pub service_account: String,
    /// Empty means `cluster.local`.
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: TunnelProtocol,
    pub node: String,
    pub network: String,
    /// Services this workload is an endpoint of: `"ns/hostname"` → service port → target port
    /// (0 when the service's own target port applies).
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// Keys (`ns/name`) of the WORKLOAD_SELECTOR policies that select this workload.
    pub authorization_policies: Vec<String>,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: String,
    pub cluster_id: String,
    pub hostname: String,
    pub status: WorkloadStatus,
    pub waypoint: Option<GatewayAddress>,
}

impl Workload {
    /// The SPIFFE identity of this workload, with the control plane's defaults applied.
    pub fn identity(&self) -> Identity {
        Identity::new(
            self.trust_domain.as_str(),
            self.namespace.as_str(),
            self.service_account.as_str(),
        )
    }

    /// Whether a mesh proxy terminates HBONE in front of this workload.
    pub fn speaks_hbone(&self) -> bool {
        self.protocol == TunnelProtocol::Hbone
    }

    /// The workload IP of the same family as `like`, else the first one.
    pub fn ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        let same = self
            .workload_ips
            .iter()
            .find(|ip| ip.is_ipv6() == like.is_ipv6());
        same.or(self.workload_ips.first()).copied()
    }
}

/// A Kubernetes-style service: VIPs and ports in front of a set of workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port (0: a named port, resolved through each endpoint).
    pub ports: BTreeMap<u16, u16>,
    /// Extra identities an endpoint of this service may present (SPIFFE URIs).
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
}

impl Service {
    /// The resource key, `namespace/hostname`.
    pub fn key(&self) -> String {
        service_key(&self.namespace, &self.hostname)
    }
}

/// The key of a service, `namespace/hostname`.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every workload in the mesh.
    #[default]
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// The workloads that list the policy in `authorization_policies`.
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// An L4 authorization policy (`istio.security.Authorization`). `Default` is the proto's zero
/// value: a GLOBAL ALLOW policy with no rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// Dry-run policies are evaluated for logs only and never decide.
    pub dry_run: bool,
    /// Any rule matching makes the policy match; no rules never match.
    pub rules: Vec<Rule>,
}

impl Authorization {
    /// The resource key, `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Matches when all its clauses match (no clauses: matches).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// Matches when any of its non-empty matches matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Conditions on one connection: every populated field must pass; a positive list passes when
/// any entry matches, a negative list when none does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// The value is not empty.
    Presence,
}

/// Matches a peer whose identity has exactly this namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}
