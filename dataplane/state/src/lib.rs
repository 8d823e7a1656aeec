//! Sans-IO mesh state for the node proxy: SPIFFE identities, the workload/service/policy model
//! (close to Istio's workload API, so xDS resources map 1:1), L4 authorization, immutable
//! indexed snapshots with outbound resolution, and ztunnel's local config YAML.
//!
//! It does no IO besides reading a config file on request: no sockets, no runtime, no clock.
//! Randomness for load balancing comes from the caller. Snapshots are rebuilt on every change
//! and swapped by the caller (e.g. with `arc-swap`); this crate does not watch or diff.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod duration;
pub mod identity;
pub mod local_config;
pub mod model;
pub mod rbac;
pub mod snapshot;

pub use duration::parse_duration;
pub use identity::{Identity, IdentityError};
pub use local_config::{ConfigError, load_local_config, parse_local_config};
pub use model::{
    Action, Authorization, Clause, GatewayAddress, GatewayDestination, HBONE_PORT, Match,
    NetworkAddress, Rule, Scope, Service, ServiceAccountMatch, StringMatch, TunnelProtocol,
    Workload, WorkloadStatus,
};
pub use rbac::{Connection, Decision};
pub use snapshot::{Item, Resolution, ResolveError, Snapshot, StateError};
