//! `zmeshctl serve-http`: the sample app's HTTP server, run inside pods by the demo and the
//! tests. One thread per connection; every request gets `200` and a line naming the server
//! and the client address it saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Options of `zmeshctl serve-http`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on (IPv4 and IPv6, every address).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Name in the replies (default: the host name).
    #[arg(long, default_value = "server")]
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let l = TcpListener::bind(SocketAddr::from(([0u16; 8], args.port)))?;
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        std::thread::spawn(move || {
            let _ = serve(s, name);
        });
    }
    Ok(())
}

/// Answers requests on one connection until the client closes it or asks to.
fn serve(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    let peer = s.peer_addr()?.ip().to_canonical();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |p| p + 4);
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let close = head.contains("connection: close") || head.contains("http/1.0");
        let body = format!("hello from {name} (you are {peer})\n");
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        )?;
        if close {
            return Ok(());
        }
    }
}
