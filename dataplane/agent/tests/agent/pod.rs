//! A pod as a runtime would make one: a network namespace (held by fd, so it vanishes with the
//! test), a cgroup with a `sandbox` child holding a pause process (`sleep`); all removed on
//! drop, even when the test fails.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sched::CloneFlags;

pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: OwnedFd,
    pub cgroup: PathBuf,
    pause: Option<Child>,
}

pub fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(lo.expect("run ip").success(), "ip link set lo up");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("own netns"))
    })
    .join()
    .expect("netns thread")
}

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

impl Pod {
    /// `tag` keeps cgroup names apart between tests running at once.
    pub fn start(tag: &str, namespace: &str, name: &str) -> Pod {
        Self::start_in(tag, namespace, name, true)
    }

    /// A pod whose pause process stayed in the test's own cgroup (a runtime bug or race).
    pub fn start_uncontained(tag: &str, namespace: &str, name: &str) -> Pod {
        Self::start_in(tag, namespace, name, false)
    }

    fn start_in(tag: &str, namespace: &str, name: &str, contained: bool) -> Pod {
        let root = zmesh_agent::podns::cgroup2_mount().expect("a cgroup v2 hierarchy is mounted");
        let cgroup = root.join(format!(
            "zmesh-agent-test-{}-{tag}-{name}",
            std::process::id()
        ));
        std::fs::create_dir(&cgroup).expect("pod cgroup");
        let mut pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{tag}-{name}"),
            netns: new_netns(),
            cgroup,
            pause: None,
        };
        let sandbox = pod.cgroup.join("sandbox");
        std::fs::create_dir(&sandbox).expect("sandbox cgroup");
        let procs = sandbox.join("cgroup.procs");
        let join = if contained {
            format!("echo $$ > {} && ", procs.display())
        } else {
            String::new()
        };
        let child = in_netns(pod.netns.as_fd(), || {
            Command::new("sh")
                .arg("-c")
                .arg(format!("{join}exec sleep 600"))
                .stdin(Stdio::null())
                .spawn()
                .expect("pause process")
        });
        pod.pause = Some(child);
        if !contained {
            return pod;
        }
        // The pause process must have moved itself into the sandbox before any ADD.
        for _ in 0..200 {
            if !std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .trim()
                .is_empty()
            {
                return pod;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the pause process never joined {}", sandbox.display());
    }

    /// `CNI_NETNS` for this pod: our fd, seen through /proc (the agent runs on this host).
    pub fn netns_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd())
    }

    pub fn netns_ino(&self) -> u64 {
        ino(self.netns.as_fd())
    }

    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={}",
            self.namespace, self.name, self.uid
        )
    }

    pub fn container_id(&self) -> String {
        format!("ctr-{}", self.uid)
    }
}

pub fn ino(fd: BorrowedFd<'_>) -> u64 {
    std::fs::File::from(fd.try_clone_to_owned().expect("dup"))
        .metadata()
        .expect("fstat")
        .ino()
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.pause.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for dir in [self.cgroup.join("sandbox"), self.cgroup.clone()] {
            for _ in 0..200 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
