//! The Kubernetes objects the controller reads, as minimal serde structs: only the fields
//! translation uses are kept (serde skips the rest), so 10,000 pods stay small in memory and a
//! directory of YAML parses without pulling in `k8s-openapi`. A Kubernetes API source converts
//! its objects into these same types, so translation has one input.

mod core;
mod istio;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub use self::core::{
    Container, ContainerPort, Deployment, DeploymentSpec, IntOrString, LabelSelector,
    LabelSelectorRequirement, Namespace, Pod, PodCondition, PodIp, PodSpec, PodStatus, PodTemplate,
    Service, ServiceAccount, ServicePort, ServiceSpec,
};
pub use self::istio::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition, MtlsMode, Operation,
    PeerAuthentication, PeerAuthenticationSpec, PortMtls, Rule, RuleFrom, RuleTo, Source,
    WorkloadSelector,
};
pub use self::validate::validate;
pub(crate) use self::validate::{cidr as validate_cidr, port as validate_port};

/// The kinds the controller understands. Anything else is skipped with a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    Deployment,
    AuthorizationPolicy,
    PeerAuthentication,
}

impl Kind {
    /// The kind for an `apiVersion` + `kind` pair, or `None` when it is not one we read.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let k = match (api_version, kind) {
            ("v1", "Namespace") => Kind::Namespace,
            ("v1", "Pod") => Kind::Pod,
            ("v1", "Service") => Kind::Service,
            ("v1", "ServiceAccount") => Kind::ServiceAccount,
            ("apps/v1", "Deployment") => Kind::Deployment,
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Kind::AuthorizationPolicy
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Kind::PeerAuthentication
            }
            _ => return None,
        };
        Some(k)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        self != Kind::Namespace
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Deployment => "Deployment",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's identity in the store: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The part of `metadata` the controller uses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
    /// RFC 3339; orders conflicting PeerAuthentications (the oldest wins, as in Istio).
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

/// One object of a kind the controller reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Deployment(Deployment),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Deployment(_) => Kind::Deployment,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey::new(self.kind(), m.namespace.clone(), m.name.clone())
    }

    /// Fills in what the API server would: namespace `default` for namespaced kinds that name
    /// none, and no namespace for cluster-scoped ones.
    pub fn normalize(&mut self) {
        let namespaced = self.kind().is_namespaced();
        let meta = self.meta_mut();
        if !namespaced {
            meta.namespace.clear();
        } else if meta.namespace.is_empty() {
            meta.namespace = "default".to_owned();
        }
    }

    /// Deserializes an object of `kind` from a parsed document (one YAML parse serves both the
    /// header and the object).
    pub fn from_value(kind: Kind, value: serde_json::Value) -> Result<Object, serde_json::Error> {
        use serde_json::from_value;
        Ok(match kind {
            Kind::Namespace => Object::Namespace(from_value(value)?),
            Kind::Pod => Object::Pod(from_value(value)?),
            Kind::Service => Object::Service(from_value(value)?),
            Kind::ServiceAccount => Object::ServiceAccount(from_value(value)?),
            Kind::Deployment => Object::Deployment(from_value(value)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(from_value(value)?),
            Kind::PeerAuthentication => Object::PeerAuthentication(from_value(value)?),
        })
    }

    /// Deserializes an object of `kind` from one YAML document; its errors carry the line.
    pub fn from_yaml(kind: Kind, text: &str) -> Result<Object, serde_saphyr::Error> {
        use serde_saphyr::from_str;
        Ok(match kind {
            Kind::Namespace => Object::Namespace(from_str(text)?),
            Kind::Pod => Object::Pod(from_str(text)?),
            Kind::Service => Object::Service(from_str(text)?),
            Kind::ServiceAccount => Object::ServiceAccount(from_str(text)?),
            Kind::Deployment => Object::Deployment(from_str(text)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(from_str(text)?),
            Kind::PeerAuthentication => Object::PeerAuthentication(from_str(text)?),
        })
    }
}
