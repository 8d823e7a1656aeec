//! A development certificate authority: mints SPIFFE workload certificates the way Istio's CA
//! does (ECDSA P-256, empty subject, one URI SAN, server+client EKU), so a node proxy can run
//! mTLS without a control plane (`zmesh-node --dev-ca DIR`), and tests can forge the bad
//! certificates a real peer might present.
//!
//! The CA persists in a directory (`ca-cert.pem`, `ca-key.pem` mode 0600) so that several node
//! proxies pointed at the same directory share one root and trust each other. The controller
//! uses the same CA to sign certificate signing requests ([`Csr`], [`DevCa::sign_csr`]) and to
//! issue its own serving certificate ([`DevCa::issue_server`]); which identity a caller may get
//! is the controller's decision, not this module's.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zmesh_state::Identity;

use crate::tls::{CertError, WorkloadCert};

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_LOCK: &str = "ca.lock";
/// How long a generated development root lives.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start to be valid a little in the past, so small clock skews between nodes do
/// not reject fresh certificates.
const BACKDATE: Duration = Duration::from_secs(300);

/// Errors from the development CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Why a certificate signing request is refused before any policy is applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is not PEM (expected -----BEGIN CERTIFICATE REQUEST-----): {0}")]
    Pem(String),
    #[error("CSR PEM block is {0:?}, expected \"CERTIFICATE REQUEST\"")]
    PemTag(String),
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Der(String),
    #[error("CSR signature does not verify with its own public key")]
    Signature,
    #[error("CSR public key is not supported: {0}")]
    PublicKey(String),
}

/// A certificate signing request whose signature was checked (so the requester holds the
/// private key), reduced to what a CA needs: the public key and the requested names. The
/// subject and any other requested extension are ignored; the CA decides what goes in a leaf.
pub struct Csr {
    public_key: rcgen::SubjectPublicKeyInfo,
    /// URI SANs, in the order requested.
    pub uris: Vec<String>,
    /// Requested SANs of any other kind (DNS names, IPs, e-mails, ...), as text.
    pub other_sans: Vec<String>,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr")
            .field("uris", &self.uris)
            .field("other_sans", &self.other_sans)
            .finish_non_exhaustive()
    }
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST` and verifies its self-signature.
    pub fn from_pem(pem_text: &str) -> Result<Csr, CsrError> {
        let block = pem::parse(pem_text).map_err(|e| CsrError::Pem(e.to_string()))?;
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::PemTag(block.tag().to_string()));
        }
        Csr::from_der(block.contents())
    }

    /// Parses a DER PKCS#10 request and verifies its self-signature.
    pub fn from_der(der: &[u8]) -> Result<Csr, CsrError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::prelude::FromDer;

        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Der("trailing bytes after the request".into()));
        }
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        let spki = csr.certification_request_info.subject_pki.raw;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| CsrError::PublicKey(e.to_string()))?;
        let (mut uris, mut other_sans) = (Vec::new(), Vec::new());
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push((*uri).to_string()),
                        other => other_sans.push(other.to_string()),
                    }
                }
            }
        }
        Ok(Csr {
            public_key,
            uris,
            other_sans,
        })
    }
}

/// What to put in a leaf certificate; tests use it to mint wrong ones.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafSpec {
    pub fn for_identity(id: &Identity, ttl: Duration) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            uris: vec![id.to_uri()],
            not_before: now - BACKDATE,
            not_after: now + ttl,
        }
    }
}

/// A certificate authority holding its key in memory.
pub struct DevCa {
    root: CertificateDer<'static>,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A fresh in-memory CA.
    pub fn generate(name: &str) -> Result<DevCa, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, "zmesh development CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let cert = params.self_signed(&key)?;
        let root_pem = cert.pem();
        let root = cert.der().clone();
        Ok(DevCa {
            root,
            root_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA kept in `dir`, creating it on first use. Safe when several processes start
    /// at once: one creates it, the others wait for its files.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<DevCa, CaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io {
                path: path.clone(),
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let lock = dir.join(CA_LOCK);
        if fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            if !cert_path.exists() {
                let ca = DevCa::generate(name)?;
                write_private(&key_path, ca.issuer.key().serialize_pem().as_bytes())
                    .map_err(io(&key_path))?;
                let tmp = dir.join(".ca-cert.pem.tmp");
                fs::write(&tmp, ca.root_pem.as_bytes()).map_err(io(&tmp))?;
                fs::rename(&tmp, &cert_path).map_err(io(&cert_path))?;
                return Ok(ca);
            }
        } else {
            // Another process holds the lock: its certificate appears once the key is written.
            for _ in 0..100 {
                if cert_path.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        DevCa::from_pem(&cert_pem, &key_pem)
    }

    /// A CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let root = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        Ok(DevCa {
            root,
            root_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA's private key as PEM, to persist it (in a file or a Kubernetes Secret) and load
    /// it back with [`DevCa::from_pem`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A workload certificate for `id`, valid for `ttl`.
    pub fn issue(&self, id: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        let (chain, key) = self.issue_raw(&LeafSpec::for_identity(id, ttl))?;
        Ok(WorkloadCert::new(chain, key, vec![self.root.clone()])?)
    }

    /// A leaf exactly as `spec` says, with a new P-256 key; no checks.
    pub fn issue_raw(
        &self,
        spec: &LeafSpec,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = leaf_params(spec)?.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }

    /// Signs the public key of `csr` into a workload leaf as `spec` says (its URIs, not the
    /// CSR's: the caller has already decided which identity the requester gets). Returns the
    /// leaf in PEM.
    pub fn sign_csr(&self, csr: &Csr, spec: &LeafSpec) -> Result<String, CaError> {
        Ok(leaf_params(spec)?
            .signed_by(&csr.public_key, &self.issuer)?
            .pem())
    }

    /// A TLS server certificate (DNS and IP SANs, serverAuth) with a new P-256 key, for the
    /// controller's own gRPC endpoint.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "zmesh-control");
        params.distinguished_name = dn;
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }
}

/// Istio's workload leaf: empty subject, the URI SANs, KU digitalSignature+keyEncipherment,
/// EKU serverAuth+clientAuth, a random serial.
fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for uri in &spec.uris {
        let uri = uri.as_str().try_into()?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = spec.not_before.into();
    params.not_after = spec.not_after.into();
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_spiffe_leaf_and_persists_root() {
        let dir = tempfile_dir();
        let id = Identity::parse("spiffe://cluster.local/ns/demo/sa/web").expect("valid id");
        let a = DevCa::load_or_create(&dir, "cluster.local").expect("create");
        let b = DevCa::load_or_create(&dir, "cluster.local").expect("load");
        assert_eq!(a.root(), b.root(), "a second load must keep the same root");
        let cert = b.issue(&id, Duration::from_secs(3600)).expect("issue");
        assert_eq!(cert.identity, id);
        assert!(cert.not_after > SystemTime::now());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.join(CA_KEY))
                .expect("key file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn signs_csr_with_the_given_identity_not_the_subject() {
        let ca = DevCa::generate("test").expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "ignored");
        params.subject_alt_names = vec![
            SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri")),
            SanType::DnsName("example.com".try_into().expect("dns")),
        ];
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let csr = Csr::from_pem(&pem).expect("valid csr");
        assert_eq!(csr.uris, ["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(csr.other_sans.len(), 1, "{csr:?}");
        let id = Identity::parse("spiffe://cluster.local/ns/a/sa/b").expect("id");
        let leaf = ca
            .sign_csr(&csr, &LeafSpec::for_identity(&id, Duration::from_secs(60)))
            .expect("signed");
        let der = pem::parse(&leaf).expect("pem leaf").into_contents();
        let cert = WorkloadCert::new(
            vec![CertificateDer::from(der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            vec![ca.root().clone()],
        )
        .expect("leaf matches the CSR key and carries the identity");
        assert_eq!(cert.identity, id);
    }

    #[test]
    fn rejects_a_tampered_csr() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let params = CertificateParams::default();
        let mut der = params.serialize_request(&key).expect("csr").der().to_vec();
        // Flip a bit inside the signed request info (past the outer headers).
        der[20] ^= 1;
        assert!(Csr::from_der(&der).is_err());
        assert!(matches!(Csr::from_pem("not a csr"), Err(CsrError::Pem(_))));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zmesh-ca-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
