//! Outbound: an app in a local workload connects somewhere; we find out where it meant to go,
//! resolve that against the mesh, and carry it there — in an HBONE tunnel when the destination
//! speaks HBONE, as plain TCP otherwise.
//!
//! `accept → resolve → tunnel (pool → CONNECT) → relay`, one function per hop.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio_rustls::TlsConnector;
use zmesh_hbone::{ConnectRequest, settings, tls};
use zmesh_rt::{TcpListener, TcpStream};
use zmesh_state::{Resolution, Service, Workload};

use crate::metrics::{Rejection, TrafficCounters, TrafficLabels};
use crate::podns::{Pod, PodRef};
use crate::pool::{Checkout, PoolKey, PooledConn};
use crate::relay::{self, Accounting};
use crate::shard::{ConnGuard, ShardRef};
use crate::socks5::{self, Target};
use crate::state::NodeState;
use crate::{sockets, telemetry};

/// Accepts connections redirected by capture (original destination from SO_ORIGINAL_DST).
/// On an enrolled pod's listener (`pod`), the source workload is that pod's, whatever the
/// client address (eBPF capture connects the app to loopback).
pub async fn serve_captured(shard: ShardRef, listener: TcpListener, pod: Option<PodRef>) {
    loop {
        let Some((stream, client, guard)) = crate::inbound::accept(&shard, &listener).await else {
            continue;
        };
        let shard = shard.clone();
        let pod = pod.clone();
        zmesh_rt::spawn(async move {
            let local = match stream.local_addr() {
                Ok(l) => l,
                Err(_) => return,
            };
            let client = pod_source(pod.as_deref(), client, local);
            match sockets::original_dst(stream.socket(), local) {
                Ok(dst) if dst != local => {
                    outbound(
                        &shard,
                        Downstream {
                            stream,
                            socks: false,
                        },
                        client,
                        dst,
                        guard,
                        pod,
                    )
                    .await
                }
                _ => {
                    // Not redirected: a direct connection to the capture port would loop.
                    shard.reject(Rejection::IllegalPort);
                }
            }
        })
        .detach();
    }
}

/// The address a captured app connected from. eBPF capture connects the app to loopback, so
/// on a pod's listener the source is then the pod's own address of that family (what the
/// CONNECT's `forwarded` header and the logs show; nftables' REDIRECT keeps it already).
fn pod_source(pod: Option<&Pod>, client: SocketAddr, local: SocketAddr) -> SocketAddr {
    let Some(pod) = pod.filter(|_| client.ip().is_loopback()) else {
        return client;
    };
    pod.ips
        .get()
        .and_then(|ips| ips.iter().find(|ip| ip.is_ipv4() == local.is_ipv4()))
        .map_or(client, |ip| SocketAddr::new(*ip, client.port()))
}

/// Accepts SOCKS5 clients.
pub async fn serve_socks5(shard: ShardRef, listener: TcpListener) {
    loop {
        let Some((mut stream, client, guard)) = crate::inbound::accept(&shard, &listener).await
        else {
            continue;
        };
        let shard = shard.clone();
        zmesh_rt::spawn(async move {
            let hs = zmesh_rt::timeout(
                shard.settings.handshake_timeout,
                socks5::handshake(&mut stream),
            );
            let target = match hs.await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%client, error = %e, "socks5 handshake failed");
                    shard.reject(Rejection::Socks5);
                    return;
                }
                Err(_) => {
                    shard.reject(Rejection::HandshakeTimeout);
                    return;
                }
            };
            let dst = match target {
                Target::Addr(a) => Some(a),
                Target::Host(h, port) => resolve_host(&shard.state.load(), &h, port),
            };
            let mut down = Downstream {
                stream,
                socks: true,
            };
            match dst {
                Some(dst) => outbound(&shard, down, client, dst, guard, None).await,
                None => {
                    shard.reject(Rejection::Socks5);
                    down.fail(socks5::HOST_UNREACHABLE).await;
                }
            }
        })
        .detach();
    }
}

/// A service host name → its first VIP on our network.
fn resolve_host(state: &NodeState, host: &str, port: u16) -> Option<SocketAddr> {
    let svc = state.mesh.services().find(|s| s.hostname == host)?;
    let vip = svc.vips.iter().find(|v| v.network == state.network)?;
    Some(SocketAddr::new(vip.address, port))
}

/// The app side: a captured socket, or a SOCKS5 client still waiting for its reply.
pub struct Downstream {
    stream: TcpStream,
    socks: bool,
}

impl Downstream {
    async fn established(&mut self) -> io::Result<()> {
        if self.socks {
            socks5::reply(&mut self.stream, socks5::SUCCEEDED).await
        } else {
            Ok(())
        }
    }

    async fn fail(&mut self, code: u8) {
        if self.socks {
            let _ = socks5::reply(&mut self.stream, code).await;
        }
    }
}

/// Why an outbound connection failed: the Istio response flag and the SOCKS5 reply.
#[derive(Debug, thiserror::Error)]
enum OutboundError {
    #[error("unknown source workload {0}")]
    UnknownSource(SocketAddr),
    #[error("resolve: {0}")]
    Resolve(String),
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("tls to {0}: {1}")]
    Tls(SocketAddr, io::Error),
    #[error("http/2 to {0}: {1}")]
    H2(SocketAddr, String),
    #[error("tunnel refused with status {0}")]
    Status(http::StatusCode),
}

impl OutboundError {
    fn flag(&self) -> &'static str {
        match self {
            OutboundError::Tls(..) => "TLS_FAILURE",
            OutboundError::H2(..) => "H2_HANDSHAKE_FAILURE",
            OutboundError::Status(s) if *s == http::StatusCode::UNAUTHORIZED => "DENY",
            OutboundError::UnknownSource(_) => "IDENTITY_ERROR",
            _ => "CONNECT",
        }
    }

    /// The per-shard rejection reason, for failures that are ours to count (a refused
    /// tunnel is counted by the peer that refused it).
    fn rejection(&self) -> Option<Rejection> {
        match self {
            OutboundError::UnknownSource(_) => Some(Rejection::UnknownSource),
            OutboundError::Tls(..) => Some(Rejection::UpstreamTls),
            OutboundError::H2(..) => Some(Rejection::UpstreamH2),
            OutboundError::Connect(..) => Some(Rejection::UpstreamConnect),
            OutboundError::Resolve(_) | OutboundError::Status(_) => None,
        }
    }

    fn socks_code(&self) -> u8 {
        match self {
            OutboundError::Status(s) if *s == http::StatusCode::UNAUTHORIZED => socks5::NOT_ALLOWED,
            OutboundError::UnknownSource(_) => socks5::NOT_ALLOWED,
            OutboundError::Resolve(_) => socks5::HOST_UNREACHABLE,
            OutboundError::Connect(..) | OutboundError::Status(_) => socks5::CONNECTION_REFUSED,
            _ => socks5::GENERAL_FAILURE,
        }
    }
}

/// How often a connection that waits for the mesh state looks again.
const STATE_POLL: Duration = Duration::from_millis(10);

/// `find` in the published state, waiting (up to the connect timeout) while it finds nothing.
///
/// The node agent enrolls a pod (and the pod's app starts) as soon as its capture is in place,
/// which can be a moment before the controller's push names the workload and its certificate
/// arrives. Like ztunnel, a connection in that window waits for them instead of being refused:
/// refusing would fail an app's first request at start-up. Found at once, it costs one lookup.
async fn wait_for_state<T>(
    shard: &ShardRef,
    find: impl Fn(&NodeState) -> Option<T>,
) -> (Arc<NodeState>, Option<T>) {
    let deadline = Instant::now() + shard.settings.connect_timeout;
    loop {
        let state = shard.state.load_full();
        let found = find(&state);
        if found.is_some() || Instant::now() >= deadline {
            return (state, found);
        }
        zmesh_rt::sleep(STATE_POLL).await;
    }
}

/// What an upstream is once set up.
enum Upstream {
    Tunnel(SendStream<Bytes>, RecvStream, Checkout),
    Plain(TcpStream),
}

/// One outbound connection from start to end.
async fn outbound(
    shard: &ShardRef,
    mut down: Downstream,
    client: SocketAddr,
    dst: SocketAddr,
    mut guard: ConnGuard,
    pod: Option<PodRef>,
) {
    let start = Instant::now();
    let mut labels = TrafficLabels::new("source");
    guard.track("outbound", client, dst, None);
    let result = async {
        let (state, src) = match &pod {
            Some(p) => wait_for_state(shard, |s| s.pod_workload(p).cloned()).await,
            None => {
                let state = shard.state.load_full();
                let src = state.local_workload(client.ip()).cloned();
                (state, src)
            }
        };
        let src = src.ok_or(OutboundError::UnknownSource(client))?;
        telemetry::set_source(&mut labels, &src, &state.cluster_id);
        let resolution = state
            .mesh
            .resolve(&state.network, dst, rand::random())
            .map_err(|e| OutboundError::Resolve(e.to_string()))?;
        let from = Source {
            workload: &src,
            client,
            pod: pod.as_ref(),
        };
        connect_upstream(shard, &state, &from, resolution, &mut labels).await
    }
    .await;
    let upstream = match result {
        Ok(u) => u,
        Err(e) => {
            labels.response_flags = e.flag();
            if let Some(r) = e.rejection() {
                shard.reject(r);
            }
            let counters = shard.metrics.traffic(labels.clone());
            TrafficCounters::add(&counters.failed, 1);
            telemetry::access_log(
                "outbound",
                client,
                dst,
                &labels,
                0,
                0,
                start.elapsed(),
                Some(&e),
            );
            down.fail(e.socks_code()).await;
            return;
        }
    };
    let counters = shard.metrics.traffic(labels.clone());
    TrafficCounters::add(&counters.opened, 1);
    let acct = Accounting::new(counters.clone(), stats_arc(shard));
    let moved = match down.established().await {
        Err(e) => Err(e),
        Ok(()) => match upstream {
            Upstream::Tunnel(send, recv, checkout) => {
                let r = relay::tunnel(down.stream, send, recv, &acct, true).await;
                drop(checkout);
                r
            }
            Upstream::Plain(up) => relay::passthrough(down.stream, up, &acct).await,
        },
    };
    TrafficCounters::add(&counters.closed, 1);
    let (up, dn, err) = match &moved {
        Ok(m) => (m.up, m.down, None),
        Err(e) => (
            acct.moved().up,
            acct.moved().down,
            Some(e as &dyn std::fmt::Display),
        ),
    };
    telemetry::access_log(
        "outbound",
        client,
        dst,
        &labels,
        dn,
        up,
        start.elapsed(),
        err,
    );
}

fn stats_arc(shard: &ShardRef) -> Arc<crate::metrics::ShardStats> {
    shard.metrics.stats.clone()
}

/// Who an outbound connection is from.
struct Source<'a> {
    workload: &'a Arc<Workload>,
    client: SocketAddr,
    /// The enrolled pod whose listener accepted it (in-pod mode).
    pod: Option<&'a PodRef>,
}

impl Source<'_> {
    /// The address tunnels leave from: the client's, or in a pod the pod's own address of the
    /// destination's family (the client is the app on loopback).
    fn ip_for(&self, dst: SocketAddr) -> std::net::IpAddr {
        match self.pod {
            None => self.client.ip(),
            Some(_) => self
                .workload
                .workload_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                .unwrap_or(self.client.ip()),
        }
    }
}

async fn connect_upstream(
    shard: &ShardRef,
    state: &NodeState,
    from: &Source<'_>,
    resolution: Resolution,
    labels: &mut TrafficLabels,
) -> Result<Upstream, OutboundError> {
    let (src, client) = (from.workload, from.client);
    match resolution {
        Resolution::Hbone {
            workload,
            service,
            hbone_addr,
            target,
            identities,
        } => {
            telemetry::set_destination(
                labels,
                Some(&workload),
                service.as_deref(),
                &state.cluster_id,
            );
            labels.connection_security_policy = "mutual_tls";
            let key = PoolKey {
                src_id: src.identity(),
                dst_ids: identities,
                dst: hbone_addr,
                src_ip: from.ip_for(hbone_addr),
                pod: from.pod.map(|p| p.id),
            };
            let tunnel = Tunnel {
                key: &key,
                target,
                client,
                pod: from.pod,
            };
            let (send, recv, checkout) =
                open_tunnel(shard, state, src, &tunnel, service.as_deref()).await?;
            Ok(Upstream::Tunnel(send, recv, checkout))
        }
        Resolution::Plain {
            workload,
            service,
            target,
        } => {
            telemetry::set_destination(
                labels,
                workload.as_deref(),
                service.as_deref(),
                &state.cluster_id,
            );
            Ok(Upstream::Plain(
                connect_plain(shard, target, from.pod.map(|p| &**p)).await?,
            ))
        }
        Resolution::Passthrough { target } => Ok(Upstream::Plain(
            connect_plain(shard, target, from.pod.map(|p| &**p)).await?,
        )),
    }
}

async fn connect_plain(
    shard: &ShardRef,
    target: SocketAddr,
    pod: Option<&Pod>,
) -> Result<TcpStream, OutboundError> {
    if sockets::ILLEGAL_PORTS.contains(&target.port()) && is_local(shard, target) {
        return Err(OutboundError::Resolve(format!("{target} is a proxy port")));
    }
    let sock = sockets::upstream_in(pod, target, None, shard.settings.upstream)
        .map_err(|e| OutboundError::Connect(target, e))?;
    match zmesh_rt::timeout(
        shard.settings.connect_timeout,
        TcpStream::connect(sock, target),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(OutboundError::Connect(target, e)),
        Err(_) => Err(OutboundError::Connect(
            target,
            io::ErrorKind::TimedOut.into(),
        )),
    }
}

fn is_local(shard: &ShardRef, target: SocketAddr) -> bool {
    shard.state.load().local_workload(target.ip()).is_some()
}

/// Where a tunnel goes and for whom.
struct Tunnel<'a> {
    key: &'a PoolKey,
    target: SocketAddr,
    client: SocketAddr,
    pod: Option<&'a PodRef>,
}

/// A CONNECT stream on a pooled connection, answered 200.
async fn open_tunnel(
    shard: &ShardRef,
    state: &NodeState,
    src: &Workload,
    t: &Tunnel<'_>,
    service: Option<&Service>,
) -> Result<(SendStream<Bytes>, RecvStream, Checkout), OutboundError> {
    let (key, target, client) = (t.key, t.target, t.client);
    let checkout = shard
        .pool
        .checkout(
            key,
            || dial(shard.clone(), key.clone(), t.pod.cloned()),
            shard.stats(),
        )
        .await
        .map_err(|e| classify_dial(key.dst, e))?;
    let h2err = |e: h2::Error| OutboundError::H2(key.dst, e.to_string());
    let sender = checkout.sender().ready().await.map_err(|e| {
        checkout.poison();
        h2err(e)
    })?;
    let baggage = telemetry::baggage(src, &state.cluster_id);
    let req = ConnectRequest {
        target,
        client,
        service_host: service.map(|s| s.hostname.as_str()),
        baggage: &baggage,
    }
    .to_request();
    let mut sender = sender;
    let (response, send) = sender.send_request(req, false).map_err(h2err)?;
    let wait = shard.settings.connect_timeout + shard.settings.handshake_timeout;
    let response = match zmesh_rt::timeout(wait, response).await {
        Ok(r) => r.map_err(h2err)?,
        Err(_) => {
            return Err(OutboundError::Connect(
                key.dst,
                io::ErrorKind::TimedOut.into(),
            ));
        }
    };
    if response.status() != http::StatusCode::OK {
        return Err(OutboundError::Status(response.status()));
    }
    Ok((send, response.into_body(), checkout))
}

/// Carries the dial failure's kind through the pool's io::Error.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {msg}")]
struct DialFailure {
    stage: &'static str,
    msg: String,
}

fn dial_err(stage: &'static str, msg: impl ToString) -> io::Error {
    io::Error::other(DialFailure {
        stage,
        msg: msg.to_string(),
    })
}

fn classify_dial(dst: SocketAddr, e: io::Error) -> OutboundError {
    let stage = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<DialFailure>())
        .map(|f| f.stage);
    match stage {
        Some("tls") => OutboundError::Tls(dst, e),
        Some("h2") => OutboundError::H2(dst, e.to_string()),
        _ => OutboundError::Connect(dst, e),
    }
}

/// A new HBONE connection: TCP from the client's address, mTLS as the source identity
/// expecting one of the destination identities, then the HTTP/2 handshake.
async fn dial(shard: ShardRef, key: PoolKey, pod: Option<PodRef>) -> io::Result<PooledConn> {
    // A just-enrolled pod's certificate may still be on its way from the CA.
    let (_, cert) = wait_for_state(&shard, |s| s.cert(&key.src_id).cloned()).await;
    let cert = cert.ok_or_else(|| dial_err("tls", format!("no certificate for {}", key.src_id)))?;
    let cfg =
        tls::client_config(&cert.cert, key.dst_ids.clone()).map_err(|e| dial_err("tls", e))?;
    let sock = sockets::upstream_in(
        pod.as_deref(),
        key.dst,
        Some(key.src_ip),
        shard.settings.upstream,
    )?;
    let tcp = match zmesh_rt::timeout(
        shard.settings.connect_timeout,
        TcpStream::connect(sock, key.dst),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    let hs = shard.settings.handshake_timeout;
    let tls = match zmesh_rt::timeout(
        hs,
        TlsConnector::from(cfg).connect(tls::unused_server_name(), sockets::hbone_io(tcp)),
    )
    .await
    {
        Ok(r) => r.map_err(|e| dial_err("tls", e))?,
        Err(_) => return Err(dial_err("tls", "handshake timed out")),
    };
    let (send, mut conn) =
        match zmesh_rt::timeout(hs, settings::client_builder().handshake::<_, Bytes>(tls)).await {
            Ok(r) => r.map_err(|e| dial_err("h2", e))?,
            Err(_) => return Err(dial_err("h2", "handshake timed out")),
        };
    let closed = Rc::new(Cell::new(false));
    let done = closed.clone();
    let ping = conn.ping_pong();
    zmesh_rt::spawn(async move {
        futures_util::future::select(pin!(conn), pin!(keepalive(ping))).await;
        done.set(true);
    })
    .detach();
    Ok(PooledConn::new(send, closed))
}

/// PINGs the peer every interval; returns when a PONG does not come back in time.
pub async fn keepalive(ping: Option<h2::PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        zmesh_rt::sleep(settings::KEEPALIVE_INTERVAL).await;
        match zmesh_rt::timeout(settings::KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}
