//! The CNI socket: one thread per `zmesh-cni` request. The IO the core must not do (open the
//! pod's netns, find its cgroup) happens here, before the request reaches the core.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::{Event, NetnsFd, StartError};
use crate::cni::{CniRequest, CniResponse, DEL_WAIT, PodRef};
use crate::core::{AddError, NewPod};
use crate::podns;
use crate::state::PodRecord;
use crate::zds;

/// A CNI client gets this long to send its request line.
const CNI_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest ADD wait a client may ask for.
const MAX_ADD_WAIT: Duration = Duration::from_secs(120);

pub(super) fn bind_cni(path: &Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Cni {
        path: path.to_owned(),
        source,
    };
    zds::remove_stale_socket(path).map_err(err)?;
    UnixListener::bind(path).map_err(err)
}

pub(super) fn accept_cni(listener: &UnixListener, tx: &mpsc::Sender<Event>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "CNI connection refused");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("zmesh-agent-cni-conn".to_owned())
            .spawn(move || serve_cni(stream, &tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot serve a CNI request");
        }
    }
}

/// One CNI request: read it, do the IO the core must not (open the netns, find the cgroup),
/// hand it to the core, write the answer.
fn serve_cni(stream: UnixStream, tx: &mpsc::Sender<Event>) {
    let _ = stream.set_read_timeout(Some(CNI_READ_TIMEOUT));
    let mut line = String::new();
    let answer = match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<CniRequest>(&line) {
            Ok(req) => dispatch(req, tx),
            Err(e) => CniResponse::Error {
                message: format!("bad request from the CNI plugin: {e}"),
            },
        },
        Err(e) => CniResponse::Error {
            message: format!("reading the CNI request: {e}"),
        },
    };
    let mut out = match serde_json::to_string(&answer) {
        Ok(s) => s,
        Err(e) => format!(r#"{{"result":"error","message":"encoding the answer: {e}"}}"#),
    };
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

fn dispatch(req: CniRequest, tx: &mpsc::Sender<Event>) -> CniResponse {
    let (reply, answer) = mpsc::channel();
    let (event, wait) = match req {
        CniRequest::Add {
            pod,
            netns,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms).min(MAX_ADD_WAIT);
            match open_pod(&pod, Path::new(&netns)) {
                Ok(new) => (
                    Event::CniAdd {
                        record: PodRecord {
                            uid: new.uid.clone(),
                            namespace: new.namespace.clone(),
                            name: new.name.clone(),
                            container_id: new.container_id.clone(),
                            netns,
                            cgroup: new.cgroup.clone().ok(),
                        },
                        pod: new,
                        timeout,
                        reply,
                    },
                    timeout,
                ),
                Err(e) => {
                    tracing::warn!(namespace = %pod.namespace, name = %pod.name, error = %e, "CNI ADD failed");
                    return CniResponse::Error {
                        message: e.to_string(),
                    };
                }
            }
        }
        CniRequest::Del { pod } => (Event::CniDel { pod, reply }, DEL_WAIT),
        CniRequest::Check { pod } => (Event::CniCheck { pod, reply }, Duration::ZERO),
    };
    if tx.send(event).is_err() {
        return CniResponse::Error {
            message: "the node agent is shutting down".to_owned(),
        };
    }
    // The core answers every request by its bound; the margin only guards against a bug.
    answer
        .recv_timeout(wait + Duration::from_secs(5))
        .unwrap_or_else(|_| CniResponse::Error {
            message: AddError::NotConfirmed(wait).to_string(),
        })
}

fn open_pod(pod: &PodRef, netns_path: &Path) -> Result<NewPod<NetnsFd>, podns::PodNsError> {
    let netns = podns::open_netns(netns_path)?;
    let cgroup = podns::pod_cgroup(&netns, netns_path)
        .map(|c| c.display().to_string())
        .map_err(|e| e.to_string());
    Ok(NewPod {
        uid: pod.uid(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        container_id: pod.container_id.clone(),
        cgroup,
        netns: Arc::new(netns),
    })
}
