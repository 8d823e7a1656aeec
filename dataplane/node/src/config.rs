//! Command-line configuration of the node proxy. Every flag also reads an environment variable
//! (the name in brackets in `--help`), so a DaemonSet can configure it without arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use zmesh_rt::DriverKind;

/// zmesh node proxy: captures pod TCP and carries it between nodes in HBONE tunnels
/// (mTLS + HTTP/2 CONNECT on port 15008), enforcing L4 authorization policy.
///
/// Two ways to run, exclusive: with a controller (--xds-address), workloads, services and
/// policies arrive over delta ADS and certificates come from the controller's CA
/// (--ca-address); without one, they are read from a local YAML file (--config) and
/// certificates from files (--cert-dir) or a development CA (--dev-ca).
#[derive(Parser, Debug, Clone)]
#[command(name = "zmesh-node", version, about, long_about)]
pub struct Args {
    /// Local config: YAML with `workloads`, `services` and `policies`, in the shape of
    /// ztunnel's local config. Read once at start-up; a bad file stops start-up with the line
    /// and the reason. Not combined with --xds-address (one source of truth per node).
    #[arg(
        long,
        env = "ZMESH_CONFIG",
        value_name = "FILE",
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    pub config: Option<PathBuf>,

    /// Controller to get config from over delta ADS (gRPC over TLS 1.3), e.g.
    /// https://zmesh-control:15012. Workloads of this node arrive and leave at run time; the
    /// last good config keeps serving while the controller is unreachable.
    #[arg(long, env = "XDS_ADDRESS", value_name = "URL")]
    pub xds_address: Option<String>,

    /// PEM trust anchor(s) for the controller's server certificate (checked against the URL's
    /// host).
    #[arg(
        long,
        env = "XDS_ROOT_CA",
        value_name = "FILE",
        default_value = "./var/run/secrets/istio/root-cert.pem"
    )]
    pub xds_root_cert: PathBuf,

    /// Certificate authority (Istio's IstioCertificateService); defaults to --xds-address.
    #[arg(long, env = "CA_ADDRESS", value_name = "URL", requires = "xds_address")]
    pub ca_address: Option<String>,

    /// PEM trust anchor(s) for the CA's server certificate; defaults to --xds-root-cert.
    #[arg(long, env = "CA_ROOT_CA", value_name = "FILE")]
    pub ca_root_cert: Option<PathBuf>,

    /// File with the bearer token sent to the controller and the CA (`authorization: Bearer
    /// …`); read again on every connection, so a rotated token is used.
    #[arg(long, env = "AUTH_TOKEN", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// This proxy's pod name, for the xDS node id `ztunnel~IP~NAME.NS~NS.svc.cluster.local`.
    #[arg(
        long,
        env = "POD_NAME",
        default_value = "zmesh-node",
        value_name = "NAME"
    )]
    pub pod_name: String,

    /// This proxy's pod namespace (xDS node id).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "istio-system",
        value_name = "NS"
    )]
    pub pod_namespace: String,

    /// This proxy's IP address (xDS node id and INSTANCE_IPS).
    #[arg(
        long,
        env = "INSTANCE_IP",
        default_value = "1.1.1.1",
        value_name = "IP"
    )]
    pub instance_ip: String,

    /// This node's name. Workloads whose `node` equals it are served here: the proxy listens
    /// on their addresses (15008, 15006) and holds their certificates.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,

    /// Network the node's workloads are on (Istio's `network`; empty is the default network).
    #[arg(long, env = "NETWORK", default_value = "", value_name = "NAME")]
    pub network: String,

    /// Cluster name sent in `baggage` and used as metric label.
    #[arg(
        long,
        env = "CLUSTER_ID",
        default_value = "Kubernetes",
        value_name = "NAME"
    )]
    pub cluster_id: String,

    /// Directory of a development CA shared by the nodes of a local mesh: created on first
    /// use (ca-cert.pem, ca-key.pem with mode 0600). Certificates for local workloads are
    /// minted from it at start-up.
    #[arg(
        long,
        env = "ZMESH_DEV_CA",
        value_name = "DIR",
        conflicts_with_all = ["cert_dir", "xds_address"]
    )]
    pub dev_ca: Option<PathBuf>,

    /// Directory with workload certificates: root-cert.pem, and for each identity
    /// <namespace>/<service-account>/cert-chain.pem and key.pem.
    #[arg(
        long,
        env = "ZMESH_CERT_DIR",
        value_name = "DIR",
        conflicts_with = "xds_address"
    )]
    pub cert_dir: Option<PathBuf>,

    /// Lifetime of workload certificates: minted by --dev-ca, or asked of the CA
    /// (`validity_duration`) in xDS mode. Also accepted as --secret-ttl.
    #[arg(long, alias = "secret-ttl", env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub cert_ttl: Duration,

    /// Shard threads, one per core by default. Each is pinned to a core and owns its own
    /// io_uring ring, listeners, connections and HBONE pool.
    #[arg(long, env = "ZMESH_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// IO driver: io-uring or epoll. By default io_uring is used when the kernel and the
    /// seccomp profile allow it, else epoll; the choice is logged.
    #[arg(long, env = "ZMESH_DRIVER", value_name = "DRIVER")]
    pub driver: Option<DriverKind>,

    /// io_uring only: send writes of at least this many bytes with SendZc (zero-copy send)
    /// instead of Send. Off by default: on loopback and veth the kernel copies anyway and the
    /// extra notification costs more than it saves; worth trying on real NICs.
    #[arg(long, env = "ZMESH_SEND_ZC_THRESHOLD", value_name = "BYTES")]
    pub send_zc_threshold: Option<usize>,

    /// Do not pin shard threads to cores.
    #[arg(long, env = "ZMESH_NO_PIN")]
    pub no_pin: bool,

    /// Outbound capture listener (traffic redirected from apps; original destination from
    /// SO_ORIGINAL_DST). "off" disables it.
    #[arg(long, env = "ZMESH_OUTBOUND_ADDR", default_value = "[::]:15001", value_parser = parse_listen, value_name = "ADDR|off")]
    pub outbound_addr: Listen,

    /// SOCKS5 outbound listener for clients that are not captured. "off" disables it.
    #[arg(long, env = "ZMESH_SOCKS5_ADDR", default_value = "127.0.0.1:15080", value_parser = parse_listen, value_name = "ADDR|off")]
    pub socks5_addr: Listen,

    /// Admin API (config dump, connections). Keep it on localhost.
    #[arg(long, env = "ZMESH_ADMIN_ADDR", default_value = "127.0.0.1:15000", value_parser = parse_listen, value_name = "ADDR|off")]
    pub admin_addr: Listen,

    /// Prometheus metrics at /metrics and /stats/prometheus.
    #[arg(long, env = "ZMESH_METRICS_ADDR", default_value = "[::]:15020", value_parser = parse_listen, value_name = "ADDR|off")]
    pub metrics_addr: Listen,

    /// Readiness at /healthz/ready.
    #[arg(long, env = "ZMESH_READINESS_ADDR", default_value = "[::]:15021", value_parser = parse_listen, value_name = "ADDR|off")]
    pub readiness_addr: Listen,

    /// Most connections (downstream and upstream sockets) one shard keeps open; past it new
    /// ones are closed at once and counted.
    #[arg(
        long,
        env = "ZMESH_MAX_CONNECTIONS",
        default_value_t = 32_768,
        value_name = "N"
    )]
    pub max_connections_per_shard: usize,

    /// Time a peer has to finish the TLS and HTTP/2 handshakes (and a SOCKS5 client its
    /// greeting) before the connection is closed.
    #[arg(long, env = "ZMESH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Timeout for connecting to an upstream (app or peer node).
    #[arg(long, env = "ZMESH_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Pooled HBONE connections with no streams are closed after this long.
    #[arg(long, env = "POOL_UNUSED_RELEASE_TIMEOUT", default_value = "300s", value_parser = parse_duration, value_name = "DURATION")]
    pub pool_idle_timeout: Duration,

    /// Keep the original client address when connecting to the app (IP_TRANSPARENT; needs
    /// CAP_NET_ADMIN). Falls back to the node's address when not permitted.
    #[arg(long, env = "ENABLE_ORIG_SRC", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub preserve_source_ip: bool,

    /// SO_MARK put on the proxy's own sockets, so capture rules never redirect them.
    #[arg(
        long,
        env = "PACKET_MARK",
        default_value_t = 0x539,
        value_name = "MARK"
    )]
    pub packet_mark: u32,

    /// In-pod mode: the node agent's ZDS socket (SOCK_SEQPACKET). Pods enrolled over it get
    /// their listeners inside their own network namespace and their traffic captured (eBPF,
    /// or nftables where the hooks are unavailable); local workloads then get no listeners on
    /// the host.
    #[arg(long, env = "INPOD_UDS", value_name = "PATH")]
    pub zds_socket: Option<PathBuf>,

    /// In-pod capture back end: auto (eBPF when the hooks load here, else nftables), ebpf or
    /// nftables. The choice is logged at start-up.
    #[arg(long, env = "ZMESH_CAPTURE", default_value = "auto", value_parser = ["auto", "ebpf", "nftables"], value_name = "BACKEND")]
    pub capture: String,

    /// In-pod eBPF capture: a directory on a bpffs (e.g. under /sys/fs/bpf) where the maps and
    /// every captured pod's links are pinned, so pods stay captured while this proxy is down:
    /// their connections fail (closed) instead of bypassing the mesh, and the next run adopts
    /// the links when the node agent re-sends the pods. Layout: DIR/obj-<hash>/maps/,
    /// DIR/obj-<hash>/pods/<netns cookie>/. Without it, capture ends with this process.
    #[arg(long, env = "ZMESH_BPF_PIN_DIR", value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,

    /// Log filter (RUST_LOG syntax), e.g. "info,zmesh_node=debug".
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    pub log: String,
}

/// A listener address, or none when configured "off".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{s:?} is not ip:port or \"off\": {e}"))
}

pub use zmesh_state::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "zmesh-node",
            "--config",
            "x.yaml",
            "--node-name",
            "n",
            "--dev-ca",
            "ca",
            "--socks5-addr",
            "off",
        ])
        .expect("minimal flags parse");
        assert_eq!(a.socks5_addr, Listen(None));
        assert_eq!(
            a.outbound_addr,
            Listen(Some("[::]:15001".parse().expect("addr")))
        );
        assert_eq!(a.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn config_and_xds_are_exclusive() {
        let base = ["zmesh-node", "--node-name", "n"];
        let with = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra.iter()).copied());
        let a = with(&["--xds-address", "https://ctl:15012"]).expect("xDS alone");
        assert_eq!(a.config, None);
        assert_eq!(a.cert_ttl, Duration::from_secs(86_400));
        let a = with(&["--xds-address", "https://ctl:15012", "--secret-ttl", "4s"])
            .expect("--secret-ttl");
        assert_eq!(a.cert_ttl, Duration::from_secs(4));
        assert!(with(&["--config", "x.yaml", "--xds-address", "https://ctl:15012"]).is_err());
        assert!(with(&["--xds-address", "https://ctl:15012", "--dev-ca", "d"]).is_err());
        assert!(
            with(&[]).is_err(),
            "one of --config and --xds-address is required"
        );
    }
}
