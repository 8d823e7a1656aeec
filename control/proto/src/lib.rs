//! zmesh's protobuf definitions of the Istio wire APIs it speaks: delta ADS (the subset of
//! Envoy's discovery messages Istio uses), `istio.workload` (Address, Workload, Service),
//! `istio.security` (Authorization) and `istio.v1.auth` (the CA). The `.proto` files under
//! `proto/` are written from the interop reference; field numbers are the contract with
//! Istio, checked by hand-encoded messages in `tests/wire.rs`. Compiled with protox, so
//! building needs no `protoc`. Conversions to zmesh's own model live with their users.

#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs, rust_2018_idioms)]

pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

pub mod workload {
    tonic::include_proto!("istio.workload");
}

pub mod security {
    tonic::include_proto!("istio.security");
}

pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

/// ZDS, the node agent ↔ node proxy protocol of in-pod mode (field numbers checked against
/// Istio's by hand: see the comment in `proto/istio/zds.proto`).
pub mod zds {
    tonic::include_proto!("istio.workload.zds");
}

pub use prost;
pub use prost_types;

/// Type URLs of the resources zmesh serves and subscribes to over delta ADS.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
}
