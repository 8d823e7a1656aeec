//! Istio's certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`):
//! a node proxy sends a CSR for one of its pods' identities and gets `[leaf, root]` back.
//!
//! Who may get what is decided here ([`check_request`], no IO): the CSR must be validly signed
//! and ask for nothing but the SPIFFE URI of the identity; the identity (from the
//! `ImpersonatedIdentity` metadata when present, else the CSR) must be in our trust domain and
//! belong to a workload on the caller's node (istio/istio#41379). Signing is
//! [`zmesh_hbone::ca::DevCa`]'s.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use zmesh_hbone::ca::{Csr, DevCa, LeafSpec};
use zmesh_proto::ca::istio_certificate_service_server::IstioCertificateService;
use zmesh_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use zmesh_state::Identity;

use crate::Resources;
use crate::auth::{self, Authenticator, Caller};

/// The metadata key a node proxy uses to ask for a pod's identity rather than its own.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Istio's default workload certificate lifetime, also our default cap.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// CA policy settings.
#[derive(Clone, Debug)]
pub struct CaPolicy {
    /// The only trust domain this CA signs for.
    pub trust_domain: String,
    /// Longest leaf lifetime; also what a request without `validity_duration` gets.
    pub max_ttl: Duration,
}

/// Why a request is refused, as the caller will read it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::InvalidArgument(m) => Status::invalid_argument(m),
            Refusal::PermissionDenied(m) => Status::permission_denied(m),
        }
    }
}

/// A request that passed every check: sign `csr` for `identity`, valid for `ttl`.
#[derive(Debug)]
pub struct Approved {
    pub csr: Csr,
    pub identity: Identity,
    pub ttl: Duration,
}

/// Checks a certificate request from `caller` against the current `resources`.
pub fn check_request(
    req: &IstioCertificateRequest,
    caller: &Caller,
    resources: &Resources,
    policy: &CaPolicy,
) -> Result<Approved, Refusal> {
    let invalid = |m: String| Refusal::InvalidArgument(m);
    let csr = Csr::from_pem(&req.csr).map_err(|e| invalid(format!("invalid CSR: {e}")))?;
    if !csr.other_sans.is_empty() {
        return Err(invalid(format!(
            "CSR asks for non-SPIFFE SAN(s) [{}]; only the workload's spiffe:// URI is allowed",
            csr.other_sans.join(", ")
        )));
    }
    let mut from_csr: Option<Identity> = None;
    for uri in &csr.uris {
        let id = Identity::parse(uri).map_err(|e| invalid(format!("CSR SAN: {e}")))?;
        match &from_csr {
            Some(first) if *first != id => {
                return Err(invalid(format!(
                    "CSR asks for two identities, {first} and {id}; one certificate carries one"
                )));
            }
            _ => from_csr = Some(id),
        }
    }
    let impersonated = impersonated_identity(req)?;
    let identity = match (impersonated, from_csr) {
        (Some(meta), Some(san)) if meta != san => {
            return Err(invalid(format!(
                "{IMPERSONATED_IDENTITY} {meta} does not match the CSR's SAN {san}"
            )));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(invalid(format!(
                "no identity: the CSR has no spiffe:// URI SAN and no {IMPERSONATED_IDENTITY} was given"
            )));
        }
    };
    if identity.trust_domain != policy.trust_domain {
        return Err(invalid(format!(
            "{identity} is in trust domain {:?}; this CA signs only for {:?}",
            identity.trust_domain, policy.trust_domain
        )));
    }
    if !resources
        .identities_on_node(&caller.node)
        .contains(&identity.to_uri())
    {
        return Err(Refusal::PermissionDenied(format!(
            "identity {identity} has no workload on node {:?}, the caller's node",
            caller.node
        )));
    }
    let ttl = match u64::try_from(req.validity_duration) {
        Ok(secs) if secs > 0 => Duration::from_secs(secs).min(policy.max_ttl),
        _ => policy.max_ttl,
    };
    Ok(Approved { csr, identity, ttl })
}

fn impersonated_identity(req: &IstioCertificateRequest) -> Result<Option<Identity>, Refusal> {
    let Some(value) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(s)) => Identity::parse(s)
            .map(Some)
            .map_err(|e| Refusal::InvalidArgument(format!("{IMPERSONATED_IDENTITY}: {e}"))),
        _ => Err(Refusal::InvalidArgument(format!(
            "{IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}

/// The gRPC certificate service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<DevCa>,
    auth: Arc<dyn Authenticator>,
    resources: watch::Receiver<Arc<Resources>>,
    policy: CaPolicy,
}

impl CaService {
    pub fn new(
        ca: Arc<DevCa>,
        auth: Arc<dyn Authenticator>,
        resources: watch::Receiver<Arc<Resources>>,
        policy: CaPolicy,
    ) -> CaService {
        CaService {
            ca,
            auth,
            resources,
            policy,
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = auth::authenticate(&*self.auth, request.metadata())
            .await
            .inspect_err(|s| {
                tracing::info!(remote = ?request.remote_addr(), reason = s.message(),
                    "ca: refused caller");
            })?;
        let resources = self.resources.borrow().clone();
        let approved = check_request(request.get_ref(), &caller, &resources, &self.policy)
            .inspect_err(|r| {
                tracing::warn!(node = %caller.node, reason = %r, "ca: refused certificate");
            })?;
        let spec = LeafSpec::for_identity(&approved.identity, approved.ttl);
        let leaf = self.ca.sign_csr(&approved.csr, &spec).map_err(|e| {
            tracing::error!(error = %e, "ca: signing failed");
            Status::internal("signing failed")
        })?;
        tracing::info!(node = %caller.node, identity = %approved.identity,
            ttl_secs = approved.ttl.as_secs(), "ca: issued certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf, self.ca.root_pem().to_string()],
        }))
    }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
