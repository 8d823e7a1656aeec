//! Kubernetes Services → `istio.workload.Service` (the VIPs and ports; endpoints are the
//! workloads whose `services` map names the service).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use zmesh_proto::workload::{self, AppProtocol, IpFamilies, NetworkAddress, Port};

use super::{MeshOptions, Warning};
use crate::objects::{IntOrString, Kind, ObjectKey, Service, ServicePort};
use crate::store::Store;

/// Where a service port sends traffic on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TargetPort {
    Number(u32),
    /// A container port name, resolved per pod (the Service carries target port 0).
    Named(String),
}

/// A translated Service plus what workloads need to list it in their `services` map.
#[derive(Debug)]
pub(super) struct ServiceInfo {
    /// `<namespace>/<hostname>`.
    pub key: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<(u32, TargetPort)>,
    pub resource: workload::Service,
}

impl ServiceInfo {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Translated services by namespace.
#[derive(Debug, Default)]
pub(super) struct Services {
    by_namespace: HashMap<String, Vec<ServiceInfo>>,
}

impl Services {
    pub fn in_namespace(&self, namespace: &str) -> &[ServiceInfo] {
        self.by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn into_resources(self) -> impl Iterator<Item = workload::Service> {
        self.by_namespace
            .into_values()
            .flatten()
            .map(|s| s.resource)
    }
}

pub(super) fn translate(
    store: &Store,
    opts: &MeshOptions,
    warnings: &mut Vec<Warning>,
) -> Services {
    let mut services = Services::default();
    for svc in store.services() {
        if let Some(info) = translate_one(svc, opts, warnings) {
            services
                .by_namespace
                .entry(svc.metadata.namespace.clone())
                .or_default()
                .push(info);
        }
    }
    services
}

fn translate_one(
    svc: &Service,
    opts: &MeshOptions,
    warnings: &mut Vec<Warning>,
) -> Option<ServiceInfo> {
    let meta = &svc.metadata;
    let key = || ObjectKey::new(Kind::Service, meta.namespace.clone(), meta.name.clone());
    let selector = svc.spec.selector.clone().filter(|s| !s.is_empty())?;
    if svc.spec.type_ == "ExternalName" {
        return None;
    }
    let ips = cluster_ips(svc);
    if ips.iter().any(|ip| ip == "None") {
        return None; // headless: no VIP to serve
    }
    let mut vips = Vec::new();
    for ip in &ips {
        match ip.parse::<IpAddr>() {
            Ok(ip) => vips.push(ip),
            Err(_) => warnings.push(Warning::new(
                key(),
                format!("clusterIP {ip:?} is not an IP; ignored"),
            )),
        }
    }
    if vips.is_empty() {
        // In a directory nothing allocates cluster IPs: the file must carry one.
        warnings.push(Warning::new(
            key(),
            "no clusterIP: the service is not served",
        ));
        return None;
    }
    let hostname = format!(
        "{}.{}.svc.{}",
        meta.name, meta.namespace, opts.cluster_domain
    );
    let ports: Vec<(u32, TargetPort)> = svc
        .spec
        .ports
        .iter()
        .map(|p| (u32::from(p.port), target_port(p)))
        .collect();
    let resource = workload::Service {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        hostname: hostname.clone(),
        addresses: vips
            .iter()
            .map(|ip| NetworkAddress {
                network: opts.network.clone(),
                address: ip_bytes(*ip),
                length: None,
            })
            .collect(),
        ports: svc
            .spec
            .ports
            .iter()
            .zip(&ports)
            .map(|(p, (port, target))| Port {
                service_port: *port,
                target_port: match target {
                    TargetPort::Number(n) => *n,
                    TargetPort::Named(_) => 0,
                },
                app_protocol: app_protocol(p) as i32,
            })
            .collect(),
        ip_families: ip_families(&vips) as i32,
        canonical: true,
        ..Default::default()
    };
    Some(ServiceInfo {
        key: format!("{}/{hostname}", meta.namespace),
        selector,
        ports,
        resource,
    })
}

fn cluster_ips(svc: &Service) -> Vec<String> {
    if !svc.spec.cluster_ips.is_empty() {
        svc.spec.cluster_ips.clone()
    } else if !svc.spec.cluster_ip.is_empty() {
        vec![svc.spec.cluster_ip.clone()]
    } else {
        Vec::new()
    }
}

/// `targetPort` defaults to `port`; a numeric string counts as a number.
fn target_port(p: &ServicePort) -> TargetPort {
    match &p.target_port {
        None => TargetPort::Number(u32::from(p.port)),
        Some(IntOrString::Int(n)) => TargetPort::Number(u32::from(*n)),
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) => TargetPort::Number(u32::from(n)),
            Err(_) => TargetPort::Named(s.clone()),
        },
    }
}

/// The protocol as istiod derives it: `appProtocol`, else the port name's prefix (`http-web`).
fn app_protocol(p: &ServicePort) -> AppProtocol {
    if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
        return AppProtocol::Unknown;
    }
    let name = p
        .app_protocol
        .clone()
        .unwrap_or_else(|| p.name.split('-').next().unwrap_or_default().to_owned())
        .to_ascii_lowercase();
    match name.as_str() {
        "http" => AppProtocol::Http11,
        "http2" | "h2c" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" | "grpc-web" => AppProtocol::Grpc,
        _ => AppProtocol::Unknown,
    }
}

fn ip_families(vips: &[IpAddr]) -> IpFamilies {
    let v4 = vips.iter().any(IpAddr::is_ipv4);
    let v6 = vips.iter().any(IpAddr::is_ipv6);
    match (v4, v6) {
        (true, true) => IpFamilies::Dual,
        (false, true) => IpFamilies::Ipv6Only,
        _ => IpFamilies::Ipv4Only,
    }
}

/// 4 or 16 raw bytes, as the workload API carries addresses.
pub(super) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
