//! HBONE, the tunnel protocol of Istio's ambient mesh: mutual TLS 1.3 with SPIFFE identities,
//! then an HTTP/2 CONNECT stream per tunnelled TCP connection.
//!
//! This crate holds what is the same for every driver: TLS configurations and certificate
//! verifiers ([`tls`]), a development certificate authority ([`ca`]), the CONNECT request and its
//! headers ([`connect`]), and the HTTP/2 settings both ends use ([`settings`]). It opens no
//! sockets and runs no timers; the node proxy drives it over its own IO.
#![forbid(unsafe_code)]

pub mod ca;
pub mod connect;
pub mod csr;
pub mod settings;
pub mod tls;

pub use connect::{Authority, Baggage, ConnectRequest, parse_authority};
pub use tls::{CertError, WorkloadCert};

/// The port every HBONE server listens on.
pub const HBONE_PORT: u16 = 15008;
