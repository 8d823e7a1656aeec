//! What a topology made, checked after teardown: nothing may be left.

use std::path::PathBuf;

/// The namespaces, cgroups, bpffs and directory of one topology.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub netns_inodes: Vec<u64>,
    pub cgroup: PathBuf,
    pub bpffs: Option<PathBuf>,
    pub work: PathBuf,
}

impl Footprint {
    /// Whatever of it still exists: a process (or an fd of this process) in one of its
    /// namespaces, its cgroup tree, its bpffs mount. Empty when the teardown was complete.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.cgroup.exists() {
            left.push(format!("cgroup {}", self.cgroup.display()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(b) = &self.bpffs
            && mounts.lines().any(|l| l.contains(&*b.to_string_lossy()))
        {
            left.push(format!("bpffs mounted at {}", b.display()));
        }
        let wanted: Vec<String> = self
            .netns_inodes
            .iter()
            .map(|i| format!("net:[{i}]"))
            .collect();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(ns) = std::fs::read_link(entry.path().join("ns/net"))
                && wanted.iter().any(|w| *w == *ns.to_string_lossy())
            {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                left.push(format!(
                    "process {pid} ({}) in {}",
                    comm.trim(),
                    ns.display()
                ));
            }
        }
        for fd in std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| *w == *target.to_string_lossy())
            {
                left.push(format!(
                    "fd {} of this process holds {}",
                    fd.file_name().to_string_lossy(),
                    target.display()
                ));
            }
        }
        if self.work.exists() {
            left.push(format!("work dir {}", self.work.display()));
        }
        left
    }
}
