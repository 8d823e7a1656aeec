//! Pods and a node as network namespaces (held by fd: they vanish with the test even when it
//! fails), veth pairs from each pod to the node (198.18.0.0/15), cgroups removed by their
//! guard, and processes started inside a namespace and cgroup, killed by their guard.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sched::CloneFlags;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the in-pod test needs root (network namespaces, cgroups, eBPF): run it as root, as CI \
         does"
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
        .expect("netns thread")
    })
}

pub fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run("ip", &["link", "set", "lo", "up"]);
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("own netns"))
    })
    .join()
    .expect("netns thread")
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

/// The inode of a netns fd (what bpftool reports as a link's `netns_ino`).
pub fn netns_ino(fd: BorrowedFd<'_>) -> u64 {
    std::fs::File::from(fd.try_clone_to_owned().expect("dup netns"))
        .metadata()
        .expect("stat netns")
        .ino()
}

/// A pod: its netns joined to the node's by a veth (`eth0` 198.18.N.2/24 in the pod,
/// `vpN` 198.18.N.1/24 on the node, default route through the node), and its cgroup.
pub struct Pod {
    pub name: &'static str,
    pub ip: std::net::Ipv4Addr,
    pub netns: OwnedFd,
    pub cgroup: Cgroup,
}

impl Pod {
    pub fn new(node: &OwnedFd, name: &'static str, n: u8) -> Pod {
        let netns = new_netns();
        let node_path = format!("/proc/{}/fd/{}", std::process::id(), node.as_raw_fd());
        let peer = format!("vp{n}");
        let ip = std::net::Ipv4Addr::new(198, 18, n, 2);
        in_netns(netns.as_fd(), || {
            run(
                "ip",
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
                    &node_path,
                ],
            );
            run("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            run("ip", &["link", "set", "eth0", "up"]);
            run(
                "ip",
                &["route", "add", "default", "via", &format!("198.18.{n}.1")],
            );
        });
        in_netns(node.as_fd(), || {
            run(
                "ip",
                &["addr", "add", &format!("198.18.{n}.1/24"), "dev", &peer],
            );
            run("ip", &["link", "set", &peer, "up"]);
        });
        Pod {
            name,
            ip,
            netns,
            cgroup: Cgroup::new(name),
        }
    }
}

/// A node namespace that forwards between its pods.
pub fn node_netns() -> OwnedFd {
    let node = new_netns();
    in_netns(node.as_fd(), || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward");
    });
    node
}

/// A cgroup v2 directory for this test, removed on drop (after its processes are gone).
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    pub fn new(name: &str) -> Cgroup {
        let root = zmesh_ebpf::cgroup2_mount().expect("a cgroup v2 hierarchy must be mounted");
        let dir = root.join(format!("zmesh-zds-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

/// A process started in a netns and cgroup (it moves itself there before `exec`), killed and
/// reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(
        netns: BorrowedFd<'_>,
        cgroup: &Path,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: Option<&Path>,
    ) -> Proc {
        let procs = cgroup.join("cgroup.procs");
        let child = in_netns(netns, || {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "echo $$ > {} && exec \"$0\" \"$@\"",
                    procs.display()
                ))
                .arg(program)
                .args(args)
                .stdin(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            if let Some(log) = log {
                let f = std::fs::File::create(log).expect("log file");
                cmd.stderr(f.try_clone().expect("log file")).stdout(f);
            } else {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            cmd.spawn().expect("spawn")
        });
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to end; its stdout, or a panic with its output.
    pub fn finish(self, limit: std::time::Duration) -> String {
        let (ok, out) = self.finish_status(limit);
        assert!(ok, "process failed: {out}");
        out
    }

    /// Waits (bounded) for the process to end: whether it succeeded, and its output.
    pub fn finish_status(mut self, limit: std::time::Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut out = String::new();
                let mut err = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                if !status.success() {
                    out.push_str(&err);
                }
                return (status.success(), out);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not finish in {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
