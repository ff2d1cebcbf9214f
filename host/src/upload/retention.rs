//! Local retention: delete a block only when every bucket's copy is confirmed
//! by evidence (a digest the service computed, or a read-back: never the
//! plugin's word alone), it was never hash-mismatched, it is acknowledged by a
//! block node when blocks are streamed to block nodes, and it is older than
//! the retention period.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{BlockStore, Confirmed, StoreError, now_ms};

/// What one retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Blocks deleted.
    pub deleted: u64,
    /// Blocks kept (too young, not yet safe everywhere, or mismatched).
    pub retained: u64,
    /// Of the blocks kept, those old enough and safe in every bucket by the
    /// plugins' word, but without the evidence retention requires from some
    /// bucket (`blockferry verify --deep` confirms them by reading back).
    pub unconfirmed: u64,
}

/// What block nodes have acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNodeAcks {
    /// Blocks are not streamed to block nodes: nothing to wait for.
    NotStreaming,
    /// Blocks are streamed; every block up to this one is acknowledged
    /// (`None`: none yet, so every block is kept).
    UpTo(Option<u64>),
}

impl BlockNodeAcks {
    fn covers(self, number: u64) -> bool {
        match self {
            BlockNodeAcks::NotStreaming => true,
            BlockNodeAcks::UpTo(acked) => acked.is_some_and(|a| number <= a),
        }
    }
}

/// One retention pass over the store: delete blocks older than `retention`
/// that are confirmed in every one of `buckets` with at least the evidence
/// `required` (and never mismatched) and, when streaming, acknowledged by a
/// block node.
pub fn run_retention(
    store: &Arc<BlockStore>,
    buckets: &[String],
    retention: Duration,
    required: Confirmed,
    acks: BlockNodeAcks,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if buckets.is_empty() && acks == BlockNodeAcks::NotStreaming {
        // With no bucket and no block node to be safe in, the local copy is the only one.
        return Ok(report);
    }
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    for n in store.numbers()? {
        let meta = match store.read_meta(n) {
            Ok(m) => m,
            Err(StoreError::NotFound(_) | StoreError::CorruptMeta { .. }) => {
                report.retained += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let names = || buckets.iter().map(String::as_str);
        if meta.created_at_ms <= cutoff && meta.confirmed_in_all(names(), required) && acks.covers(n) {
            store.delete_block(&meta)?;
            tracing::debug!(block = n, "retention deleted the local copy; it is confirmed in every bucket");
            report.deleted += 1;
        } else {
            report.retained += 1;
            if meta.created_at_ms <= cutoff && meta.safe_in_all(names()) && acks.covers(n) {
                report.unconfirmed += 1;
            }
        }
    }
    Ok(report)
}

/// What retention needs to know; a config reload replaces it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    /// The buckets a block must be safe in (a removed bucket is not required).
    pub buckets: Vec<String>,
    /// How long a block stays after it is safe.
    pub period: Duration,
    /// Time between passes.
    pub every: Duration,
    /// The weakest confirmation of a bucket's copy retention accepts.
    pub required: Confirmed,
}

/// Run retention passes forever with the settings in force at each pass.
pub fn spawn_retention(
    store: Arc<BlockStore>,
    settings: tokio::sync::watch::Receiver<RetentionSettings>,
    acks: impl Fn() -> BlockNodeAcks + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let every = settings.borrow().every;
            tokio::time::sleep(every).await;
            let (s, r, a) = (store.clone(), settings.borrow().clone(), acks());
            match tokio::task::spawn_blocking(move || run_retention(&s, &r.buckets, r.period, r.required, a)).await {
                Ok(Ok(r)) if r.deleted > 0 || r.unconfirmed > 0 => tracing::info!(
                    deleted = r.deleted,
                    retained = r.retained,
                    unconfirmed = r.unconfirmed,
                    "retention (unconfirmed: blocks kept because a bucket's copy is not confirmed by the \
                     service's digest or a read-back; `blockferry verify --deep` confirms them)"
                ),
                Ok(Err(e)) => tracing::error!("retention: {e}"),
                _ => {}
            }
        }
    })
}

impl RetentionSettings {
    /// The retention settings of `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            buckets: config.upload_buckets(),
            period: Duration::from_secs_f64(config.upload.local_retention_hours * 3600.0),
            every: Duration::from_secs(config.upload.retention_interval_secs),
            required: config.upload.verify_before_delete.required(),
        }
    }
}
