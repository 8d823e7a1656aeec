use std::collections::HashMap;
use std::os::unix::net::UnixListener;

use super::*;

fn invoke(vars: &[(&str, &str)], stdin: &str) -> (Value, i32) {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = run(&|k| vars.get(k).cloned(), stdin);
    let v = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out.stdout).expect("stdout is JSON")
    };
    (v, out.exit_code)
}

fn conf(socket: &str) -> String {
    json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "zmesh-cni",
        "agent_socket": socket,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "198.18.1.2/24"}]}
    })
    .to_string()
}

const POD: &str = "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_UID=u1;IgnoreUnknown=1";

fn add_env(netns: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", "c1".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_NETNS", netns.into()),
        ("CNI_ARGS", POD.into()),
    ]
}

fn env_ref<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn version_lists_the_supported_versions() {
    let (v, code) = invoke(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .expect("list")
            .contains(&json!("1.0.0"))
    );
}

#[test]
fn bad_input_is_a_cni_error_not_a_panic() {
    let env = add_env("/proc/self/ns/net");
    let (v, code) = invoke(&env_ref(&env), "{not json");
    assert_eq!((code, v["code"].as_u64()), (1, Some(6)), "{v}");

    let (v, code) = invoke(&[("CNI_COMMAND", "FROB")], &conf("/x"));
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "{v}");
    assert!(v["msg"].as_str().expect("msg").contains("FROB"), "{v}");

    let (v, _) = invoke(&[("CNI_CONTAINERID", "c1")], &conf("/x"));
    assert_eq!(v["code"], 4, "missing CNI_COMMAND: {v}");

    let no_netns: Vec<_> = env
        .iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .cloned()
        .collect();
    let (v, code) = invoke(&env_ref(&no_netns), &conf("/x"));
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "{v}");
    assert!(v["msg"].as_str().expect("msg").contains("CNI_NETNS"), "{v}");

    let (v, _) = invoke(
        &env_ref(&env),
        r#"{"cniVersion":"1.0.0","name":"n","type":"zmesh-cni"}"#,
    );
    assert_eq!(v["code"], 7, "missing agent_socket: {v}");

    let (v, _) = invoke(
        &env_ref(&env),
        r#"{"cniVersion":"9.9.9","agent_socket":"/x"}"#,
    );
    assert_eq!(v["code"], 1, "unsupported version: {v}");

    let mut no_name = env.clone();
    no_name.retain(|(k, _)| *k != "CNI_ARGS");
    let (v, _) = invoke(&env_ref(&no_name), &conf("/x"));
    assert!(
        v["msg"].as_str().expect("msg").contains("K8S_POD_NAME"),
        "{v}"
    );
}

#[test]
fn add_without_an_agent_fails_and_del_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("cni.sock").display().to_string();
    let env = add_env("/proc/self/ns/net");
    let (v, code) = invoke(&env_ref(&env), &conf(&socket));
    assert_eq!(code, 1);
    assert_eq!(v["code"], 11);
    assert!(
        v["msg"]
            .as_str()
            .expect("msg")
            .contains("is zmesh-agent running"),
        "{v}"
    );

    let (v, code) = invoke(
        &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")],
        &conf(&socket),
    );
    assert_eq!((v, code), (Value::Null, 0));
}

/// An agent double answering one request with `answer`; returns what it was asked.
fn agent(
    answer: CniResponse,
) -> (
    tempfile::TempDir,
    String,
    std::thread::JoinHandle<CniRequest>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cni.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("read");
        let req = serde_json::from_str(&line).expect("request");
        let mut out = serde_json::to_string(&answer).expect("encode");
        out.push('\n');
        (&s).write_all(out.as_bytes()).expect("write");
        req
    });
    (dir, path.display().to_string(), t)
}

#[test]
fn add_passes_the_previous_result_on_once_captured() {
    let (_d, socket, agent) = agent(CniResponse::Captured);
    let env = add_env("/proc/self/ns/net");
    let (v, code) = invoke(&env_ref(&env), &conf(&socket));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ips"][0]["address"], "198.18.1.2/24");
    match agent.join().expect("agent") {
        CniRequest::Add {
            pod,
            netns,
            timeout_ms,
        } => {
            assert_eq!(
                (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
                ("demo", "web", "u1")
            );
            assert_eq!(pod.container_id, "c1");
            assert_eq!(netns, "/proc/self/ns/net");
            assert_eq!(timeout_ms, 10_000);
        }
        other => panic!("expected an add, got {other:?}"),
    }
}

#[test]
fn add_refused_by_the_agent_is_an_error_with_its_reason() {
    let (_d, socket, _agent) = agent(CniResponse::Error {
        message: "no node proxy connected".into(),
    });
    let env = add_env("/proc/self/ns/net");
    let (v, code) = invoke(&env_ref(&env), &conf(&socket));
    assert_eq!(code, 1);
    assert_eq!(v["code"], 100);
    let msg = v["msg"].as_str().expect("msg");
    assert!(
        msg.contains("demo/web") && msg.contains("no node proxy connected"),
        "{msg}"
    );
}
