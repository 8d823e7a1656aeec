//! A test double of the controller: delta ADS and Istio's CA on one gRPC server over loopback
//! TLS. It keeps resources by type and name, pushes changes to every open stream, answers a
//! stream's first request per type with what differs from the versions the client holds, and
//! records what clients sent (requests, headers, CSRs).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use zmesh_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use zmesh_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use zmesh_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use zmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use zmesh_proto::prost_types::Any;

type Reply = Result<DeltaDiscoveryResponse, Status>;

/// What the double holds and saw.
#[derive(Default)]
pub struct State {
    /// (type url, name) → (version, resource).
    resources: BTreeMap<(String, String), (u64, Any)>,
    version: u64,
    nonce: u64,
    streams: Vec<mpsc::UnboundedSender<Reply>>,
    pub requests: Vec<DeltaDiscoveryRequest>,
    /// `authorization` and `clusterid` of every call.
    pub headers: Vec<(String, String)>,
    /// Identity → certificates issued.
    pub issued: HashMap<String, u32>,
    /// CSR SAN and `ImpersonatedIdentity` of every CA call.
    pub csrs: Vec<(String, String)>,
}

/// The CA's signing material and the server's TLS identity, both from one root.
pub struct Pki {
    pub root_pem: String,
    root_key_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    pub fn new(server_ip: std::net::IpAddr) -> Pki {
        let root_key = KeyPair::generate().expect("root key");
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = p.self_signed(&root_key).expect("root");
        let issuer = Issuer::new(p, root_key);
        let key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::default();
        sp.subject_alt_names = vec![SanType::IpAddress(server_ip)];
        let server = sp.signed_by(&key, &issuer).expect("server cert");
        Pki {
            root_pem: root.pem(),
            root_key_pem: issuer.key().serialize_pem(),
            server_cert_pem: server.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }
}

#[derive(Clone)]
pub struct Controller {
    pub state: Arc<Mutex<State>>,
    pki: Arc<Pki>,
    /// When set, the CA refuses every request.
    pub ca_down: Arc<AtomicBool>,
    /// Identities (URI suffix) that get 4-second certificates whatever was asked.
    pub short_lived: Arc<Vec<String>>,
}

/// A running server; `stop` ends its streams and closes its port.
pub struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    pub fn new(pki: Pki, short_lived: Vec<String>) -> Controller {
        Controller {
            state: Default::default(),
            pki: Arc::new(pki),
            ca_down: Default::default(),
            short_lived: Arc::new(short_lived),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    pub async fn start(&self, addr: SocketAddr) -> Running {
        let tls = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.pki.server_cert_pem,
            &self.pki.server_key_pem,
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .expect("server tls")
            .add_service(AggregatedDiscoveryServiceServer::new(self.clone()))
            .add_service(IstioCertificateServiceServer::new(self.clone()));
        let task = tokio::spawn(async move {
            router
                .serve_with_shutdown(addr, async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        });
        // Wait until the port accepts.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Running {
            shutdown: Some(tx),
            task,
        }
    }

    /// Ends every open stream and stops the server.
    pub async fn stop(&self, mut running: Running) {
        for s in self.lock().streams.drain(..) {
            let _ = s.send(Err(Status::unavailable("controller going away")));
        }
        if let Some(tx) = running.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut running.task).await;
        running.task.abort();
    }

    /// Adds or replaces a resource (pushed to open streams).
    pub fn put<M: Message>(&self, type_url: &str, name: &str, m: &M) {
        let any = Any {
            type_url: type_url.to_owned(),
            value: m.encode_to_vec(),
        };
        let mut s = self.lock();
        s.version += 1;
        let v = s.version;
        s.resources
            .insert((type_url.to_owned(), name.to_owned()), (v, any.clone()));
        let resp = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            resources: vec![resource(name, v, any)],
            ..Default::default()
        };
        s.push(resp);
    }

    /// Removes a resource (pushed to open streams).
    pub fn remove(&self, type_url: &str, name: &str) {
        let mut s = self.lock();
        s.resources.remove(&(type_url.to_owned(), name.to_owned()));
        let resp = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            removed_resources: vec![name.to_owned()],
            ..Default::default()
        };
        s.push(resp);
    }

    fn record_headers<T>(&self, req: &Request<T>) {
        let get = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        self.lock()
            .headers
            .push((get("authorization"), get("clusterid")));
    }

    fn on_request(&self, req: DeltaDiscoveryRequest, tx: &mpsc::UnboundedSender<Reply>) {
        let mut s = self.lock();
        s.requests.push(req.clone());
        if !req.response_nonce.is_empty() {
            return;
        }
        // A first request: send what the client lacks or holds at another version.
        let have = &req.initial_resource_versions;
        let mut resp = DeltaDiscoveryResponse {
            type_url: req.type_url.clone(),
            ..Default::default()
        };
        for ((t, name), (v, any)) in &s.resources {
            if *t == req.type_url && have.get(name) != Some(&v.to_string()) {
                resp.resources.push(resource(name, *v, any.clone()));
            }
        }
        for name in have.keys() {
            if !s
                .resources
                .contains_key(&(req.type_url.clone(), name.clone()))
            {
                resp.removed_resources.push(name.clone());
            }
        }
        s.nonce += 1;
        resp.nonce = format!("n{}", s.nonce);
        let _ = tx.send(Ok(resp));
    }

    fn sign(&self, req: &IstioCertificateRequest) -> Result<Vec<String>, Status> {
        let bad = |e: rcgen::Error| Status::invalid_argument(e.to_string());
        let mut csr = CertificateSigningRequestParams::from_pem(&req.csr).map_err(bad)?;
        let san = match csr.params.subject_alt_names.first() {
            Some(SanType::URI(u)) => u.as_str().to_owned(),
            _ => return Err(Status::invalid_argument("no URI SAN")),
        };
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(zmesh_proto::prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let secs = if self.short_lived.iter().any(|s| san.ends_with(s.as_str())) {
            4
        } else {
            req.validity_duration.max(1) as u64
        };
        let now = SystemTime::now();
        csr.params.not_before = now.into();
        csr.params.not_after = (now + Duration::from_secs(secs)).into();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand_serial(
            &self.lock().issued,
            &san,
        )));
        let key = KeyPair::from_pem(&self.pki.root_key_pem).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_pem(&self.pki.root_pem, key).map_err(bad)?;
        let leaf = csr.signed_by(&issuer).map_err(bad)?;
        let mut s = self.lock();
        s.csrs.push((san.clone(), impersonated));
        *s.issued.entry(san).or_default() += 1;
        Ok(vec![leaf.pem(), self.pki.root_pem.clone()])
    }
}

/// A serial that differs per issue: identity hash and count.
fn rand_serial(issued: &HashMap<String, u32>, san: &str) -> [u8; 8] {
    let n = issued.get(san).copied().unwrap_or(0) as u64;
    let h = san
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    ((h & 0x7fff_ffff_0000_0000) | (n + 1)).to_be_bytes()
}

fn resource(name: &str, version: u64, any: Any) -> Resource {
    Resource {
        name: name.to_owned(),
        version: version.to_string(),
        resource: Some(any),
        aliases: vec![],
    }
}

impl State {
    fn push(&mut self, mut resp: DeltaDiscoveryResponse) {
        self.nonce += 1;
        resp.nonce = format!("n{}", self.nonce);
        self.streams.retain(|s| s.send(Ok(resp.clone())).is_ok());
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Controller {
    type DeltaAggregatedResourcesStream =
        Pin<Box<dyn futures_util::Stream<Item = Reply> + Send + 'static>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.record_headers(&request);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().streams.push(tx.clone());
        let mut incoming = request.into_inner();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                this.on_request(req, &tx);
            }
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Controller {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.record_headers(&request);
        if self.ca_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("CA is down for the test"));
        }
        let chain = self.sign(request.get_ref())?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
