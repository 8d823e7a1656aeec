use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// Why capture could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object could not be loaded (not root / no CAP_BPF, kernel too old, verifier).
    #[error("loading the capture object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("no cgroup v2 hierarchy is mounted (needed for the connect/bind hooks)")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("pod cgroup {0} is inside the proxy's cgroup")]
    PodCgroupInsideProxy(PathBuf),
    #[error("pod network namespace: {0}")]
    Netns(io::Error),
    #[error("the inbound listener given for the pod is not in the pod's network namespace")]
    ListenerNotInPod,
    #[error("no inbound listener of the right family for pod address {0}")]
    MissingListener(IpAddr),
    #[error("nft: {0}")]
    Nft(String),
    #[error("--bpf-pin-dir {0} is not on a bpffs (mount one first: mount -t bpf bpf <dir>)")]
    NotBpffs(PathBuf),
    #[error("pin {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error("eBPF link {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
}
