//! `zmesh-agent`: the node agent binary; see `zmesh_agent::agent`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

/// zmesh node agent: decides which pods on this node are enrolled in the mesh (namespace label
/// istio.io/dataplane-mode=ambient, pod opt-out istio.io/dataplane-mode=none) from the
/// controller's config directory, learns about pods from zmesh-cni, and hands enrolled pods'
/// network namespaces (and cgroups) to the node proxy over ZDS. Logs "node agent ready" once
/// both sockets are bound.
#[derive(Parser, Debug)]
#[command(version, max_term_width = 100)]
struct Args {
    /// This node's name (as in the pods' spec.nodeName); used in logs.
    #[arg(long, env = "ZMESH_NODE_NAME")]
    node_name: String,
    /// Directory of Kubernetes YAML (the same one zmesh-control reads): Namespaces and Pods
    /// decide enrollment; watched for label changes.
    #[arg(long)]
    config_dir: PathBuf,
    /// ZDS socket (SOCK_SEQPACKET) the node proxy connects to (`zmesh-node --zds-socket`).
    #[arg(long)]
    zds_socket: PathBuf,
    /// Unix socket zmesh-cni talks to (the netconf's agent_socket).
    #[arg(long)]
    cni_socket: PathBuf,
    /// File remembering the running pods, so a restarted agent re-sends them to the node
    /// proxy instead of releasing them [default: zmesh-agent-pods.json beside --cni-socket]
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `zmesh_agent=debug`.
    #[arg(long, default_value = "info", env = "ZMESH_LOG")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let state_file = args.state_file.unwrap_or_else(|| {
        args.cni_socket
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("zmesh-agent-pods.json")
    });
    zmesh_agent::agent::run(&zmesh_agent::agent::Config {
        state_file,
        node_name: args.node_name,
        config_dir: args.config_dir,
        zds_socket: args.zds_socket,
        cni_socket: args.cni_socket,
    })?;
    Ok(())
}
