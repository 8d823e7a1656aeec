//! `zmesh-cni`: the CNI plugin binary; see `zmesh_agent::plugin`.

#![forbid(unsafe_code)]

use std::io::{Read, Write};

const HELP: &str = "\
zmesh-cni: CNI (spec 1.0.0) chained plugin that enrolls pods in the zmesh mesh.

Run by the container runtime, not by hand. It reads:
  CNI_COMMAND      ADD, DEL, CHECK or VERSION
  CNI_CONTAINERID  the sandbox's container id
  CNI_NETNS        the pod's network namespace path (ADD)
  CNI_IFNAME       the pod's interface name (unused)
  CNI_ARGS         K8S_POD_NAMESPACE=<ns>;K8S_POD_NAME=<name>;K8S_POD_UID=<uid> (others ignored)
and on stdin the network configuration, e.g.
  {\"cniVersion\":\"1.0.0\",\"name\":\"k8s-pod-network\",\"type\":\"zmesh-cni\",
   \"agent_socket\":\"/run/zmesh/cni.sock\",\"timeout_seconds\":10,\"prevResult\":{...}}

ADD asks zmesh-agent (at agent_socket) and returns once the node proxy captures the pod, or at
once when the pod is not enrolled; it prints prevResult. A pod that must be captured but
cannot be (no node proxy within timeout_seconds, capture failed) gets a CNI error on stdout and
exit status 1. DEL releases the pod and succeeds for unknown pods or when no agent runs.
";

fn main() {
    if let Some(arg) = std::env::args().nth(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return;
            }
            "-V" | "--version" => {
                println!("zmesh-cni {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            _ => {}
        }
    }
    let mut stdin = String::new();
    let out = match std::io::stdin().read_to_string(&mut stdin) {
        Ok(_) => zmesh_agent::plugin::run(&|k| std::env::var(k).ok(), &stdin),
        Err(e) => zmesh_agent::plugin::Output {
            stdout: serde_json::json!({"cniVersion": "1.0.0", "code": 6, "msg": "reading stdin", "details": e.to_string()})
                .to_string(),
            exit_code: 1,
        },
    };
    let mut o = std::io::stdout();
    let _ = o.write_all(out.stdout.as_bytes());
    let _ = o.flush();
    std::process::exit(out.exit_code);
}
