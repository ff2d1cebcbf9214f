//! Bucket upkeep, at start-up and then every `health_check_interval_secs`:
//! each bucket's health check (the bucket exists and its credentials work),
//! and the cleanup of uploads abandoned in it (an S3 multipart upload a killed
//! process never completed costs money until it is aborted). Both need the
//! plugin's `bucket-reader`; a bucket whose plugin has none is left alone.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::UploadConfig;
use crate::plugin::CallError;
use crate::telemetry::now_ms;

use super::bucket::{BucketStats, Buckets, Health, Target, read};
use crate::sync::{Locked, ReadWrite};

/// Run upkeep passes until the task is aborted: the first when `wake` is
/// first notified (once the manager has registered its buckets), then every
/// `health_check_interval_secs`, and at once whenever `wake` is notified again
/// (a reload changed the buckets: a fixed bucket need not wait for the next pass).
pub(super) fn spawn_upkeep(
    buckets: Buckets,
    config: Arc<RwLock<UploadConfig>>,
    wake: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        wake.notified().await;
        loop {
            let targets: Vec<(Target, Arc<BucketStats>)> =
                read(&buckets).iter().map(|r| (r.settings.borrow().0.clone(), r.stats.clone())).collect();
            let (every, abandoned_after) = {
                let c = config.reading();
                (
                    Duration::from_secs(c.health_check_interval_secs.max(1)),
                    Duration::from_secs(c.abandoned_upload_age_secs),
                )
            };
            let passes = targets.iter().map(|(target, stats)| async move {
                check_health(target, stats).await;
                if matches!(stats.health(), Health::Healthy { .. }) {
                    clean_up(target, stats, abandoned_after).await;
                }
            });
            futures::future::join_all(passes).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {}
            }
        }
    })
}

/// Check `target`'s health and record it, logging each change.
async fn check_health(target: &Target, stats: &BucketStats) {
    let health = if !target.client.can_read() {
        Health::Unchecked
    } else {
        match target.client.health().await {
            Ok(()) => Health::Healthy { at_ms: now_ms() },
            Err(e) => Health::Unhealthy { at_ms: now_ms(), error: e.to_string() },
        }
    };
    let mut current = stats.health.locked();
    match (&*current, &health) {
        (_, Health::Unhealthy { error, .. }) => {
            tracing::error!(bucket = %target.name, "bucket unhealthy: {error}; uploads to it fail until it is fixed")
        }
        (Health::Unhealthy { .. }, Health::Healthy { .. }) => {
            tracing::info!(bucket = %target.name, "bucket healthy again")
        }
        (Health::Unknown, Health::Unchecked) => tracing::info!(
            bucket = %target.name,
            "its plugin exports no bucket-reader: no health checks and no cleanup of abandoned uploads for this bucket"
        ),
        _ => {}
    }
    *current = health;
}

/// Abort the uploads under `target`'s key prefix started more than `age` ago.
async fn clean_up(target: &Target, stats: &BucketStats, age: Duration) {
    let fail = |e: CallError| tracing::warn!(bucket = %target.name, "cleanup of abandoned uploads: {e}");
    let uploads = match target.client.incomplete_uploads(&target.prefix).await {
        Ok(uploads) => uploads,
        Err(e) => return fail(e),
    };
    let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
    for upload in uploads.iter().filter(|u| u.started_ms <= cutoff) {
        match target.client.abort_upload(upload).await {
            Ok(()) => {
                stats.aborted_uploads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    bucket = %target.name, key = %upload.key, id = %upload.id, started_ms = upload.started_ms,
                    "aborted an abandoned upload"
                );
            }
            Err(e) => fail(e),
        }
    }
}
