//! Inbound: peers reach a local workload over HBONE (15008), or in plaintext from outside the
//! mesh (15006). `accept → TLS → HTTP/2 → per CONNECT: check → authorize → connect → 200 →
//! relay`.

use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio_rustls::TlsAcceptor;
use zmesh_hbone::connect::{
    STATUS_BAD_REQUEST, STATUS_OK, STATUS_UNAUTHORIZED, STATUS_UNAVAILABLE,
};
use zmesh_hbone::{Authority, Baggage, parse_authority, settings, tls};
use zmesh_rt::{TcpListener, TcpStream};
use zmesh_state::{Connection, Decision, Identity, Workload};

use crate::metrics::{Rejection, TrafficCounters, TrafficLabels};
use crate::podns::{Pod, PodRef};
use crate::relay::{self, Accounting};
use crate::shard::{ConnGuard, ShardRef};
use crate::state::NodeState;
use crate::{sockets, telemetry};

/// Back-off after an accept error (e.g. out of file descriptors), so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts one connection and takes a slot for it and its upstream.
pub async fn accept(
    shard: &ShardRef,
    l: &TcpListener,
) -> Option<(TcpStream, SocketAddr, ConnGuard)> {
    let (stream, peer) = match l.accept().await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "accept failed");
            zmesh_rt::sleep(ACCEPT_ERROR_PAUSE).await;
            return None;
        }
    };
    TrafficCounters::add(&shard.stats().connections_accepted, 1);
    let guard = shard.admit(2)?;
    let _ = stream.socket().set_tcp_nodelay(true);
    Some((stream, peer, guard))
}

/// Serves HBONE on one local workload address (or in an enrolled pod's netns: `pod`).
pub async fn serve_hbone(shard: ShardRef, listener: TcpListener, pod: Option<PodRef>) {
    loop {
        let Some((stream, peer, guard)) = accept(&shard, &listener).await else {
            continue;
        };
        let conn = hbone_connection(shard.clone(), stream, peer, guard, pod.clone());
        zmesh_rt::spawn(conn).detach();
    }
}

/// What every stream of one HBONE connection shares.
struct PeerConn {
    peer: SocketAddr,
    local: SocketAddr,
    identity: Option<Identity>,
    /// The pod whose listener accepted the connection: the app is dialed from its netns.
    pod: Option<PodRef>,
}

async fn hbone_connection(
    shard: ShardRef,
    stream: TcpStream,
    peer: SocketAddr,
    mut guard: ConnGuard,
    pod: Option<PodRef>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let state = shard.state.load_full();
    // A pod's listener serves only that pod's workload (its netns holds no other).
    let owned = |w: &&Arc<Workload>| pod.as_ref().is_none_or(|p| p.owns(w));
    let Some(workload) = state.local_workload(local.ip()).filter(owned).cloned() else {
        shard.reject(Rejection::NoWorkload);
        return;
    };
    let Some(cert) = state.cert(&workload.identity()).cloned() else {
        shard.reject(Rejection::NoWorkload);
        return;
    };
    let deadline = Instant::now() + shard.settings.handshake_timeout;
    let fail = |r: Rejection, flag: &'static str| {
        shard.reject(r);
        let mut labels = TrafficLabels::new("destination");
        telemetry::set_destination(&mut labels, Some(&workload), None, &state.cluster_id);
        labels.response_flags = flag;
        TrafficCounters::add(&shard.metrics.traffic(labels).failed, 1);
    };
    let tls = match zmesh_rt::timeout(
        shard.settings.handshake_timeout,
        TlsAcceptor::from(cert.server.clone()).accept(sockets::hbone_io(stream)),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound TLS handshake failed");
            return fail(Rejection::TlsHandshake, "TLS_FAILURE");
        }
        Err(_) => return fail(Rejection::HandshakeTimeout, "TLS_FAILURE"),
    };
    let identity = tls::peer_identities(tls.get_ref().1.peer_certificates())
        .into_iter()
        .find(|id| id.trust_domain == workload.identity().trust_domain);
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Boxed, like `serve_streams`, so that a connection still in TLS reserves no HTTP/2 state.
    let h2_handshake = Box::pin(zmesh_rt::timeout(
        remaining,
        settings::server_builder().handshake::<_, Bytes>(tls),
    ));
    let conn = match h2_handshake.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound HTTP/2 handshake failed");
            return fail(Rejection::H2Handshake, "H2_HANDSHAKE_FAILURE");
        }
        Err(_) => return fail(Rejection::HandshakeTimeout, "H2_HANDSHAKE_FAILURE"),
    };
    guard.track(
        "inbound-hbone",
        peer,
        local,
        identity.as_ref().map(Identity::to_uri),
    );
    let pc = Rc::new(PeerConn {
        peer,
        local,
        identity,
        pod,
    });
    Box::pin(serve_streams(shard, pc, conn)).await;
    // The connection's slots and table entry are held until it has fully closed.
    drop(guard);
}

/// Accepts CONNECT streams until the connection ends. Boxed by the caller: a connection still
/// in its TLS handshake then holds only the handshake's state, not HTTP/2's.
async fn serve_streams(
    shard: ShardRef,
    pc: Rc<PeerConn>,
    mut conn: h2::server::Connection<tokio_rustls::server::TlsStream<sockets::HboneIo>, Bytes>,
) {
    let peer = pc.peer;
    let ping = conn.ping_pong();
    let mut keepalive = pin!(crate::outbound::keepalive(ping));
    let mut keepalive_failed = false;
    loop {
        let next = {
            let accept = pin!(conn.accept());
            match futures_util::future::select(accept, keepalive.as_mut()).await {
                futures_util::future::Either::Left((r, _)) => Some(r),
                futures_util::future::Either::Right(_) => None,
            }
        };
        match next {
            Some(Some(Ok((req, respond)))) => {
                zmesh_rt::spawn(connect_stream(shard.clone(), pc.clone(), req, respond)).detach();
            }
            Some(Some(Err(e))) => {
                tracing::debug!(%peer, error = %e, "inbound HTTP/2 connection ended");
                break;
            }
            Some(None) => break,
            None => {
                keepalive_failed = true;
                break;
            }
        }
    }
    if keepalive_failed {
        tracing::debug!(%peer, "keepalive timed out");
        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
    }
    // Keep driving the connection until every stream has finished (or the peer went away).
    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
}

/// Why a CONNECT was refused, and what we answer.
struct Refusal {
    status: StatusCode,
    reject: Rejection,
    flag: &'static str,
    why: String,
}

fn refuse(
    status: StatusCode,
    reject: Rejection,
    flag: &'static str,
    why: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        reject,
        flag,
        why: why.into(),
    }
}

/// One CONNECT stream.
async fn connect_stream(
    shard: ShardRef,
    pc: Rc<PeerConn>,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let start = Instant::now();
    let state = shard.state.load_full();
    let mut labels = TrafficLabels::new("destination");
    labels.connection_security_policy = "mutual_tls";
    let bag = req
        .headers()
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(Baggage::decode)
        .unwrap_or_default();
    telemetry::set_peer_source(&mut labels, pc.identity.as_ref(), &bag);
    let checked = check_connect(&state, &pc, &req);
    let checked = match checked {
        Ok((w, target)) => {
            // The service the client addressed, when it says so in `forwarded: …;host=`.
            let svc = req
                .headers()
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
                .and_then(telemetry::forwarded_host)
                .and_then(|h| state.mesh.services().find(|s| s.hostname == h));
            telemetry::set_destination(&mut labels, Some(&w), svc.map(|s| &**s), &state.cluster_id);
            authorize(&state, &w, pc.peer, pc.identity.as_ref(), target).map(|()| (w, target))
        }
        Err(r) => Err(r),
    };
    let upstream = match checked {
        Ok((w, target)) => connect_app(&shard, pc.peer, target, pc.pod.as_deref())
            .await
            .map(|s| (w, target, s)),
        Err(r) => Err(r),
    };
    let (workload, target, upstream) = match upstream {
        Ok(x) => x,
        Err(r) => {
            shard.reject(r.reject);
            labels.response_flags = r.flag;
            TrafficCounters::add(&shard.metrics.traffic(labels.clone()).failed, 1);
            let why: &dyn std::fmt::Display = &r.why;
            telemetry::access_log(
                "inbound",
                pc.peer,
                pc.local,
                &labels,
                0,
                0,
                start.elapsed(),
                Some(why),
            );
            let _ = respond.send_response(status(r.status, None), true);
            return;
        }
    };
    let bag = telemetry::baggage(&workload, &state.cluster_id).encode();
    let send = match respond.send_response(status(STATUS_OK, Some(&bag)), false) {
        Ok(s) => s,
        Err(_) => return,
    };
    let counters = shard.metrics.traffic(labels.clone());
    TrafficCounters::add(&counters.opened, 1);
    let acct = Accounting::new(counters.clone(), shard.metrics.stats.clone());
    let entry = shard.track_policy("inbound-tunnel", pc.peer, target, pc.identity.clone());
    let relay = relay::tunnel(upstream, send, req.into_body(), &acct, false);
    let moved = until_denied(relay, &entry).await;
    drop(entry);
    TrafficCounters::add(&counters.closed, 1);
    let (up, down, err) = match &moved {
        Ok(m) => (m.up, m.down, None),
        Err(e) => (
            acct.moved().up,
            acct.moved().down,
            Some(e as &dyn std::fmt::Display),
        ),
    };
    telemetry::access_log(
        "inbound",
        pc.peer,
        target,
        &labels,
        down,
        up,
        start.elapsed(),
        err,
    );
}

fn status(code: StatusCode, baggage: Option<&str>) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = code;
    if let Some(v) = baggage.and_then(|b| b.parse().ok()) {
        r.headers_mut().insert("baggage", v);
    }
    r
}

/// Method, authority and destination checks, as the reference orders them.
fn check_connect(
    state: &NodeState,
    pc: &PeerConn,
    req: &Request<h2::RecvStream>,
) -> Result<(std::sync::Arc<Workload>, SocketAddr), Refusal> {
    if req.method() != http::Method::CONNECT {
        return Err(refuse(
            STATUS_BAD_REQUEST,
            Rejection::BadMethod,
            "-",
            format!("method {} is not CONNECT", req.method()),
        ));
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    let target = match parse_authority(authority) {
        Some(Authority::Addr(a)) => a,
        Some(Authority::Host(host, port)) => resolve_host_target(state, pc, &host, port)
            .ok_or_else(|| {
                refuse(
                    STATUS_UNAVAILABLE,
                    Rejection::NoWorkload,
                    "-",
                    format!("no service {host}:{port} here"),
                )
            })?,
        None => {
            return Err(refuse(
                STATUS_BAD_REQUEST,
                Rejection::BadAuthority,
                "-",
                format!("bad authority {authority:?}"),
            ));
        }
    };
    if target.ip() != pc.local.ip() {
        return Err(refuse(
            STATUS_BAD_REQUEST,
            Rejection::BadAuthority,
            "-",
            format!(
                "target {target} is not the address dialed ({})",
                pc.local.ip()
            ),
        ));
    }
    if sockets::ILLEGAL_PORTS.contains(&target.port()) {
        return Err(refuse(
            STATUS_BAD_REQUEST,
            Rejection::IllegalPort,
            "-",
            format!("{target} is a proxy port"),
        ));
    }
    let w = state.local_workload(target.ip()).cloned().ok_or_else(|| {
        refuse(
            STATUS_UNAVAILABLE,
            Rejection::NoWorkload,
            "-",
            format!("no workload {} on this node", target.ip()),
        )
    })?;
    Ok((w, target))
}

/// `hostname:port` → the dialed workload's target port for that service.
fn resolve_host_target(
    state: &NodeState,
    pc: &PeerConn,
    host: &str,
    port: u16,
) -> Option<SocketAddr> {
    let svc = state.mesh.services().find(|s| s.hostname == host)?;
    let w = state.local_workload(pc.local.ip())?;
    let target = w
        .services
        .get(&svc.key())
        .and_then(|ports| ports.get(&port))
        .copied()
        .or_else(|| svc.ports.get(&port).copied())?;
    let target = if target == 0 { port } else { target };
    Some(SocketAddr::new(pc.local.ip(), target))
}

fn authorize(
    state: &NodeState,
    w: &Workload,
    src: SocketAddr,
    peer: Option<&Identity>,
    target: SocketAddr,
) -> Result<(), Refusal> {
    let conn = Connection {
        src_ip: src.ip(),
        src_identity: peer,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    match state.mesh.authorize(w, &conn) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy } => Err(refuse(
            STATUS_UNAUTHORIZED,
            Rejection::Denied,
            "DENY",
            if policy.is_empty() {
                "no ALLOW policy matched".to_string()
            } else {
                format!("denied by {policy}")
            },
        )),
    }
}

/// Connects to the app, from the client's address when allowed.
async fn connect_app(
    shard: &ShardRef,
    client: SocketAddr,
    target: SocketAddr,
    pod: Option<&Pod>,
) -> Result<TcpStream, Refusal> {
    let fail = |e: std::io::Error| {
        refuse(
            STATUS_UNAVAILABLE,
            Rejection::UpstreamConnect,
            "CONNECT",
            format!("connect {target}: {e}"),
        )
    };
    // In a pod, the app's replies to a foreign source return to us only through the pod's
    // route for marked packets (`zds::orig_src`): such connections carry that mark. Without
    // the route the app sees the pod's own address.
    let mut opts = shard.settings.upstream;
    let keep = match pod {
        None => opts.transparent,
        Some(p) => {
            let routed = opts.transparent && p.orig_src.load(std::sync::atomic::Ordering::Relaxed);
            if routed {
                opts.mark = Some(crate::zds::orig_src::ORIG_SRC_MARK);
            }
            routed
        }
    };
    let src = keep.then_some(client.ip());
    let sock = sockets::upstream_in(pod, target, src, opts).map_err(fail)?;
    match zmesh_rt::timeout(
        shard.settings.connect_timeout,
        TcpStream::connect(sock, target),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err(fail(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Serves plaintext from outside the mesh on one local workload address (15006): no peer
/// identity, so STRICT PeerAuthentication (a converted DENY policy) refuses it.
///
/// In an enrolled pod (`pod`), eBPF capture keeps the original destination port, so what
/// makes a connection inbound plaintext is the listener that accepted it, not the port.
pub async fn serve_plaintext(shard: ShardRef, listener: TcpListener, pod: Option<PodRef>) {
    loop {
        let Some((stream, peer, guard)) = accept(&shard, &listener).await else {
            continue;
        };
        let conn = plaintext_connection(shard.clone(), stream, peer, guard, pod.clone());
        zmesh_rt::spawn(conn).detach();
    }
}

async fn plaintext_connection(
    shard: ShardRef,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    pod: Option<PodRef>,
) {
    let _guard = guard;
    let start = Instant::now();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let target = sockets::original_dst(stream.socket(), local).unwrap_or(local);
    let state = shard.state.load_full();
    let mut labels = TrafficLabels::new("destination");
    let checked = if sockets::ILLEGAL_PORTS.contains(&target.port()) {
        Err(refuse(
            STATUS_BAD_REQUEST,
            Rejection::IllegalPort,
            "-",
            format!("{target} is a proxy port"),
        ))
    } else {
        let owned = |w: &&Arc<Workload>| pod.as_ref().is_none_or(|p| p.owns(w));
        match state.local_workload(target.ip()).filter(owned).cloned() {
            None => Err(refuse(
                STATUS_UNAVAILABLE,
                Rejection::NoWorkload,
                "-",
                "no such workload",
            )),
            Some(w) => {
                telemetry::set_destination(&mut labels, Some(&w), None, &state.cluster_id);
                authorize(&state, &w, peer, None, target)
            }
        }
    };
    let upstream = match checked {
        Ok(()) => connect_app(&shard, peer, target, pod.as_deref()).await,
        Err(r) => Err(r),
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(r) => {
            shard.reject(r.reject);
            labels.response_flags = r.flag;
            TrafficCounters::add(&shard.metrics.traffic(labels.clone()).failed, 1);
            let why: &dyn std::fmt::Display = &r.why;
            telemetry::access_log(
                "inbound",
                peer,
                target,
                &labels,
                0,
                0,
                start.elapsed(),
                Some(why),
            );
            return;
        }
    };
    let counters = shard.metrics.traffic(labels.clone());
    TrafficCounters::add(&counters.opened, 1);
    let acct = Accounting::new(counters.clone(), shard.metrics.stats.clone());
    let entry = shard.track_policy("inbound-plaintext", peer, target, None);
    let moved = until_denied(relay::passthrough(stream, upstream, &acct), &entry).await;
    drop(entry);
    TrafficCounters::add(&counters.closed, 1);
    let (up, down, err) = match &moved {
        Ok(m) => (m.up, m.down, None),
        Err(e) => (
            acct.moved().up,
            acct.moved().down,
            Some(e as &dyn std::fmt::Display),
        ),
    };
    telemetry::access_log(
        "inbound",
        peer,
        target,
        &labels,
        down,
        up,
        start.elapsed(),
        err,
    );
}

/// Runs a relay until it ends or a policy re-check denies the connection; dropping the relay
/// closes both sides (the app socket, and the HBONE stream with a reset).
async fn until_denied<T>(
    relay: impl std::future::Future<Output = std::io::Result<T>>,
    entry: &crate::shard::PolicyEntry,
) -> std::io::Result<T> {
    let relay = pin!(relay);
    let denied = pin!(entry.denied());
    match futures_util::future::select(relay, denied).await {
        futures_util::future::Either::Left((r, _)) => r,
        futures_util::future::Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "closed: denied by policy on re-check",
        )),
    }
}
