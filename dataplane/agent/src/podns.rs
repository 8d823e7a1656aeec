//! A pod's network namespace (opened from the path the runtime gives the CNI plugin) and its
//! cgroup, found from the netns: the parent of the cgroup of a process living in it, as
//! Kubernetes puts each container (the sandbox's pause process first) in a child of the pod's
//! cgroup.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a pod's netns or cgroup could not be found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodNsError {
    #[error("open the pod's network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no process runs in the pod's network namespace {0}: the pod's cgroup is found from its \
         sandbox (pause) process, which must be started before CNI ADD"
    )]
    NoProcess(PathBuf),
    #[error("process {pid} of the pod is in the root cgroup; the pod needs its own cgroup")]
    RootCgroup { pid: u32 },
    #[error("no cgroup v2 hierarchy is mounted (needed for the pod's cgroup)")]
    NoCgroup2,
    #[error(
        "the pod's cgroup would be {0}, which also holds the node agent: is the pod's pause \
         process in its own cgroup (a child of the pod's) yet?"
    )]
    SharedCgroup(PathBuf),
}

/// Opens the netns at `path` (kept by the agent while the pod runs).
pub fn open_netns(path: &Path) -> Result<OwnedFd, PodNsError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| PodNsError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf, PodNsError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|_| PodNsError::NoCgroup2)?;
    mounts
        .lines()
        .find_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or(PodNsError::NoCgroup2)
}

/// The pod's cgroup: the parent of the cgroup of the oldest process (lowest pid, normally the
/// pause process) whose netns is `netns`. `path` only names the netns in errors.
pub fn pod_cgroup(netns: &OwnedFd, path: &Path) -> Result<PathBuf, PodNsError> {
    let meta = std::fs::File::from(netns.try_clone().map_err(|source| PodNsError::Open {
        path: path.to_owned(),
        source,
    })?)
    .metadata()
    .map_err(|source| PodNsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let id = (meta.dev(), meta.ino());
    let pid = pids()
        .into_iter()
        .find(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
        })
        .ok_or_else(|| PodNsError::NoProcess(path.to_owned()))?;
    let root = cgroup2_mount()?;
    let own = process_cgroup(pid).ok_or(PodNsError::RootCgroup { pid })?;
    let parent = Path::new(&own)
        .parent()
        .filter(|p| *p != Path::new("/"))
        .ok_or(PodNsError::RootCgroup { pid })?;
    // Capture attaches to this cgroup and everything under it: never to one above ourselves
    // (a pause process not yet moved to its cgroup would point at the runtime's parent).
    if process_cgroup(std::process::id()).is_some_and(|me| Path::new(&me).starts_with(parent)) {
        return Err(PodNsError::SharedCgroup(parent.to_owned()));
    }
    Ok(root.join(parent.strip_prefix("/").unwrap_or(parent)))
}

/// Every pid, ascending.
fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The process's cgroup v2 path (the `0::` line), relative to the hierarchy's root.
fn process_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netns_without_processes_is_a_clear_error() {
        // A netns fd of our own process's namespace is found (we live in it), so use a path
        // that is not a namespace at all: /dev/null has no process "in" it.
        let fd = open_netns(Path::new("/dev/null")).expect("open /dev/null");
        let err = pod_cgroup(&fd, Path::new("/dev/null")).expect_err("no process");
        assert!(err.to_string().contains("no process runs"), "{err}");
    }

    #[test]
    fn opening_a_missing_netns_names_the_path() {
        let err = open_netns(Path::new("/nonexistent/netns")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
