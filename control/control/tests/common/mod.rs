//! Test harness: a real `zmesh-control` endpoint on loopback (TLS, port 0) fed by a watch
//! channel, and tonic clients that trust its root and send a bearer token.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zmesh_control::Resources;
use zmesh_control::server::ServeOptions;
use zmesh_control::xds::Stats;
use zmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use zmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use zmesh_proto::security::Authorization;
use zmesh_proto::workload::{Address, Workload, address};

/// How long a test waits for a message that must come.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be confident a message does not come.
pub const QUIET: Duration = Duration::from_millis(300);

pub struct Control {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub root_pem: String,
    pub stats: Arc<Stats>,
    pub resources: watch::Sender<Arc<Resources>>,
    pub server: Arc<ServerInfo>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A bound server whose `run` consumed it; kept only for its accessors.
pub struct ServerInfo {
    pub tokens: Arc<zmesh_control::auth::NodeTokens>,
    pub root_cert_path: PathBuf,
}

impl Control {
    pub async fn start(data_dir: &Path, initial: Resources) -> Control {
        let opts = ServeOptions::new("127.0.0.1:0".parse().expect("addr"), data_dir);
        let server = zmesh_control::server::Server::bind(opts)
            .await
            .expect("bind");
        Control::from_server(server, data_dir, initial)
    }

    /// Runs an already bound server (e.g. with another CA or authenticator).
    pub fn from_server(
        server: zmesh_control::server::Server,
        data_dir: &Path,
        initial: Resources,
    ) -> Control {
        let addr = server.local_addr().expect("local addr");
        let root_pem = server.root_pem().to_string();
        let stats = server.stats();
        let info = Arc::new(ServerInfo {
            tokens: server.node_tokens(),
            root_cert_path: server.root_cert_path().to_path_buf(),
        });
        let (resources, rx) = watch::channel(Arc::new(initial));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(rx, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server ran");
        });
        Control {
            addr,
            data_dir: data_dir.to_path_buf(),
            root_pem,
            stats,
            resources,
            server: info,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn token(&self, node: &str) -> String {
        self.server.tokens.token_for(node).expect("token").0
    }

    pub fn set(&self, r: Resources) {
        self.resources.send_replace(Arc::new(r));
    }

    pub async fn channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name("localhost");
        Channel::from_shared(format!("https://localhost:{}", self.addr.port()))
            .expect("uri")
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("connect over TLS")
    }

    /// Stops the server and waits for it to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request, as Istio's node proxy does.
pub fn with_token<T>(mut req: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii");
        req.metadata_mut().insert("authorization", value);
    }
    req
}

/// One ADS stream, driven by hand.
pub struct Ads {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Ads {
    pub async fn open(control: &Control, token: Option<&str>) -> Result<Ads, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(control.channel().await)
            .max_decoding_message_size(200 << 20);
        let (tx, rx) = mpsc::channel(16);
        let req = with_token(tonic::Request::new(ReceiverStream::new(rx)), token);
        let resp = client.delta_aggregated_resources(req).await?;
        Ok(Ads {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }

    pub async fn subscribe(&self, type_url: &str) {
        self.send(DeltaDiscoveryRequest {
            node: Some(zmesh_proto::discovery::Node {
                id: "ztunnel~127.0.0.1~ztunnel-1.istio-system~istio-system.svc.cluster.local"
                    .into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream not closed")
    }

    /// Asserts nothing arrives for a while.
    pub async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no message, got {msg:?}");
        }
    }
}

pub fn pod(ns: &str, name: &str, sa: &str, node: &str, ip: [u8; 4]) -> (String, Address) {
    let uid = format!("Kubernetes//Pod/{ns}/{name}");
    let w = Workload {
        uid: uid.clone(),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        node: node.into(),
        addresses: vec![ip.to_vec().into()],
        tunnel_protocol: 1,
        ..Default::default()
    };
    (
        uid,
        Address {
            r#type: Some(address::Type::Workload(w)),
        },
    )
}

/// `n` pods spread over nodes `node-0` and `node-1`, and one policy.
pub fn world(n: usize) -> Resources {
    let mut r = Resources::default();
    for i in 0..n {
        let (k, v) = pod(
            "demo",
            &format!("web-{i}"),
            "web",
            &format!("node-{}", i % 2),
            [10, 0, (i / 250) as u8, (i % 250) as u8 + 1],
        );
        r.addresses.insert(k, v);
    }
    r.authorizations.insert(
        "demo/allow-web".into(),
        Authorization {
            name: "allow-web".into(),
            namespace: "demo".into(),
            scope: 1,
            ..Default::default()
        },
    );
    r
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}
