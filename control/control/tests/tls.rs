//! The endpoint speaks TLS 1.3 with ALPN h2 only, with a certificate from its own root that
//! carries the names node proxies dial.

mod common;

use std::sync::Arc;

use common::{Control, world};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;

fn client(
    root_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let root = ::pem::parse(root_pem).expect("pem").into_contents();
    roots.add(root.into()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

async fn handshake(
    control: &Control,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(control.addr).await?;
    let name = ServerName::try_from(name.to_string()).expect("name");
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_h2_only_with_the_expected_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(dir.path(), world(1)).await;
    let tls13 = client(&control.root_pem, &[&rustls::version::TLS13]);
    for name in [
        "localhost",
        "zmesh-control",
        "istiod.istio-system.svc",
        "127.0.0.1",
    ] {
        let tls = handshake(&control, tls13.clone(), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
    assert!(
        handshake(&control, tls13, "other.example").await.is_err(),
        "a name not in the certificate is refused by the client"
    );
    let tls12 = client(&control.root_pem, &[&rustls::version::TLS12]);
    assert!(
        handshake(&control, tls12, "localhost").await.is_err(),
        "TLS 1.2 refused"
    );

    // Plaintext HTTP/2 gets no gRPC answer: the server closes the connection.
    let mut tcp = tokio::net::TcpStream::connect(control.addr)
        .await
        .expect("tcp");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(
        !buf[..n].starts_with(&[0, 0]),
        "no HTTP/2 frames over plaintext"
    );
    control.stop().await;
}
