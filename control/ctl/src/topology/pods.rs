//! Pod lifecycle on a [`Topology`], as kubelet and a CNI chain do it, and processes in pods.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Error;
use super::pod::{Pod, PodSpec};
use super::sys::{self, Finished, Netns, Output, Proc};
use super::topo::{PodState, Topology, owned};

/// Whether a `/config_dump` holds the workload address `ip` and a certificate with identity
/// `id` (both quoted JSON fragments).
fn knows(dump: &str, ip: &str, id: &str) -> bool {
    let d: String = dump.split_whitespace().collect();
    let Some((_, rest)) = d.split_once("\"certificates\":") else {
        return false;
    };
    // The certificates run until the next top-level section, whatever the key order.
    let end = ["\"policies\":", "\"services\":", "\"workloads\":"]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
        .unwrap_or(rest.len());
    d.contains(ip) && rest[..end].contains(id)
}

/// How long a CNI call may take (zmesh-cni bounds its own wait at ~10 s).
const CNI_LIMIT: Duration = Duration::from_secs(30);

impl Topology {
    /// Creates a pod on `spec.node`: Pod object, netns + veth on `cni0` + addresses, pause
    /// process in the `sandbox` cgroup, then (with the mesh) `zmesh-cni` ADD, which returns
    /// once the pod is captured or known not to be enrolled. An ADD failure is an error and
    /// the pod is removed again.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<Pod, Error> {
        let n = spec.node;
        self.seq += 1;
        let seq = self.seq;
        let (k, node_path) = {
            let node = self.node_mut(n)?;
            let k = node.next_pod;
            if k == 255 {
                return Err(Error::Setup(format!("node {n} is full")));
            }
            node.next_pod += 1;
            (k, node.netns.path())
        };
        let pod = Pod::new(&spec, format!("{:08x}-0000-4000-8000-{seq:012x}", seq), k);
        if self.opts.mesh {
            self.apply(&pod.file(), &pod.yaml(&spec))?;
        }
        let netns = Netns::new()?;
        let veth = format!("veth{seq}");
        netns.ip(&[
            format!("link add eth0 type veth peer name {veth} netns {node_path}"),
            format!("addr add {}/24 dev eth0", pod.ip4),
            format!("addr add {}/64 dev eth0 nodad", pod.ip6),
            "link set eth0 up".into(),
            format!("route add default via 198.18.{n}.1"),
            format!("route add default via fd00:18:{n}::1"),
        ])?;
        self.node_netns(n)?
            .ip(&[format!("link set {veth} master cni0 up")])?;
        let cgroup = self
            .node(n)?
            .cgroup
            .join("pods")
            .join(format!("{}_{}-{seq}", pod.namespace, pod.name));
        let sandbox = cgroup.join("sandbox");
        sys::cgroup_create(&sandbox)?;
        let pause = Proc::spawn(
            &netns,
            Some(&sandbox),
            std::path::Path::new("sleep"),
            &["infinity".into()],
            &[],
            &Output::Null,
        )?;
        // The pause process must be in its cgroup before the agent looks for it.
        let procs = sandbox.join("cgroup.procs");
        let pid = pause.pid().to_string();
        sys::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid))
        });
        self.pods.push(PodState {
            pod: pod.clone(),
            spec: spec.clone(),
            netns,
            cgroup,
            pause: Some(pause),
            apps: 0,
        });
        if self.opts.mesh
            && let Err(e) = self.cni(&pod, "ADD")
        {
            let _ = self.delete_pod(&pod);
            return Err(e);
        }
        Ok(pod)
    }

    /// Deletes a pod: `zmesh-cni` DEL, its processes killed, its cgroup, netns and Pod
    /// object removed.
    pub fn delete_pod(&mut self, pod: &Pod) -> Result<(), Error> {
        let i = self.pod_index(pod)?;
        let cni = if self.opts.mesh {
            self.cni(pod, "DEL")
        } else {
            Ok(())
        };
        let mut state = self.pods.remove(i);
        state.pause.take();
        let removed = sys::cgroup_remove(&state.cgroup);
        drop(state);
        if self.opts.mesh {
            let _ = self.remove(&pod.file());
        }
        cni.and(removed)
    }

    /// Sets (`Some`) or removes (`None`) a label of a running pod by rewriting its Pod
    /// object, e.g. `istio.io/dataplane-mode=none` to take it out of the mesh.
    pub fn set_pod_label(
        &mut self,
        pod: &Pod,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), Error> {
        let i = self.pod_index(pod)?;
        let spec = &mut self.pods[i].spec;
        spec.labels.retain(|(k, _)| k != key);
        if let Some(v) = value {
            spec.labels.push((key.into(), v.into()));
        }
        let yaml = self.pods[i].pod.yaml(&self.pods[i].spec);
        self.apply(&pod.file(), &yaml)
    }

    /// The pod's cgroup (`sandbox` and `app-<n>` below it).
    pub fn pod_cgroup(&self, pod: &Pod) -> Result<std::path::PathBuf, Error> {
        Ok(self.pods[self.pod_index(pod)?].cgroup.clone())
    }

    /// Waits until the node proxy of the pod's node knows it: its workload (from the
    /// controller) and its certificate, both in `/config_dump`. A pod is captured as soon as
    /// CNI ADD returns, but its first connections fail (IDENTITY_ERROR) while its proxy has
    /// not heard of it yet; benchmarks call this before timing anything.
    pub fn wait_known(&self, pod: &Pod, limit: Duration) -> Result<(), Error> {
        let ip = format!("\"{}\"", pod.ip4);
        let id = format!("\"identity\":\"{}\"", pod.spiffe());
        let known = sys::wait_until(limit, || {
            self.admin(pod.node, "/config_dump")
                .is_ok_and(|d| knows(&d, &ip, &id))
        });
        if known {
            return Ok(());
        }
        Err(Error::Timeout {
            what: format!("node {}'s proxy to know pod {}", pod.node, pod.id()),
            limit,
            log: String::new(),
        })
    }

    /// Every pod, in creation order.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.iter().map(|p| p.pod.clone()).collect()
    }

    /// The pod's network namespace (to open sockets in it from this process).
    pub fn pod_netns(&self, pod: &Pod) -> Result<&Netns, Error> {
        Ok(&self.pods[self.pod_index(pod)?].netns)
    }

    /// Starts `program` in the pod: its netns, and a new `app-<n>` cgroup under the pod's,
    /// entered before exec (so capture applies from the first syscall). Output goes to
    /// `<work dir>/<ns>_<pod>-app-<n>.log`. Programs without a `/` are looked up beside the
    /// zmesh binaries first (`zmeshctl`), then in PATH (`curl`, `iperf3`).
    pub fn spawn(&mut self, pod: &Pod, program: &str, args: &[&str]) -> Result<Proc, Error> {
        let log = Output::Log(self.work.join(format!(
            "{}_{}-app-{}.log",
            pod.namespace,
            pod.name,
            self.pods[self.pod_index(pod)?].apps + 1
        )));
        self.spawn_with(pod, program, args, log)
    }

    /// Like [`Topology::spawn`], with the output where `out` says.
    pub fn spawn_with(
        &mut self,
        pod: &Pod,
        program: &str,
        args: &[&str],
        out: Output,
    ) -> Result<Proc, Error> {
        let i = self.pod_index(pod)?;
        let program = self.bins.resolve(program);
        let state = &mut self.pods[i];
        state.apps += 1;
        let cg = state.cgroup.join(format!("app-{}", state.apps));
        sys::cgroup_create(&cg)?;
        Proc::spawn(&state.netns, Some(&cg), &program, &owned(args), &[], &out)
    }

    /// Runs `program` in the pod to completion (killed and an error after `limit`).
    pub fn run(
        &mut self,
        pod: &Pod,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<Finished, Error> {
        self.spawn_with(pod, program, args, Output::Piped)?
            .finish(limit)
    }

    fn pod_index(&self, pod: &Pod) -> Result<usize, Error> {
        self.pods
            .iter()
            .position(|p| p.pod.uid == pod.uid)
            .ok_or_else(|| Error::Setup(format!("no pod {}", pod.id())))
    }

    /// Runs `zmesh-cni` in the node's netns as the container runtime would.
    fn cni(&self, pod: &Pod, command: &str) -> Result<(), Error> {
        let node = self.node(pod.node)?;
        let state = &self.pods[self.pod_index(pod)?];
        let netns = match &state.pause {
            Some(p) => format!("/proc/{}/ns/net", p.pid()),
            None => state.netns.path(),
        };
        let bin = self.bins.get("zmesh-cni")?;
        let stdin = pod.cni_stdin(&node.cni_socket().display().to_string(), &netns);
        let mut cmd = Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.uid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", pod.cni_args())
            .env("CNI_PATH", self.bins.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = node
            .netns
            .enter(|| cmd.spawn())?
            .map_err(|source| Error::Io {
                what: format!("start {}", bin.display()),
                source,
            })?;
        if let Some(mut w) = child.stdin.take() {
            let _ = w.write_all(stdin.as_bytes());
        }
        let deadline = Instant::now() + CNI_LIMIT;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let out = child.wait_with_output().map_err(|source| Error::Io {
            what: "wait for zmesh-cni".into(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Cni {
            pod: format!("{} ({command})", pod.id()),
            msg: format!(
                "{} {}{}\n---- {} agent ----\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                node.name,
                sys::tail(&node.agent_log(), 20)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn knows_needs_the_address_and_a_certificate_for_the_identity() {
        let id = "\"identity\":\"spiffe://cluster.local/ns/demo/sa/web\"";
        let dump = |certs: &str| {
            format!(
                "{{\n  \"certificates\": [{certs}],\n  \"policies\": [],\n  \"workloads\": [\n    \
                 {{\"identity\": \"spiffe://cluster.local/ns/demo/sa/web\", \"workloadIps\": \
                 [\"198.18.2.2\"]}}\n  ]\n}}"
            )
        };
        let cert = "{\"chain\": [\"x\"], \"identity\": \"spiffe://cluster.local/ns/demo/sa/web\"}";
        assert!(super::knows(&dump(cert), "\"198.18.2.2\"", id));
        assert!(
            !super::knows(&dump(""), "\"198.18.2.2\"", id),
            "no certificate yet"
        );
        assert!(
            !super::knows(&dump(cert), "\"198.18.2.3\"", id),
            "another pod"
        );
    }
}
