//! The controller's gRPC endpoint: delta ADS and the CA on one TLS 1.3 port (h2 only), the
//! way Istio's node proxy expects istiod on 15012. The serving certificate comes from the
//! controller's own CA; the root is written to `<data-dir>/root-cert.pem` for clients.
//!
//! Data dir layout: `ca/` (the CA's key and root, kept across restarts), `root-cert.pem`,
//! `node-tokens/<node>` (bearer tokens, see [`crate::auth`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use zmesh_hbone::ca::{CaError, DevCa};
use zmesh_proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use zmesh_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

use crate::Resources;
use crate::auth::{AuthError, Authenticator, NodeTokens};
use crate::ca::{CaPolicy, CaService, DEFAULT_MAX_TTL};
use crate::xds::{AdsService, Snapshot, Stats};

/// The file, in the data dir, holding the root certificate clients must trust.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Names every serving certificate carries: local use, the demo's host name, and the name
/// Istio's node proxy dials by default inside Kubernetes.
pub const DEFAULT_DNS_NAMES: [&str; 3] = ["localhost", "zmesh-control", "istiod.istio-system.svc"];
/// Istio's default xDS/CA port.
pub const DEFAULT_PORT: u16 = 15012;
/// The serving certificate is issued at every start; it outlives any sane uptime.
const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's node proxy pings every 30 s with a 10 s timeout; match it from this side.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is asked, open streams get this long to close before the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A reconnecting node proxy lists every resource it holds in `initial_resource_versions`
/// (about 100 bytes each): leave room for a large mesh.
const MAX_ADS_REQUEST: usize = 64 << 20;
/// Handshaken connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// Settings of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub trust_domain: String,
    /// Cap on the lifetime of issued workload certificates.
    pub max_cert_ttl: Duration,
    /// DNS names for the serving certificate besides [`DEFAULT_DNS_NAMES`].
    pub extra_dns_names: Vec<String>,
    /// IP SANs for the serving certificate besides the listen IP and loopback.
    pub extra_ips: Vec<IpAddr>,
}

impl ServeOptions {
    /// Defaults: trust domain `cluster.local`, 24 h certificates, no extra names.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> ServeOptions {
        ServeOptions {
            listen,
            data_dir: data_dir.into(),
            trust_domain: zmesh_state::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            max_cert_ttl: DEFAULT_MAX_TTL,
            extra_dns_names: Vec::new(),
            extra_ips: Vec::new(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("node tokens: {0}")]
    Auth(#[from] AuthError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ca: Arc<DevCa>,
    tokens: Arc<NodeTokens>,
    auth: Arc<dyn Authenticator>,
    stats: Arc<Stats>,
    policy: CaPolicy,
    root_cert_path: PathBuf,
}

impl Server {
    /// Loads (or creates) the CA and the node tokens, writes the root for clients, issues the
    /// serving certificate and binds the listener.
    pub async fn bind(opts: ServeOptions) -> Result<Server, ServeError> {
        let (ca_dir, td) = (opts.data_dir.join("ca"), opts.trust_domain.clone());
        // Loading may wait for another process creating the CA: keep it off the runtime.
        let ca = tokio::task::spawn_blocking(move || DevCa::load_or_create(&ca_dir, &td))
            .await
            .map_err(|e| io_err("loading the CA")(io::Error::other(e)))??;
        Server::bind_with_ca(opts, ca).await
    }

    /// Like [`Server::bind`] with a CA loaded elsewhere (a Kubernetes Secret) instead of the
    /// data dir's `ca/`; the root is still written to the data dir for clients.
    pub async fn bind_with_ca(opts: ServeOptions, ca: DevCa) -> Result<Server, ServeError> {
        let root_cert_path = opts.data_dir.join(ROOT_CERT_FILE);
        write_atomic(&root_cert_path, ca.root_pem().as_bytes())
            .map_err(io_err(root_cert_path.display().to_string()))?;
        let tokens = Arc::new(NodeTokens::load_or_create(&opts.data_dir)?);
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(io_err(format!("binding {}", opts.listen)))?;
        let acceptor = TlsAcceptor::from(tls_config(&ca, &opts, listener.local_addr().ok())?);
        tracing::info!(listen = ?listener.local_addr().ok(), root = %root_cert_path.display(),
            trust_domain = %opts.trust_domain, "control plane endpoint ready (delta ADS + CA)");
        Ok(Server {
            listener,
            acceptor,
            ca: Arc::new(ca),
            auth: tokens.clone(),
            tokens,
            stats: Arc::new(Stats::default()),
            policy: CaPolicy {
                trust_domain: opts.trust_domain,
                max_ttl: opts.max_cert_ttl,
            },
            root_cert_path,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The ADS counters (pushes, resources, bytes, ACKs/NACKs).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Where the root certificate clients must trust was written.
    pub fn root_cert_path(&self) -> &Path {
        &self.root_cert_path
    }

    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    /// The file-backed node tokens (also the default authenticator).
    pub fn node_tokens(&self) -> Arc<NodeTokens> {
        self.tokens.clone()
    }

    /// Authenticates callers with `auth` instead of the node token files.
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Server {
        self.auth = auth;
        self
    }

    /// Serves until `shutdown` completes, pushing every new value of `resources`.
    pub async fn run(
        self,
        resources: watch::Receiver<Arc<Resources>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let snapshots = spawn_snapshots(resources.clone(), stop_rx.clone());
        let (conn_tx, conn_rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(accept_loop(
            self.listener,
            self.acceptor,
            conn_tx,
            stop_rx.clone(),
        ));
        let ads = AdsService::new(snapshots, self.auth.clone(), self.stats.clone());
        let ca = CaService::new(self.ca.clone(), self.auth.clone(), resources, self.policy);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(
                AggregatedDiscoveryServiceServer::new(ads)
                    .max_decoding_message_size(MAX_ADS_REQUEST),
            )
            .add_service(IstioCertificateServiceServer::new(ca));
        let signal = async move {
            shutdown.await;
            tracing::info!("control plane endpoint shutting down");
            let _ = stop_tx.send(true);
        };
        let serve = router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal);
        let mut stop = stop_rx;
        let grace = async move {
            wait_stop(&mut stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            res = serve => Ok(res?),
            () = grace => {
                tracing::warn!("streams still open after the shutdown grace period; closing");
                Ok(())
            }
        }
    }
}

/// Serves delta ADS and the CA on `opts.listen` until `shutdown` completes.
pub async fn serve(
    opts: ServeOptions,
    resources: watch::Receiver<Arc<Resources>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::bind(opts).await?.run(resources, shutdown).await
}

/// TLS 1.3 only, ALPN h2, no client certificate (callers authenticate with a bearer token).
fn tls_config(
    ca: &DevCa,
    opts: &ServeOptions,
    bound: Option<SocketAddr>,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let mut names: Vec<String> = DEFAULT_DNS_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(opts.extra_dns_names.iter().cloned());
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    ips.extend(bound.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()));
    ips.extend(opts.extra_ips.iter().copied());
    ips.sort();
    ips.dedup();
    let (chain, key) = ca.issue_server(&names, &ips, SERVER_CERT_TTL)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

type Conn = Result<TlsStream<TcpStream>, io::Error>;

/// Accepts TCP, handshakes TLS in a task per connection (so a slow handshake holds up no one)
/// and hands finished connections to tonic.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<Conn>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = wait_stop(&mut stop) => return,
            () = conns.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, conns) = (acceptor.clone(), conns.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conns.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Encodes every new `Resources` once for all streams. When the input channel closes, the last
/// state keeps being served until shutdown; at shutdown the snapshot channel closes, which ends
/// every stream.
fn spawn_snapshots(
    mut resources: watch::Receiver<Arc<Resources>>,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<Arc<Snapshot>> {
    let current = resources.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::build(&current, 1)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = resources.changed() => {
                    if changed.is_err() {
                        wait_stop(&mut stop).await;
                        return;
                    }
                }
                () = wait_stop(&mut stop) => return,
            }
            let current = resources.borrow_and_update().clone();
            let next = Snapshot::build_after(&tx.borrow(), &current);
            tracing::info!(
                generation = next.generation,
                addresses = next.addresses.entries.len(),
                authorizations = next.authorizations.entries.len(),
                changed_addresses = next.addresses.touched.len(),
                changed_authorizations = next.authorizations.touched.len(),
                "ads: new resources"
            );
            tx.send_replace(Arc::new(next));
        }
    });
    rx
}

/// Waits until shutdown is asked (or its sender is gone). Drops the watch guard before
/// returning, so the future stays `Send`.
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
