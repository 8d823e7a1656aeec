//! Outbound resolution: from the original destination of a captured connection to where and how
//! the node proxy connects. Sans-IO: load balancing uses a random number from the caller.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::Snapshot;
use crate::identity::Identity;
use crate::model::{
    GatewayAddress, GatewayDestination, HBONE_PORT, Service, Workload, service_key,
};

/// Where to send a captured outbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// To a mesh workload, or a waypoint, over HBONE.
    Hbone {
        /// The HBONE peer: the destination endpoint, or the waypoint's workload.
        workload: Arc<Workload>,
        /// The service the connection was addressed to, if any (also through a waypoint).
        service: Option<Arc<Service>>,
        /// Where to dial: `endpoint ip:15008`, or the waypoint's ip and HBONE port.
        hbone_addr: SocketAddr,
        /// The CONNECT authority: `endpoint ip:target port`, or through a waypoint the original
        /// destination (VIP:port or pod ip:port) unchanged.
        target: SocketAddr,
        /// The peer must present one of these: its own identity plus the SANs of its service
        /// (the addressed service, or through a waypoint the waypoint's service).
        identities: Vec<Identity>,
    },
    /// To an endpoint without a mesh proxy: plain TCP, service port translated.
    Plain {
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
        target: SocketAddr,
    },
    /// Not in the mesh: connect to the original destination unchanged.
    Passthrough { target: SocketAddr },
}

/// Why an outbound connection has nowhere to go. The proxy closes the downstream connection.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("service {service} has no healthy endpoint")]
    NoHealthyEndpoint { service: String },
    #[error("service {service} does not expose port {port}")]
    PortNotExposed { service: String, port: u16 },
    #[error(
        "service {service} port {port} is a named port and no healthy endpoint defines its \
         target port"
    )]
    NamedPortUnresolved { service: String, port: u16 },
    #[error("waypoint {waypoint} of {of} is not known")]
    UnknownWaypoint { of: String, waypoint: String },
    #[error("waypoint {waypoint} of {of} has no healthy endpoint")]
    WaypointUnavailable { of: String, waypoint: String },
}

impl fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            GatewayDestination::Address(network, ip) => write!(f, "{network}/{ip}"),
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}"),
        }
    }
}

/// `pick` reduced to an index below `n` (`n > 0`).
fn index(pick: u64, n: usize) -> usize {
    // The remainder is below `n`, so it fits in usize.
    (pick % n as u64) as usize
}

impl Snapshot {
    /// Resolves the original destination `dst` of a connection from a workload in `network`:
    /// a service VIP (takes precedence), a workload IP, or else passthrough.
    pub fn resolve(
        &self,
        network: &str,
        dst: SocketAddr,
        pick: u64,
    ) -> Result<Resolution, ResolveError> {
        if let Some(svc) = self.service_by_vip(network, dst.ip()) {
            return self.resolve_service(svc, dst, pick);
        }
        if let Some(wl) = self.workload_by_ip(network, dst.ip()) {
            return self.resolve_workload(wl, dst, pick);
        }
        Ok(Resolution::Passthrough { target: dst })
    }

    fn resolve_service(
        &self,
        svc: &Arc<Service>,
        dst: SocketAddr,
        pick: u64,
    ) -> Result<Resolution, ResolveError> {
        let key = svc.key();
        let port = dst.port();
        let Some(&svc_target) = svc.ports.get(&port) else {
            return Err(ResolveError::PortNotExposed { service: key, port });
        };
        if let Some(wp) = &svc.waypoint {
            return self.via_waypoint(wp, &key, Some(svc), dst, pick);
        }
        let endpoints = self.endpoints(&key);
        if endpoints.is_empty() {
            return Err(ResolveError::NoHealthyEndpoint { service: key });
        }
        let candidates = || {
            endpoints
                .iter()
                .filter_map(|w| target_port(w, &key, port, svc_target).map(|p| (w, p)))
        };
        let n = candidates().count();
        let picked = (n > 0).then(|| candidates().nth(index(pick, n))).flatten();
        let Some((wl, target_port)) = picked else {
            return Err(ResolveError::NamedPortUnresolved { service: key, port });
        };
        // Endpoints always have an address (see `add_workload`); fall back to the VIP's family
        // only to avoid a panic path.
        let ip = wl.ip_like(dst.ip()).unwrap_or(dst.ip());
        Ok(self.to_workload(wl, Some(svc), SocketAddr::new(ip, target_port)))
    }

    fn resolve_workload(
        &self,
        wl: &Arc<Workload>,
        dst: SocketAddr,
        pick: u64,
    ) -> Result<Resolution, ResolveError> {
        if let Some(wp) = &wl.waypoint {
            let waypoint = self.waypoint_endpoint(wp, &wl.uid, dst.ip(), pick)?;
            // A waypoint's own traffic (or a workload naming itself) must not loop.
            if waypoint.0.uid != wl.uid {
                return Ok(self.hbone_to_waypoint(waypoint, wp, None, dst));
            }
        }
        Ok(self.to_workload(wl, None, dst))
    }

    fn to_workload(
        &self,
        wl: &Arc<Workload>,
        svc: Option<&Arc<Service>>,
        target: SocketAddr,
    ) -> Resolution {
        if !wl.speaks_hbone() {
            return Resolution::Plain {
                workload: Some(wl.clone()),
                service: svc.cloned(),
                target,
            };
        }
        Resolution::Hbone {
            workload: wl.clone(),
            service: svc.cloned(),
            hbone_addr: SocketAddr::new(target.ip(), HBONE_PORT),
            target,
            identities: self.identities(wl, svc.map(|s| s.key())),
        }
    }

    fn via_waypoint(
        &self,
        wp: &GatewayAddress,
        of: &str,
        svc: Option<&Arc<Service>>,
        dst: SocketAddr,
        pick: u64,
    ) -> Result<Resolution, ResolveError> {
        let waypoint = self.waypoint_endpoint(wp, of, dst.ip(), pick)?;
        Ok(self.hbone_to_waypoint(waypoint, wp, svc, dst))
    }

    fn hbone_to_waypoint(
        &self,
        (wl, ip, wp_svc): (Arc<Workload>, IpAddr, Option<String>),
        wp: &GatewayAddress,
        svc: Option<&Arc<Service>>,
        dst: SocketAddr,
    ) -> Resolution {
        Resolution::Hbone {
            identities: self.identities(&wl, wp_svc),
            workload: wl,
            service: svc.cloned(),
            hbone_addr: SocketAddr::new(ip, wp.hbone_mtls_port),
            target: dst,
        }
    }

    /// The waypoint workload to dial, its IP, and the key of the waypoint service if it was
    /// found through one.
    fn waypoint_endpoint(
        &self,
        wp: &GatewayAddress,
        of: &str,
        like: IpAddr,
        pick: u64,
    ) -> Result<(Arc<Workload>, IpAddr, Option<String>), ResolveError> {
        let unknown = || ResolveError::UnknownWaypoint {
            of: of.to_owned(),
            waypoint: wp.to_string(),
        };
        let (svc, wl) = match &wp.destination {
            GatewayDestination::Address(network, ip) => {
                if let Some(wl) = self.workload_by_ip(network, *ip) {
                    // Addressed by workload IP: dial exactly that IP.
                    return Ok((wl.clone(), *ip, None));
                }
                (self.service_by_vip(network, *ip), None)
            }
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => {
                let key = service_key(namespace, hostname);
                (self.service_by_key(&key), self.workload_by_hostname(&key))
            }
        };
        let wl = match (svc, wl) {
            (Some(svc), _) => {
                let endpoints = self.endpoints(&svc.key());
                if endpoints.is_empty() {
                    return Err(ResolveError::WaypointUnavailable {
                        of: of.to_owned(),
                        waypoint: wp.to_string(),
                    });
                }
                &endpoints[index(pick, endpoints.len())]
            }
            (None, Some(wl)) => wl,
            (None, None) => return Err(unknown()),
        };
        let ip = wl.ip_like(like).ok_or_else(unknown)?;
        Ok((wl.clone(), ip, svc.map(|s| s.key())))
    }

    /// The workload's identity, then the SANs of the service it is reached through.
    fn identities(&self, wl: &Workload, svc_key: Option<String>) -> Vec<Identity> {
        let mut ids = vec![wl.identity()];
        for san in svc_key.as_deref().map_or(&[][..], |k| self.service_sans(k)) {
            if !ids.contains(san) {
                ids.push(san.clone());
            }
        }
        ids
    }
}

/// The port an endpoint listens on for a service port: the endpoint's own mapping first, else
/// the service's target port; `None` for a named port the endpoint does not define.
fn target_port(wl: &Workload, key: &str, port: u16, svc_target: u16) -> Option<u16> {
    let own = wl.services.get(key).and_then(|ports| ports.get(&port));
    match own {
        Some(&p) if p != 0 => Some(p),
        _ => (svc_target != 0).then_some(svc_target),
    }
}
