//! The SOCKS5 server side (RFC 1928), for clients that are not captured: no authentication,
//! CONNECT only. Host names resolve through the mesh's services, not DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zmesh_rt::TcpStream;

/// Reply codes.
pub const SUCCEEDED: u8 = 0x00;
pub const GENERAL_FAILURE: u8 = 0x01;
pub const NOT_ALLOWED: u8 = 0x02;
pub const HOST_UNREACHABLE: u8 = 0x04;
pub const CONNECTION_REFUSED: u8 = 0x05;
pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
pub const ADDRESS_NOT_SUPPORTED: u8 = 0x08;

/// Where the client wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Host(String, u16),
}

/// A broken SOCKS5 exchange.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("client offers no supported authentication method")]
    NoAuthMethod,
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("bad host name")]
    HostName,
}

/// Reads the greeting and the request; answers the greeting. The request's reply is sent by
/// the caller with [`reply`] once the upstream is known.
pub async fn handshake(s: &mut TcpStream) -> Result<Target, SocksError> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(SocksError::Version(head[0]));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        s.flush().await?;
        return Err(SocksError::NoAuthMethod);
    }
    s.write_all(&[5, 0]).await?;
    s.flush().await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(SocksError::Version(req[0]));
    }
    if req[1] != 1 {
        reply(s, COMMAND_NOT_SUPPORTED).await?;
        return Err(SocksError::Command(req[1]));
    }
    let target = match req[3] {
        1 => {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(b)),
                read_port(s).await?,
            ))
        }
        4 => {
            let mut b = [0u8; 16];
            s.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(b)),
                read_port(s).await?,
            ))
        }
        3 => {
            let len = s.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            s.read_exact(&mut name).await?;
            let port = read_port(s).await?;
            let name = String::from_utf8(name).map_err(|_| SocksError::HostName)?;
            match name.parse::<IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
                Err(_) => Target::Host(name.to_ascii_lowercase(), port),
            }
        }
        t => {
            reply(s, ADDRESS_NOT_SUPPORTED).await?;
            return Err(SocksError::AddressType(t));
        }
    };
    Ok(target)
}

async fn read_port(s: &mut TcpStream) -> std::io::Result<u16> {
    s.read_u16().await
}

/// Sends the request's reply (bound address left as 0.0.0.0:0).
pub async fn reply(s: &mut TcpStream, code: u8) -> std::io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    s.flush().await
}
