//! The gRPC transport shared by the xDS and CA clients: TLS 1.3 (server authentication only,
//! trust anchor from a file, server name = the URL's host), HTTP/2 keepalive, and the
//! `authorization: Bearer <token>` and `clusterid` headers. The token file is read again for
//! every new connection or call, so a rotated projected token is picked up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Why a gRPC target cannot be set up or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
}

/// A control-plane server: where it is, how to trust it, how to authenticate to it.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token_file: Option<PathBuf>,
    cluster_id: String,
}

impl Target {
    /// `url` is `https://HOST:PORT`; `root` a PEM file with the server's trust anchor(s).
    pub fn new(
        url: &str,
        root: &Path,
        token_file: Option<PathBuf>,
        cluster_id: &str,
    ) -> Result<Target, GrpcError> {
        let bad = |reason: &str| GrpcError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(
                "only https:// is supported (the control plane is always TLS)",
            ));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tls = client_tls(root)?;
        Ok(Target {
            url: url.to_owned(),
            host,
            port,
            tls,
            token_file,
            cluster_id: cluster_id.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects now (TCP, TLS, HTTP/2).
    pub async fn connect(&self) -> Result<Channel, GrpcError> {
        // The endpoint URI only names the origin for requests; TLS is done by our connector,
        // which tonic would refuse to combine with an https:// endpoint.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.authority()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let connector = TlsConnector {
            tls: tokio_rustls::TlsConnector::from(self.tls.clone()),
            host: self.host.clone(),
            port: self.port,
        };
        Ok(endpoint.connect_with_connector(connector).await?)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The request headers, with the token read now.
    pub fn headers(&self) -> Result<Headers, GrpcError> {
        let token = match &self.token_file {
            None => None,
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| GrpcError::File {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                let v = format!("Bearer {}", t.trim());
                Some(v.parse().map_err(|_| GrpcError::File {
                    path: p.display().to_string(),
                    reason: "token is not a valid header value".to_owned(),
                })?)
            }
        };
        let cluster = self.cluster_id.parse().map_err(|_| GrpcError::Url {
            url: self.url.clone(),
            reason: format!(
                "cluster id {:?} is not a valid header value",
                self.cluster_id
            ),
        })?;
        Ok(Headers { token, cluster })
    }
}

/// Adds the authentication headers to every request.
#[derive(Clone, Debug)]
pub struct Headers {
    token: Option<AsciiMetadataValue>,
    cluster: AsciiMetadataValue,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        if let Some(t) = &self.token {
            md.insert("authorization", t.clone());
        }
        md.insert("clusterid", self.cluster.clone());
        Ok(req)
    }
}

fn client_tls(root: &Path) -> Result<Arc<rustls::ClientConfig>, GrpcError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let file = |reason: String| GrpcError::File {
        path: root.display().to_string(),
        reason,
    };
    let pem = std::fs::read(root).map_err(|e| file(e.to_string()))?;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        store.add(cert.map_err(|e| file(e.to_string()))?)?;
    }
    if store.is_empty() {
        return Err(file("no certificate".to_owned()));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(zmesh_hbone::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// TCP + TLS to the target, checking the server certificate for the URL's host.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    host: String,
    port: u16,
}

type Io = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let name = ServerName::try_from(this.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = tokio::net::TcpStream::connect((this.host.as_str(), this.port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this.tls.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_file(dir: &Path) -> PathBuf {
        let ca = zmesh_hbone::ca::DevCa::generate("t").unwrap();
        let p = dir.join("root.pem");
        std::fs::write(&p, ca.root_pem()).unwrap();
        p
    }

    #[test]
    fn targets_are_https_with_a_trust_anchor() {
        let dir = std::env::temp_dir().join(format!("zmesh-grpc-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = root_file(&dir);
        let t = Target::new("https://[::1]:15012", &root, None, "c1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority()),
            ("::1", 15012, "[::1]:15012".into())
        );
        let t = Target::new("https://istiod.istio-system.svc", &root, None, "c1").unwrap();
        assert_eq!(t.port, 443);
        let err = Target::new("http://istiod:15010", &root, None, "c1").unwrap_err();
        assert!(err.to_string().contains("only https://"), "{err}");
        let missing = dir.join("nope.pem");
        assert!(Target::new("https://a:1", &missing, None, "c1").is_err());
        // The token is read when headers are made, so a rotated token is used next time.
        let token = dir.join("token");
        std::fs::write(&token, "one\n").unwrap();
        let t = Target::new("https://a:1", &root, Some(token.clone()), "c1").unwrap();
        let mut h = t.headers().unwrap();
        let req = tonic::service::Interceptor::call(&mut h, tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer one");
        assert_eq!(req.metadata().get("clusterid").unwrap(), "c1");
        std::fs::write(&token, "two").unwrap();
        let mut h = t.headers().unwrap();
        let req = tonic::service::Interceptor::call(&mut h, tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer two");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
