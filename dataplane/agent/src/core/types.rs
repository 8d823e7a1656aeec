//! The core's vocabulary: what goes in (pods), what comes out (requests, replies) and why an
//! ADD fails.

use std::time::Duration;

/// Identifies a CNI request waiting for an answer.
pub type ReqId = u64;
/// Identifies one node proxy connection.
pub type ConnId = u64;

/// A pod the CNI plugin reported as started on this node. `F` is its netns handle (an fd in
/// the agent, anything clonable in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPod<F> {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    /// The pod's cgroup v2 directory (absolute path), or why it was not found: only an
    /// enrolled pod needs it (eBPF capture attaches to it).
    pub cgroup: Result<String, String>,
    pub netns: F,
}

/// A ZDS request for the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<F> {
    Add {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        cgroup: String,
        netns: F,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// How a CNI ADD ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// The node proxy acked the pod's `add`: its traffic is captured.
    Captured,
    /// The pod is not enrolled; it runs outside the mesh.
    NotEnrolled,
    /// DEL: the node proxy released the pod, never held it, or will drop it at its next
    /// snapshot (it disconnected, or did not answer in time: DEL never fails).
    Released,
}

/// Why a CNI ADD for an enrolled pod failed (the pod must not start uncaptured).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error(
        "no node proxy connected to the agent within {0:?}: the pod would run uncaptured \
         (is zmesh-node running with --zds-socket?)"
    )]
    NoProxy(Duration),
    #[error("the node proxy did not confirm capture within {0:?}")]
    NotConfirmed(Duration),
    #[error("the node proxy could not capture the pod: {0}")]
    Rejected(String),
    #[error("the pod was deleted before it was captured")]
    Deleted,
    #[error("the pod's cgroup: {0}")]
    NoCgroup(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<F> {
    /// Send a request on the proxy connection (its answer comes back as [`Core::proxy_ack`]).
    Send { conn: ConnId, request: Request<F> },
    /// Answer a CNI ADD or DEL.
    Reply {
        req: ReqId,
        result: Result<Enrollment, AddError>,
    },
    /// Close a proxy connection that a newer one replaced.
    Close { conn: ConnId },
}

/// What CHECK reports about a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodStatus {
    pub enrolled: bool,
    /// The connected node proxy acked the pod's `add`.
    pub captured: bool,
}
