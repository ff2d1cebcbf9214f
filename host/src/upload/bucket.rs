//! One bucket as the upload stage holds it: the opened bucket ([`Target`]),
//! its counters and health, and its running worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{BucketConfig, UploadConfig};
use crate::credentials::Broker;
use crate::plugin::{BucketClient, BucketSpec, CallError, Confirmation, LoadError, PluginRuntime};
use crate::store::Confirmed;
use crate::sync::{Locked, ReadWrite};

/// Renders the object key of a block from its number and file extension.
pub type KeyFn = Arc<dyn Fn(u64, &str) -> String + Send + Sync>;

/// One bucket the manager uploads to.
#[derive(Clone)]
pub struct Target {
    /// The bucket's name in the config and in `.meta` files.
    pub name: String,
    /// The bucket, through its plugin.
    pub client: Arc<BucketClient>,
    /// The object key of a block number and file extension.
    pub key: KeyFn,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// The fixed start of every key (the key template up to its first
    /// placeholder): where abandoned uploads are looked for.
    pub prefix: String,
}

/// Why a bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its plugin could not be read, checked or compiled.
    #[error("bucket {bucket}: {error}")]
    Load {
        /// The bucket.
        bucket: String,
        /// Why.
        error: LoadError,
    },
    /// Its plugin refused the bucket's settings, or failed to start.
    #[error("opening bucket {bucket}: {error}")]
    Open {
        /// The bucket.
        bucket: String,
        /// Why.
        error: CallError,
    },
}

impl Target {
    /// Load the bucket's plugin (compiled on the blocking pool, off the
    /// upload path) and open the bucket with its settings and credentials.
    pub async fn open(
        runtime: &Arc<PluginRuntime>,
        bucket: &BucketConfig,
        denied_networks: Vec<ipnet::IpNet>,
    ) -> Result<Self, OpenError> {
        let plugin = {
            let (runtime, path, pin) = (runtime.clone(), bucket.plugin.clone(), bucket.sha256.clone());
            tokio::task::spawn_blocking(move || runtime.load(&path, pin.as_deref()))
                .await
                .expect("plugin load panicked")
                .map_err(|error| OpenError::Load { bucket: bucket.name.clone(), error })?
        };
        let client = BucketClient::open(plugin, bucket.spec(denied_networks))
            .await
            .map_err(|error| OpenError::Open { bucket: bucket.name.clone(), error })?;
        let config = bucket.clone();
        Ok(Self {
            name: bucket.name.clone(),
            client: Arc::new(client),
            prefix: bucket.key_prefix().to_string(),
            key: Arc::new(move |n, ext| config.key(n, ext)),
            concurrency: bucket.concurrency,
        })
    }
}

/// Counters of one bucket's uploads.
#[derive(Debug, Default)]
pub struct BucketStats {
    /// Blocks uploaded by this host.
    pub uploaded: AtomicU64,
    /// Blocks found already present (same MD5).
    pub already_present: AtomicU64,
    /// Blocks whose key holds different content.
    pub hash_mismatches: AtomicU64,
    /// Failed attempts (transient or permanent).
    pub failures: AtomicU64,
    /// Permanent failures (bucket held).
    pub permanent_failures: AtomicU64,
    /// Blocks waiting or in flight.
    pub pending: AtomicU64,
    /// Sum of successful upload latencies, in microseconds.
    pub latency_us_total: AtomicU64,
    /// Latency of successful uploads.
    pub upload_seconds: crate::telemetry::Histogram,
    /// The oldest block not yet final in the bucket (`u64::MAX`: none).
    pub oldest_pending: AtomicU64,
    /// Times a config reload replaced the bucket's plugin component.
    pub plugin_swaps: AtomicU64,
    /// The bucket's health, as last checked.
    pub(crate) health: std::sync::Mutex<Health>,
    /// Abandoned uploads aborted in the bucket.
    pub aborted_uploads: AtomicU64,
}

impl BucketStats {
    /// Blocks safe in the bucket (uploaded + already present) counted so far.
    pub fn safe(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed) + self.already_present.load(Ordering::Relaxed)
    }
}

/// One bucket's running worker.
pub(super) struct Running {
    pub(super) name: String,
    pub(super) queue: mpsc::UnboundedSender<u64>,
    pub(super) stats: Arc<BucketStats>,
    pub(super) settings: watch::Sender<(Target, UploadConfig)>,
    pub(super) task: JoinHandle<()>,
}

/// The buckets being uploaded to, in config order.
pub(super) type Buckets = Arc<RwLock<Vec<Running>>>;

/// A bucket's health, as last checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet.
    #[default]
    Unknown,
    /// Its plugin cannot check (no `bucket-reader`).
    Unchecked,
    /// The last check passed.
    Healthy {
        /// When, in Unix milliseconds.
        at_ms: u64,
    },
    /// The last check failed.
    Unhealthy {
        /// When, in Unix milliseconds.
        at_ms: u64,
        /// The plugin's error.
        error: String,
    },
}

impl Health {
    /// `healthy`, `unhealthy`, `unknown` or `unchecked`.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Healthy { .. } => "healthy",
            Health::Unhealthy { .. } => "unhealthy",
            Health::Unknown => "unknown",
            Health::Unchecked => "unchecked",
        }
    }

    /// Why the last check failed, if it did.
    pub fn error(&self) -> Option<&str> {
        match self {
            Health::Unhealthy { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl BucketStats {
    /// The bucket's health, as last checked.
    pub fn health(&self) -> Health {
        self.health.locked().clone()
    }
}

pub(super) fn notify(buckets: &Buckets, number: u64) {
    for r in read(buckets).iter() {
        let _ = r.queue.send(number);
    }
}

pub(super) fn read(buckets: &Buckets) -> std::sync::RwLockReadGuard<'_, Vec<Running>> {
    buckets.reading()
}

pub(super) fn write(buckets: &Buckets) -> std::sync::RwLockWriteGuard<'_, Vec<Running>> {
    buckets.writing()
}

impl BucketConfig {
    /// What the host grants this bucket's plugin.
    pub fn spec(&self, denied_networks: Vec<IpNet>) -> BucketSpec {
        let tls = crate::plugin::tls::LoadedTls::client_of(self.tls.as_ref());
        BucketSpec {
            name: self.name.clone(),
            settings: self.settings_list(),
            directory: self.directory.clone(),
            allow_hosts: self.allow_hosts.clone(),
            denied_networks,
            memory_limit: self.memory_limit_mib * 1024 * 1024,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            max_concurrency: self.concurrency,
            secrets: self.secrets.pairs().map(|(name, _)| name).collect(),
            log_lines_per_minute: self.log_lines_per_minute,
            credentials: self
                .resolved_source
                .clone()
                .map(|source| Arc::new(Broker::new(&self.name, source, tls.config.clone()))),
            tls,
        }
    }
}

/// A provider's confirmation, as the store records it.
impl From<Confirmation> for Confirmed {
    fn from(by: Confirmation) -> Self {
        match by {
            Confirmation::ServerDigest => Confirmed::ServerDigest,
            Confirmation::ReadBack => Confirmed::ReadBack,
        }
    }
}
