//! zmesh's controller (the ambient parts of istiod): config sources feed one object store,
//! translation turns the store into Istio's workload API resources, a delta ADS server pushes
//! what changed to node proxies, and a CA signs SPIFFE certificates for them.

#![forbid(unsafe_code)]

pub mod auth;
pub mod ca;
#[cfg(feature = "kube")]
pub mod ca_secret;
#[cfg(feature = "kube")]
pub mod k8s_auth;
pub mod objects;
pub mod resources;
pub mod server;
pub mod source;
pub mod store;
pub mod translate;
pub mod xds;

pub use resources::Resources;
