//! Filling Istio's traffic labels and writing the access log.

use std::net::SocketAddr;
use std::time::Duration;

use zmesh_hbone::Baggage;
use zmesh_state::{Identity, Service, Workload};

use crate::metrics::{TrafficLabels, or_unknown};

fn workload_name(w: &Workload) -> &str {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

fn canonical(w: &Workload) -> (&str, &str) {
    let name = if w.canonical_name.is_empty() {
        workload_name(w)
    } else {
        &w.canonical_name
    };
    let rev = if w.canonical_revision.is_empty() {
        "latest"
    } else {
        &w.canonical_revision
    };
    (name, rev)
}

/// The source side from a workload we know.
pub fn set_source(l: &mut TrafficLabels, w: &Workload, cluster: &str) {
    let (svc, rev) = canonical(w);
    l.source_workload = or_unknown(workload_name(w));
    l.source_canonical_service = or_unknown(svc);
    l.source_canonical_revision = or_unknown(rev);
    l.source_workload_namespace = or_unknown(&w.namespace);
    l.source_principal = w.identity().to_uri();
    l.source_app = or_unknown(svc);
    l.source_version = or_unknown(rev);
    l.source_cluster = or_unknown(if w.cluster_id.is_empty() {
        cluster
    } else {
        &w.cluster_id
    });
}

/// The source side as an inbound connection sees it: the TLS identity plus the peer's baggage.
pub fn set_peer_source(l: &mut TrafficLabels, peer: Option<&Identity>, bag: &Baggage) {
    if let Some(id) = peer {
        l.source_principal = id.to_uri();
        l.source_workload_namespace = id.namespace.clone();
    }
    if !bag.namespace.is_empty() {
        l.source_workload_namespace = bag.namespace.clone();
    }
    l.source_workload = or_unknown(&bag.workload_name);
    l.source_canonical_service = or_unknown(&bag.service_name);
    l.source_canonical_revision = or_unknown(&bag.service_version);
    l.source_app = or_unknown(&bag.service_name);
    l.source_version = or_unknown(&bag.service_version);
    l.source_cluster = or_unknown(&bag.cluster);
}

/// The destination side.
pub fn set_destination(
    l: &mut TrafficLabels,
    w: Option<&Workload>,
    svc: Option<&Service>,
    cluster: &str,
) {
    if let Some(w) = w {
        let (name, rev) = canonical(w);
        l.destination_workload = or_unknown(workload_name(w));
        l.destination_canonical_service = or_unknown(name);
        l.destination_canonical_revision = or_unknown(rev);
        l.destination_workload_namespace = or_unknown(&w.namespace);
        l.destination_principal = w.identity().to_uri();
        l.destination_app = or_unknown(name);
        l.destination_version = or_unknown(rev);
        l.destination_cluster = or_unknown(if w.cluster_id.is_empty() {
            cluster
        } else {
            &w.cluster_id
        });
    }
    if let Some(s) = svc {
        l.destination_service = or_unknown(&s.hostname);
        l.destination_service_namespace = or_unknown(&s.namespace);
        l.destination_service_name = or_unknown(&s.name);
    }
}

/// The `host=` parameter of a `forwarded` header (the service hostname the client used).
pub fn forwarded_host(value: &str) -> Option<&str> {
    value
        .split([';', ','])
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The `baggage` a workload sends about itself.
pub fn baggage(w: &Workload, cluster: &str) -> Baggage {
    let (svc, rev) = canonical(w);
    Baggage {
        cluster: cluster.to_string(),
        namespace: w.namespace.clone(),
        workload_type: if w.workload_type.is_empty() {
            "deployment".into()
        } else {
            w.workload_type.clone()
        },
        workload_name: workload_name(w).to_string(),
        service_name: svc.to_string(),
        service_version: rev.to_string(),
        ..Baggage::default()
    }
}

/// One access-log line for a finished connection.
#[allow(clippy::too_many_arguments)]
pub fn access_log(
    direction: &'static str,
    src: SocketAddr,
    dst: SocketAddr,
    l: &TrafficLabels,
    sent: u64,
    received: u64,
    duration: Duration,
    error: Option<&dyn std::fmt::Display>,
) {
    match error {
        None => tracing::info!(
            target: "access", direction, src.addr = %src, dst.addr = %dst,
            src.identity = %l.source_principal, dst.identity = %l.destination_principal,
            dst.service = %l.destination_service, bytes_sent = sent, bytes_recv = received,
            duration_ms = duration.as_millis() as u64, "connection complete"
        ),
        Some(e) => tracing::info!(
            target: "access", direction, src.addr = %src, dst.addr = %dst,
            src.identity = %l.source_principal, dst.identity = %l.destination_principal,
            dst.service = %l.destination_service, bytes_sent = sent, bytes_recv = received,
            duration_ms = duration.as_millis() as u64, flags = l.response_flags, error = %e,
            "connection failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_host;

    #[test]
    fn forwarded_host_parameter() {
        assert_eq!(
            forwarded_host("for=\"10.0.0.5:41234\";host=echo.default.svc.cluster.local"),
            Some("echo.default.svc.cluster.local")
        );
        assert_eq!(forwarded_host("for=\"[::1]:80\""), None);
        assert_eq!(forwarded_host("host=\"\""), None);
    }
}
