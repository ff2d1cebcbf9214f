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
use http::uri::{Authority, Scheme};
use http_body_util::BodyExt;
use ipnet::IpNet;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Networks refused by default even when a permitted name resolves into them:
/// link-local (cloud metadata services live there) and known metadata addresses.
pub const DEFAULT_DENIED_NETWORKS: &[&str] =
    &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"];

/// Normalise a URI's authority to `host:port` (lower-case host, default port
/// made explicit), the form the allow-list compares.
pub fn normalise_authority(scheme: Option<&Scheme>, authority: &Authority) -> String {
    let port = authority.port_u16().unwrap_or(if scheme == Some(&Scheme::HTTP) { 80 } else { 443 });
    format!("{}:{port}", authority.host().to_ascii_lowercase())
}

/// The authority of `url` in allow-list form, when `url` is an http(s) URL.
pub fn url_authority(url: &str) -> Option<String> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme()?;
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return None;
    }
    Some(normalise_authority(Some(scheme), uri.authority()?))
}

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
    /// Keep-alive connections for plain-HTTP requests, shared by the bucket's instances.
    pub pool: super::pool::ConnectionPool,
}

impl EgressPolicy {
    /// Why `addr` may not be contacted, if it may not.
    fn address_refusal(&self, addr: IpAddr) -> Option<String> {
        if addr.is_unspecified() || addr.is_multicast() {
            return Some(format!("{addr} is not a unicast address"));
        }
        self.denied_networks
            .iter()
            .find(|net| net.contains(&addr))
            .map(|net| format!("{addr} is in the denied network {net}"))
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
        addrs.first().copied().ok_or(HttpError::DestinationNotFound)
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
            // Plain HTTP connects to the address just checked, so a name cannot
            // resolve differently between the check and the connection, and
            // reuses the bucket's idle connections to it. (TLS needs the name
            // for SNI and certificate checks, so HTTPS connects by name, a
            // connection per request.)
            if request.uri().scheme() == Some(&Scheme::HTTP) {
                let response = policy.pool.send(addr, request, options).await?;
                let done = Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>;
                return Ok((response, done));
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_normalised_with_default_ports() {
        assert_eq!(url_authority("http://LocalHost/x").as_deref(), Some("localhost:80"));
        assert_eq!(url_authority("https://s3.example.com").as_deref(), Some("s3.example.com:443"));
        assert_eq!(url_authority("http://127.0.0.1:9000/b").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(url_authority("not a url"), None);
        assert_eq!(url_authority("ftp://host/x"), None);
    }

    #[test]
    fn link_local_and_unspecified_addresses_are_refused() {
        let policy = EgressPolicy {
            denied_networks: DEFAULT_DENIED_NETWORKS.iter().map(|n| n.parse().unwrap()).collect(),
            ..Default::default()
        };
        assert!(policy.address_refusal("169.254.169.254".parse().unwrap()).is_some());
        assert!(policy.address_refusal("0.0.0.0".parse().unwrap()).is_some());
        assert!(policy.address_refusal("fe80::1".parse().unwrap()).is_some());
        assert!(policy.address_refusal("127.0.0.1".parse().unwrap()).is_none());
        assert!(policy.address_refusal("10.1.2.3".parse().unwrap()).is_none());
    }
}
