//! The system pieces the topology is made of: network namespaces held by file descriptor
//! (never named in /run/netns, so they vanish with their last holder), cgroup v2 directories,
//! and processes started inside a namespace and a cgroup.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Error;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A network namespace, alive while this (or a process inside it) is.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    ino: u64,
}

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn new() -> Result<Netns, Error> {
        let fd = std::thread::spawn(|| -> Result<OwnedFd, Error> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                what: "unshare(CLONE_NEWNET) (needs root)".into(),
                source: e.into(),
            })?;
            let f = std::fs::File::open("/proc/thread-self/ns/net").map_err(io("open netns"))?;
            Ok(OwnedFd::from(f))
        })
        .join()
        .map_err(|_| Error::Setup("netns thread panicked".into()))??;
        let ino = std::fs::File::from(fd.try_clone().map_err(io("dup netns"))?)
            .metadata()
            .map_err(io("stat netns"))?
            .ino();
        let ns = Netns { fd, ino };
        ns.cmd("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's inode (what `bpftool link` shows as `netns_ino`).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// A path that opens this namespace while this process runs (for `ip link … netns`).
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it opens and
    /// processes it spawns live here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let fd = self.fd.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                    what: "setns".into(),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Setup("netns thread panicked".into()))?
        })
    }

    /// Runs a command in this namespace to completion; its stdout, or an error with stderr.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Result<String, Error> {
        let out = self
            .enter(|| {
                Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
            })?
            .map_err(io(format!("run {program}")))?;
        if !out.status.success() {
            return Err(Error::Command {
                cmd: format!("{program} {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip` once per line (each line: the arguments).
    pub fn ip(&self, lines: &[String]) -> Result<(), Error> {
        for l in lines {
            let args: Vec<&str> = l.split_whitespace().collect();
            self.cmd("ip", &args)?;
        }
        Ok(())
    }

    /// Sets a sysctl under /proc/sys/net in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .map_err(io(format!("sysctl {key}")))
    }

    /// A blocking HTTP/1.0 GET from inside the namespace: (status, body).
    pub fn http_get(&self, addr: &str, path: &str) -> Result<(u16, String), Error> {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| Error::Setup(format!("bad address {addr}: {e}")))?;
        let out = self.enter(|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?;
        let out = out.map_err(io(format!("GET http://{addr}{path}")))?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    }
}

/// The cgroup v2 mount point (from /proc/self/mounts).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(io("read /proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| Error::Setup("no cgroup v2 hierarchy is mounted".into()))
}

/// Creates a cgroup directory (and its parents).
pub fn cgroup_create(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))
}

/// Kills every process in the cgroup tree (`cgroup.kill`), waits until it is empty, then
/// removes the directories bottom-up. Only processes this topology started live there.
pub fn cgroup_remove(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Io {
                    what: format!("rmdir {}", dir.display()),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Where a process's output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Appended to a file (logs of long-running processes).
    Log(PathBuf),
    /// Captured, read by [`Proc::finish`].
    Piped,
    /// Discarded.
    Null,
}

/// A process this topology started, killed and reaped on drop (by PID; it never signals
/// anything it did not start).
#[derive(Debug)]
pub struct Proc {
    child: Child,
    name: String,
}

/// What a finished process gave.
#[derive(Debug, Clone)]
pub struct Finished {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    /// Starts `program` inside `netns`, moved into `cgroup` (when given) before it execs, so
    /// that everything it does already counts as that cgroup's.
    pub fn spawn(
        netns: &Netns,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        output: &Output,
    ) -> Result<Proc, Error> {
        let mut cmd = match cgroup {
            Some(cg) => {
                let mut c = Command::new("sh");
                let procs = cg.join("cgroup.procs");
                c.arg("-c")
                    .arg(format!(
                        "echo $$ > '{}' && exec \"$0\" \"$@\"",
                        procs.display()
                    ))
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        // Its own process group: a Ctrl-C at the terminal reaches only the owner, which then
        // tears the topology down in order.
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        match output {
            Output::Log(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io(format!("open {}", path.display())))?;
                let e = f.try_clone().map_err(io("dup log"))?;
                cmd.stdout(f).stderr(e);
            }
            Output::Piped => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let name = program.display().to_string();
        let child = netns
            .enter(|| cmd.spawn())?
            .map_err(io(format!("start {name}")))?;
        Ok(Proc { child, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (e.g. SIGINT to make tcpdump flush and exit).
    pub fn signal(&self, sig: Signal) -> Result<(), Error> {
        let pid =
            i32::try_from(self.child.id()).map_err(|_| Error::Setup("pid out of range".into()))?;
        nix::sys::signal::kill(Pid::from_raw(pid), sig).map_err(|e| Error::Io {
            what: format!("kill {pid}"),
            source: e.into(),
        })
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(mut self, grace: Duration) {
        if self.alive() {
            let _ = self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Drop kills (if still running) and reaps.
    }

    /// Waits up to `limit` for the process to end, then collects its output (with
    /// [`Output::Piped`]). A process still running at the limit is killed: an error.
    pub fn finish(mut self, limit: Duration) -> Result<Finished, Error> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait().map_err(io("wait"))? {
                Some(status) => {
                    let read = |r: Option<&mut dyn std::io::Read>| {
                        let mut s = String::new();
                        if let Some(r) = r {
                            let _ = r.read_to_string(&mut s);
                        }
                        s
                    };
                    let stdout = read(self.child.stdout.as_mut().map(|r| r as _));
                    let stderr = read(self.child.stderr.as_mut().map(|r| r as _));
                    return Ok(Finished {
                        success: status.success(),
                        code: status.code(),
                        stdout,
                        stderr,
                    });
                }
                None if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        what: format!("{} to finish", self.name),
                        limit,
                        log: String::new(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A private bpffs mounted on `path` (created if missing) and unmounted on drop, which frees
/// every pin still in it: BPF objects pinned there cannot outlive their owner.
#[derive(Debug)]
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    pub fn mount(path: &Path) -> Result<Bpffs, Error> {
        std::fs::create_dir_all(path).map_err(|source| Error::Io {
            what: format!("bpffs directory {}", path.display()),
            source,
        })?;
        nix::mount::mount(
            Some("bpf"),
            path,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            what: format!("mount -t bpf bpf {}", path.display()),
            source: e.into(),
        })?;
        Ok(Bpffs {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.path.display());
        }
    }
}
