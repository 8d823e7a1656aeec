//! An independent HBONE peer: rustls + tokio-rustls for mTLS and plain `h2` for CONNECT,
//! written from ISTIO-INTEROP.md §2 and not from zmesh-hbone, so the proxy is checked against
//! the reference and not against its own code. `DevCa` is used only to mint certificates.
//!
//! TLS rules followed here: TLS 1.3 only, the two AES-GCM suites, ALPN `h2` on both ends, no
//! SNI and no resumption on the client, a mandatory client certificate on the server, and
//! SPIFFE URI SANs instead of host names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zmesh_hbone::ca::{DevCa, LeafSpec};
use zmesh_tests::{Mesh, Pattern};

/// Istio's HTTP/2 windows and frame size (§2 "HTTP/2 settings").
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// Anything that goes wrong in the peer; tests only print it.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `spiffe://cluster.local/ns/demo/sa/<sa>`.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

/// A certificate chain (leaf first) and its key.
pub struct Creds {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The CA the mesh's nodes share.
pub fn mesh_ca(mesh: &Mesh) -> DevCa {
    DevCa::load_or_create(&mesh.ca_dir(), "zmesh").expect("load the mesh's dev CA")
}

/// A leaf with URI SAN `uri`, valid from a minute ago for an hour.
pub fn leaf(ca: &DevCa, uri: &str) -> Creds {
    let now = SystemTime::now();
    leaf_valid(
        ca,
        uri,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// A leaf with URI SAN `uri` and the given validity.
pub fn leaf_valid(ca: &DevCa, uri: &str, not_before: SystemTime, not_after: SystemTime) -> Creds {
    let spec = LeafSpec {
        uris: vec![uri.to_string()],
        not_before,
        not_after,
    };
    let (chain, key) = ca.issue_raw(&spec).expect("issue leaf");
    Creds { chain, key }
}

/// A store holding `ca`'s root.
pub fn roots(ca: &DevCa) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    store.add(ca.root().clone()).expect("add root");
    Arc::new(store)
}

/// aws-lc-rs limited to TLS13_AES_256_GCM_SHA384 and TLS13_AES_128_GCM_SHA256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Checks a server the way ztunnel's `IdentityVerifier` does: chain to our roots with the
/// serverAuth EKU, then a URI SAN equal to the expected identity (no DNS name check). Records
/// the SANs it saw, so a test can tell what the server presented.
#[derive(Debug)]
pub struct SpiffeServerCheck {
    roots: Arc<RootCertStore>,
    expected: Option<String>,
    pub seen: Mutex<Vec<String>>,
}

impl ServerCertVerifier for SpiffeServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let sans = uri_sans(end_entity);
        *self.seen.lock().expect("lock") = sans.clone();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            algs.all,
        )?;
        match &self.expected {
            Some(want) if !sans.contains(want) => Err(rustls::Error::General(format!(
                "server is {sans:?}, not {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HBONE client's TLS config: `creds` as the client certificate, servers checked against
/// `roots` and, when given, the `expected` identity.
pub fn client_config(
    creds: &Creds,
    roots: Arc<RootCertStore>,
    expected: Option<&str>,
) -> (Arc<ClientConfig>, Arc<SpiffeServerCheck>) {
    let check = Arc::new(SpiffeServerCheck {
        roots,
        expected: expected.map(str::to_string),
        seen: Mutex::new(Vec::new()),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(check.clone())
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .expect("client cert");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    (Arc::new(cfg), check)
}

/// An HBONE server's TLS config: `creds` as the server certificate, a client certificate
/// chaining to `roots` required.
pub fn server_config(creds: &Creds, roots: Arc<RootCertStore>) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .expect("client verifier");
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.send_tls13_tickets = 0;
    Arc::new(cfg)
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP + TLS to `addr`. The server name is a dummy, as in ztunnel: SNI is off and identity
/// comes from the URI SAN.
pub async fn tls_dial(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<ClientTls, Error> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(cfg).connect(name, tcp),
    )
    .await??;
    Ok(tls)
}

/// What the TLS handshake settled on.
#[derive(Debug)]
pub struct TlsFacts {
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    pub suite: Option<rustls::CipherSuite>,
}

pub fn facts(conn: &rustls::CommonState) -> TlsFacts {
    TlsFacts {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
    }
}

/// An HBONE client connection: TLS facts and a handle to open CONNECT streams on it.
pub struct Hbone {
    pub send: SendRequest<Bytes>,
    pub tls: TlsFacts,
    pub driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

/// TLS + HTTP/2 with Istio's client settings.
pub async fn hbone_dial(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Hbone, Error> {
    let tls = tls_dial(addr, cfg).await?;
    let facts = facts(tls.get_ref().1);
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(16 << 10)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await?;
    let driver = tokio::spawn(conn);
    Ok(Hbone {
        send,
        tls: facts,
        driver,
    })
}

/// A CONNECT to `authority` with the headers every HBONE client sends.
pub fn connect_request(authority: &str, client: SocketAddr) -> Request<()> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header("baggage", "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=client,service.name=client,service.version=v1")
        .header("forwarded", format!("for=\"{client}\""))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        .body(())
        .expect("request");
    *req.version_mut() = http::Version::HTTP_2;
    req
}

/// Sends `req` on a new stream and waits for the response head.
pub async fn request(
    h: &mut Hbone,
    req: Request<()>,
) -> Result<(Response<RecvStream>, SendStream<Bytes>), Error> {
    let mut send = h.send.clone().ready().await?;
    let (resp, stream) = send.send_request(req, false)?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await??;
    Ok((resp, stream))
}

/// Opens a CONNECT stream and returns its status.
pub async fn connect_status(h: &mut Hbone, authority: &str) -> Result<StatusCode, Error> {
    let (resp, mut stream) = request(h, connect_request(authority, "127.0.0.1:1".parse()?)).await?;
    let _ = stream.send_data(Bytes::new(), true);
    Ok(resp.status())
}

/// Sends `total` pattern bytes on an open tunnel, half-closes, and reads everything back
/// until the far side's END_STREAM, checking each byte. Returns the bytes read.
pub async fn echo_over(
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    total: usize,
    seed: u64,
) -> Result<usize, Error> {
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(seed);
        let mut left = total;
        while left > 0 {
            let n = left.min(64 << 10);
            let mut buf = vec![0u8; n];
            p.fill(&mut buf);
            send.reserve_capacity(n);
            while send.capacity() < n {
                match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(send),
                }
            }
            send.send_data(Bytes::from(buf), false)?;
            left -= n;
        }
        // The write half-close: an empty DATA frame with END_STREAM.
        send.send_data(Bytes::new(), true)?;
        Ok(send)
    });
    // The reader regenerates the pattern in the writer's 64 KiB steps, so both agree.
    let mut want = Pattern::new(seed);
    let (mut carry, mut generated, mut got) = (Vec::new(), 0usize, 0usize);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), recv.data()).await? {
        let chunk = chunk?;
        recv.flow_control().release_capacity(chunk.len())?;
        while carry.len() < chunk.len() {
            if generated >= total {
                return Err(format!("received more than the {total} bytes sent").into());
            }
            let mut buf = vec![0u8; (total - generated).min(64 << 10)];
            want.fill(&mut buf);
            generated += buf.len();
            carry.extend_from_slice(&buf);
        }
        if chunk[..] != carry[..chunk.len()] {
            return Err(format!("byte mismatch after {got} bytes").into());
        }
        carry.drain(..chunk.len());
        got += chunk.len();
    }
    writer.await??;
    Ok(got)
}

/// One CONNECT the test server saw.
#[derive(Debug, Clone)]
pub struct SeenConnect {
    pub method: Method,
    pub authority: String,
    pub headers: HeaderMap,
    pub client_sans: Vec<String>,
    pub alpn: Option<Vec<u8>>,
    pub sni: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The first bytes the client sent after TLS: its preface and SETTINGS.
    pub h2_start: Vec<u8>,
}

/// Passes a stream through while keeping a copy of the first `TAP_BYTES` bytes read, so the
/// test can look at the client's raw SETTINGS while `h2` serves the connection.
pub struct Tap<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

const TAP_BYTES: usize = 512;

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut seen = self.seen.lock().expect("lock");
        let room = TAP_BYTES.saturating_sub(seen.len());
        let new = &buf.filled()[before..];
        seen.extend_from_slice(&new[..new.len().min(room)]);
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HBONE server at `addr` (a workload's ip:15008) presenting `creds`: it requires a client
/// certificate, answers CONNECT with 200 plus a `baggage` header and echoes the stream, and
/// anything else with 400. Every request is reported on the returned channel.
pub async fn hbone_server(
    addr: SocketAddr,
    creds: &Creds,
    roots: Arc<RootCertStore>,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<SeenConnect>,
) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let acceptor = TlsAcceptor::from(server_config(creds, roots));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = serve_one(acceptor, tcp, tx).await;
            });
        }
    });
    (task, rx)
}

async fn serve_one(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    tx: mpsc::UnboundedSender<SeenConnect>,
) -> Result<(), Error> {
    let tls = acceptor.accept(tcp).await?;
    let (_, conn) = tls.get_ref();
    let client_sans = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| uri_sans(c))
        .unwrap_or_default();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let sni = conn.server_name().map(str::to_string);
    let version = conn.protocol_version();
    let tapped = Arc::new(Mutex::new(Vec::new()));
    let mut h2c = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(200)
        .handshake::<_, Bytes>(Tap {
            inner: tls,
            seen: tapped.clone(),
        })
        .await?;
    while let Some(next) = h2c.accept().await {
        let (req, mut respond) = next?;
        let seen = SeenConnect {
            method: req.method().clone(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            headers: req.headers().clone(),
            client_sans: client_sans.clone(),
            alpn: alpn.clone(),
            sni: sni.clone(),
            version,
            h2_start: tapped.lock().expect("lock").clone(),
        };
        let _ = tx.send(seen);
        if req.method() != Method::CONNECT {
            let resp = Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(())?;
            let _ = respond.send_response(resp, true);
            continue;
        }
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("baggage", "k8s.namespace.name=demo,k8s.deployment.name=ext")
            .body(())?;
        let send = respond.send_response(resp, false)?;
        tokio::spawn(echo_stream(req.into_body(), send));
    }
    Ok(())
}

/// Echoes a server stream back, then ends it when the client ends its side.
async fn echo_stream(mut recv: RecvStream, mut send: SendStream<Bytes>) -> Result<(), Error> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let n = chunk.len();
        send.reserve_capacity(n);
        while send.capacity() < n {
            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(c) => {
                    c?;
                }
                None => return Ok(()),
            }
        }
        send.send_data(chunk, false)?;
        recv.flow_control().release_capacity(n)?;
    }
    send.send_data(Bytes::new(), true)?;
    Ok(())
}
