//! TLS for HBONE: TLS 1.3 only, AES-GCM suites only, ALPN `h2`, no SNI, no resumption, and
//! SPIFFE identities instead of host names.
//!
//! - The client verifies the server's chain against its own trust roots and then requires one
//!   of the server's URI SANs to equal one of the identities it expects for the destination.
//! - The server requires a client certificate chaining to its roots whose SPIFFE identity is in
//!   the server's own trust domain. Who may talk to whom is decided later, by policy.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use zmesh_state::Identity;

/// ALPN protocol both ends announce.
pub const ALPN_H2: &[u8] = b"h2";

/// Why certificate material was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("no private key found in {0}: {1}")]
    NoKey(String, String),
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    #[error("certificate has no SPIFFE identity (URI SAN spiffe://<td>/ns/<ns>/sa/<sa>)")]
    NoIdentity,
    #[error("certificate is for {found}, expected {expected}")]
    WrongIdentity { found: String, expected: String },
    #[error("no trust roots given")]
    NoRoots,
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// A workload's certificate: leaf first, then intermediates, its key, and the roots that came
/// with it (which are also what this workload trusts).
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    root_store: Arc<RootCertStore>,
}

impl WorkloadCert {
    /// Builds a workload certificate, checking that the leaf carries exactly the SPIFFE identity
    /// found in it (the first one) and reading its validity.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCert, CertError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::NoCertificate("chain".into()))?;
        let info = leaf_info(leaf)?;
        let identity = info
            .identities
            .into_iter()
            .next()
            .ok_or(CertError::NoIdentity)?;
        if roots.is_empty() {
            return Err(CertError::NoRoots);
        }
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone())?;
        }
        Ok(WorkloadCert {
            identity,
            chain,
            key,
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
            root_store: Arc::new(store),
        })
    }

    /// Parses PEM: the chain (leaf first), a PKCS#8/SEC1/PKCS#1 key, and one or more roots.
    pub fn from_pem(chain: &[u8], key: &[u8], roots: &[u8]) -> Result<WorkloadCert, CertError> {
        let chain = parse_certs(chain, "certificate chain")?;
        let roots = parse_certs(roots, "root certificates")?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| CertError::NoKey("key".into(), e.to_string()))?;
        WorkloadCert::new(chain, key, roots)
    }

    /// The time at which Istio's rule says to renew: half-way through the lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// Roots as a rustls store, built once.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.root_store.clone()
    }

    /// The leaf and intermediates as PEM (for config dumps).
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }
}

/// What we need from a leaf certificate.
pub struct LeafInfo {
    pub identities: Vec<Identity>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Reads the SPIFFE identities (URI SANs that parse as SPIFFE ids) and the validity of a leaf.
pub fn leaf_info(cert: &CertificateDer<'_>) -> Result<LeafInfo, CertError> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut identities = Vec::new();
    if let Some(san) = x509
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Ok(id) = Identity::parse(uri)
            {
                identities.push(id);
            }
        }
    }
    let validity = x509.validity();
    let to_time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp().max(0) as u64;
        UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(LeafInfo {
        identities,
        not_before: to_time(&validity.not_before),
        not_after: to_time(&validity.not_after),
    })
}

/// The SPIFFE identities in a peer's leaf certificate (empty when it has none or cannot parse).
pub fn peer_identities(certs: Option<&[CertificateDer<'_>]>) -> Vec<Identity> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| leaf_info(leaf).ok())
        .map(|i| i.identities)
        .unwrap_or_default()
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate(what.into()));
    }
    Ok(certs)
}

/// PEM-encodes DER bytes.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// The crypto provider: aws-lc-rs, restricted to the two AES-GCM TLS 1.3 suites HBONE allows.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = aws_lc_rs::default_provider();
            p.cipher_suites = vec![
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ];
            Arc::new(p)
        })
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Server configuration for a workload's HBONE listener.
pub fn server_config(cert: &WorkloadCert) -> Result<Arc<ServerConfig>, CertError> {
    let inner = WebPkiClientVerifier::builder_with_provider(cert.root_store(), provider())
        .build()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner,
        trust_domain: cert.identity.trust_domain.clone(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Client configuration: present `cert`, accept only a server holding one of `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, CertError> {
    let verifier = Arc::new(IdentityVerifier {
        roots: cert.root_store(),
        expected,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The name given to rustls on connect: unused (no SNI, no name check), as in ztunnel.
pub fn unused_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// A server that is not one of the expected identities.
#[derive(Debug, thiserror::Error)]
#[error("server identity {found:?} is none of the expected {expected:?}")]
pub struct IdentityMismatch {
    pub found: Vec<String>,
    pub expected: Vec<String>,
}

/// A client from another trust domain.
#[derive(Debug, thiserror::Error)]
#[error("client identity {found:?} is not in trust domain {trust_domain}")]
pub struct TrustDomainMismatch {
    pub found: Vec<String>,
    pub trust_domain: String,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let found = peer_identities(Some(std::slice::from_ref(end_entity)));
        if found.iter().any(|id| self.expected.contains(id)) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(other(IdentityMismatch {
            found: found.iter().map(Identity::to_uri).collect(),
            expected: self.expected.iter().map(Identity::to_uri).collect(),
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = peer_identities(Some(std::slice::from_ref(end_entity)));
        if found.iter().any(|id| id.trust_domain == self.trust_domain) {
            return Ok(ClientCertVerified::assertion());
        }
        Err(other(TrustDomainMismatch {
            found: found.iter().map(Identity::to_uri).collect(),
            trust_domain: self.trust_domain.clone(),
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
