//! HTTPS in front of the test servers: a private CA made at test time
//! (`rcgen`), the server and client certificates it issues, and a TLS
//! terminator (`tokio-rustls`) that relays every connection it accepts to a
//! plain-HTTP server on loopback, counting the connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blockferry::plugin::tls::{BucketTls, LoadedTls, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

/// A certificate authority of the test's own.
pub struct TestCa {
    /// Its subject's common name.
    pub name: String,
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { name: name.to_string(), pem, issuer: Issuer::new(params, key) }
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Identity {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Identity {
        self.issue(names.first().copied().unwrap_or("server"), names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A server certificate for `names` that expired on 2021-01-01.
    pub fn expired_server(&self, names: &[&str]) -> Identity {
        self.issue(names.first().copied().unwrap_or("server"), names, ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    /// A client certificate for `common_name`.
    pub fn client(&self, common_name: &str) -> Identity {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    /// Writes the CA certificate to `dir/NAME.pem`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap()
    }
}

impl Identity {
    /// Writes the certificate and key to `dir/NAME.crt` and `dir/NAME.key`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A bucket's TLS client as `blockferry` builds it from `tls_*` settings,
/// the files written to `dir`: trusting `ca`, presenting `client` if given.
pub fn bucket_tls(dir: &Path, ca: Option<&TestCa>, client: Option<&Identity>) -> BucketTls {
    let mut settings = TlsSettings { tls_ca_file: ca.map(|ca| ca.write(dir, "bucket-ca")), ..Default::default() };
    if let Some(client) = client {
        let (cert, key) = client.write(dir, "bucket-client");
        settings.tls_client_cert_file = Some(cert);
        settings.tls_client_key_file = Some(key);
    }
    let loaded = settings.load().unwrap_or_else(|e| panic!("loading the bucket's TLS files: {e}"));
    LoadedTls::client_of(loaded.as_ref())
}

/// What the terminator asks of clients.
#[derive(Default)]
pub struct FrontOptions<'a> {
    /// Require a client certificate issued by this CA (mutual TLS).
    pub client_ca: Option<&'a TestCa>,
    /// Speak TLS 1.2 only (a client certificate is then refused within the handshake).
    pub tls12_only: bool,
}

/// A TLS terminator on a free loopback port relaying to a plain-HTTP server.
pub struct TlsFront {
    /// Its port.
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsFront {
    /// Terminates TLS with `server`'s certificate and relays to `upstream`.
    pub fn start(upstream: SocketAddr, server: &Identity, options: FrontOptions<'_>) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] =
            if options.tls12_only { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions).unwrap();
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(chain, key).unwrap()));
        let (accepted, handshakes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, h) = (accepted.clone(), handshakes.clone());
        let (port, runtime) = super::servers::serve_on_loopback(move |client| {
            let (acceptor, accepted, handshakes) = (acceptor.clone(), a.clone(), h.clone());
            async move {
                accepted.fetch_add(1, Ordering::SeqCst);
                match acceptor.accept(client).into_fallible().await {
                    Ok(mut tls) => {
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                    // The alert went out; read what the client still sends for a
                    // moment before closing, as servers do (a close with unread
                    // data would reset the connection before the client reads it).
                    Err((_, mut tcp)) => {
                        let mut sink = vec![0u8; 16 * 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                        })
                        .await;
                    }
                }
            }
        });
        TlsFront { port, accepted, handshakes, runtime: Some(runtime) }
    }

    /// `https://localhost:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
