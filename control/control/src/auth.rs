//! Who is calling: every request to the controller carries `authorization: Bearer <token>`, and
//! an [`Authenticator`] turns the token into the caller's node. In file mode the tokens are
//! random per-node secrets kept in `<data-dir>/node-tokens/<node>` ([`NodeTokens`]); in
//! Kubernetes mode ServiceAccount tokens are checked with a TokenReview
//! (`crate::k8s_auth`, feature `kube`).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tonic::metadata::MetadataMap;

/// The directory under the data dir holding one token file per node.
pub const TOKENS_DIR: &str = "node-tokens";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The Kubernetes node the caller runs on; it may get certificates only for the
    /// identities of workloads on that node.
    pub node: String,
}

/// Why a caller is not authenticated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("authorization header is not \"Bearer <token>\"")]
    Malformed,
    #[error("unknown bearer token")]
    Unknown,
    #[error("invalid node name {0:?}: use letters, digits, '-', '.' and '_'")]
    BadNodeName(String),
    /// The token is not valid (TokenReview said so).
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The token is valid but its holder may not use the control plane (wrong
    /// ServiceAccount, no node bound to the token).
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The service that checks tokens (the Kubernetes API) did not answer.
    #[error("token check unavailable: {0}")]
    Unavailable(String),
    #[error("token store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> tonic::Status {
        match e {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Unknown
            | AuthError::Rejected(_) => tonic::Status::unauthenticated(e.to_string()),
            AuthError::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
            AuthError::Unavailable(_) => {
                tracing::warn!(error = %e, "cannot check a token");
                tonic::Status::unavailable("token check unavailable")
            }
            // Do not tell a remote caller where our files are.
            AuthError::Io { .. } | AuthError::BadNodeName(_) => {
                tracing::error!(error = %e, "authentication failed on our side");
                tonic::Status::internal("token store unavailable")
            }
        }
    }
}

/// Maps a bearer token to a caller. Async so that an implementation may ask a remote service
/// (Kubernetes TokenReview).
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError>;
}

/// The token of `authorization: Bearer <token>`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Authenticates a gRPC request, as a gRPC status on failure.
pub async fn authenticate(
    auth: &dyn Authenticator,
    metadata: &MetadataMap,
) -> Result<Caller, tonic::Status> {
    let token = bearer_token(metadata)?;
    Ok(auth.authenticate(token).await?)
}

/// Per-node random tokens in `<data-dir>/node-tokens/<node>` (mode 0600). The directory is
/// re-read when a token is not known and the directory changed (or, since a directory's mtime
/// may be coarse, at most once a second), so that a token created by another process
/// (`zmesh-control node-token NODE`) works without a restart.
#[derive(Debug)]
pub struct NodeTokens {
    dir: PathBuf,
    cache: Mutex<TokenCache>,
}

#[derive(Debug, Default)]
struct TokenCache {
    by_token: HashMap<String, String>,
    dir_mtime: Option<SystemTime>,
    loaded_at: Option<Instant>,
}

/// How often an unknown token may trigger a re-read of an unchanged token directory.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl NodeTokens {
    /// Opens (creating if needed) the token directory under `data_dir` and loads its tokens.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeTokens, AuthError> {
        let dir = data_dir.join(TOKENS_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let tokens = NodeTokens {
            dir,
            cache: Mutex::new(TokenCache::default()),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// The token of `node` and the file holding it, creating both on first use.
    pub fn token_for(&self, node: &str) -> Result<(String, PathBuf), AuthError> {
        check_node_name(node)?;
        let path = self.dir.join(node);
        let token = hex(&rand::random::<[u8; 32]>());
        // Write a private temporary file, then link it into place: the link fails if the
        // token exists, and a reader never sees a half-written token.
        let tmp = self
            .dir
            .join(format!(".{node}.{}", hex(&rand::random::<[u8; 8]>())));
        write_private(&tmp, token.as_bytes()).map_err(io_err(&tmp))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.remember(&token, node);
                Ok((token, path))
            }
            // Already there (maybe written by another process just now): use it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let token = read_token(&path)?;
                self.remember(&token, node);
                Ok((token, path))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The node whose token this is, if any.
    pub fn node_of(&self, token: &str) -> Result<Option<String>, AuthError> {
        if let Some(node) = self.cached(token) {
            return Ok(Some(node));
        }
        let mtime = fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(io_err(&self.dir))?;
        let stale = {
            let cache = self.lock();
            cache.dir_mtime != Some(mtime)
                || cache
                    .loaded_at
                    .is_none_or(|at| at.elapsed() >= RELOAD_INTERVAL)
        };
        if stale {
            self.reload()?;
        }
        Ok(self.cached(token))
    }

    fn reload(&self) -> Result<(), AuthError> {
        let mtime = fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(io_err(&self.dir))?;
        let mut by_token = HashMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(node) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_node_name(&node).is_err() {
                continue; // temporary or foreign files
            }
            let token = read_token(&entry.path())?;
            if !token.is_empty() {
                by_token.insert(token, node);
            }
        }
        *self.lock() = TokenCache {
            by_token,
            dir_mtime: Some(mtime),
            loaded_at: Some(Instant::now()),
        };
        Ok(())
    }

    fn cached(&self, token: &str) -> Option<String> {
        self.lock().by_token.get(token).cloned()
    }

    fn remember(&self, token: &str, node: &str) {
        self.lock()
            .by_token
            .insert(token.to_string(), node.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        // A panic while holding this lock leaves a plain map behind, still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl Authenticator for NodeTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        match self.node_of(token)? {
            Some(node) => Ok(Caller { node }),
            None => Err(AuthError::Unknown),
        }
    }
}

/// Node names become file names: allow what Kubernetes allows (and `_`), nothing that walks
/// the file system.
fn check_node_name(node: &str) -> Result<(), AuthError> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && !node.starts_with('.')
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadNodeName(node.to_string()))
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn read_token(path: &Path) -> Result<String, AuthError> {
    Ok(fs::read_to_string(path)
        .map_err(io_err(path))?
        .trim()
        .to_string())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn tokens_are_per_node_stable_private_and_seen_across_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = NodeTokens::load_or_create(dir.path()).expect("open");
        let (t1, path) = a.token_for("node-1").expect("token");
        assert_eq!(path, dir.path().join("node-tokens/node-1"));
        assert_eq!(t1.len(), 64);
        let mode = fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(a.token_for("node-1").expect("again").0, t1, "stable");
        let (t2, _) = a.token_for("node-2").expect("token");
        assert_ne!(t1, t2);

        // A second instance (another process) creates a token; the first one sees it.
        let b = NodeTokens::load_or_create(dir.path()).expect("open again");
        let (t3, _) = b.token_for("node-3").expect("token");
        let caller = a.authenticate(&t3).await.expect("known after reload");
        assert_eq!(caller.node, "node-3");
        assert_eq!(b.authenticate(&t1).await.expect("loaded").node, "node-1");
        assert!(matches!(
            a.authenticate("nope").await,
            Err(AuthError::Unknown)
        ));
        assert!(a.token_for("../etc").is_err());
        assert!(a.token_for("").is_err());
    }

    #[test]
    fn bearer_header_parsing() {
        let mut md = MetadataMap::new();
        assert!(matches!(bearer_token(&md), Err(AuthError::Missing)));
        md.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert!(matches!(bearer_token(&md), Err(AuthError::Malformed)));
        md.insert("authorization", "Bearer abc".parse().expect("ascii"));
        assert_eq!(bearer_token(&md).expect("token"), "abc");
    }
}
