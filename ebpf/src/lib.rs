//! Transparent capture of a pod's TCP traffic for the node proxy, Istio in-pod style: the
//! proxy's listeners live inside each pod's network namespace, and capture steers the pod's
//! traffic to them.
//!
//! Two back ends, chosen once at start-up ([`Capturer::choose`], which logs the choice):
//! - [`Capture`] (eBPF, the default): `cgroup/connect4|6` on the pod's cgroup redirects the app's
//!   connects to the outbound listener and `cgroup/getsockopt` on the proxy's cgroup answers
//!   `SO_ORIGINAL_DST` from a map; `sk_lookup` on the pod's netns hands inbound TCP (except the
//!   HBONE port and the proxy's own connections, recorded from its cgroup) to the inbound
//!   listener, whose local address then *is* the original destination; `cgroup/bind4|6` keeps
//!   apps off the proxy's ports.
//! - [`nftables`]: an in-pod ruleset (REDIRECT + conntrack's `SO_ORIGINAL_DST`), where the hooks
//!   are unavailable.
//!
//! Either way the proxy's data path is the same: on an accepted outbound or inbound connection,
//! call `getsockopt(SO_ORIGINAL_DST)` and fall back to the local address when it fails.
//!
//! This crate does not open the proxy's listeners, enroll pods or talk to a node agent: the
//! node proxy does that and hands it a [`PodSpec`].

#![deny(unsafe_code)]

mod backend;
mod ebpf;
mod error;
mod netns;
pub mod nftables;
mod pin;

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;

pub use backend::{Capturer, PodGuard};
pub use ebpf::{Capture, LoadConfig, PodCapture};
pub use error::Error;
pub use netns::{cgroup2_mount, run_in_netns};
pub use pin::check_bpffs;

/// The outbound listener's port (Istio's 15001). Captured connects go to `127.0.0.1` or `::1`
/// at this port inside the pod's netns.
pub const OUTBOUND_PORT: u16 = 15001;
/// The inbound plaintext listener's port (Istio's 15006).
pub const INBOUND_PORT: u16 = 15006;
/// The HBONE listener's port: never redirected.
pub const HBONE_PORT: u16 = 15008;
/// SO_MARK the proxy puts on its own sockets (Istio's 0x539); the nftables rules skip it.
pub const PROXY_MARK: u32 = 0x539;

/// The proxy's ports inside every pod. The same for all pods of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: OUTBOUND_PORT,
            inbound: INBOUND_PORT,
            hbone: HBONE_PORT,
        }
    }
}

/// One pod to capture, as the node proxy knows it once it has opened its listeners in the
/// pod's netns.
#[derive(Debug, Clone, Copy)]
pub struct PodSpec<'a> {
    /// The pod's network namespace (e.g. the fd a node agent sent).
    pub netns: BorrowedFd<'a>,
    /// The pod's cgroup v2 directory (the pod-level one, so every container is covered).
    /// Only the eBPF back end uses it.
    pub cgroup: &'a Path,
    /// The pod's addresses: inbound TCP to them is steered to the inbound listener.
    pub ips: &'a [IpAddr],
    /// The proxy's inbound plaintext listener(s) in the pod's netns: an IPv4 one and/or an
    /// IPv6 one (a dual-stack IPv6 listener also takes IPv4). Only the eBPF back end uses
    /// them: sk_lookup hands connections to these sockets (and to their SO_REUSEPORT group).
    pub inbound_v4: Option<BorrowedFd<'a>>,
    pub inbound_v6: Option<BorrowedFd<'a>>,
}

#[cfg(test)]
mod tests {
    /// The node proxy keeps these on its control thread and may hand them to others.
    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<crate::Capture>();
        send_sync::<crate::Capturer>();
        send::<crate::PodCapture>();
        send::<crate::PodGuard>();
    }
}
