//! Keep-alive connections for a bucket's plain-HTTP requests: every instance
//! of the bucket's plugin sends through one pool, so consecutive uploads to
//! one endpoint reuse a connection instead of opening one per request.
//!
//! A connection is taken only when it is idle (its last response read to the
//! end); a connection the server closed meanwhile gives the request back
//! unsent and the request goes out on a new one. HTTPS requests do not use the
//! pool (see [`super::egress`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// A timeout the request options leave unset (the host always sets them).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Idle connections kept per address; more are closed when they finish.
const MAX_IDLE_PER_ADDRESS: usize = 64;

/// A bucket's open connections, by server address.
#[derive(Debug, Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<WasiBody>>>>,
    /// Connections opened so far.
    pub opened: AtomicU64,
    /// Requests sent on a connection opened for an earlier one.
    pub reused: AtomicU64,
}

impl ConnectionPool {
    /// Send `request` to `addr` (plain HTTP), on an idle connection if there
    /// is one; timeouts as in `options` (all set).
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let first_byte = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        // HTTP/1.1 sends the path only: the authority is in the Host header.
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        loop {
            let (mut sender, reused) = match self.take_idle(addr) {
                Some(sender) => (sender, true),
                None => (self.connect(addr, options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT)).await?, false),
            };
            let sent = tokio::time::timeout(first_byte, sender.try_send_request(request))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)?;
            match sent {
                Ok(response) => {
                    if reused {
                        self.reused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.put_back(addr, sender);
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

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_mut(&addr)?;
        senders.retain(|s| !s.is_closed());
        let ready = senders.iter().position(|s| s.is_ready())?;
        Some(senders.swap_remove(ready))
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<WasiBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.entry(addr).or_default();
        if senders.len() < MAX_IDLE_PER_ADDRESS {
            senders.push(sender);
        }
    }

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<SendRequest<WasiBody>, HttpError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(HttpError::Connect)?;
            let _ = stream.set_nodelay(true);
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(HttpError::from)
        };
        let (sender, connection) =
            tokio::time::timeout(timeout, connect).await.map_err(|_| HttpError::ConnectionTimeout)??;
        // The connection serves until the server closes it or its sender is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "plugin HTTP connection ended: {e}");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
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
