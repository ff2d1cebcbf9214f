//! `[http]`: the operators' endpoints.

use serde::Deserialize;

/// `[http]`: metrics, health and the status page.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address (`host:port`) of `/metrics`, `/healthz`, `/readyz`, `/api/status` and `/`.
    pub listen: String,
    /// Seconds between samples of each bucket's upload lag (the status page's chart).
    pub history_sample_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9616".into(), history_sample_secs: 10 }
    }
}
