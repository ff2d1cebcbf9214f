//! HTTPS trust and identity of one bucket's connections: the CA certificates
//! it trusts beside the bundled web roots (`tls_ca_file`, optionally the
//! system trust store), the client certificate it presents to servers that
//! require one (`tls_client_cert_file` + `tls_client_key_file`), and what a
//! refused certificate comes to: a permanent failure naming the bucket, the
//! server, the certificate and the setting that fixes it.
//!
//! Server certificates are always verified (webpki, for the host name of the
//! URL the plugin asked for); no setting turns that off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmtime_wasi_http::Error as HttpError;

/// The `tls_*` keys of a `[[buckets]]` table: which certificates the
/// bucket's HTTPS connections trust and present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TlsSettings {
    /// PEM file of CA certificates trusted beside the bundled web roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) for mutual TLS.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// Trust the operating system's CA store too.
    #[serde(default)]
    pub tls_system_roots: bool,
}

/// The TLS client built from a bucket's settings and the files they name.
/// Two compare equal when the files held the same certificates and keys, so
/// a reload that finds a changed file reopens the bucket.
#[derive(Clone)]
pub struct LoadedTls {
    /// SHA-256 over the settings and every certificate and key read.
    digest: [u8; 32],
    /// The client the bucket's connections use.
    pub client: BucketTls,
}

impl LoadedTls {
    /// The client of `loaded`, or the bundled web roots without a client
    /// certificate when no `tls_*` key is set.
    pub fn client_of(loaded: Option<&LoadedTls>) -> BucketTls {
        loaded.map_or_else(BucketTls::default, |l| l.client.clone())
    }
}

impl PartialEq for LoadedTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for LoadedTls {}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls").field("digest", &hex::encode(&self.digest[..8])).finish_non_exhaustive()
    }
}

/// Why a `tls_*` setting cannot be used: the key, the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` = {}: {problem}", path.display())]
pub struct TlsFileError {
    /// The setting (`tls_ca_file`, ...).
    pub key: &'static str,
    /// The file it names (empty for `tls_system_roots`).
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
    /// What to do about it.
    pub fix: &'static str,
}

impl TlsSettings {
    /// Whether any `tls_*` key is set (otherwise the bundled web roots alone are trusted).
    pub fn is_set(&self) -> bool {
        self.tls_ca_file.is_some()
            || self.tls_client_cert_file.is_some()
            || self.tls_client_key_file.is_some()
            || self.tls_system_roots
    }

    /// The files these settings name.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.tls_ca_file, &self.tls_client_cert_file, &self.tls_client_key_file].into_iter().flatten()
    }

    /// Read the files and build the bucket's TLS client; `None` when no
    /// `tls_*` key is set (the bundled web roots alone are trusted).
    pub fn load(&self) -> Result<Option<LoadedTls>, TlsFileError> {
        if !self.is_set() {
            return Ok(None);
        }
        let mut digest = Sha256::new();
        digest.update([u8::from(self.tls_system_roots)]);
        let mut roots = web_roots();
        if let Some(path) = &self.tls_ca_file {
            let certs = read_certificates(path, "tls_ca_file", CA_FIX)?;
            for (i, cert) in certs.into_iter().enumerate() {
                digest.update(&cert);
                roots.add(cert).map_err(|e| TlsFileError {
                    key: "tls_ca_file",
                    path: path.clone(),
                    problem: format!("certificate #{} is not a usable CA certificate ({e})", i + 1),
                    fix: CA_FIX,
                })?;
            }
        }
        if self.tls_system_roots {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsFileError {
                    key: "tls_system_roots",
                    path: PathBuf::new(),
                    problem: format!("found no CA certificates in the system trust store {:?}", found.errors),
                    fix: "install the system's CA certificates (the `ca-certificates` package) or point \
                          SSL_CERT_FILE at a PEM bundle; or use `tls_ca_file` instead",
                });
            }
            for cert in found.certs {
                digest.update(&cert);
                // The system store holds some certificates webpki cannot use as anchors: skip those.
                let _ = roots.add(cert);
            }
        }
        let identity = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let (key, path, other) = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
                    (Some(p), _) => ("tls_client_cert_file", p, "tls_client_key_file"),
                    (_, p) => ("tls_client_key_file", p.as_ref().expect("one is set"), "tls_client_cert_file"),
                };
                return Err(TlsFileError {
                    key,
                    path: path.clone(),
                    problem: format!("is set but `{other}` is not"),
                    fix: "set both `tls_client_cert_file` and `tls_client_key_file` (mutual TLS), or neither",
                });
            }
            (Some(cert_path), Some(key_path)) => {
                let chain = read_certificates(cert_path, "tls_client_cert_file", CLIENT_CERT_FIX)?;
                let key = read_key(key_path)?;
                chain.iter().for_each(|c| digest.update(c));
                digest.update(key.secret_der());
                Some((chain, key, cert_path, key_path))
            }
        };
        let described = identity.as_ref().map(|(chain, ..)| describe(&chain[0]));
        let paths = identity.as_ref().map(|(_, _, cert, key)| ((*cert).clone(), (*key).clone()));
        let config = client_config(roots, identity.map(|(chain, key, ..)| (chain, key))).map_err(|e| match paths {
            Some((cert_path, key_path)) => TlsFileError {
                key: "tls_client_key_file",
                path: key_path,
                problem: format!("cannot be used with the certificate in {} ({e})", cert_path.display()),
                fix: "give the private key that belongs to the client certificate (PEM: PKCS#8, PKCS#1 or SEC1)",
            },
            None => TlsFileError {
                key: "tls_ca_file",
                path: self.tls_ca_file.clone().unwrap_or_default(),
                problem: format!("gives no usable trust anchor ({e})"),
                fix: CA_FIX,
            },
        })?;
        let client = BucketTls { config, client_certificate: described };
        Ok(Some(LoadedTls { digest: digest.finalize().into(), client }))
    }
}

const CA_FIX: &str = "point it at a readable PEM file of the CA certificates (`-----BEGIN CERTIFICATE-----`) \
                      that issued the server's certificate";
const CLIENT_CERT_FIX: &str = "point it at a readable PEM file holding the client certificate \
                               (`-----BEGIN CERTIFICATE-----`), then any intermediate certificates";

/// The certificates of the PEM file `path`, named `key` in errors.
fn read_certificates(
    path: &Path,
    key: &'static str,
    fix: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let error = |problem: String| TlsFileError { key, path: path.to_path_buf(), problem, fix };
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot be read ({e})")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| error(format!("is not a valid PEM file ({e})")))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` block)".into()));
    }
    Ok(certs)
}

/// The private key of the PEM file `path` (`tls_client_key_file`).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let error = |problem: String| TlsFileError {
        key: "tls_client_key_file",
        path: path.to_path_buf(),
        problem,
        fix: "point it at a readable PEM file of the client certificate's private key \
              (`-----BEGIN PRIVATE KEY-----`, PKCS#1 or SEC1 work too)",
    };
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot be read ({e})")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| error(format!("holds no usable private key ({e})")))
}

/// The bundled web PKI roots (Mozilla's, via `webpki-roots`).
fn web_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() }
}

/// A client config trusting `roots` (verification by webpki, described on
/// failure), presenting `identity` if given.
fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(format!("no usable trust anchors: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DescribingVerifier { webpki }));
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
    };
    Ok(Arc::new(config))
}

/// The TLS client one bucket's connections use, with the client
/// certificate it presents (described, for error messages).
#[derive(Clone, Debug)]
pub struct BucketTls {
    /// The rustls client config.
    pub config: Arc<ClientConfig>,
    /// `subject (issued by issuer)` of the client certificate, if one is presented.
    pub client_certificate: Option<String>,
}

/// The bundled web roots, no client certificate (built once per process).
impl Default for BucketTls {
    fn default() -> Self {
        static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let config = DEFAULT
            .get_or_init(|| client_config(web_roots(), None).expect("the bundled web roots make a client config"));
        BucketTls { config: config.clone(), client_certificate: None }
    }
}

/// The webpki verifier, unchanged, except that a refused certificate's error
/// carries what the certificate was ([`RefusedCertificate`]).
#[derive(Debug)]
struct DescribingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for DescribingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map_err(
            |e| match e {
                rustls::Error::InvalidCertificate(error) => rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(RefusedCertificate {
                        certificate: describe(end_entity),
                        not_after: not_after(end_entity),
                        server_name: server_name.to_str().into_owned(),
                        error,
                    })),
                )),
                other => other,
            },
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

/// A server certificate webpki refused, and what it was.
#[derive(Debug, thiserror::Error)]
#[error("the certificate {certificate} was refused for {server_name}: {error}")]
struct RefusedCertificate {
    /// `subject (issued by issuer)`.
    certificate: String,
    /// Its `notAfter`, when it could be read.
    not_after: Option<String>,
    /// The name it was checked for.
    server_name: String,
    /// Why webpki refused it.
    error: CertificateError,
}

/// `subject (issued by issuer)` of a DER certificate, as far as it parses.
fn describe(der: &[u8]) -> String {
    use x509_cert::der::Decode;
    match x509_cert::Certificate::from_der(der) {
        Ok(cert) => {
            let tbs = &cert.tbs_certificate;
            format!("`{}` (issued by `{}`)", tbs.subject, tbs.issuer)
        }
        Err(e) => format!("(unparsable: {e})"),
    }
}

/// The `notAfter` time of a DER certificate.
fn not_after(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.validity.not_after.to_date_time().to_string())
}

/// What a failed outbound request comes to when TLS certificates caused it:
/// a `tls-alert-received` error whose message names `bucket`, `server`, the
/// certificate and the setting that fixes it, which the providers treat as
/// permanent (only an operator can fix it). Any other error (network errors
/// during a handshake included) is returned unchanged: transient.
pub fn classify(bucket: &str, server: &str, tls: &BucketTls, error: HttpError) -> HttpError {
    let Some(rustls_error) = rustls_cause(&error) else { return error };
    let Some((alert, message)) = refusal(bucket, server, tls, rustls_error) else { return error };
    tracing::warn!(plugin = %bucket, %server, "{message}");
    HttpError::TlsAlertReceived { alert_id: Some(u8::from(alert)), alert_message: Some(message) }
}

/// The rustls error behind an outbound request's failure, if any: the
/// handshake's, or one met on the connection afterwards (TLS 1.3 servers
/// refuse a client certificate after the client finished its handshake).
fn rustls_cause(error: &HttpError) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        HttpError::Tls(io) | HttpError::Connect(io) => Some(io),
        HttpError::Hyper(e) => Some(e),
        _ => None,
    };
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        let inner = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(found) = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// The alert and the message of a certificate problem, `None` for other errors.
fn refusal(bucket: &str, server: &str, tls: &BucketTls, error: &rustls::Error) -> Option<(AlertDescription, String)> {
    let at = format!("bucket {bucket}: the server {server}");
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            let refused = other.downcast_ref::<RefusedCertificate>()?;
            let cert = &refused.certificate;
            let name = &refused.server_name;
            Some(match &refused.error {
                CertificateError::UnknownIssuer => (
                    AlertDescription::UnknownCA,
                    format!(
                        "{at} presented the certificate {cert}, which no CA this bucket trusts signed; put the \
                         certificate of the CA that issued it (PEM) in this bucket's `tls_ca_file`"
                    ),
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                    AlertDescription::CertificateExpired,
                    format!(
                        "{at} presented the certificate {cert}, which expired at {}; the server needs a renewed \
                         certificate (check this host's clock too)",
                        refused.not_after.as_deref().unwrap_or("(unknown)")
                    ),
                ),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                    AlertDescription::CertificateExpired,
                    format!(
                        "{at} presented the certificate {cert}, which is not valid yet; check this host's clock \
                         and the certificate's validity"
                    ),
                ),
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    let presented = match &refused.error {
                        CertificateError::NotValidForNameContext { presented, .. } => format!("{presented:?}"),
                        _ => "other names".into(),
                    };
                    (
                        AlertDescription::BadCertificate,
                        format!(
                            "{at} presented the certificate {cert}, which is valid for {presented}, not for \
                             `{name}`; use one of its names in the bucket's `endpoint` setting, or have the \
                             server's certificate issued for `{name}`"
                        ),
                    )
                }
                other => (
                    AlertDescription::BadCertificate,
                    format!(
                        "{at} presented the certificate {cert}, which was refused ({other}); check that this \
                         bucket's `tls_ca_file` holds the CA that issued it"
                    ),
                ),
            })
        }
        rustls::Error::InvalidCertificate(other) => Some((
            AlertDescription::BadCertificate,
            format!("{at} presented a certificate that was refused ({other}); check this bucket's `tls_ca_file`"),
        )),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure),
        ) => {
            let message = match &tls.client_certificate {
                None if *alert == AlertDescription::HandshakeFailure => format!(
                    "{at} ended the TLS handshake with alert {alert:?}: it may require a client certificate, \
                     and this bucket presents none (set `tls_client_cert_file` and `tls_client_key_file`), or \
                     share no TLS version or cipher suite with this host"
                ),
                None => format!(
                    "{at} ended the TLS handshake with alert {alert:?}: it requires a client certificate and \
                     this bucket presents none; set `tls_client_cert_file` and `tls_client_key_file` to a \
                     certificate the server trusts"
                ),
                Some(cert) => format!(
                    "{at} refused this bucket's client certificate {cert} (TLS alert {alert:?}); set \
                     `tls_client_cert_file` and `tls_client_key_file` to a certificate issued by a CA the \
                     server trusts"
                ),
            };
            Some((*alert, message))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tls_keys_means_the_bundled_web_roots_and_nothing_loaded() {
        let loaded = TlsSettings::default().load().unwrap();
        assert!(loaded.is_none());
        assert!(LoadedTls::client_of(loaded.as_ref()).client_certificate.is_none());
    }

    #[test]
    fn missing_and_garbage_files_name_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("blockferry-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for (settings, key, file) in [
            (
                TlsSettings { tls_ca_file: Some(dir.join("missing.pem")), ..Default::default() },
                "tls_ca_file",
                "missing.pem",
            ),
            (TlsSettings { tls_ca_file: Some(garbage.clone()), ..Default::default() }, "tls_ca_file", "garbage.pem"),
            (
                TlsSettings { tls_client_cert_file: Some(garbage.clone()), ..Default::default() },
                "tls_client_cert_file",
                "garbage.pem",
            ),
        ] {
            let err = settings.load().expect_err("refused");
            assert_eq!(err.key, key);
            assert!(err.to_string().contains(file) && err.to_string().contains(key), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
