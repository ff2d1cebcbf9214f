//! Outbound HTTP control for plugins: the wasi-http hook that lets a plugin
//! reach only the authorities its bucket's settings name, and only addresses
//! the operator did not forbid.
//!
//! This is the one place that knows wasmtime-wasi-http's hook API (it changes
//! between wasmtime releases).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Uri;
use http::uri::Scheme;
use ipnet::IpNet;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::network::{denied_address, normalise_authority};
use super::pool::Destination;

/// What one bucket's plugin may reach over HTTP.
#[derive(Debug, Default)]
pub struct EgressPolicy {
    /// Plugin and bucket, for log lines.
    pub label: String,
    /// Permitted authorities, normalised `host:port`.
    pub allowed: BTreeSet<String>,
    /// Networks a permitted name must not resolve into.
    pub denied_networks: Vec<IpNet>,
    /// Requests refused so far (either check).
    pub refused: AtomicU64,
    /// Keep-alive HTTP and HTTPS connections, shared by the bucket's instances.
    pub pool: super::pool::ConnectionPool,
}

impl EgressPolicy {
    /// Why `addr` may not be contacted, if it may not.
    fn address_refusal(&self, addr: IpAddr) -> Option<String> {
        denied_address(addr, &self.denied_networks)
    }

    fn refuse(&self, authority: &str, why: &str) -> HttpError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.label, %authority, "refused outbound request: {why}");
        HttpError::HttpRequestDenied
    }

    /// Check a request's authority against the allow-list, then the addresses
    /// it resolves to; returns the address to connect to.
    async fn admit(&self, uri: &Uri) -> Result<SocketAddr, HttpError> {
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let key = normalise_authority(uri.scheme(), authority);
        if !self.allowed.contains(&key) {
            let allowed: Vec<&str> = self.allowed.iter().map(String::as_str).collect();
            return Err(self.refuse(&key, &format!("not in the bucket's allow-list {allowed:?}")));
        }
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host(&key).await.map_err(|_| HttpError::DestinationNotFound)?.collect();
        for addr in &addrs {
            if let Some(why) = self.address_refusal(addr.ip()) {
                return Err(self.refuse(&key, &why));
            }
        }
        // An IPv4-mapped address is the IPv4 address itself: connect to that.
        addrs.first().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).ok_or(HttpError::DestinationNotFound)
    }
}

/// The hook object a store's wasi-http context uses.
pub struct EgressHooks {
    /// The bucket's policy, shared by all its instances.
    pub policy: Arc<EgressPolicy>,
    /// When the current call must end; bounds connect and response waits.
    pub deadline: Instant,
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let policy = self.policy.clone();
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        Box::new(async move {
            let addr = policy.admit(request.uri()).await?;
            let options = bounded_options(options, remaining);
            // Connect to the address just checked, so a name cannot resolve
            // differently between the check and the connection; HTTPS still
            // verifies the certificate for the name (with the bucket's TLS
            // settings). Idle connections of the bucket are reused.
            let tls_name = match request.uri().scheme() {
                Some(s) if s == &Scheme::HTTPS => {
                    let host = request.uri().host().ok_or(HttpError::HttpRequestUriInvalid)?;
                    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
                }
                _ => None,
            };
            let server = match request.uri().authority() {
                Some(authority) => format!("{}://{authority} ({addr})", request.uri().scheme_str().unwrap_or("http")),
                None => addr.to_string(),
            };
            let dest = Destination { addr, tls_name };
            let response = policy.pool.send(dest, request, options).await.map_err(|e| {
                // A refused certificate is permanent, and says which setting fixes it.
                super::tls::classify(&policy.label, &server, policy.pool.tls(), e)
            })?;
            let done = Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>;
            Ok((response, done))
        })
    }
}

/// The plugin's own timeouts, none longer than what is left of the call.
fn bounded_options(options: Option<RequestOptions>, remaining: Duration) -> RequestOptions {
    let cap = |t: Option<Duration>| Some(t.map_or(remaining, |t| t.min(remaining)));
    let o = options.unwrap_or_default();
    RequestOptions {
        connect_timeout: cap(o.connect_timeout),
        first_byte_timeout: cap(o.first_byte_timeout),
        between_bytes_timeout: cap(o.between_bytes_timeout),
    }
}
