//! Pods: what a test asks for ([`PodSpec`]), what it gets back ([`Pod`]), and the Kubernetes
//! objects written for the controller and the agent.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// The node (1-based).
    pub node: usize,
    /// Default: the pod's name.
    pub service_account: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Container ports (named `p<port>`), for Services' `targetPort`.
    pub ports: Vec<u16>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, node: usize) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            node,
            service_account: None,
            labels: Vec::new(),
            ports: Vec::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> PodSpec {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn service_account(mut self, sa: &str) -> PodSpec {
        self.service_account = Some(sa.into());
        self
    }

    pub fn port(mut self, p: u16) -> PodSpec {
        self.ports.push(p);
        self
    }
}

/// A running pod. A handle: the topology owns its namespace, cgroup and processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: usize,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub service_account: String,
}

impl Pod {
    pub(crate) fn new(spec: &PodSpec, uid: String, k: u8) -> Pod {
        let n = spec.node as u8;
        Pod {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            uid,
            node: spec.node,
            ip4: Ipv4Addr::new(198, 18, n, k),
            ip6: Ipv6Addr::new(0xfd00, 0x18, n.into(), 0, 0, 0, 0, k.into()),
            service_account: spec
                .service_account
                .clone()
                .unwrap_or_else(|| spec.name.clone()),
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The SPIFFE identity the mesh gives it.
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The file its Pod object is written to in the config directory.
    pub(crate) fn file(&self) -> String {
        format!("pod-{}-{}.yaml", self.namespace, self.name)
    }

    /// The Pod object as a kubelet would have it: node, IPs, labels, service account.
    pub(crate) fn yaml(&self, spec: &PodSpec) -> String {
        let labels: Vec<String> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        let ports: Vec<String> = spec
            .ports
            .iter()
            .map(|p| format!("{{name: p{p}, containerPort: {p}}}"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
             uid: {uid}\n  labels: {{{labels}}}\nspec:\n  nodeName: {node}\n  \
             serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: zmesh.local/app\n    \
             ports: [{ports}]\nstatus:\n  phase: Running\n  podIP: {ip4}\n  \
             podIPs: [{{ip: {ip4}}}, {{ip: \"{ip6}\"}}]\n",
            name = self.name,
            ns = self.namespace,
            uid = self.uid,
            labels = labels.join(", "),
            node = super::node_name(self.node),
            sa = self.service_account,
            ports = ports.join(", "),
            ip4 = self.ip4,
            ip6 = self.ip6,
        )
    }

    /// The CNI config zmesh-cni gets on stdin, with the bridge plugin's result.
    pub(crate) fn cni_stdin(&self, agent_socket: &str, netns: &str) -> String {
        let n = self.node;
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"zmesh-cni","agent_socket":"{agent_socket}","prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{sandbox}"}}],"ips":[{{"address":"{ip4}/24","gateway":"198.18.{n}.1","interface":0}},{{"address":"{ip6}/64","gateway":"fd00:18:{n}::1","interface":0}}]}}}}"#,
            sandbox = netns,
            ip4 = self.ip4,
            ip6 = self.ip6,
        )
    }

    /// `CNI_ARGS` as kubelet sets it.
    pub(crate) fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.uid, self.uid
        )
    }
}

/// A Namespace object, labelled `istio.io/dataplane-mode=ambient` when `ambient`.
pub fn namespace_yaml(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {labels}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> (PodSpec, Pod) {
        let spec = PodSpec::new("demo", "web-1", 2)
            .label("app", "web")
            .service_account("web")
            .port(8080);
        let pod = Pod::new(&spec, "uid-1".into(), 7);
        (spec, pod)
    }

    #[test]
    fn addresses_follow_the_node_and_host_number() {
        let (_, p) = pod();
        assert_eq!(p.ip4, Ipv4Addr::new(198, 18, 2, 7));
        assert_eq!(p.ip6.to_string(), "fd00:18:2::7");
        assert_eq!(p.spiffe(), "spiffe://cluster.local/ns/demo/sa/web");
    }

    #[test]
    fn pod_object_carries_what_kubelet_would_set() {
        let (spec, p) = pod();
        let y = p.yaml(&spec);
        for want in [
            "nodeName: node2",
            "serviceAccountName: web",
            "app: \"web\"",
            "podIP: 198.18.2.7",
            "{ip: \"fd00:18:2::7\"}",
            "containerPort: 8080",
            "uid: uid-1",
        ] {
            assert!(y.contains(want), "{want} in\n{y}");
        }
    }

    #[test]
    fn cni_config_is_json_with_the_agent_socket_and_both_ips() {
        let (_, p) = pod();
        let v: serde_json::Value =
            serde_json::from_str(&p.cni_stdin("/run/cni.sock", "/proc/1/ns/net"))
                .expect("valid JSON");
        assert_eq!(v["agent_socket"], "/run/cni.sock");
        assert_eq!(
            v["prevResult"]["interfaces"][0]["sandbox"],
            "/proc/1/ns/net"
        );
        assert_eq!(v["prevResult"]["ips"][0]["address"], "198.18.2.7/24");
        assert_eq!(v["prevResult"]["ips"][1]["address"], "fd00:18:2::7/64");
        assert!(
            p.cni_args()
                .contains("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1")
        );
    }
}
