//! `zmesh-control`: the controller binary. Wiring only: flags, the config source (a watched
//! directory of Kubernetes YAML), translation, and the delta ADS + CA server.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zmesh_control::Resources;
use zmesh_control::auth::NodeTokens;
use zmesh_control::server::{DEFAULT_PORT, ServeOptions, Server};
use zmesh_control::source::{DEFAULT_DEBOUNCE, DirWatcher};
use zmesh_control::translate::MeshOptions;
use zmesh_state::parse_duration;

/// zmesh's controller: reads the Kubernetes YAML users write for Istio ambient (Namespaces,
/// Pods, Services, AuthorizationPolicy, PeerAuthentication…) from a watched directory,
/// translates it the way istiod does, and serves it to node proxies over delta ADS
/// (gRPC + TLS) together with a CA that signs SPIFFE workload certificates.
#[derive(Parser, Debug)]
#[command(name = "zmesh-control", version, about, long_about = None, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// Directory of Kubernetes YAML (multi-document files, searched recursively), watched for
    /// changes. A broken document is reported and skipped; the rest applies.
    #[arg(
        long,
        env = "ZMESH_CONFIG_DIR",
        value_name = "DIR",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    config_dir: Option<PathBuf>,

    /// Read config from the Kubernetes API (kube-rs watchers; in-cluster or kubeconfig
    /// credentials) instead of a directory. Node proxies then authenticate with their
    /// ServiceAccount token (checked with a TokenReview) instead of node token files, and the
    /// CA is kept in a Secret (--ca-secret). Needs a build with `--features kube`.
    #[arg(long)]
    kube: bool,

    /// With --kube: the ServiceAccount(s) node proxies run as, NAMESPACE/NAME (repeatable).
    /// Their tokens must be pod-bound (Kubernetes 1.32 or later names the node in them).
    #[arg(
        long = "node-proxy-service-account",
        value_name = "NS/NAME",
        default_value = "istio-system/ztunnel"
    )]
    node_proxy_service_accounts: Vec<String>,

    /// With --kube: the audience node proxies' tokens must be issued for (repeatable; as
    /// istiod, `istio-ca`).
    #[arg(
        long = "token-audience",
        value_name = "AUDIENCE",
        default_value = "istio-ca"
    )]
    token_audiences: Vec<String>,

    /// With --kube: the Secret holding the CA key and root (`ca-key.pem`, `ca-cert.pem`),
    /// created on first start, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME", default_value = "istio-system/zmesh-ca")]
    ca_secret: String,

    /// Also serve pods outside the mesh (tunnel protocol NONE), as istiod does, so mesh clients
    /// can reach services whose pods are not enrolled.
    #[arg(long)]
    serve_non_mesh_pods: bool,

    #[command(flatten)]
    data: DataDir,

    /// gRPC listen address for delta ADS and the CA.
    #[arg(long, default_value_t = SocketAddr::new(IpAddr::from([0u8; 16]), DEFAULT_PORT), value_name = "ADDR")]
    listen: SocketAddr,

    /// SPIFFE trust domain of workload identities.
    #[arg(
        long,
        env = "TRUST_DOMAIN",
        default_value = "cluster.local",
        value_name = "DOMAIN"
    )]
    trust_domain: String,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "istio-system", value_name = "NAMESPACE")]
    root_namespace: String,

    /// Cluster id: the prefix of workload uids (ztunnel's CLUSTER_ID).
    #[arg(
        long,
        env = "CLUSTER_ID",
        default_value = "Kubernetes",
        value_name = "ID"
    )]
    cluster_id: String,

    /// Network of every workload and service address (empty: the default network).
    #[arg(long, default_value = "", value_name = "NETWORK")]
    network: String,

    /// Cluster DNS domain: services are `<name>.<namespace>.svc.<domain>`.
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN")]
    cluster_domain: String,

    /// Longest lifetime of a workload certificate; longer requests are capped.
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    max_cert_ttl: Duration,

    /// Extra DNS name for the serving certificate (repeatable); localhost, zmesh-control and
    /// istiod.istio-system.svc are always included, as are the listen IP and loopback.
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,

    /// Extra IP address for the serving certificate (repeatable).
    #[arg(long = "server-ip", value_name = "IP")]
    server_ips: Vec<IpAddr>,

    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    log: String,
}

#[derive(clap::Args, Debug)]
struct DataDir {
    /// Where the CA key and root (`root-cert.pem`, which node proxies must trust) and the node
    /// tokens are kept; created on first start, kept across restarts.
    #[arg(
        long,
        env = "ZMESH_DATA_DIR",
        default_value = "/var/lib/zmesh-control",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints the path of the token file the node proxy on NODE authenticates with
    /// (`zmesh-node --token-file`), creating the token if needed.
    NodeToken {
        #[command(flatten)]
        data: DataDir,
        /// The node's name, as in the Pods' `spec.nodeName`.
        node: String,
    },
}

fn main() {
    let args = Args::parse();
    init_logging(&args.log);
    let result = match args.command {
        Some(Cmd::NodeToken { ref data, ref node }) => node_token(&data.data_dir, node),
        None => serve(args),
    };
    if let Err(e) = result {
        eprintln!("zmesh-control: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn node_token(data_dir: &std::path::Path, node: &str) -> anyhow::Result<()> {
    let tokens = NodeTokens::load_or_create(data_dir)?;
    let (_, path) = tokens.token_for(node)?;
    println!("{}", path.display());
    Ok(())
}

fn serve(args: Args) -> anyhow::Result<()> {
    let mesh = MeshOptions {
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
        cluster_id: args.cluster_id.clone(),
        network: args.network.clone(),
        cluster_domain: args.cluster_domain.clone(),
        serve_non_mesh_pods: args.serve_non_mesh_pods,
    };
    let (resources_tx, resources) = tokio::sync::watch::channel(Arc::new(Resources::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Either source publishes a complete first version before the server starts, so node
    // proxies never take an empty mesh for the real one.
    let (watcher, resources_tx) = match &args.config_dir {
        Some(dir) => {
            if !dir.is_dir() {
                anyhow::bail!("--config-dir {}: not a directory", dir.display());
            }
            let w = DirWatcher::start(dir, mesh.clone(), DEFAULT_DEBOUNCE, resources_tx)
                .with_context(|| format!("watching {}", dir.display()))?;
            (Some(w), None)
        }
        None => (None, Some(resources_tx)),
    };
    let kube_parts = match resources_tx {
        None => None,
        Some(resources_tx) => Some(start_kube(
            &rt,
            &args,
            mesh,
            resources_tx,
            resources.clone(),
        )?),
    };
    let loaded = resources.borrow().clone();
    tracing::info!(
        addresses = loaded.addresses.len(),
        authorizations = loaded.authorizations.len(),
        "config loaded"
    );

    let opts = ServeOptions {
        trust_domain: args.trust_domain.clone(),
        max_cert_ttl: args.max_cert_ttl,
        extra_dns_names: args.server_names.clone(),
        extra_ips: args.server_ips.clone(),
        ..ServeOptions::new(args.listen, &args.data.data_dir)
    };
    rt.block_on(async move {
        let server = match kube_parts {
            Some(KubeParts { ca, auth }) => Server::bind_with_ca(opts, ca)
                .await?
                .with_authenticator(auth),
            None => Server::bind(opts).await?,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        server.run(resources, shutdown).await?;
        anyhow::Ok(())
    })?;
    drop(watcher);
    Ok(())
}

/// What Kubernetes mode replaces: the CA (from a Secret) and the authenticator (TokenReview).
// Only built by `start_kube` with the `kube` feature; without it `--kube` fails at start.
#[cfg_attr(not(feature = "kube"), allow(dead_code))]
struct KubeParts {
    ca: zmesh_hbone::ca::DevCa,
    auth: Arc<dyn zmesh_control::auth::Authenticator>,
}

/// Loads the CA from its Secret, starts the Kubernetes API source and waits for its first
/// complete publish.
#[cfg(feature = "kube")]
fn start_kube(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    mesh: MeshOptions,
    tx: tokio::sync::watch::Sender<Arc<Resources>>,
    mut rx: tokio::sync::watch::Receiver<Arc<Resources>>,
) -> anyhow::Result<KubeParts> {
    use zmesh_control::ca_secret::CaSecret;
    use zmesh_control::k8s_auth::{ServiceAccountRef, TokenReviewAuth};

    let secret: ServiceAccountRef = args
        .ca_secret
        .parse()
        .map_err(|e| anyhow::anyhow!("--ca-secret {e}"))?;
    let node_proxies = args
        .node_proxy_service_accounts
        .iter()
        .map(|s| s.parse::<ServiceAccountRef>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--node-proxy-service-account {e}"))?;
    let audiences = args.token_audiences.clone();
    let trust_domain = args.trust_domain.clone();
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let (ca, origin) = CaSecret::new(client.clone(), &secret.namespace, &secret.name)
            .load_or_create(&trust_domain)
            .await?;
        tracing::info!(secret = %secret, ?origin, "CA loaded");
        let auth = TokenReviewAuth::new(client.clone(), &node_proxies, audiences);
        tokio::spawn(async move {
            if let Err(e) =
                zmesh_control::source::k8s::run(client, mesh, DEFAULT_DEBOUNCE, tx).await
            {
                tracing::error!(error = %e, "Kubernetes source stopped");
            }
        });
        rx.changed()
            .await
            .context("the Kubernetes source ended before its first list")?;
        anyhow::Ok(KubeParts {
            ca,
            auth: Arc::new(auth),
        })
    })
}

#[cfg(not(feature = "kube"))]
fn start_kube(
    _: &tokio::runtime::Runtime,
    _: &Args,
    _: MeshOptions,
    _: tokio::sync::watch::Sender<Arc<Resources>>,
    _: tokio::sync::watch::Receiver<Arc<Resources>>,
) -> anyhow::Result<KubeParts> {
    anyhow::bail!(
        "--kube: this zmesh-control was built without the `kube` feature (cargo build --features kube)"
    )
}
