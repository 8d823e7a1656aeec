//! SPIFFE identities of workloads, as carried in the URI SAN of every mesh certificate.

use std::fmt;
use std::str::FromStr;

/// The trust domain used when a workload does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The service account used when a workload does not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

const SCHEME: &str = "spiffe://";

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SPIFFE id {uri:?}: {reason} (expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
)]
pub struct IdentityError {
    /// The rejected input.
    pub uri: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Identity {
    /// Builds an identity, applying the control plane's defaults: an empty trust domain becomes
    /// `cluster.local` and an empty service account becomes `default`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Identity {
        let or_default = |s: String, default: &str| {
            if s.is_empty() { default.to_owned() } else { s }
        };
        Identity {
            trust_domain: or_default(trust_domain.into(), DEFAULT_TRUST_DOMAIN),
            namespace: namespace.into(),
            service_account: or_default(service_account.into(), DEFAULT_SERVICE_ACCOUNT),
        }
    }

    /// Parses exactly `spiffe://<td>/ns/<ns>/sa/<sa>`, every part non-empty.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let err = |reason| IdentityError {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("scheme is not spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, ns_label, ns, sa_label, sa] = parts[..] else {
            return Err(err("wrong number of path segments"));
        };
        if ns_label != "ns" || sa_label != "sa" {
            return Err(err("path must be /ns/<namespace>/sa/<service account>"));
        }
        if td.is_empty() {
            return Err(err("empty trust domain"));
        }
        if ns.is_empty() {
            return Err(err("empty namespace"));
        }
        if sa.is_empty() {
            return Err(err("empty service account"));
        }
        Ok(Identity {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }

    /// Checks that the URI of this identity parses back to it: no part empty and none
    /// containing a `/`.
    pub fn validate(&self) -> Result<(), IdentityError> {
        Identity::parse(&self.to_uri()).and_then(|parsed| {
            if parsed == *self {
                Ok(())
            } else {
                Err(IdentityError {
                    uri: self.to_uri(),
                    reason: "a part contains '/'",
                })
            }
        })
    }

    /// The URI form, `spiffe://td/ns/x/sa/y`, as found in certificates.
    pub fn to_uri(&self) -> String {
        format!("{SCHEME}{}", self.principal())
    }

    /// The URI without its scheme, `td/ns/x/sa/y`: what authorization principals match against.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let uri = "spiffe://cluster.local/ns/default/sa/bookinfo";
        let id = Identity::parse(uri).unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "bookinfo"));
        assert_eq!(id.to_uri(), uri);
        assert_eq!(id.to_string(), uri);
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/bookinfo");
        assert_eq!(uri.parse::<Identity>().unwrap(), id);
        assert_eq!(id.validate(), Ok(()));
    }

    #[test]
    fn defaults() {
        let id = Identity::new("", "ns1", "");
        assert_eq!(id.to_uri(), "spiffe://cluster.local/ns/ns1/sa/default");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "spiffe:/cluster.local/ns/a/sa/b",
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/serviceaccount/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_names_input_and_reason() {
        let err = Identity::parse("spiffe://td/ns//sa/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE id \"spiffe://td/ns//sa/x\": empty namespace \
             (expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
        );
    }

    #[test]
    fn validate_rejects_slash_and_empty() {
        assert!(Identity::new("td", "a/b", "sa").validate().is_err());
        assert!(Identity::new("td", "", "sa").validate().is_err());
    }
}
