//! A stand-in for an app in a pod, for the capture tests and benchmark: it first moves itself
//! into the pod's cgroup (`--cgroup DIR`), since the connect and bind hooks act on the cgroup
//! of the calling process, then does one thing and prints the result on stdout.
//!
//! ```text
//! zmesh-capture-probe [--cgroup DIR] connect ADDR     -> "peer=<getpeername> reply=<text>"
//! zmesh-capture-probe [--cgroup DIR] bind PORT        -> "ok" or "error: <os error>"
//! zmesh-capture-probe [--cgroup DIR] bench ADDR N     -> N connect-to-first-byte times, ns
//! ```
//! Started inside the pod's netns by the caller (a thread that entered it).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--cgroup") && args.len() > 1 {
        let dir = args.remove(1);
        args.remove(0);
        if let Err(e) = std::fs::write(
            format!("{dir}/cgroup.procs"),
            std::process::id().to_string(),
        ) {
            fail(&format!("joining cgroup {dir}: {e}"));
        }
    }
    let arg = |i: usize| -> &str { args.get(i).map_or("", String::as_str) };
    match arg(0) {
        "connect" => connect(addr(arg(1))),
        "bind" => bind(arg(1).parse().unwrap_or_else(|_| fail("bad port"))),
        "bench" => bench(
            addr(arg(1)),
            arg(2).parse().unwrap_or_else(|_| fail("bad count")),
        ),
        _ => fail("usage: zmesh-capture-probe [--cgroup DIR] connect|bind|bench ..."),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("bad address {s:?}")))
}

fn fail(msg: &str) -> ! {
    println!("error: {msg}");
    std::process::exit(1)
}

fn connect(to: SocketAddr) {
    // Bounded: a dropped SYN must fail the test, not hang it.
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .unwrap_or_else(|e| fail(&format!("connect: {e}")));
    let peer = s
        .peer_addr()
        .map_or_else(|e| format!("({e})"), |a| a.to_string());
    let mut reply = String::new();
    if let Err(e) = s.read_to_string(&mut reply) {
        fail(&format!("read: {e}"));
    }
    println!("peer={peer} reply={reply}");
}

fn bind(port: u16) {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => println!("ok"),
        Err(e) => println!("error: {e}"),
    }
}

fn bench(to: SocketAddr, n: usize) {
    let mut out = String::new();
    for _ in 0..n {
        let start = Instant::now();
        let mut s = TcpStream::connect(to).unwrap_or_else(|e| fail(&format!("connect: {e}")));
        let mut byte = [0u8; 1];
        if let Err(e) = s.read_exact(&mut byte) {
            fail(&format!("read: {e}"));
        }
        out.push_str(&format!("{}\n", start.elapsed().as_nanos()));
    }
    print!("{out}");
}
