//! The operators' HTTP endpoints, on `[http] listen`:
//!
//! | path | what |
//! |---|---|
//! | `/metrics` | every metric, Prometheus (OpenMetrics) text format |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when ready; 503 with the reasons (plugins not loaded, store not writable or refusing blocks, buffer saturated); a ready host also lists warnings (blocks kept because a bucket holds different content; the store's blocks not counted yet while the start-up check reads every `.meta`, which it does after ready) |
//! | `/api/status` | the state as JSON (what the status page shows) |
//! | `/` | the status page: one small HTML file, no build step |
//!
//! The endpoints answer from the moment the process starts: until start-up
//! (store recovery, loading the plugins) is done, `/healthz` is 200 and
//! `/readyz`, `/metrics` and `/api/status` are 503 "starting".
//!
//! A sampler records each bucket's upload lag every `history_sample_secs`
//! for the status page's one-hour chart, counts the blocks in the store and
//! re-checks readiness.

mod config;
#[cfg(feature = "runtime")]
mod server;

pub use config::HttpConfig;
#[cfg(feature = "runtime")]
pub use server::*;
