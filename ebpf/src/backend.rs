//! The start-up choice between the eBPF hooks and the nftables fallback.

use crate::nftables::{NftCapture, Nftables};
use crate::{Capture, Error, LoadConfig, PROXY_MARK, PodCapture, PodSpec};

/// The capture back end in use on this node, chosen once at start-up.
#[derive(Debug)]
pub enum Capturer {
    Ebpf(Capture),
    Nftables(Nftables),
}

/// One captured pod, whichever back end captured it. Drop or `release` to stop capturing.
#[derive(Debug)]
pub enum PodGuard {
    Ebpf(PodCapture),
    Nftables(NftCapture),
}

impl Capturer {
    /// eBPF when the hooks load here, otherwise nftables; logs which and why. Fails only when
    /// neither works.
    pub fn choose(config: LoadConfig) -> Result<Self, Error> {
        let ports = config.ports;
        match Capture::load(config) {
            Ok(capture) => {
                tracing::info!(backend = "ebpf", "traffic capture: eBPF hooks");
                Ok(Self::Ebpf(capture))
            }
            Err(ebpf_error) => {
                Nftables::detect()?;
                tracing::warn!(
                    backend = "nftables",
                    reason = %ebpf_error,
                    "traffic capture: eBPF hooks unavailable, using the in-pod nftables fallback"
                );
                Ok(Self::Nftables(Nftables::new(ports, PROXY_MARK)))
            }
        }
    }

    /// Starts capturing a pod.
    pub fn capture_pod(&self, spec: &PodSpec<'_>) -> Result<PodGuard, Error> {
        match self {
            Self::Ebpf(c) => c.capture_pod(spec).map(PodGuard::Ebpf),
            Self::Nftables(n) => n.capture_pod(spec).map(PodGuard::Nftables),
        }
    }

    /// Pinned eBPF capture: unpins the links of pods this process has not captured (call once
    /// the node agent has listed its pods). Returns how many pods were released.
    pub fn prune_pins(&self) -> usize {
        match self {
            Self::Ebpf(c) => c.prune_pins(),
            Self::Nftables(_) => 0,
        }
    }

    /// Whether capture outlives this process (pinned eBPF links, or the nftables rules, which
    /// stay in each pod's netns).
    pub fn survives_restart(&self) -> bool {
        match self {
            Self::Ebpf(c) => c.pinned(),
            Self::Nftables(_) => true,
        }
    }

    /// "ebpf" or "nftables", for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ebpf(_) => "ebpf",
            Self::Nftables(_) => "nftables",
        }
    }
}

impl PodGuard {
    /// Stops capturing the pod and reports whether everything was removed.
    pub fn release(self) -> Result<(), Error> {
        match self {
            Self::Ebpf(p) => p.release(),
            Self::Nftables(n) => n.release(),
        }
    }
}
