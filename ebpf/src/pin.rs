//! Capture that outlives the node proxy: the maps and each pod's links pinned on a bpffs.
//!
//! Layout under the pin directory `DIR` (`zmesh-node --bpf-pin-dir DIR`):
//!
//! ```text
//! DIR/<version>/maps/<map>                     zm_pods, zm_captured, zm_inbound, ...
//! DIR/<version>/pods/<netns cookie>/<program>  one pinned link per pod hook (8)
//! ```
//!
//! `<version>` names the program object and the ports it was loaded with (a hash of both):
//! a proxy adopts only links and maps of its own version, since a different object may lay
//! its maps out differently. A pod's key is its netns cookie: it identifies the pod's network
//! namespace for the life of the boot (never reused), and the pod's hooks only act in it.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Ports};

/// The maps the pods' programs and the proxy's share: pinned, so a restarted proxy's
/// getsockopt and sk_lookup entries meet the pods' adopted links. (`.rodata`, the ports, is
/// part of the version instead.)
pub(crate) const PINNED_MAPS: [&str; 6] = [
    "zm_pods",
    "zm_sk_orig",
    "zm_orig_dst",
    "zm_captured",
    "zm_inbound",
    "zm_proxy_flows",
];

/// The pin directory of one proxy: `root` and the version it loads.
#[derive(Debug, Clone)]
pub(crate) struct PinDir {
    root: PathBuf,
    version: PathBuf,
}

/// Fails unless `dir` (or, when it does not exist yet, its nearest existing ancestor) is on a
/// bpffs: pins can live nowhere else, and a plain directory would only fail later, per pod.
pub fn check_bpffs(dir: &Path) -> Result<(), Error> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let st = nix::sys::statfs::statfs(existing).map_err(|e| Error::Pin {
        path: existing.to_owned(),
        source: e.into(),
    })?;
    if st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(Error::NotBpffs(dir.to_owned()))
    }
}

impl PinDir {
    /// Checks `root` is on a bpffs and creates this version's directories.
    pub(crate) fn open(root: &Path, object: &[u8], ports: Ports) -> Result<Self, Error> {
        check_bpffs(root)?;
        let version = root.join(version(object, ports));
        for dir in [version.join("maps"), version.join("pods")] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Pin { path: dir, source })?;
        }
        Ok(Self {
            root: root.to_owned(),
            version,
        })
    }

    pub(crate) fn map_path(&self, name: &str) -> PathBuf {
        self.version.join("maps").join(name)
    }

    pub(crate) fn pod_dir(&self, cookie: u64) -> PathBuf {
        self.version.join("pods").join(cookie.to_string())
    }

    /// Directories of other versions of the object, e.g. from before an upgrade. Only
    /// `obj-*` names: anything else under the root is not ours to touch.
    fn other_versions(&self) -> Vec<PathBuf> {
        subdirs(&self.root)
            .into_iter()
            .filter(|d| *d != self.version)
            .filter(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("obj-"))
            })
            .collect()
    }

    /// The pod's links pinned by another version: replaced by this version's once attached.
    pub(crate) fn pod_elsewhere(&self, cookie: u64) -> Vec<PathBuf> {
        self.other_versions()
            .into_iter()
            .map(|v| v.join("pods").join(cookie.to_string()))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Every pinned pod not in `keep` (of this version) and every pod of another version.
    pub(crate) fn stale_pods(&self, keep: &HashSet<u64>) -> Vec<PathBuf> {
        let mut stale: Vec<PathBuf> = subdirs(&self.version.join("pods"))
            .into_iter()
            .filter(|d| {
                let cookie = d.file_name().and_then(|n| n.to_str()?.parse::<u64>().ok());
                cookie.is_none_or(|c| !keep.contains(&c))
            })
            .collect();
        for v in self.other_versions() {
            stale.extend(subdirs(&v.join("pods")));
        }
        stale
    }

    /// Removes other versions that no longer hold any pod: their maps go with their last
    /// program.
    pub(crate) fn remove_unused_versions(&self) {
        for v in self.other_versions() {
            if !subdirs(&v.join("pods")).is_empty() {
                continue;
            }
            let removed = remove_pins(&v.join("maps"))
                .and_then(|()| remove_dir_if_exists(&v.join("pods")))
                .and_then(|()| remove_dir_if_exists(&v));
            match removed {
                Ok(()) => {
                    tracing::info!(dir = %v.display(), "removed pins of an older capture object")
                }
                Err(e) => tracing::warn!(dir = %v.display(), error = %e, "removing old pins"),
            }
        }
    }
}

/// Unpins every object in `dir` and removes it. A link whose last reference was its pin is
/// detached there and then.
pub(crate) fn remove_pins(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        std::fs::remove_file(entry?.path())?;
    }
    remove_dir_if_exists(dir)
}

fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// FNV-1a over the object and the ports: stable across builds and Rust versions (unlike
/// `DefaultHasher`), which matters because the name must match across proxy binaries.
fn version(object: &[u8], ports: Ports) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ports = [ports.outbound, ports.inbound, ports.hbone].map(u16::to_be_bytes);
    for b in object.iter().chain(ports.iter().flatten()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("obj-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_object_and_ports() {
        let p = Ports::default();
        assert_eq!(version(b"abc", p), version(b"abc", p));
        assert_ne!(version(b"abc", p), version(b"abd", p));
        let other = Ports {
            inbound: 16006,
            ..p
        };
        assert_ne!(version(b"abc", p), version(b"abc", other));
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let dir = std::env::temp_dir();
        assert!(matches!(check_bpffs(&dir), Err(Error::NotBpffs(_))));
        // A directory that does not exist yet is judged by where it would be created.
        assert!(matches!(
            check_bpffs(&dir.join("zmesh-no-such-dir/x")),
            Err(Error::NotBpffs(_))
        ));
    }
}
