//! Network namespaces and cgroups: entering a pod's netns on a short-lived thread (setns moves
//! only the calling thread, and a caller's runtime thread must never move), netns cookies, and
//! finding the cgroup v2 hierarchy.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use crate::Error;

/// Runs `f` on a new thread that has entered `netns`; the thread ends with `f`. Sockets it
/// creates and processes it starts belong to that namespace. This is how the node proxy should
/// open its listeners in a pod's netns: never `setns` a runtime thread.
pub fn run_in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Netns(e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The cookie the kernel gives `netns` (what `bpf_get_netns_cookie` returns for its sockets).
pub(crate) fn netns_cookie(netns: BorrowedFd<'_>) -> Result<u64, Error> {
    run_in_netns(netns, || {
        let probe = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        socket_netns_cookie(probe.as_raw_fd())
    })?
    .map_err(Error::Netns)
}

/// Linux's SO_NETNS_COOKIE (5.14+); not in the libc crate yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The netns cookie of the namespace a socket lives in.
#[allow(unsafe_code)]
pub(crate) fn socket_netns_cookie(fd: std::os::fd::RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes for the duration of the call, and `len`
    // holds the size of `cookie`, so the kernel writes at most 8 bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, Error> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|_| Error::NoCgroup2)?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or(Error::NoCgroup2)
}

/// This process's own cgroup v2 directory (the `0::` line of /proc/self/cgroup).
pub(crate) fn own_cgroup() -> Result<PathBuf, Error> {
    let root = cgroup2_mount()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|source| Error::Cgroup {
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(Error::NoCgroup2)?;
    Ok(root.join(rel.trim_start_matches('/')))
}
