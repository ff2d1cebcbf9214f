//! Live changes without a restart. On SIGHUP, and when the config file, the
//! credentials file, a configured plugin file or a bucket's TLS file
//! (`tls_ca_file`, ...) changes (polled, then given
//! time to settle: editors and `cp` write in steps), the config is loaded and
//! validated completely — every new or changed bucket's plugin compiled,
//! checked and opened — before anything changes. An invalid config or a
//! plugin that fails its check is rejected with the same errors as at
//! start-up; the running config stays in force (logged, and counted in
//! `blockferry_config_reloads_rejected`).
//!
//! What a reload changes: buckets added (their backlog drains), removed
//! (their pending entries stay in `.meta`; re-adding one resumes it) or
//! changed (settings, credentials, TLS files, plugin file, concurrency, key
//! template);
//! `[upload]` retries and retention; the block-node list; the log level.
//! A changed bucket's uploads in flight finish on the old plugin instances;
//! uploads started after the swap use the new ones, so no block is skipped or
//! uploaded twice. The other sections take effect at the next start (a reload
//! that changes them says so).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BucketConfig, Config, ConfigError};
use crate::ingest::Ingest;
use crate::plugin::PluginRuntime;
use crate::publish::Publisher;
use crate::store::StoreError;
use crate::telemetry::now_ms;
use crate::upload::{OpenError, RetentionSettings, Target, UploadManager};

/// How long the watched files must stay unchanged before the config is read.
const SETTLE: Duration = Duration::from_millis(200);

/// The config generation in force, for `/metrics`, `/api/status` and
/// `blockferry status`.
#[derive(Debug)]
pub struct ConfigInForce {
    generation: AtomicU64,
    loaded_at_ms: AtomicU64,
    rejected: AtomicU64,
}

impl Default for ConfigInForce {
    /// Generation 1, loaded now.
    fn default() -> Self {
        Self { generation: AtomicU64::new(1), loaded_at_ms: AtomicU64::new(now_ms()), rejected: AtomicU64::new(0) }
    }
}

impl ConfigInForce {
    /// The generation in force: 1 at start, +1 per reload applied.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// When the config in force was loaded (Unix ms).
    pub fn loaded_at_ms(&self) -> u64 {
        self.loaded_at_ms.load(Ordering::Relaxed)
    }

    /// Reloads rejected since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn applied(&self) -> u64 {
        self.loaded_at_ms.store(now_ms(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Why a reload was rejected (nothing changed) or failed part-way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new or changed bucket's plugin failed its check or refused its settings.
    #[error(transparent)]
    Bucket(#[from] OpenError),
    /// The store could not be scanned for an added bucket's backlog (the
    /// buckets before it were applied; the reload is retried at the next change).
    #[error("applying the reload: {0}")]
    Store(#[from] StoreError),
}

/// What a reload applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now in force.
    pub generation: u64,
    /// Buckets started.
    pub added: Vec<String>,
    /// Buckets stopped.
    pub removed: Vec<String>,
    /// Buckets reopened with new settings or credentials (same plugin).
    pub reopened: Vec<String>,
    /// Buckets whose plugin component was replaced.
    pub swapped: Vec<String>,
    /// Changed sections that take effect at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// The stages a reload reconfigures.
pub struct Stages {
    /// The upload manager (buckets, retries).
    pub uploads: Arc<UploadManager>,
    /// Ingest (the buckets new blocks are pending in).
    pub ingest: Arc<Ingest>,
    /// The publisher, when streaming to block nodes.
    pub publisher: Option<Arc<Publisher>>,
    /// Retention's settings.
    pub retention: watch::Sender<RetentionSettings>,
    /// Applies a log level (`[log] level`).
    pub log_level: Box<dyn Fn(&str) + Send + Sync>,
}

/// The config in force and the buckets opened for it.
struct Running {
    config: Config,
    buckets: HashMap<String, (BucketConfig, Target)>,
}

/// Applies config reloads to a running host.
pub struct Live {
    path: PathBuf,
    runtime: Arc<PluginRuntime>,
    stages: Stages,
    in_force: Arc<ConfigInForce>,
    running: tokio::sync::Mutex<Running>,
}

impl Live {
    /// Reload `path` into `stages`; `config` is in force, its buckets opened as `targets`.
    pub fn new(
        path: PathBuf,
        runtime: Arc<PluginRuntime>,
        config: Config,
        targets: &[Target],
        stages: Stages,
        in_force: Arc<ConfigInForce>,
    ) -> Self {
        let buckets = config
            .buckets
            .iter()
            .filter_map(|b| Some((b.name.clone(), (b.clone(), targets.iter().find(|t| t.name == b.name)?.clone()))))
            .collect();
        Self { path, runtime, stages, in_force, running: tokio::sync::Mutex::new(Running { config, buckets }) }
    }

    /// The config file reloaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load the config file and apply it, or reject it and keep the running one.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload().await;
        match &result {
            Ok(r) => tracing::info!(
                config = %self.path.display(),
                generation = r.generation,
                added = ?r.added,
                removed = ?r.removed,
                reopened = ?r.reopened,
                swapped = ?r.swapped,
                "config reloaded"
            ),
            Err(e) => {
                self.in_force.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(config = %self.path.display(), "config reload rejected, the running config stays in force: {e}");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().await;
        let path = self.path.clone();
        let new = tokio::task::spawn_blocking(move || Config::load(&path)).await.expect("config load panicked")?;
        // The writer mode is fixed until the next start.
        let uploads = running.config.mode.uploads();
        let mut reloaded = Reloaded { needs_restart: new.restart_only_changes(&running.config), ..Default::default() };

        // Validate: open every new or changed bucket before changing anything.
        let mut targets = Vec::new();
        // (bucket, old digest, new digest) of each plugin replaced.
        let mut swaps = Vec::new();
        for bucket in new.buckets.iter().filter(|_| uploads) {
            let sha256 = file_sha256(&bucket.plugin).await;
            match running.buckets.get(&bucket.name) {
                Some((old, target)) if old == bucket && sha256.as_deref() == Some(&target.client.plugin().sha256) => {
                    targets.push(target.clone());
                }
                old => {
                    let target = Target::open(&self.runtime, bucket, new.denied_networks()).await?;
                    let digest = |t: &Target| t.client.plugin().sha256.clone();
                    match old {
                        Some((_, o)) if digest(o) != digest(&target) => {
                            reloaded.swapped.push(bucket.name.clone());
                            swaps.push((bucket.name.clone(), digest(o), digest(&target)));
                        }
                        Some(_) => reloaded.reopened.push(bucket.name.clone()),
                        None => {}
                    }
                    targets.push(target);
                }
            }
        }

        // Apply. Ingest first: a block stored from now on is pending in the new buckets.
        let names = if uploads { new.buckets.iter().map(|b| b.name.clone()).collect() } else { Vec::new() };
        self.stages.ingest.set_buckets(names.clone());
        self.log_swaps(&swaps);
        let changes = self.stages.uploads.reconfigure(targets.clone(), new.upload.clone()).await?;
        (reloaded.added, reloaded.removed) = (changes.added, changes.removed);
        self.stages.retention.send_replace(RetentionSettings { buckets: names, ..retention_settings(&new) });
        match &self.stages.publisher {
            Some(p) if new.block_nodes != running.config.block_nodes => p.set_nodes(new.block_nodes.clone()),
            None if !new.block_nodes.is_empty() && running.config.block_nodes.is_empty() => {
                reloaded.needs_restart.push("[[block_nodes]] (streaming was off at start)")
            }
            _ => {}
        }
        (self.stages.log_level)(&new.log.level);
        if !reloaded.needs_restart.is_empty() {
            tracing::warn!(
                sections = ?reloaded.needs_restart,
                "these changed settings take effect at the next start; the running values stay until then"
            );
        }
        for name in &reloaded.removed {
            tracing::info!(bucket = %name, "bucket removed: its pending blocks stay recorded and resume if it is added again");
        }
        running.buckets = new.buckets.iter().zip(targets).map(|(b, t)| (b.name.clone(), (b.clone(), t))).collect();
        running.config = new;
        reloaded.generation = self.in_force.applied();
        Ok(reloaded)
    }

    /// Count and log each plugin swap (the old and new digests).
    fn log_swaps(&self, swaps: &[(String, String, String)]) {
        let stats = self.stages.uploads.stats();
        for (name, old, new) in swaps {
            if let Some((_, s)) = stats.iter().find(|(n, _)| n == name) {
                s.plugin_swaps.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                bucket = %name,
                old_sha256 = %old,
                new_sha256 = %new,
                "plugin swapped: uploads in flight finish on the old component, new uploads use the new one"
            );
        }
    }

    /// Modification stamps of the files a reload reads: the config, the
    /// credentials file, every configured plugin and TLS file.
    async fn stamps(&self) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
        let mut paths = vec![self.path.clone()];
        {
            let running = self.running.lock().await;
            paths.extend(running.config.credentials.clone());
            paths.extend(running.config.buckets.iter().map(|b| b.plugin.clone()));
            paths.extend(
                running.config.buckets.iter().flat_map(|b| b.tls_settings().files().cloned().collect::<Vec<_>>()),
            );
        }
        paths
            .into_iter()
            .map(|p| {
                let stamp = std::fs::metadata(&p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
                (p, stamp)
            })
            .collect()
    }
}

/// SHA-256 of a file (`None` if it cannot be read: the bucket is reopened,
/// which reports the error).
async fn file_sha256(path: &Path) -> Option<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::read(path).ok().map(|b| crate::plugin::sha256_hex(&b)))
        .await
        .ok()
        .flatten()
}

/// Reload on SIGHUP, and when a watched file changes (checked every `poll`).
pub fn watch(live: Arc<Live>, poll: Duration) -> std::io::Result<JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut seen = live.stamps().await;
        loop {
            let signalled = tokio::select! {
                _ = tokio::time::sleep(poll) => false,
                _ = hangup.recv() => true,
            };
            let mut now = live.stamps().await;
            if !signalled {
                if now == seen {
                    continue;
                }
                // Wait until the files stop changing.
                loop {
                    tokio::time::sleep(SETTLE).await;
                    let again = live.stamps().await;
                    if again == now {
                        break;
                    }
                    now = again;
                }
            } else {
                tracing::info!(config = %live.path().display(), "SIGHUP: reloading the config");
            }
            let _ = live.reload().await;
            seen = live.stamps().await;
        }
    }))
}

/// Without a config file there is nothing to reload: SIGHUP says so instead
/// of stopping the process.
pub fn ignore_hangup() -> std::io::Result<JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::warn!(
                "SIGHUP: nothing to reload, blockferry runs on the embedded default (start it with --config)"
            );
        }
    }))
}

/// The retention settings of `config`.
pub fn retention_settings(config: &Config) -> RetentionSettings {
    RetentionSettings {
        buckets: config.upload_buckets(),
        period: Duration::from_secs_f64(config.upload.local_retention_hours * 3600.0),
        every: Duration::from_secs(config.upload.retention_interval_secs),
        required: config.upload.verify_before_delete.required(),
    }
}
