//! The endpoints' server, the status it shows, and its sampler.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Sources;
use crate::publish::PublishStatus;
use crate::sync::Locked;
use crate::telemetry::now_ms;

/// The status page.
const STATUS_PAGE: &str = include_str!("status.html");

/// How long the lag history reaches back.
const HISTORY: Duration = Duration::from_secs(3600);

/// The state behind the endpoints.
pub struct Http {
    sources: Arc<Sources>,
    sample_every: Duration,
    /// Per bucket name: `(unix ms, lag seconds)`.
    history: Mutex<HashMap<String, VecDeque<(u64, f64)>>>,
}

/// `/api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// blockferry's version.
    pub version: &'static str,
    /// Whether the host is ready.
    pub ready: bool,
    /// Why not.
    pub not_ready: Vec<String>,
    /// What an operator must look at though the host is ready (hash
    /// mismatches: they do not stop the host from taking blocks safely).
    pub warnings: Vec<String>,
    /// Blocks in the store some bucket holds with different content, from
    /// their `.meta` files (`null` until first counted).
    pub mismatched_blocks: Option<u64>,
    /// The config generation in force (1 at start, +1 per reload applied).
    pub config_generation: u64,
    /// When it was loaded (Unix ms).
    pub config_loaded_at_ms: u64,
    /// Blocks in the local store.
    pub retained_blocks: u64,
    /// Seconds between lag samples.
    pub history_sample_secs: u64,
    /// Per bucket.
    pub buckets: Vec<BucketView>,
    /// The block buffer.
    pub buffer: BufferView,
    /// Ingest from the consensus node.
    pub ingest: IngestView,
    /// Streaming to block nodes (`null` when not streaming).
    pub block_nodes: Option<PublishStatus>,
}

/// One bucket on the status page.
#[derive(Debug, Serialize)]
pub struct BucketView {
    /// Its name.
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// Blocks uploaded by this host.
    pub uploaded: u64,
    /// Blocks found already present.
    pub already_present: u64,
    /// Blocks not yet safe in it.
    pub pending: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Blocks of the store whose object in the bucket has different content:
    /// as last counted from the `.meta` files, or the mismatches this process
    /// saw since, whichever is more.
    pub mismatched: u64,
    /// The store's blocks in this bucket by state, as last counted from the
    /// `.meta` files (`null` until first counted).
    pub blocks: Option<crate::upload::BlockCounts>,
    /// Age of the oldest block not yet safe, in seconds.
    pub lag_seconds: f64,
    /// `[unix ms, lag seconds]` over the last hour.
    pub lag_history: Vec<(u64, f64)>,
    /// `healthy`, `unhealthy`, `unknown` (not checked yet) or `unchecked`
    /// (its plugin has no bucket-reader).
    pub health: &'static str,
    /// Why the last health check failed.
    pub health_error: Option<String>,
    /// Abandoned uploads aborted in it.
    pub aborted_uploads: u64,
}

/// The buffer on the status page.
#[derive(Debug, Serialize)]
pub struct BufferView {
    /// Blocks in memory.
    pub blocks: u64,
    /// Blocks waiting for a block node's acknowledgement.
    pub unacked_blocks: u64,
    /// Saturation in percent.
    pub saturation_percent: f64,
    /// Whether backpressure is engaged.
    pub backpressure: bool,
}

/// Ingest on the status page.
#[derive(Debug, Serialize)]
pub struct IngestView {
    /// The publisher streaming now.
    pub publisher: Option<String>,
    /// The newest block stored.
    pub latest_block: Option<u64>,
    /// Blocks received since start.
    pub blocks: u64,
}

impl Http {
    /// Endpoints over `sources`, sampling the lag every `sample_every`.
    pub fn new(sources: Arc<Sources>, sample_every: Duration) -> Arc<Self> {
        let history = Mutex::default();
        Arc::new(Self { sources, sample_every, history })
    }

    /// Serve on `listener` until the task is dropped: "starting" until
    /// [`Started::start`] hands over the endpoints.
    pub async fn serve(listener: TcpListener, started: Arc<Started>) -> std::io::Result<()> {
        let app = Router::new()
            .route("/", get(page))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/api/status", get(status))
            .with_state(started);
        axum::serve(listener, app).await
    }

    async fn sample_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.sample_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.sample()).await;
        }
    }

    /// One sample: lags, blocks in the store, readiness.
    pub fn sample(&self) {
        let now = now_ms();
        let s = &self.sources;
        {
            let buckets = s.buckets();
            let mut history = self.history.locked();
            // A bucket removed by a reload leaves the chart.
            history.retain(|name, _| buckets.iter().any(|b| b.name == *name));
            for b in &buckets {
                let h = history.entry(b.name.clone()).or_default();
                h.push_back((now, s.lag_seconds(&b.stats)));
                while h.front().is_some_and(|(t, _)| now.saturating_sub(*t) > HISTORY.as_millis() as u64) {
                    h.pop_front();
                }
            }
        }
        if let Ok(numbers) = s.store.numbers() {
            s.retained_blocks.store(numbers.len() as u64, Ordering::Relaxed);
        }
        let mut reasons = Vec::new();
        if let Err(e) = s.store.check_writable() {
            reasons.push(format!("the block store is not writable: {e}"));
        } else if let Some(e) = s.ingest.store_error() {
            reasons.push(format!("the block store could not take the last block: {e}"));
        }
        for b in s.buckets() {
            if let Some(error) = b.stats.health().error() {
                reasons.push(format!("bucket {} is unhealthy: {error}", b.name));
            }
        }
        if s.buffer.backpressure() {
            reasons.push("the block buffer is saturated: backpressure holds the consensus node".into());
        }
        s.readiness.set(reasons);
    }

    /// The state now.
    pub fn status(&self) -> Status {
        let s = &self.sources;
        let history = self.history.locked();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let census = s.census.get();
        let counted = |name: &str| census.as_ref().and_then(|c| c.buckets.get(name).copied());
        let buckets = s
            .buckets()
            .iter()
            .map(|b| (b, history.get(&b.name)))
            .map(|(b, h)| BucketView {
                name: b.name.clone(),
                provider: b.client.provider().to_string(),
                uploaded: load(&b.stats.uploaded),
                already_present: load(&b.stats.already_present),
                pending: load(&b.stats.pending),
                failed: load(&b.stats.failures),
                mismatched: load(&b.stats.hash_mismatches).max(counted(&b.name).map_or(0, |c| c.hash_mismatch)),
                blocks: counted(&b.name),
                lag_seconds: s.lag_seconds(&b.stats),
                lag_history: h.into_iter().flatten().copied().collect(),
                health: b.stats.health().label(),
                health_error: b.stats.health().error().map(str::to_string),
                aborted_uploads: load(&b.stats.aborted_uploads),
            })
            .collect();
        let buffer = s.buffer.state();
        let not_ready = s.readiness.reasons();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            ready: not_ready.is_empty(),
            not_ready,
            warnings: warnings(s),
            mismatched_blocks: census.as_ref().map(|c| c.mismatched_blocks),
            config_generation: s.config.generation(),
            config_loaded_at_ms: s.config.loaded_at_ms(),
            retained_blocks: load(&s.retained_blocks),
            history_sample_secs: self.sample_every.as_secs(),
            buckets,
            buffer: BufferView {
                blocks: buffer.blocks,
                unacked_blocks: buffer.unacked_blocks,
                saturation_percent: buffer.saturation,
                backpressure: buffer.backpressure,
            },
            ingest: IngestView {
                publisher: s.ingest.publisher().map(|a| a.to_string()),
                latest_block: s.ingest.latest(),
                blocks: load(&s.ingest.counters().blocks),
            },
            block_nodes: s.publisher.as_ref().map(|p| p.status()),
        }
    }
}

/// The endpoints once start-up is done.
#[derive(Default)]
pub struct Started {
    http: OnceLock<Arc<Http>>,
    sampler: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Started {
    /// Start-up is done: serve `http` and start its sampler.
    pub fn start(&self, http: Arc<Http>) {
        http.sample();
        let sampler = tokio::spawn(http.clone().sample_forever());
        *self.sampler.locked() = Some(sampler);
        let _ = self.http.set(http);
    }

    fn get(&self) -> Result<&Arc<Http>, Starting> {
        self.http.get().ok_or(Starting)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(sampler) = self.sampler.locked().take() {
            sampler.abort();
        }
    }
}

/// The answer while start-up is not done.
struct Starting;

impl IntoResponse for Starting {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: recovering the block store and loading the plugins\n")
            .into_response()
    }
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], STATUS_PAGE).into_response()
}

async fn metrics(State(started): State<Arc<Started>>) -> Response {
    let sources = match started.get() {
        Ok(http) => http.sources.clone(),
        Err(starting) => return starting.into_response(),
    };
    let text = tokio::task::spawn_blocking(move || sources.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn readyz(State(started): State<Arc<Started>>) -> Response {
    let (reasons, warnings) = match started.get() {
        Ok(http) => (http.sources.readiness.reasons(), warnings(&http.sources)),
        Err(starting) => return starting.into_response(),
    };
    if reasons.is_empty() {
        let warnings: String = warnings.iter().map(|w| format!("warning: {w}\n")).collect();
        (StatusCode::OK, format!("ready\n{warnings}")).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", reasons.join("\n"))).into_response()
    }
}

/// What an operator must look at though the host may be ready: blocks some
/// bucket holds with different content (or that the store's blocks are not
/// counted yet, so none can be reported). A mismatch does not make the host
/// not ready: it keeps taking and storing blocks safely (the mismatched
/// block is kept locally forever), and refusing traffic would only stop the
/// stream; the alert and these warnings call the operator.
fn warnings(s: &Sources) -> Vec<String> {
    let Some(census) = s.census.get() else {
        return vec![
            "the store's blocks are not counted yet: the start-up check is reading every .meta (uploads of the \
             blocks it finds go on meanwhile); hash-mismatch warnings and the per-state counts follow when it is done"
                .to_string(),
        ];
    };
    let mut warnings = Vec::new();
    for (bucket, c) in &census.buckets {
        if c.hash_mismatch > 0 {
            warnings.push(format!(
                "bucket {bucket} holds different content for {} stored block(s) (hash mismatch): the local copies \
                 are kept; `blockferry verify` lists them",
                c.hash_mismatch
            ));
        }
    }
    let per_bucket: u64 = census.buckets.values().map(|c| c.hash_mismatch).sum();
    if census.mismatched_blocks > 0 && per_bucket == 0 {
        warnings.push(format!(
            "{} stored block(s) were found with different content in a bucket no longer configured: the local \
             copies are kept",
            census.mismatched_blocks
        ));
    }
    warnings
}

async fn status(State(started): State<Arc<Started>>) -> Response {
    match started.get() {
        Ok(http) => axum::Json(http.status()).into_response(),
        Err(starting) => starting.into_response(),
    }
}
