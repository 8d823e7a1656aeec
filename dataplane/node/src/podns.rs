//! Pods enrolled over ZDS, as shards see them, and sockets made inside a pod's network
//! namespace.
//!
//! Every socket that serves a captured pod lives in the pod's netns (as in Istio's in-pod
//! mode): its listeners, the HBONE dials for its outbound traffic and the connections to its
//! app. A socket belongs to the netns of the thread that created it, so the shard thread moves
//! into the pod's netns for the `socket()` call and straight back (`setns` on a netns fd costs
//! a few microseconds; connect, TLS and IO then happen on the shard as usual).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// An enrolled pod. Shared by the listeners, connections and pool entries that serve it; its
/// netns fd closes when the last of them is gone.
#[derive(Debug)]
pub struct Pod {
    /// Unique for the life of the process (a pod re-added with a new netns gets a new id).
    pub id: u64,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub netns: OwnedFd,
    /// The pod's addresses, read in its netns when it is enrolled: the fast way to its
    /// workload in the snapshot.
    pub ips: OnceLock<Vec<std::net::IpAddr>>,
    /// Whether the pod routes marked replies back to the proxy, so its app can be reached
    /// from the client's own address (`zds::orig_src`).
    pub orig_src: std::sync::atomic::AtomicBool,
}

impl Pod {
    /// Whether `w` is this pod's workload (matched by namespace and name, as ZDS names pods by
    /// their Kubernetes uid, not the mesh's workload uid).
    pub fn owns(&self, w: &zmesh_state::Workload) -> bool {
        w.namespace == self.namespace && w.name == self.name
    }
}

impl PartialEq for Pod {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Pod {}

pub type PodRef = Arc<Pod>;

/// The proxy's own netns, where shard threads return after making a pod socket.
static HOST_NETNS: OnceLock<OwnedFd> = OnceLock::new();

/// Records the netns the process started in. Call once at start-up, before any shard runs.
pub fn init_host() -> io::Result<()> {
    let fd = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
    let _ = HOST_NETNS.set(fd);
    Ok(())
}

/// Runs `f` with the calling thread inside `pod`'s netns (or where it is, for `None`).
pub fn in_pod<T>(pod: Option<&Pod>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(pod) = pod else { return f() };
    let host = HOST_NETNS
        .get()
        .ok_or_else(|| io::Error::other("host netns not recorded"))?;
    move_into_link_name_space(pod.netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let result = f();
    if let Err(e) = move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network)) {
        // A shard stuck in a pod's netns would open every later socket there: other pods'
        // traffic would leave from the wrong pod. Nothing sensible can continue.
        tracing::error!(error = %e, pod = %pod.uid, "cannot return to the host netns; aborting");
        std::process::abort();
    }
    result
}

/// Other processes in this process's cgroup v2 directory. eBPF capture attaches the proxy-side
/// hooks to that cgroup and skips sockets made there, so a neighbour would be treated as proxy.
pub fn cgroup_neighbours() -> io::Result<Vec<u32>> {
    let root = zmesh_ebpf::cgroup2_mount().map_err(io::Error::other)?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))?;
    let procs = root.join(rel.trim_start_matches('/')).join("cgroup.procs");
    let me = std::process::id();
    Ok(std::fs::read_to_string(procs)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != me)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cost of the there-and-back `setns` a shard pays per pod socket, into a fresh netns
    /// and back. Run with `--nocapture` to see it.
    #[test]
    fn setns_round_trip_cost() {
        init_host().unwrap();
        let pod = Pod {
            id: 0,
            uid: "u".into(),
            name: "n".into(),
            namespace: "ns".into(),
            netns: std::thread::spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET) (run as root)");
                OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
            })
            .join()
            .unwrap(),
            ips: OnceLock::new(),
            orig_src: Default::default(),
        };
        let n = 2000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            // Needs CAP_SYS_ADMIN: fails (never skips) when not root.
            in_pod(Some(&pod), || Ok(())).expect("setns (run as root)");
        }
        eprintln!("setns there and back: {:?} each", start.elapsed() / n);
    }
}
