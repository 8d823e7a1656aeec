//! The CA client: `istio.v1.auth.IstioCertificateService/CreateCertificate` on behalf of a
//! local workload (`ImpersonatedIdentity`), as Istio's node proxy asks in shared mode.

use std::sync::Arc;
use std::time::Duration;

use zmesh_hbone::csr::{CsrError, CsrRequest};
use zmesh_proto::ca::IstioCertificateRequest;
use zmesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zmesh_proto::prost_types::{Struct, Value, value::Kind};
use zmesh_state::Identity;

use crate::grpc::{GrpcError, Target};
use crate::state::IdentityCert;

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("CA refused: {0}")]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("the CA call did not finish in {0:?}")]
    Timeout(Duration),
}

/// Asks one CA for certificates.
#[derive(Clone, Debug)]
pub struct CaClient {
    pub target: Target,
    /// Requested lifetime (`validity_duration`).
    pub ttl: Duration,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl CaClient {
    /// A new key and a certificate for `id`, checked to carry exactly `id` and a root.
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<IdentityCert>, CaError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.fetch_inner(id)).await {
            Ok(r) => r,
            Err(_) => Err(CaError::Timeout(CALL_TIMEOUT)),
        }
    }

    async fn fetch_inner(&self, id: &Identity) -> Result<Arc<IdentityCert>, CaError> {
        let csr = CsrRequest::new(id)?;
        let channel = self.target.connect().await?;
        let mut client =
            IstioCertificateServiceClient::with_interceptor(channel, self.target.headers()?);
        let mut metadata = Struct::default();
        metadata.fields.insert(
            "ImpersonatedIdentity".to_owned(),
            Value {
                kind: Some(Kind::StringValue(id.to_uri())),
            },
        );
        let req = IstioCertificateRequest {
            csr: csr.csr_pem.clone(),
            validity_duration: self.ttl.as_secs() as i64,
            metadata: Some(metadata),
        };
        let resp = client.create_certificate(req).await?.into_inner();
        let cert = csr.finish(&resp.cert_chain)?;
        let server = zmesh_hbone::tls::server_config(&cert).map_err(CsrError::from)?;
        Ok(Arc::new(IdentityCert { cert, server }))
    }
}
