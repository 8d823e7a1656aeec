//! A pod and a node as network namespaces joined by a veth pair, a cgroup for the pod, a tiny
//! proxy with listeners inside the pod's netns, and an app server. Namespaces are created by
//! `unshare` on a short-lived thread and held by fd: they vanish when the test drops them, even
//! after a failure. Cgroups are removed by their guard.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use nix::sched::CloneFlags;

pub const POD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const APP_PORT: u16 = 8080;
pub const NODE_SERVER_PORT: u16 = 9090;

/// Fails the test loudly when not root: CI runs these tests as root, and they must never pass
/// by skipping.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the capture tests need root (network namespaces, cgroups, eBPF): run them as root, \
         as CI does"
    );
}

/// Runs `f` on a new thread inside `netns`.
pub fn in_netns<T: Send>(netns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    })
}

/// A fresh network namespace with loopback up, alive while the fd is.
pub fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run("ip", &["link", "set", "lo", "up"]);
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
    })
    .join()
    .unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod and node namespaces: pod `eth0` 198.18.0.2/24 + fd00::2/64, node `vpod`
/// 198.18.0.1/24 + fd00::1/64.
pub struct Topology {
    pub pod: OwnedFd,
    pub node: OwnedFd,
}

impl Topology {
    pub fn new() -> Self {
        let pod = new_netns();
        let node = new_netns();
        let node_path = format!("/proc/{}/fd/{}", std::process::id(), node.as_raw_fd());
        in_netns(pod.as_fd(), || {
            run(
                "ip",
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", "vpod", "netns",
                    &node_path,
                ],
            );
            configure("eth0", POD_V4, POD_V6);
        });
        in_netns(node.as_fd(), || configure("vpod", NODE_V4, NODE_V6));
        Self { pod, node }
    }
}

fn configure(dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    run("ip", &["addr", "add", &format!("{v4}/24"), "dev", dev]);
    run(
        "ip",
        &["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"],
    );
    run("ip", &["link", "set", dev, "up"]);
}

fn cgroup_root() -> PathBuf {
    zmesh_ebpf::cgroup2_mount().expect("a cgroup v2 hierarchy must be mounted")
}

/// The cgroup this test process runs in, made for it so that the proxy-side getsockopt hook
/// never sits on a cgroup shared with the rest of the machine.
pub fn proxy_cgroup() -> &'static Path {
    static CG: OnceLock<PathBuf> = OnceLock::new();
    CG.get_or_init(|| {
        let root = cgroup_root();
        // Leftovers of earlier runs are empty once their process is gone.
        for entry in std::fs::read_dir(&root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("zmesh-ebpf-test-") else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        let dir = root.join(format!("zmesh-ebpf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("move the test process into its own cgroup");
        dir
    })
}

/// A pod cgroup, removed on drop.
pub struct PodCgroup(pub PathBuf);

impl PodCgroup {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = cgroup_root().join(format!(
            "zmesh-ebpf-test-{}-pod{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Its processes have exited, but the kernel may need a moment to notice.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

/// Runs the probe binary inside `netns`, in `cgroup` if given, and returns its stdout.
pub fn probe(netns: BorrowedFd<'_>, cgroup: Option<&Path>, args: &[&str]) -> String {
    let mut full: Vec<String> = Vec::new();
    if let Some(cg) = cgroup {
        full.push("--cgroup".into());
        full.push(cg.display().to_string());
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let out = in_netns(netns, || {
        Command::new(env!("CARGO_BIN_EXE_zmesh-capture-probe"))
            .args(&full)
            .output()
            .expect("run the probe")
    });
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A listener thread answering each connection with one line, then closing it. Stops on drop.
pub struct Server {
    listeners: Vec<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

/// The reply for a connection accepted on the listener bound to `port`.
type Reply = fn(u16, &TcpStream) -> String;

impl Server {
    /// Binds `addrs` inside `netns` (with SO_MARK `mark` on connections it makes: none here,
    /// but the proxy's listeners in the nftables tests carry it for symmetry).
    pub fn start(netns: BorrowedFd<'_>, addrs: &[SocketAddr], reply: Reply) -> Self {
        let listeners: Vec<TcpListener> = in_netns(netns, || {
            addrs
                .iter()
                .map(|a| {
                    let domain = socket2::Domain::for_address(*a);
                    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
                    if a.is_ipv6() {
                        s.set_only_v6(true).unwrap();
                    }
                    s.set_reuse_address(true).unwrap();
                    s.bind(&(*a).into())
                        .unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    s.listen(1024).unwrap();
                    s.into()
                })
                .collect()
        });
        let threads = listeners
            .iter()
            .map(|l| {
                let l = l.try_clone().unwrap();
                let port = l.local_addr().unwrap().port();
                std::thread::spawn(move || serve(l, port, reply))
            })
            .collect();
        Self { listeners, threads }
    }

    /// A server with no listeners (stands in for one that was stopped).
    pub fn none() -> Self {
        Self {
            listeners: Vec::new(),
            threads: Vec::new(),
        }
    }

    pub fn listener(&self, i: usize) -> BorrowedFd<'_> {
        self.listeners[i].as_fd()
    }
}

fn serve(listener: TcpListener, port: u16, reply: Reply) {
    // Ends when the owner shuts the listener down (accept then fails).
    while let Ok((mut s, _)) = listener.accept() {
        let text = reply(port, &s);
        let _ = s.write_all(text.as_bytes());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for l in &self.listeners {
            let _ = socket2::SockRef::from(l).shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What the node proxy does: SO_ORIGINAL_DST, else the local address.
pub fn original_dst(s: &TcpStream) -> (SocketAddr, &'static str) {
    let local = s.local_addr().unwrap();
    let sock = socket2::SockRef::from(s);
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match orig.ok().and_then(|a| a.as_socket()) {
        Some(a) => (a, "sockopt"),
        None => (local, "local"),
    }
}

/// The test proxy: 15001 on loopback (v4, v6), 15006 and 15008 on every address.
pub fn start_proxy(pod: BorrowedFd<'_>) -> Server {
    // Its sockets must be made in the proxy's cgroup, where the getsockopt hook is: a socket
    // belongs to the cgroup its process was in when it was created (accepted ones inherit the
    // listener's), so a test that starts the proxy before loading must not leave it outside.
    proxy_cgroup();
    let addrs: Vec<SocketAddr> = vec![
        "0.0.0.0:15006".parse().unwrap(),
        "[::]:15006".parse().unwrap(),
        "127.0.0.1:15001".parse().unwrap(),
        "[::1]:15001".parse().unwrap(),
        "0.0.0.0:15008".parse().unwrap(),
    ];
    // Which listener accepted, not the local port: with sk_lookup the local address of an
    // inbound connection is the app's address.
    Server::start(pod, &addrs, |port, s| {
        let (orig, how) = original_dst(s);
        match port {
            15001 => format!("outbound {orig} {how}"),
            15006 => format!("inbound {orig} {how}"),
            port => format!("proxy:{port}"),
        }
    })
}

/// The app in the pod: answers "app" on 8080.
pub fn start_app(pod: BorrowedFd<'_>) -> Server {
    let addrs: Vec<SocketAddr> = vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), APP_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), APP_PORT),
    ];
    Server::start(pod, &addrs, |_, _| "app".into())
}

/// A server on the node answering "node" on 9090.
pub fn start_node_server(node: BorrowedFd<'_>) -> Server {
    let addrs: Vec<SocketAddr> = vec![
        SocketAddr::new(IpAddr::V4(NODE_V4), NODE_SERVER_PORT),
        SocketAddr::new(IpAddr::V6(NODE_V6), NODE_SERVER_PORT),
    ];
    Server::start(node, &addrs, |_, _| "node".into())
}

/// Connects from inside `netns` (on a thread of this process, so outside any pod cgroup), with
/// an optional SO_MARK, and returns the reply.
pub fn connect_from(netns: BorrowedFd<'_>, to: SocketAddr, mark: Option<u32>) -> String {
    in_netns(netns, || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        if let Some(m) = mark {
            s.set_mark(m).unwrap();
        }
        if let Err(e) = s.connect_timeout(&to.into(), std::time::Duration::from_secs(5)) {
            return format!("error: {e}");
        }
        let mut s: TcpStream = s.into();
        let mut reply = String::new();
        match s.read_to_string(&mut reply) {
            Ok(_) => reply,
            Err(e) => format!("error: {e}"),
        }
    })
}
