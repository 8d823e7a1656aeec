//! Keys and certificate signing requests for the CA client, shaped as Istio's agents make
//! them: a fresh ECDSA P-256 key, an empty subject and one URI SAN holding the SPIFFE id,
//! signed with SHA-256, PEM-encoded. The key comes back as PKCS#8 so it can be paired with the
//! chain the CA returns.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zmesh_state::Identity;

use crate::tls::{CertError, WorkloadCert};

/// A private key and the CSR asking for a certificate of one identity.
pub struct CsrRequest {
    pub identity: Identity,
    /// PEM `CERTIFICATE REQUEST`.
    pub csr_pem: String,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CsrRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrRequest")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Why a CSR could not be made or its answer could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA returned only {0} certificate(s): a leaf and a root are required")]
    NoRoot(usize),
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl CsrRequest {
    /// A new P-256 key and a CSR for `identity`.
    pub fn new(identity: &Identity) -> Result<CsrRequest, CsrError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_uri().as_str().try_into()?)];
        let csr = params.serialize_request(&key)?;
        Ok(CsrRequest {
            identity: identity.clone(),
            csr_pem: csr.pem()?,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Pairs the key with the CA's answer: PEM strings, leaf first, root(s) last (the last
    /// entry may hold several roots). The leaf must carry exactly the identity asked for.
    pub fn finish(self, cert_chain: &[String]) -> Result<WorkloadCert, CsrError> {
        if cert_chain.len() < 2 {
            return Err(CsrError::NoRoot(cert_chain.len()));
        }
        let (roots, chain) = cert_chain.split_last().ok_or(CsrError::NoRoot(0))?;
        let chain_pem: String = chain.concat();
        let key_pem = crate::tls::to_pem("PRIVATE KEY", self.key.secret_der());
        let cert =
            WorkloadCert::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), roots.as_bytes())?;
        if cert.identity != self.identity {
            return Err(CertError::WrongIdentity {
                found: cert.identity.to_uri(),
                expected: self.identity.to_uri(),
            }
            .into());
        }
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::DevCa;
    use rcgen::{CertificateSigningRequestParams, Issuer};

    fn sign(csr_pem: &str, ca_cert: &str, ca_key: &str) -> String {
        let key = KeyPair::from_pem(ca_key).expect("ca key");
        let issuer = Issuer::from_ca_cert_pem(ca_cert, key).expect("issuer");
        let req = CertificateSigningRequestParams::from_pem(csr_pem).expect("csr parses");
        req.signed_by(&issuer).expect("sign").pem()
    }

    #[test]
    fn csr_carries_only_the_spiffe_id_and_the_answer_pairs_with_the_key() {
        let id = Identity::new("cluster.local", "demo", "web");
        let req = CsrRequest::new(&id).expect("csr");
        let parsed = CertificateSigningRequestParams::from_pem(&req.csr_pem).expect("parse");
        assert_eq!(
            parsed.params.subject_alt_names,
            vec![SanType::URI(id.to_uri().as_str().try_into().expect("uri"))]
        );
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = p.self_signed(&ca_key).expect("root").pem();
        let leaf = sign(&req.csr_pem, &root, &ca_key.serialize_pem());
        let cert = req.finish(&[leaf, root]).expect("usable certificate");
        assert_eq!(cert.identity, id);
        assert!(crate::tls::server_config(&cert).is_ok(), "key matches leaf");
    }

    #[test]
    fn answer_without_root_or_for_another_identity_is_refused() {
        let ca = DevCa::generate("t").expect("ca");
        let id = Identity::new("cluster.local", "demo", "web");
        let other = Identity::new("cluster.local", "demo", "db");
        let (leaf, _) = ca
            .issue_raw(&crate::ca::LeafSpec::for_identity(
                &other,
                std::time::Duration::from_secs(60),
            ))
            .expect("leaf");
        let leaf_pem = crate::tls::to_pem("CERTIFICATE", &leaf[0]);
        let req = CsrRequest::new(&id).expect("csr");
        assert!(matches!(
            req.finish(std::slice::from_ref(&leaf_pem)),
            Err(CsrError::NoRoot(1))
        ));
        let req = CsrRequest::new(&id).expect("csr");
        let err = req
            .finish(&[leaf_pem, ca.root_pem().to_string()])
            .expect_err("wrong identity");
        assert!(err.to_string().contains("demo/sa/db"), "{err}");
    }
}
