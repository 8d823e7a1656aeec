//! Pinned mode of the eBPF back end (`LoadConfig::pin_dir`): adopting a pod's pinned links,
//! replacing those of another object version, releasing pods the node agent no longer lists.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::links::PinnedLink;

use super::{AddrKey, Capture, FlowKey, POD_PROGRAMS, PodCapture, attach_one, lock, take_map};
use crate::Error;
use crate::pin::{PinDir, remove_pins};

/// The pin directory and the pods this process captured (netns cookie → their address keys):
/// pins of any other pod are stale once the agent's snapshot is in.
pub(super) struct Pins {
    pub(super) dir: PinDir,
    pub(super) active: Mutex<StdHashMap<u64, Vec<AddrKey>>>,
}

impl Capture {
    /// Pinned mode: adopts the links pinned for this pod by an earlier run of the same object
    /// (no second attachment), attaches and pins any that are missing. Links pinned by another
    /// version of the object are replaced: this version's are attached first, then the old ones
    /// unpinned, so the pod is never without its hooks (both run for that instant, and each
    /// program leaves alone what the other already redirected; a connection caught by the old
    /// one then fails, it is not let through). Returns how many links were adopted.
    pub(super) fn attach_pinned(
        &self,
        pins: &Arc<Pins>,
        cgroup: &File,
        netns: BorrowedFd<'_>,
        pod: &mut PodCapture,
    ) -> Result<usize, Error> {
        let cookie = pod.netns_cookie;
        let dir = pins.dir.pod_dir(cookie);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Pin {
            path: dir.clone(),
            source,
        })?;
        let mut pinned = PinnedPod {
            dir,
            links: Vec::new(),
            pins: Arc::clone(pins),
        };
        let mut created = Vec::new();
        let result = pin_links(
            &mut lock(&self.bpf),
            cgroup,
            netns,
            &mut pinned,
            &mut created,
        );
        if let Err(e) = result {
            // Undo only what this call pinned: adopted links keep the pod failing closed.
            for path in created {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        let adopted = POD_PROGRAMS.len() - created.len();
        for old in pins.dir.pod_elsewhere(cookie) {
            match remove_pins(&old) {
                Ok(()) => {
                    tracing::info!(netns_cookie = cookie, old = %old.display(), "replaced links of an older capture object")
                }
                Err(e) => tracing::warn!(old = %old.display(), error = %e, "unpinning old links"),
            }
        }
        pins.dir.remove_unused_versions();
        lock(&pins.active).insert(cookie, pod.inbound_keys.clone());
        pod.pinned = Some(pinned);
        Ok(adopted)
    }

    /// Pinned mode, after the node agent's snapshot: unpins (hence detaches) the links of every
    /// pod this process has not captured, and drops their map entries. Returns how many pods.
    pub fn prune_pins(&self) -> usize {
        let Some(pins) = &self.pins else { return 0 };
        let active = lock(&pins.active);
        let keep: HashSet<u64> = active.keys().copied().collect();
        let stale = pins.dir.stale_pods(&keep);
        for dir in &stale {
            match remove_pins(dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "released a pod not listed by the node agent")
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "unpinning a stale pod"),
            }
        }
        pins.dir.remove_unused_versions();
        // Best effort: a leftover entry only costs memory (no hook runs for a pod without
        // links), and the next snapshot sweeps again.
        let addrs: HashSet<AddrKey> = active.values().flatten().copied().collect();
        let mut maps = lock(&self.maps);
        let pods: Vec<u64> = maps.pods.keys().filter_map(Result::ok).collect();
        for cookie in pods.iter().filter(|c| !keep.contains(c)) {
            let _ = maps.pods.remove(cookie);
        }
        let captured: Vec<AddrKey> = maps.captured.keys().filter_map(Result::ok).collect();
        for key in captured.iter().filter(|k| !addrs.contains(*k)) {
            let _ = maps.captured.remove(key);
            let _ = maps.inbound.remove(key);
        }
        stale.len()
    }
}

/// A pod's pinned links, and where.
pub(super) struct PinnedPod {
    pub(super) dir: PathBuf,
    links: Vec<PinnedLink>,
    pins: Arc<Pins>,
}

/// Adopts or attaches-and-pins each of the pod's links; `created` lists the pins made here.
fn pin_links(
    bpf: &mut Ebpf,
    cgroup: &File,
    netns: BorrowedFd<'_>,
    pod: &mut PinnedPod,
    created: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    for name in POD_PROGRAMS {
        let path = pod.dir.join(name);
        if path.exists() {
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    pod.links.push(link);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(pin = %path.display(), error = %e, "unusable pin, attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let link = attach_one(bpf, name, cgroup, netns)?.into_fd(name)?;
        let pinned = link.pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        created.push(path);
        pod.links.push(pinned);
    }
    Ok(())
}

impl PinnedPod {
    /// Removes the pins, then closes the fds: the links detach.
    pub(super) fn unpin(self) -> Result<(), Error> {
        let pin_err = |source| Error::Pin {
            path: self.dir.clone(),
            source,
        };
        for link in self.links {
            drop(link.unpin().map_err(pin_err)?);
        }
        remove_pins(&self.dir).map_err(pin_err)?;
        if let Some(cookie) = self.dir.file_name().and_then(|n| n.to_str()?.parse().ok()) {
            lock(&self.pins.active).remove(&cookie);
        }
        Ok(())
    }
}

/// The proxy's own connections recorded by an earlier run (pinned map): that process and its
/// sockets are gone, and a stale entry would let a later connection with the same 4-tuple past
/// sk_lookup.
pub(super) fn forget_proxy_flows(bpf: &mut Ebpf) -> Result<(), Error> {
    let mut flows: HashMap<MapData, FlowKey, u8> = take_map(bpf, "zm_proxy_flows")?;
    let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
    for key in &keys {
        let _ = flows.remove(key);
    }
    Ok(())
}
