//! A development certificate authority: mints SPIFFE workload certificates the way Istio's CA
//! does (ECDSA P-256, empty subject, one URI SAN, server+client EKU), so a node proxy can run
//! mTLS without a control plane (`zmesh-node --dev-ca DIR`), and tests can forge the bad
//! certificates a real peer might present.
//!
//! The CA persists in a directory (`ca-cert.pem`, `ca-key.pem` mode 0600) so that several node
//! proxies pointed at the same directory share one root and trust each other.

use std::fs;
use std::io::Write;
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
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }
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

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zmesh-ca-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
