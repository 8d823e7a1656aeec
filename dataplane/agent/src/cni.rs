//! The private protocol between `zmesh-cni` and the agent: on a Unix stream socket, one JSON
//! request line, one JSON answer line, then the agent closes. Versioned by being shipped
//! together: the plugin and the agent come from the same build.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long the agent holds a DEL for the node proxy to release the pod; after that DEL
/// succeeds anyway (the proxy's next snapshot releases it).
pub const DEL_WAIT: Duration = Duration::from_secs(5);

/// What the plugin asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum CniRequest {
    /// The pod started: capture it if it is enrolled; answer once it is captured.
    Add {
        #[serde(flatten)]
        pod: PodRef,
        /// `CNI_NETNS`: a path the agent opens (it keeps the fd while the pod runs).
        netns: String,
        /// How long the agent may wait for the node proxy, in milliseconds.
        timeout_ms: u64,
    },
    /// The pod is gone: release it (succeeds for unknown pods).
    Del {
        #[serde(flatten)]
        pod: PodRef,
    },
    /// Is the pod in the state ADD left it in?
    Check {
        #[serde(flatten)]
        pod: PodRef,
    },
}

/// Which pod, as the runtime names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`; when absent the agent uses `namespace/name`.
    #[serde(default)]
    pub uid: String,
}

impl PodRef {
    /// The uid the agent and the node proxy know the pod by.
    pub fn uid(&self) -> String {
        if self.uid.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            self.uid.clone()
        }
    }
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CniResponse {
    /// ADD/CHECK: the node proxy captures the pod.
    Captured,
    /// ADD/CHECK: the pod is not enrolled; it runs outside the mesh.
    NotEnrolled,
    /// DEL: done (whether or not the pod was known).
    Deleted,
    /// The request failed; `message` says why, for the CNI error's `msg`.
    Error { message: String },
}
