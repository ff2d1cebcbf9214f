//! Keep-alive connections for a bucket's HTTP and HTTPS requests: every
//! instance of the bucket's plugin sends through one pool, so consecutive
//! uploads to one endpoint reuse a connection instead of opening one per
//! request. Connections go to the address the egress policy vetted; HTTPS
//! verifies the server's certificate for the name the plugin asked for, with
//! the bucket's TLS client (its CAs and client certificate, `tls` module).
//!
//! A connection is taken only when it is idle (its last response read to the
//! end); a connection the server closed meanwhile gives the request back
//! unsent and the request goes out on a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::sync::Locked;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::tls::BucketTls;

/// A timeout the request options leave unset (the host always sets them).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Idle connections kept per address; more are closed when they finish.
const MAX_IDLE_PER_ADDRESS: usize = 64;

/// Where a connection goes: the vetted address and, for HTTPS, the server
/// name TLS sends (SNI) and verifies the certificate for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The address connected to.
    pub addr: SocketAddr,
    /// The server name, for HTTPS.
    pub tls_name: Option<String>,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls_name {
            Some(name) => write!(f, "https://{name} at {}", self.addr),
            None => write!(f, "http://{}", self.addr),
        }
    }
}

/// Connections one instance may hold open at once (a provider's parallel
/// part uploads included); a bucket's pool allows this many per instance.
pub const MAX_CONNECTIONS_PER_INSTANCE: usize = 64;

/// A bucket's open connections, by destination.
#[derive(Debug)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<Destination, Vec<SendRequest<WasiBody>>>>,
    /// The TLS client of the bucket's HTTPS connections.
    tls: BucketTls,
    /// Connections open now (busy or idle).
    open: Arc<AtomicUsize>,
    /// Most connections open at once; past it a request that finds no idle
    /// connection fails (`connection-limit-reached`).
    max_open: usize,
    /// Connections opened so far.
    pub opened: AtomicU64,
    /// Requests sent on a connection opened for an earlier one.
    pub reused: AtomicU64,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS_PER_INSTANCE, BucketTls::default())
    }
}

impl ConnectionPool {
    /// A pool holding at most `max_open` connections open at once, its HTTPS
    /// connections made with `tls`.
    pub fn new(max_open: usize, tls: BucketTls) -> Self {
        Self {
            idle: Mutex::default(),
            tls,
            open: Arc::default(),
            max_open,
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// The TLS client of the pool's HTTPS connections.
    pub fn tls(&self) -> &BucketTls {
        &self.tls
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Send `request` to `dest`, on an idle connection if there is one;
    /// timeouts as in `options` (all set).
    pub async fn send(
        &self,
        dest: Destination,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let first_byte = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        // HTTP/1.1 sends the path only: the authority is in the Host header.
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        loop {
            let (mut sender, reused) = match self.take_idle(&dest) {
                Some(sender) => (sender, true),
                None => (self.connect(&dest, options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT)).await?, false),
            };
            let sent = tokio::time::timeout(first_byte, sender.try_send_request(request))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)?;
            match sent {
                Ok(response) => {
                    if reused {
                        self.reused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.put_back(&dest, sender);
                    let between = options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT).max(Duration::from_nanos(1));
                    let (parts, incoming) = response.into_parts();
                    return Ok(http::Response::from_parts(parts, TimedBody::new(incoming, between).boxed_unsync()));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent (the idle connection was closed by the server): again, on a new one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(HttpError::from(e.into_error())),
                },
            }
        }
    }

    fn take_idle(&self, dest: &Destination) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.locked();
        let senders = idle.get_mut(dest)?;
        senders.retain(|s| !s.is_closed());
        let ready = senders.iter().position(|s| s.is_ready())?;
        Some(senders.swap_remove(ready))
    }

    fn put_back(&self, dest: &Destination, sender: SendRequest<WasiBody>) {
        let mut idle = self.idle.locked();
        let senders = idle.entry(dest.clone()).or_default();
        if senders.len() < MAX_IDLE_PER_ADDRESS {
            senders.push(sender);
        }
    }

    async fn connect(&self, dest: &Destination, timeout: Duration) -> Result<SendRequest<WasiBody>, HttpError> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_open {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%dest, "refused a new plugin connection: the bucket already holds {} open", self.max_open);
            return Err(HttpError::ConnectionLimitReached);
        }
        let slot = OpenConnection(self.open.clone());
        let connect = async {
            let stream = tokio::net::TcpStream::connect(dest.addr).await.map_err(HttpError::Connect)?;
            let _ = stream.set_nodelay(true);
            let io: Box<dyn Io> = match &dest.tls_name {
                None => Box::new(stream),
                Some(name) => {
                    let name = rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                    Box::new(
                        tokio_rustls::TlsConnector::from(self.tls.config.clone())
                            .connect(name, stream)
                            .await
                            .map_err(HttpError::Tls)?,
                    )
                }
            };
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(HttpError::from)
        };
        let (sender, connection) =
            tokio::time::timeout(timeout, connect).await.map_err(|_| HttpError::ConnectionTimeout)??;
        // The connection serves until the server closes it or its sender is dropped.
        let dest = dest.to_string();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(%dest, "plugin HTTP connection ended: {e}");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One open connection of a pool: counted until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that fails when no bytes arrive for `timeout`.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl TimedBody {
    fn new(incoming: hyper::body::Incoming, timeout: Duration) -> Self {
        let mut timeout = tokio::time::interval(timeout);
        timeout.reset();
        Self { incoming, timeout }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
