//! The agent's memory of running pods, kept in a file so a restarted agent still knows them:
//! without it, the node proxy's next snapshot from the new agent would release every pod
//! already running on the node (until its next CNI ADD). Each pod's netns is reopened from
//! the path the runtime gave (`CNI_NETNS`, a bind mount or a long-lived `/proc` path).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running pod as CNI ADD described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    pub netns: String,
    /// The pod cgroup found at ADD; a reopened netns must lead to the same one.
    pub cgroup: Option<String>,
}

/// The state file and what it holds.
pub struct StateFile {
    path: PathBuf,
    pods: BTreeMap<String, PodRecord>,
}

impl StateFile {
    /// Reads `path`; a missing file is an empty list, a broken one is logged and ignored.
    pub fn load(path: &Path) -> StateFile {
        let pods = match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<Vec<PodRecord>>(&text) {
                Ok(list) => list.into_iter().map(|p| (p.uid.clone(), p)).collect(),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "pod state file unreadable; starting empty");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "pod state file unreadable; starting empty");
                BTreeMap::new()
            }
        };
        StateFile {
            path: path.to_owned(),
            pods,
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values()
    }

    pub fn insert(&mut self, pod: PodRecord) {
        self.pods.insert(pod.uid.clone(), pod);
        self.save();
    }

    pub fn remove(&mut self, uid: &str) {
        if self.pods.remove(uid).is_some() {
            self.save();
        }
    }

    /// Forgets pods that could not be restored.
    pub fn retain(&mut self, keep: impl Fn(&PodRecord) -> bool) {
        let before = self.pods.len();
        self.pods.retain(|_, p| keep(p));
        if self.pods.len() != before {
            self.save();
        }
    }

    /// Writes the whole list (write then rename: a crash leaves the old or the new file).
    fn save(&self) {
        let list: Vec<&PodRecord> = self.pods.values().collect();
        let result = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = self.path.with_extension("tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = result {
            tracing::warn!(file = %self.path.display(), error = %e, "saving the pod state failed; a restarted agent would forget pods");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            namespace: "demo".into(),
            name: uid.into(),
            container_id: format!("c-{uid}"),
            netns: "/run/netns/x".into(),
            cgroup: Some("/sys/fs/cgroup/pod".into()),
        }
    }

    #[test]
    fn survives_a_restart_and_tolerates_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pods.json");
        let mut s = StateFile::load(&path);
        s.insert(rec("a"));
        s.insert(rec("b"));
        s.remove("a");
        let again = StateFile::load(&path);
        assert_eq!(again.pods().cloned().collect::<Vec<_>>(), vec![rec("b")]);
        std::fs::write(&path, "{garbage").expect("write");
        assert_eq!(StateFile::load(&path).pods().count(), 0);
    }
}
