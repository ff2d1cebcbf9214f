//! The broker's HTTP client: one request on a new connection (the sources
//! are asked rarely), plain HTTP or HTTPS with the bucket's TLS client,
//! bounded in time and in the size of the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// The longest one exchange (connect, send, read the answer) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A source's answer.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy), cut for an error message.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_string(),
        }
    }
}

/// A byte stream of a connection: TCP or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Send one request to `url`; `Err` is a failure to exchange at all
/// (connection refused, timeout, TLS), described.
pub async fn send(
    method: http::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Bytes>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Answer, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or(host.clone(), |a| a.as_str().to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let exchange = async {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((bare, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let io: Box<dyn Io> = if https {
            let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                .map_err(|_| format!("{bare:?} is not a TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone());
            Box::new(tls.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?)
        } else {
            Box::new(stream)
        };
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::builder().method(method).uri(path).header(http::header::HOST, &authority);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body.unwrap_or_default())).map_err(|e| format!("invalid request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>(Answer { status, body })
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", EXCHANGE_TIMEOUT.as_secs()))?
}
