//! Kubernetes mode authentication: a node proxy presents its ServiceAccount token, which the
//! API server checks with a TokenReview (as istiod does). The token must belong to one of the
//! node proxy ServiceAccounts, and must be bound to a pod: Kubernetes (≥ 1.32) then names the
//! pod's node in the review's `authentication.kubernetes.io/node-name` extra, which becomes
//! the caller's node. Positive answers are cached briefly so a burst of CSRs after a node
//! proxy restart costs one review.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::{AuthError, Authenticator, Caller};

/// The extra field a pod-bound token's review carries its node in.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The audience istiod's CA asks node proxies' tokens to have.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// How long a positive review is trusted.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound on cached reviews (one per live token: about one per node).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// A ServiceAccount, written `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// The user name Kubernetes gives its tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceAccountRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ServiceAccountRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Checks tokens with the Kubernetes TokenReview API.
pub struct TokenReviewAuth {
    client: kube::Client,
    audiences: Vec<String>,
    allowed_users: Vec<String>,
    ttl: Duration,
    max_entries: usize,
    /// SHA-256 of the token → caller and when it was reviewed; the token itself is not kept.
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl fmt::Debug for TokenReviewAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuth")
            .field("audiences", &self.audiences)
            .field("allowed_users", &self.allowed_users)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuth {
    /// Accepts tokens of the `node_proxies` ServiceAccounts issued for `audiences` (empty: the
    /// API server's default audience).
    pub fn new(
        client: kube::Client,
        node_proxies: &[ServiceAccountRef],
        audiences: Vec<String>,
    ) -> TokenReviewAuth {
        TokenReviewAuth {
            client,
            audiences,
            allowed_users: node_proxies
                .iter()
                .map(ServiceAccountRef::username)
                .collect(),
            ttl: DEFAULT_CACHE_TTL,
            max_entries: DEFAULT_CACHE_ENTRIES,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Changes how long positive reviews are cached and how many (0 entries: no cache).
    pub fn with_cache(mut self, ttl: Duration, max_entries: usize) -> TokenReviewAuth {
        self.ttl = ttl;
        self.max_entries = max_entries;
        self
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_string());
            return Err(AuthError::Rejected(why));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if !self.allowed_users.contains(&username) {
            return Err(AuthError::Forbidden(format!(
                "{username:?} is not a node proxy ServiceAccount"
            )));
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| values.first())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                AuthError::Forbidden(format!(
                    "token of {username:?} names no node ({NODE_NAME_EXTRA}): use a \
                     pod-bound projected token on Kubernetes 1.32 or later"
                ))
            })?;
        Ok(Caller { node: node.clone() })
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Caller> {
        let cache = self.lock();
        let (caller, at) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| caller.clone())
    }

    fn remember(&self, key: [u8; 32], caller: &Caller) {
        if self.max_entries == 0 {
            return;
        }
        let mut cache = self.lock();
        if cache.len() >= self.max_entries {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= self.max_entries {
                // Still full of live entries: start over rather than track recency.
                cache.clear();
            }
        }
        cache.insert(key, (caller.clone(), Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Caller, Instant)>> {
        // A panic while holding this lock leaves a plain map behind, still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuth {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let key = token_key(token);
        if let Some(caller) = self.cached(&key) {
            return Ok(caller);
        }
        let result = self.review(token).await;
        match &result {
            Ok(caller) => {
                tracing::debug!(node = %caller.node, "token reviewed");
                self.remember(key, caller);
            }
            Err(e) => tracing::info!(error = %e, "token refused"),
        }
        result
    }
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_accounts() {
        let sa: ServiceAccountRef = "istio-system/ztunnel".parse().expect("valid");
        assert_eq!(sa.username(), "system:serviceaccount:istio-system:ztunnel");
        assert_eq!(sa.to_string(), "istio-system/ztunnel");
        for bad in ["ztunnel", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }
}
