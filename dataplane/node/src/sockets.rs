//! Socket set-up with socket2: listeners (SO_REUSEPORT, one per shard) and upstream sockets
//! (no Nagle, the proxy's packet mark, optionally the client's source address).

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::BufReader;
use zmesh_rt::TcpStream;

/// What TLS runs on for an HBONE connection: the socket behind a read buffer.
pub type HboneIo = BufReader<TcpStream>;

/// Size of that read buffer. rustls asks its transport for at most 4 KiB per read, so without
/// it a 16 KiB record costs four or more `recv` calls; with it one `recv` takes several records
/// and rustls' reads are served from memory.
const HBONE_READ_BUF: usize = 64 << 10;

/// Wraps an HBONE socket for TLS (see [`HBONE_READ_BUF`]). Writes pass straight through.
pub fn hbone_io(tcp: TcpStream) -> HboneIo {
    BufReader::with_capacity(HBONE_READ_BUF, tcp)
}

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 4096;

/// Ports the proxy itself listens on in a pod: never a tunnel or passthrough target, so a
/// connection can never loop back into the proxy.
pub const ILLEGAL_PORTS: [u16; 4] = [15001, 15006, 15008, 15080];

/// A listener for one shard. Every shard binds the same address with SO_REUSEPORT and the
/// kernel spreads new connections across them. A wildcard IPv6 address accepts IPv4 too.
pub fn listener(addr: SocketAddr) -> io::Result<Socket> {
    listener_with(addr, !addr.ip().is_unspecified())
}

/// A listener; an IPv6 one takes only IPv6 when `v6_only`, else IPv4 too.
pub fn listener_with(addr: SocketAddr, v6_only: bool) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(v6_only)?;
    }
    // Workload addresses need not be configured on this host (pods' IPs in dedicated mode).
    if addr.is_ipv4() {
        let _ = s.set_freebind_v4(true);
    } else {
        let _ = s.set_freebind_v6(true);
    }
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// How upstream sockets are made.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamOpts {
    pub mark: Option<u32>,
    pub transparent: bool,
}

/// A socket to connect to `dst`, bound to `src` when given (the client's address, so the app
/// sees who called). Binding a foreign address needs IP_TRANSPARENT; when it is refused, the
/// socket is left unbound and the kernel picks the source.
pub fn upstream(dst: SocketAddr, src: Option<IpAddr>, opts: UpstreamOpts) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    if let Some(mark) = opts.mark {
        // Needs CAP_NET_ADMIN; without it capture rules that skip marked packets cannot apply
        // to us anyway, so failing here is not fatal.
        let _ = s.set_mark(mark);
    }
    if let Some(src) = src.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
        if opts.transparent {
            let _ = if dst.is_ipv4() {
                s.set_ip_transparent_v4(true)
            } else {
                s.set_ip_transparent_v6(true)
            };
        }
        let _ = s.set_reuse_address(true);
        if let Err(e) = s.bind(&SockAddr::from(SocketAddr::new(src, 0))) {
            tracing::debug!(%src, %dst, error = %e, "cannot keep the source address");
            return upstream(dst, None, opts);
        }
    }
    Ok(s)
}

/// `upstream`, with the socket made in `pod`'s netns when given (the pod's own address is local
/// there, so binding to it needs no IP_TRANSPARENT).
pub fn upstream_in(
    pod: Option<&crate::podns::Pod>,
    dst: SocketAddr,
    src: Option<IpAddr>,
    opts: UpstreamOpts,
) -> io::Result<Socket> {
    crate::podns::in_pod(pod, || upstream(dst, src, opts))
}

/// The destination the app asked for before capture redirected it (SO_ORIGINAL_DST).
pub fn original_dst(s: socket2::SockRef<'_>, local: SocketAddr) -> io::Result<SocketAddr> {
    let addr = if local.is_ipv4() {
        s.original_dst_v4()?
    } else {
        s.original_dst_v6()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}
