//! zmesh's node agent (the role of Istio's istio-cni node agent in ambient mode), and the
//! pieces its CNI plugin shares with it.
//!
//! - [`core`]: the sans-IO state machine: running pods (from CNI events) × enrollment (from
//!   the object store) × the node proxy connection → ZDS requests and CNI answers.
//! - [`zds`]: the ZDS server end (SOCK_SEQPACKET, netns fd as SCM_RIGHTS) the node proxy
//!   connects to; [`cni`]: the private JSON protocol between `zmesh-cni` and the agent;
//!   [`podns`]: a pod's netns and cgroup; [`state`]: running pods remembered across agent
//!   restarts; [`agent`]: the threads that drive the core.
//! - [`plugin`]: the CNI plugin's logic (env + netconf → answer), for the `zmesh-cni` binary.
//!
//! It does not capture traffic itself: the node proxy does, when it gets the pod's netns.

#![forbid(unsafe_code)]

pub mod agent;
pub mod cni;
pub mod core;
pub mod enroll;
pub mod plugin;
pub mod podns;
pub mod state;
pub mod zds;
