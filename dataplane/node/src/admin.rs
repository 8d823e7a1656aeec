//! The control thread's HTTP endpoints: readiness (15021), Prometheus metrics (15020) and the
//! admin API on localhost (15000). They run on the control thread's tokio runtime, never on a
//! shard.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::shard::Command;
use crate::state::SharedState;

/// The xDS stream's status and what readiness waits for.
pub type XdsView = (
    Arc<std::sync::Mutex<crate::xds::XdsStatus>>,
    Arc<std::sync::Mutex<crate::control::Pending>>,
);

/// What the endpoints read.
pub struct Control {
    pub state: SharedState,
    pub registry: Registry,
    pub shards: Vec<zmesh_rt::Sender<Command>>,
    pub ready_shards: Arc<AtomicUsize>,
    pub driver: String,
    pub shutdown: Arc<Notify>,
    /// xDS mode: the stream's status and what readiness waits for.
    pub xds: Option<XdsView>,
}

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Admin,
    Metrics,
    Readiness,
}

/// Binds now (so a port clash fails start-up), serves in the background.
pub async fn serve(addr: SocketAddr, endpoint: Endpoint, ctl: Arc<Control>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {endpoint:?} on {addr}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ctl = ctl.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let ctl = ctl.clone();
                    async move { Ok::<_, Infallible>(route(endpoint, &ctl, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json_response(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::OK,
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(endpoint: Endpoint, ctl: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Readiness, &Method::GET, "/healthz/ready") => readiness(ctl),
        (Endpoint::Metrics, &Method::GET, "/metrics" | "/stats/prometheus") => metrics(ctl),
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "zmesh-node admin\n  GET  /config_dump   workloads, services, policies, certificates\n  \
             GET  /connections   open connections on every shard\n  POST /quitquitquit  graceful shutdown\n",
        ),
        (Endpoint::Admin, &Method::GET, "/config_dump") => json_response(&config_dump(ctl)),
        (Endpoint::Admin, &Method::GET, "/connections") => json_response(&connections(ctl).await),
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            ctl.shutdown.notify_one();
            text(StatusCode::OK, "shutting down\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn readiness(ctl: &Control) -> Response<Full<Bytes>> {
    let ready = ctl.ready_shards.load(Ordering::SeqCst);
    let want = ctl.shards.len();
    let mut pending = Vec::new();
    if ready != want {
        pending.push(format!("shards {ready}/{want}"));
    }
    if let Some((_, p)) = &ctl.xds {
        pending.extend(p.lock().unwrap_or_else(|p| p.into_inner()).reasons());
    }
    if pending.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not ready, pending: {}\n", pending.join(", ")),
        )
    }
}

fn metrics(ctl: &Control) -> Response<Full<Bytes>> {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &ctl.registry) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}\n"));
    }
    let mut r = text(StatusCode::OK, out);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

fn config_dump(ctl: &Control) -> serde_json::Value {
    let state = ctl.state.load();
    let workloads: Vec<_> = state.mesh.workloads().map(|w| {
        json!({
            "uid": w.uid, "name": w.name, "namespace": w.namespace, "serviceAccount": w.service_account,
            "identity": w.identity().to_uri(), "workloadIps": w.workload_ips, "node": w.node,
            "protocol": format!("{:?}", w.protocol), "services": w.services,
            "authorizationPolicies": w.authorization_policies, "local": w.node == state.node_name,
        })
    }).collect();
    let services: Vec<_> = state.mesh.services().map(|s| {
        json!({
            "name": s.name, "namespace": s.namespace, "hostname": s.hostname,
            "vips": s.vips.iter().map(|v| format!("{}/{}", v.network, v.address)).collect::<Vec<_>>(),
            "ports": s.ports, "subjectAltNames": s.subject_alt_names,
            "endpoints": state.mesh.endpoints(&s.key()).iter().map(|w| w.uid.clone()).collect::<Vec<_>>(),
        })
    }).collect();
    let policies: Vec<_> = state.mesh.policies().map(|p| {
        json!({
            "name": p.name, "namespace": p.namespace, "scope": format!("{:?}", p.scope),
            "action": format!("{:?}", p.action), "dryRun": p.dry_run, "rules": format!("{:?}", p.rules),
        })
    }).collect();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let certs: Vec<_> = state
        .certs
        .values()
        .map(|c| {
            json!({
                "identity": c.cert.identity.to_uri(), "serial": serial(&c.cert),
                "notBefore": unix(c.cert.not_before), "notAfter": unix(c.cert.not_after),
                "chain": c.cert.chain_pem(),
            })
        })
        .collect();
    json!({
        "version": state.version, "node": state.node_name, "network": state.network,
        "driver": ctl.driver, "shards": ctl.shards.len(), "build": env!("CARGO_PKG_VERSION"),
        "workloads": workloads, "services": services, "policies": policies, "certificates": certs,
        "xds": ctl.xds.as_ref().map(|(s, _)| {
            serde_json::to_value(&*s.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or_default()
        }),
    })
}

/// The leaf's serial number in hex.
fn serial(cert: &zmesh_hbone::WorkloadCert) -> String {
    cert.chain
        .first()
        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
        .map(|(_, x)| x.raw_serial_as_string())
        .unwrap_or_default()
}

async fn connections(ctl: &Control) -> serde_json::Value {
    let mut all = Vec::new();
    for tx in &ctl.shards {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(Command::Connections(reply)).is_ok()
            && let Ok(Ok(list)) = tokio::time::timeout(std::time::Duration::from_secs(2), rx).await
        {
            all.extend(list);
        }
    }
    json!({ "connections": all })
}
