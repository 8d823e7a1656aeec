//! Kubernetes mode CA persistence: the CA key and root live in a Secret (keys `ca-key.pem`
//! and `ca-cert.pem`), so every replica and every restart signs with the same root. The first
//! controller to start creates it; one that loses the race to create reads the winner's.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use zmesh_hbone::ca::{CaError, DevCa};

/// The Secret key holding the CA's private key (PEM).
pub const KEY_FIELD: &str = "ca-key.pem";
/// The Secret key holding the CA's root certificate (PEM).
pub const CERT_FIELD: &str = "ca-cert.pem";

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaSecretError {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} lacks {field} (expected {KEY_FIELD} and {CERT_FIELD})")]
    Incomplete {
        namespace: String,
        name: String,
        field: &'static str,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    Ca {
        namespace: String,
        name: String,
        source: CaError,
    },
    #[error("Secret {namespace}/{name} was created by someone else but cannot be read back")]
    Vanished { namespace: String, name: String },
}

/// Where the CA is kept.
#[derive(Clone, Debug)]
pub struct CaSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

/// How [`CaSecret::load_or_create`] got its CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The Secret existed.
    Loaded,
    /// This call created the Secret.
    Created,
    /// Another controller created it between our read and our create.
    LostRace,
}

impl CaSecret {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> CaSecret {
        CaSecret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// Reads the CA from the Secret, or creates a CA named `ca_name` and the Secret holding it.
    pub async fn load_or_create(&self, ca_name: &str) -> Result<(DevCa, Origin), CaSecretError> {
        if let Some(secret) = self.api.get_opt(&self.name).await.map_err(self.api_err())? {
            return Ok((self.parse(&secret)?, Origin::Loaded));
        }
        let ca = DevCa::generate(ca_name).map_err(self.ca_err())?;
        match self
            .api
            .create(&PostParams::default(), &self.secret(&ca))
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %self.namespace, name = %self.name, "created the CA Secret");
                Ok((ca, Origin::Created))
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
                // Another replica won: use its CA so that all sign with one root.
                let secret = self
                    .api
                    .get_opt(&self.name)
                    .await
                    .map_err(self.api_err())?
                    .ok_or_else(|| CaSecretError::Vanished {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                    })?;
                tracing::info!(namespace = %self.namespace, name = %self.name,
                    "the CA Secret was created concurrently; using it");
                Ok((self.parse(&secret)?, Origin::LostRace))
            }
            Err(e) => Err(self.api_err()(e)),
        }
    }

    fn secret(&self, ca: &DevCa) -> Secret {
        let data = BTreeMap::from([
            (KEY_FIELD.to_string(), ByteString(ca.key_pem().into_bytes())),
            (
                CERT_FIELD.to_string(),
                ByteString(ca.root_pem().as_bytes().to_vec()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "zmesh-control".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_string()),
            ..Secret::default()
        }
    }

    fn parse(&self, secret: &Secret) -> Result<DevCa, CaSecretError> {
        let field = |field: &'static str| -> Result<String, CaSecretError> {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(field))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| CaSecretError::Incomplete {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    field,
                })
        };
        let (key, cert) = (field(KEY_FIELD)?, field(CERT_FIELD)?);
        DevCa::from_pem(&cert, &key).map_err(self.ca_err())
    }

    fn api_err(&self) -> impl FnOnce(kube::Error) -> CaSecretError + '_ {
        move |source| CaSecretError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    fn ca_err(&self) -> impl FnOnce(CaError) -> CaSecretError + '_ {
        move |source| CaSecretError::Ca {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}
