//! One bucket's upload loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::UploadConfig;
use super::{BucketStats, Target};
use crate::plugin::{BlockBody, BlockInfo, CallError, Outcome, PluginFailure, PutReport};
use crate::store::{BlockStore, BucketStatus, Confirmed, StoreError, md5_base64};
use crate::telemetry::now_ms;

/// What one upload attempt came to.
enum Attempt {
    /// Final for this bucket (safe, or hash mismatch), or nothing to do.
    Done,
    /// Failed; retry after backing off.
    Transient,
    /// Failed permanently; hold the bucket.
    Permanent,
}

/// One bucket's uploader.
pub(super) struct Worker {
    store: Arc<BlockStore>,
    /// The target and settings in force (a config reload replaces them).
    settings: watch::Receiver<(Target, UploadConfig)>,
    target: Target,
    config: UploadConfig,
    stats: Arc<BucketStats>,
    pending: BTreeSet<u64>,
    in_flight: BTreeSet<u64>,
    consecutive_failures: u32,
    paused_until: Option<Instant>,
}

impl Worker {
    pub(super) fn new(
        store: Arc<BlockStore>,
        mut settings: watch::Receiver<(Target, UploadConfig)>,
        stats: Arc<BucketStats>,
    ) -> Self {
        let (target, config) = settings.borrow_and_update().clone();
        let worker = Self {
            store,
            settings,
            target,
            config,
            stats,
            pending: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            consecutive_failures: 0,
            paused_until: None,
        };
        worker.update_pending();
        worker
    }

    fn update_pending(&self) {
        self.stats.pending.store((self.pending.len() + self.in_flight.len()) as u64, Ordering::Relaxed);
        let oldest = self.pending.first().into_iter().chain(self.in_flight.first()).min().copied();
        self.stats.oldest_pending.store(oldest.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Upload until the task is aborted (uploads in flight are abandoned).
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<u64>) {
        let mut tasks: JoinSet<(u64, Attempt)> = JoinSet::new();
        loop {
            let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
            while !paused && tasks.len() < self.target.concurrency.max(1) {
                let Some(n) = self.pending.pop_first() else { break };
                self.in_flight.insert(n);
                tasks.spawn(upload_one(
                    self.store.clone(),
                    self.target.clone(),
                    self.stats.clone(),
                    self.config.retry_attempts,
                    n,
                ));
            }
            self.update_pending();
            let wake =
                self.paused_until.filter(|_| paused).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Ok(()) = self.settings.changed() => {
                    // Uploads started from now on use the new target; those in flight finish with theirs.
                    (self.target, self.config) = self.settings.borrow_and_update().clone();
                    // New settings or credentials may be the fix for a held bucket: retry now.
                    self.paused_until = None;
                    self.consecutive_failures = 0;
                }
                Some(n) = rx.recv() => {
                    if !self.in_flight.contains(&n) {
                        self.pending.insert(n);
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let (n, attempt) = match joined {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(bucket = %self.target.name, "upload task failed: {e}");
                            continue;
                        }
                    };
                    self.in_flight.remove(&n);
                    self.settle(n, attempt);
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Record an attempt's result in the bucket's schedule.
    fn settle(&mut self, n: u64, attempt: Attempt) {
        match attempt {
            Attempt::Done => {
                self.consecutive_failures = 0;
            }
            Attempt::Transient => {
                self.pending.insert(n);
                self.consecutive_failures += 1;
                let exp = self.consecutive_failures.saturating_sub(1).min(20);
                let backoff =
                    self.config.retry_initial_backoff_ms.saturating_mul(1 << exp).min(self.config.retry_max_backoff_ms);
                self.paused_until = Some(Instant::now() + Duration::from_millis(backoff));
            }
            Attempt::Permanent => {
                self.pending.insert(n);
                let hold = Duration::from_secs(self.config.hold_after_permanent_error_secs);
                tracing::error!(
                    bucket = %self.target.name,
                    block = n,
                    "bucket held for {hold:?} after a permanent error; fix the bucket's settings or credentials"
                );
                self.paused_until = Some(Instant::now() + hold);
            }
        }
    }
}

/// Upload block `n` to the target once and record the outcome in `.meta`.
async fn upload_one(
    store: Arc<BlockStore>,
    target: Target,
    stats: Arc<BucketStats>,
    alert_after: u32,
    n: u64,
) -> (u64, Attempt) {
    let attempt = match try_upload(&store, &target, &stats, alert_after, n).await {
        Ok(a) => a,
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(bucket = %target.name, block = n, "cannot record the upload: {e}");
            Attempt::Transient
        }
    };
    (n, attempt)
}

async fn try_upload(
    store: &Arc<BlockStore>,
    target: &Target,
    stats: &BucketStats,
    alert_after: u32,
    n: u64,
) -> Result<Attempt, StoreError> {
    let meta = match store.meta_at_once(n) {
        Some(meta) => Ok(meta),
        None => blocking(store, move |s| s.meta(n)).await,
    };
    let meta = match meta {
        Err(StoreError::NotFound(_)) => {
            tracing::warn!(bucket = %target.name, block = n, "block vanished from the store before upload");
            return Ok(Attempt::Done);
        }
        other => other?,
    };
    if meta.status(&target.name).is_final() {
        return Ok(Attempt::Done);
    }
    let path = store.block_path(&meta);
    let body = BlockBody::open(&path).map_err(|error| StoreError::Io { op: "opening", path, error })?;
    let ext = meta.ext();
    let info = BlockInfo {
        number: n,
        size: meta.size,
        md5: meta.md5_bytes(),
        key: (target.key)(n, ext),
        content_type: match crate::store::Compression::of_name(ext).unwrap_or_default() {
            crate::store::Compression::None => "application/octet-stream",
            crate::store::Compression::Gzip => "application/gzip",
            crate::store::Compression::Zstd => "application/zstd",
        }
        .into(),
    };
    let started = Instant::now();
    let result = target.client.put_block_reported(&info, &body).await;
    let (status, attempt) = match result {
        Ok(PutReport { outcome, version, confirmed }) => {
            let confirmed = confirmed.map(Confirmed::from);
            stats.latency_us_total.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            stats.upload_seconds.observe(started.elapsed());
            let at_ms = now_ms();
            if outcome == Outcome::Uploaded {
                stats.uploaded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bucket = %target.name, block = n, key = %info.key, ?version, ?confirmed, "uploaded");
                (BucketStatus::Uploaded { at_ms, version, confirmed }, Attempt::Done)
            } else {
                stats.already_present.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bucket = %target.name, block = n, key = %info.key, ?confirmed, "already present");
                (BucketStatus::AlreadyPresent { at_ms, confirmed }, Attempt::Done)
            }
        }
        Err(CallError::Plugin(PluginFailure::HashMismatch(remote))) => {
            stats.hash_mismatches.fetch_add(1, Ordering::Relaxed);
            let remote_md5 = remote.md5.as_deref().map(md5_base64);
            tracing::error!(
                bucket = %target.name, block = n, key = %info.key, local_md5 = %meta.md5,
                remote_md5 = remote_md5.as_deref().unwrap_or("unknown"),
                "hash mismatch: the bucket holds different content for this block; the local copy is kept forever"
            );
            (BucketStatus::HashMismatch { remote_md5 }, Attempt::Done)
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            let attempts = meta.status(&target.name).attempts() + 1;
            let permanent = !e.is_retryable();
            if permanent {
                stats.permanent_failures.fetch_add(1, Ordering::Relaxed);
            }
            if permanent || attempts >= alert_after {
                tracing::error!(bucket = %target.name, block = n, key = %info.key, attempts, "upload failed: {e}");
            } else {
                tracing::warn!(bucket = %target.name, block = n, key = %info.key, attempts, "upload failed, will retry: {e}");
            }
            let status = BucketStatus::Failed { attempts, last_error: e.to_string(), permanent };
            (status, if permanent { Attempt::Permanent } else { Attempt::Transient })
        }
    };
    let name = target.name.clone();
    let mismatch = matches!(status, BucketStatus::HashMismatch { .. });
    let record = move |m: &mut crate::store::BlockMeta| {
        m.buckets.insert(name, status);
        m.hash_mismatch |= mismatch;
    };
    // In place when the `.meta` reads at once (a few microseconds); on the
    // blocking pool when it needs a repair first.
    if !store.record_outcome_at_once(n, record.clone())? {
        blocking(store, move |s| s.record_outcome(n, record)).await?;
    }
    Ok(attempt)
}

/// Run a store operation on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<BlockStore>,
    f: impl FnOnce(&BlockStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.expect("store task panicked")
}
