//! `zmesh-node`: the node proxy binary. Start-up wiring only: parse flags, load config and
//! certificates, bind every listener (so a bad config or a port clash fails before we claim to
//! be ready), start the shards, then serve admin, metrics and readiness on the control thread.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod backoff;
mod certs;
mod config;
mod control;
mod grpc;
mod inbound;
mod listeners;
mod metrics;
mod outbound;
mod podns;
mod pool;
mod relay;
mod shard;
mod sockets;
mod socks5;
mod state;
mod telemetry;
mod xds;
mod zds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use zmesh_hbone::ca::DevCa;
use zmesh_rt::{DriverKind, RuntimeConfig};

use crate::config::Args;
use crate::shard::{Command, ProxySettings, ShardSockets, ShardSpec};
use crate::sockets::UpstreamOpts;
use crate::state::{CertSource, NodeState};

fn main() {
    let args = Args::parse();
    init_logging(&args.log);
    raise_nofile_limit();
    if let Err(e) = run(args) {
        eprintln!("zmesh-node: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs usually end up in files and journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Raises the soft open-files limit to the hard limit before anything is bound, as ztunnel
/// does: every proxied connection holds two descriptors, and the usual soft limit of 1024 would
/// cap a node at a few hundred connections long before `--max-connections`.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    podns::init_host().context("recording the host network namespace")?;
    let mut state = NodeState {
        mesh: Arc::new(zmesh_state::Snapshot::empty()),
        certs: Default::default(),
        node_name: args.node_name.clone(),
        network: args.network.clone(),
        cluster_id: args.cluster_id.clone(),
        version: 1,
    };
    let xds = match (&args.config, &args.xds_address) {
        (Some(path), _) => {
            state.mesh =
                Arc::new(zmesh_state::load_local_config(path).map_err(|e| anyhow::anyhow!("{e}"))?);
            state.certs = cert_source(&args)?.certs_for(state.local_workloads())?;
            tracing::info!(
                node = %args.node_name, workloads = state.mesh.workloads().count(),
                local = state.local_workloads().count(), services = state.mesh.services().count(),
                policies = state.mesh.policies().count(), "config loaded from {}", path.display()
            );
            None
        }
        (None, Some(url)) => Some(xds_setup(&args, url)?),
        (None, None) => anyhow::bail!("no config: pass --config FILE or --xds-address URL"),
    };
    // Static workloads are bound now, so a bad address fails start-up; xDS workloads are
    // bound by the shards when they arrive.
    let local: Vec<_> = state.local_workloads().cloned().collect();
    let shared = Arc::new(ArcSwap::from_pointee(state));

    let driver = match args.driver {
        Some(d) => {
            tracing::info!(driver = %d, "IO driver chosen by flag");
            d
        }
        None => match DriverKind::detect() {
            (d, None) => {
                tracing::info!(driver = %d, "IO driver");
                d
            }
            (d, Some(why)) => {
                tracing::warn!(driver = %d, reason = %why, "io_uring unavailable, using epoll");
                d
            }
        },
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n = args.shards.unwrap_or(cores.len().max(1)).max(1);
    // In-pod mode: local workloads are served in their pods' netns once enrolled, not here.
    let capturer = match &args.zds_socket {
        Some(path) => Some(in_pod_setup(path, &args)?),
        None => None,
    };
    let listen_addrs: Vec<SocketAddr> = local
        .iter()
        .filter(|_| capturer.is_none())
        .flat_map(|w| w.workload_ips.iter().copied())
        .map(|ip| SocketAddr::new(ip, 0))
        .collect();

    let settings = Arc::new(ProxySettings {
        max_connections: args.max_connections_per_shard,
        handshake_timeout: args.handshake_timeout,
        connect_timeout: args.connect_timeout,
        pool_idle_timeout: args.pool_idle_timeout,
        upstream: UpstreamOpts {
            mark: Some(args.packet_mark).filter(|m| *m != 0),
            transparent: args.preserve_source_ip,
        },
    });
    let (mesh_metrics, shard_metrics) = metrics::new(n);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for (id, shard_metrics) in shard_metrics.into_iter().enumerate() {
        let sockets = bind_shard(&args, &listen_addrs)?;
        let (tx, rx) = zmesh_rt::channel();
        senders.push(tx);
        let spec = ShardSpec {
            id,
            core: (!args.no_pin)
                .then(|| cores.get(id % cores.len().max(1)).copied())
                .flatten(),
            runtime: RuntimeConfig {
                driver,
                send_zc_threshold: args.send_zc_threshold,
                // Receives usually bypass the ring (the socket is read directly when data is
                // there), so a small ring is enough and keeps an idle shard's memory low.
                recv_buffers: 64,
                ..RuntimeConfig::default()
            },
            state: shared.clone(),
            settings: settings.clone(),
            metrics: shard_metrics,
            sockets,
            commands: rx,
            ready: ready.clone(),
        };
        threads.push(shard::spawn(spec).with_context(|| format!("starting shard {id}"))?);
    }
    tracing::info!(shards = n, driver = %driver, "node proxy started");
    let pod_metrics = match (capturer, &args.zds_socket) {
        (Some(capturer), Some(path)) => {
            let m = Arc::new(zds::PodMetrics::default());
            let pods = zds::Pods::new(senders.clone(), capturer, m.clone());
            zds::spawn(path.clone(), pods).context("starting the ZDS client")?;
            Some(m)
        }
        _ => None,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let host_listeners = args.zds_socket.is_none();
        let xds_parts = xds.map(|x| x.start(shared.clone(), senders.clone(), host_listeners));
        let ctl = Arc::new(admin::Control {
            state: shared.clone(),
            registry: metrics::registry(
                mesh_metrics,
                xds_parts.as_ref().map(|x| x.metrics.clone()),
                pod_metrics,
                env!("CARGO_PKG_VERSION"),
            ),
            shards: senders.clone(),
            ready_shards: ready,
            driver: driver.to_string(),
            shutdown: Arc::new(tokio::sync::Notify::new()),
            xds: xds_parts
                .as_ref()
                .map(|x| (x.status.clone(), x.pending.clone())),
        });
        for (addr, ep) in [
            (args.admin_addr.0, admin::Endpoint::Admin),
            (args.metrics_addr.0, admin::Endpoint::Metrics),
            (args.readiness_addr.0, admin::Endpoint::Readiness),
        ] {
            if let Some(addr) = addr {
                admin::serve(addr, ep, ctl.clone()).await?;
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = ctl.shutdown.notified() => {}
        }
        tracing::info!("shutting down");
        anyhow::Ok(())
    })?;
    for tx in &senders {
        let _ = tx.send(Command::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// In-pod mode: chooses the capture back end (eBPF, else nftables; logged) before any pod can
/// be enrolled. The proxy's own cgroup gets the proxy-side hooks: it must hold only the proxy.
fn in_pod_setup(zds: &std::path::Path, args: &Args) -> anyhow::Result<zmesh_ebpf::Capturer> {
    use zmesh_ebpf::{Capturer, LoadConfig, nftables::Nftables};
    if let Some(dir) = &args.bpf_pin_dir {
        // Checked up front: under "auto" a bad directory must not quietly mean nftables.
        zmesh_ebpf::check_bpffs(dir).context("--bpf-pin-dir")?;
    }
    let load = LoadConfig {
        pin_dir: args.bpf_pin_dir.clone(),
        ..LoadConfig::default()
    };
    let capturer = match args.capture.as_str() {
        "ebpf" => zmesh_ebpf::Capture::load(load)
            .map(Capturer::Ebpf)
            .context("eBPF capture (--capture ebpf)")?,
        "nftables" => {
            Nftables::detect().context("nftables capture (--capture nftables)")?;
            let ports = zmesh_ebpf::Ports::default();
            // The rules skip packets with our mark, so they must use the one our sockets carry.
            Capturer::Nftables(Nftables::new(ports, args.packet_mark))
        }
        _ => Capturer::choose(load).context("no traffic capture available for in-pod mode")?,
    };
    if !capturer.survives_restart() {
        tracing::warn!(
            "eBPF capture without --bpf-pin-dir: pods' capture ends with this process, so \
             while it is down their traffic bypasses the mesh"
        );
    } else if let (Capturer::Nftables(_), Some(dir)) = (&capturer, &args.bpf_pin_dir) {
        tracing::info!(
            pin_dir = %dir.display(),
            "--bpf-pin-dir unused with nftables: the in-pod rules outlive the proxy anyway"
        );
    }
    tracing::info!(backend = capturer.name(), zds = %zds.display(), "in-pod mode: pods enroll over ZDS");
    if let zmesh_ebpf::Capturer::Ebpf(_) = capturer {
        match podns::cgroup_neighbours() {
            Ok(pids) if !pids.is_empty() => tracing::warn!(
                ?pids,
                "other processes share the proxy's cgroup: their sockets count as the proxy's \
                 for capture; run the proxy in a cgroup of its own"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the proxy's cgroup"),
        }
    }
    Ok(capturer)
}

fn cert_source(args: &Args) -> anyhow::Result<CertSource> {
    match (&args.dev_ca, &args.cert_dir) {
        (Some(dir), _) => {
            let ca = DevCa::load_or_create(dir, "zmesh")
                .map_err(|e| anyhow::anyhow!("dev CA in {}: {e}", dir.display()))?;
            Ok(CertSource::Dev {
                ca: Box::new(ca),
                ttl: args.cert_ttl,
            })
        }
        (None, Some(dir)) => Ok(CertSource::Dir(dir.clone())),
        (None, None) => anyhow::bail!("no certificates: pass --dev-ca DIR or --cert-dir DIR"),
    }
}

/// One shard's listeners: HBONE and plaintext inbound on every local workload address,
/// outbound capture and SOCKS5 on the configured addresses.
fn bind_shard(args: &Args, workload_addrs: &[SocketAddr]) -> anyhow::Result<ShardSockets> {
    let mut s = ShardSockets::default();
    for addr in workload_addrs {
        s.hbone.push(sockets::listener(SocketAddr::new(
            addr.ip(),
            zmesh_hbone::HBONE_PORT,
        ))?);
        s.plaintext
            .push(sockets::listener(SocketAddr::new(addr.ip(), 15006))?);
    }
    if let Some(a) = args.outbound_addr.0 {
        s.outbound = Some(sockets::listener(a)?);
    }
    if let Some(a) = args.socks5_addr.0 {
        s.socks5 = Some(sockets::listener(a)?);
    }
    Ok(s)
}

/// xDS mode: the controller and CA targets and this proxy's node identity, checked before
/// anything is started.
struct XdsSetup {
    xds: grpc::Target,
    ca: certs::client::CaClient,
    node: zmesh_proto::discovery::Node,
}

/// What the admin endpoints read in xDS mode.
struct XdsParts {
    status: Arc<std::sync::Mutex<xds::XdsStatus>>,
    pending: Arc<std::sync::Mutex<control::Pending>>,
    metrics: Arc<xds::XdsMetrics>,
}

fn xds_setup(args: &Args, url: &str) -> anyhow::Result<XdsSetup> {
    let token = args.token_file.clone();
    let xds = grpc::Target::new(url, &args.xds_root_cert, token.clone(), &args.cluster_id)?;
    xds.headers()?;
    let ca_url = args.ca_address.as_deref().unwrap_or(url);
    let ca_root = args.ca_root_cert.as_ref().unwrap_or(&args.xds_root_cert);
    let ca = certs::client::CaClient {
        target: grpc::Target::new(ca_url, ca_root, token, &args.cluster_id)?,
        ttl: args.cert_ttl,
    };
    tracing::info!(xds = %url, ca = %ca_url, node = %args.node_name, "config and certificates from the controller");
    Ok(XdsSetup {
        xds,
        ca,
        node: xds::node_id(args),
    })
}

impl XdsSetup {
    /// Starts the xDS client and the control loop on the current (control thread) runtime.
    fn start(
        self,
        state: state::SharedState,
        shards: Vec<zmesh_rt::Sender<Command>>,
        host_listeners: bool,
    ) -> XdsParts {
        let parts = XdsParts {
            status: Arc::new(std::sync::Mutex::new(xds::XdsStatus {
                address: self.xds.url().to_owned(),
                ..Default::default()
            })),
            pending: Default::default(),
            metrics: Default::default(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let client = xds::client::XdsClient {
            target: self.xds,
            node: self.node,
            updates: tx,
            status: parts.status.clone(),
            metrics: parts.metrics.clone(),
        };
        tokio::spawn(client.run());
        let ctl = control::ControlLoop {
            state,
            shards,
            ca: self.ca,
            pending: parts.pending.clone(),
            updates: rx,
            host_listeners,
        };
        tokio::spawn(ctl.run());
        parts
    }
}
