//! `zmesh-cni`'s logic: a CNI (spec 1.0.0) chained plugin. The runtime passes the command and
//! the pod in environment variables and the network configuration (with the previous
//! plugin's result) on stdin; the plugin asks the node agent and prints the result or a CNI
//! error. ADD returns only once the pod is captured (or known not to be enrolled), so a pod
//! never starts with its traffic bypassing the mesh.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cni::{CniRequest, CniResponse, DEL_WAIT, PodRef};

/// The CNI spec versions whose ADD/DEL/CHECK/VERSION this plugin implements.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// How long ADD waits for the node proxy by default.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// How long the agent may take beyond the wait it was given before we give up on it.
const AGENT_MARGIN: Duration = Duration::from_secs(5);

// CNI error codes (spec section "Error"); 100+ are the plugin's own.
const ERR_INCOMPATIBLE_VERSION: u32 = 1;
const ERR_INVALID_ENV: u32 = 4;
const ERR_DECODING: u32 = 6;
const ERR_INVALID_CONFIG: u32 = 7;
const ERR_TRY_AGAIN: u32 = 11;
/// The pod must be captured but cannot be.
const ERR_NOT_CAPTURED: u32 = 100;

/// The part of the network configuration we read.
#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    agent_socket: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    timeout_seconds: Option<u64>,
}

/// What the plugin prints and how it exits.
#[derive(Debug, PartialEq)]
pub struct Output {
    pub stdout: String,
    pub exit_code: i32,
}

struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

/// Runs one invocation: `env` looks up an environment variable, `stdin` is the netconf.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &str) -> Output {
    let command = env("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        let v = json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS});
        return Output {
            stdout: v.to_string(),
            exit_code: 0,
        };
    }
    let version = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".to_owned());
    match invoke(&command, env, stdin) {
        Ok(stdout) => Output {
            stdout,
            exit_code: 0,
        },
        Err(e) => Output {
            stdout:
                json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
                    .to_string(),
            exit_code: 1,
        },
    }
}

fn invoke(
    command: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &str,
) -> Result<String, CniError> {
    if !matches!(command, "ADD" | "DEL" | "CHECK") {
        return Err(err(
            ERR_INVALID_ENV,
            format!("CNI_COMMAND {command:?} is not one of ADD, DEL, CHECK, VERSION"),
        ));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| CniError {
        code: ERR_DECODING,
        msg: "the network configuration on stdin is not valid JSON for zmesh-cni".to_owned(),
        details: e.to_string(),
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError {
            code: ERR_INCOMPATIBLE_VERSION,
            msg: format!("cniVersion {} is not supported", conf.cni_version),
            details: format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        });
    }
    let socket = conf
        .agent_socket
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            err(
                ERR_INVALID_CONFIG,
                "the network configuration must set agent_socket (the node agent's CNI socket)",
            )
        })?;
    let container_id = required(env, "CNI_CONTAINERID")?;
    let pod = pod_ref(env, container_id, command != "DEL")?;
    match command {
        "ADD" => add(&conf, &socket, pod, env),
        "DEL" => del(&socket, pod),
        _ => check(&conf, &socket, pod),
    }
}

fn add(
    conf: &NetConf,
    socket: &str,
    pod: PodRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, CniError> {
    let netns = required(env, "CNI_NETNS")?;
    if !Path::new(&netns).exists() {
        return Err(err(
            ERR_INVALID_ENV,
            format!("CNI_NETNS {netns} does not exist"),
        ));
    }
    let wait = Duration::from_secs(conf.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS));
    let what = format!("{}/{}", pod.namespace, pod.name);
    let req = CniRequest::Add {
        pod,
        netns,
        timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    match ask(socket, &req, wait + AGENT_MARGIN)? {
        CniResponse::Captured | CniResponse::NotEnrolled => Ok(result(conf)),
        CniResponse::Error { message } => Err(err(
            ERR_NOT_CAPTURED,
            format!("pod {what} is enrolled in the mesh but cannot be captured: {message}"),
        )),
        other => Err(unexpected(&other)),
    }
}

fn del(socket: &str, pod: PodRef) -> Result<String, CniError> {
    match ask(socket, &CniRequest::Del { pod }, DEL_WAIT + AGENT_MARGIN) {
        Ok(CniResponse::Deleted) => Ok(String::new()),
        Ok(CniResponse::Error { message }) => Err(err(ERR_TRY_AGAIN, message)),
        Ok(other) => Err(unexpected(&other)),
        // No agent, no state: the next node proxy snapshot drops the pod anyway.
        Err(e) if e.code == ERR_TRY_AGAIN => {
            eprintln!("zmesh-cni: DEL: {} (nothing to release)", e.msg);
            Ok(String::new())
        }
        Err(e) => Err(e),
    }
}

fn check(conf: &NetConf, socket: &str, pod: PodRef) -> Result<String, CniError> {
    match ask(socket, &CniRequest::Check { pod }, AGENT_MARGIN)? {
        CniResponse::Captured | CniResponse::NotEnrolled => Ok(result(conf)),
        CniResponse::Error { message } => Err(err(ERR_NOT_CAPTURED, message)),
        other => Err(unexpected(&other)),
    }
}

/// A chained plugin passes the previous result on, in the configured version.
fn result(conf: &NetConf) -> String {
    let mut r = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    if let Some(o) = r.as_object_mut() {
        o.insert(
            "cniVersion".to_owned(),
            Value::String(conf.cni_version.clone()),
        );
    }
    r.to_string()
}

fn unexpected(r: &CniResponse) -> CniError {
    err(
        ERR_TRY_AGAIN,
        format!("unexpected answer from the node agent: {r:?}"),
    )
}

fn required(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<String, CniError> {
    env(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| err(ERR_INVALID_ENV, format!("{name} is not set")))
}

/// The pod from `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`).
fn pod_ref(
    env: &dyn Fn(&str) -> Option<String>,
    container_id: String,
    need_name: bool,
) -> Result<PodRef, CniError> {
    let args = env("CNI_ARGS").unwrap_or_default();
    let mut pod = PodRef {
        container_id,
        ..PodRef::default()
    };
    for kv in args.split(';') {
        match kv.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) => pod.namespace = v.to_owned(),
            Some(("K8S_POD_NAME", v)) => pod.name = v.to_owned(),
            Some(("K8S_POD_UID", v)) => pod.uid = v.to_owned(),
            _ => {}
        }
    }
    if need_name && (pod.namespace.is_empty() || pod.name.is_empty()) {
        return Err(err(
            ERR_INVALID_ENV,
            "CNI_ARGS must name the pod: K8S_POD_NAMESPACE=<ns>;K8S_POD_NAME=<name>",
        ));
    }
    Ok(pod)
}

/// One request to the agent, one answer, bounded by `wait`.
fn ask(socket: &str, req: &CniRequest, wait: Duration) -> Result<CniResponse, CniError> {
    let unreachable = |e: std::io::Error| {
        err(
            ERR_TRY_AGAIN,
            format!(
                "the zmesh node agent is not reachable at {socket}: {e} (is zmesh-agent running?)"
            ),
        )
    };
    let stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(wait)).map_err(unreachable)?;
    let mut line = serde_json::to_string(req).map_err(|e| err(ERR_TRY_AGAIN, e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| {
            err(
                ERR_TRY_AGAIN,
                format!("no answer from the zmesh node agent within {wait:?}: {e}"),
            )
        })?;
    serde_json::from_str(&answer).map_err(|e| {
        err(
            ERR_TRY_AGAIN,
            format!("bad answer from the zmesh node agent ({e}): {answer:?}"),
        )
    })
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
