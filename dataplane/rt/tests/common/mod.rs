//! Helpers shared by the integration tests: every test runs once per driver.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use zmesh_rt::{DriverKind, Runtime, RuntimeConfig};

/// Both drivers. io_uring must be available: a test that silently skipped it would hide the
/// very driver production uses. Set ZMESH_RT_SKIP_URING=1 to run epoll only, knowingly.
pub fn drivers() -> Vec<DriverKind> {
    match DriverKind::detect() {
        (DriverKind::IoUring, _) => vec![DriverKind::IoUring, DriverKind::Epoll],
        (_, reason) if std::env::var_os("ZMESH_RT_SKIP_URING").is_some() => {
            eprintln!("io_uring unavailable ({reason:?}); ZMESH_RT_SKIP_URING set, epoll only");
            vec![DriverKind::Epoll]
        }
        (_, reason) => {
            panic!("io_uring unavailable: {reason:?} (set ZMESH_RT_SKIP_URING=1 to skip)")
        }
    }
}

pub fn runtime(kind: DriverKind) -> Runtime {
    Runtime::new(&RuntimeConfig {
        driver: kind,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// A listening socket on 127.0.0.1 with an ephemeral port.
pub fn listen() -> (Socket, SocketAddr) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

pub fn client_socket() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_tcp_nodelay(true).unwrap();
    s
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident set size in bytes.
pub fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
