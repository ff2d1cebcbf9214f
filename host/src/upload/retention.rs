//! Local retention: delete a block only when every bucket's copy is confirmed
//! by evidence (a digest the service computed, or a read-back: never the
//! plugin's word alone), it was never hash-mismatched, it is acknowledged by a
//! block node when blocks are streamed to block nodes, and it is older than
//! the retention period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::store::{BlockMeta, BlockStore, BucketStatus, Confirmed, StoreError};
use crate::sync::Locked;
use crate::telemetry::now_ms;

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
    /// The blocks left in the store, counted per bucket and state.
    pub census: CensusCounts,
}

/// One bucket's blocks of the store, by state, as counted from the `.meta` files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockCounts {
    /// Safe in the bucket, confirmed by the evidence retention requires.
    pub confirmed: u64,
    /// Safe by the plugin's word only: retention keeps them.
    pub unconfirmed: u64,
    /// Not uploaded yet, no attempt failed (a bucket a `.meta` does not name
    /// is pending there).
    pub pending: u64,
    /// Some attempt failed; uploading goes on.
    pub failed: u64,
    /// The bucket holds different content under the block's key: kept forever.
    pub hash_mismatch: u64,
}

impl BlockCounts {
    fn add(&mut self, status: &BucketStatus, required: Confirmed) {
        match status {
            s if s.is_confirmed(required) => self.confirmed += 1,
            s if s.is_safe() => self.unconfirmed += 1,
            BucketStatus::Pending => self.pending += 1,
            BucketStatus::Failed { .. } => self.failed += 1,
            _ => self.hash_mismatch += 1,
        }
    }
}

/// The store's blocks counted per bucket and state from the `.meta` files.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CensusCounts {
    /// Per bucket name (the buckets in force when counted).
    pub buckets: BTreeMap<String, BlockCounts>,
    /// Blocks any bucket (also one removed from the config since) reported
    /// with different content: kept forever.
    pub mismatched_blocks: u64,
    /// When they were counted, in Unix milliseconds.
    pub at_ms: u64,
}

impl CensusCounts {
    fn add(&mut self, meta: &BlockMeta, buckets: &[String], required: Confirmed) {
        for b in buckets {
            self.buckets.entry(b.clone()).or_default().add(&meta.status(b), required);
        }
        if meta.hash_mismatch {
            self.mismatched_blocks += 1;
        }
    }
}

/// The last count of the store's blocks per bucket and state, shared by the
/// retention task (which counts at start-up and at every pass) and the
/// operators' endpoints. It survives restarts because it is counted from
/// the `.meta` files, not from this process's events.
#[derive(Debug, Default)]
pub struct Census {
    counts: Mutex<Option<CensusCounts>>,
}

impl Census {
    /// The last count; `None` until the first is done.
    pub fn get(&self) -> Option<CensusCounts> {
        self.counts.locked().clone()
    }

    /// Replace the count.
    pub fn set(&self, counts: CensusCounts) {
        *self.counts.locked() = Some(counts);
    }
}

/// What counts the store's blocks into `census` during the start-up check
/// of the store ([`UploadManager::start_checking`](super::UploadManager::start_checking)):
/// the visitor of each block's metadata, and what sets the count once the
/// check is done (unless a retention pass counted since). Until then the
/// census is not counted: [`Census::get`] is `None`.
pub fn census_of_check(
    census: Arc<Census>,
    buckets: Vec<String>,
    required: Confirmed,
) -> (
    impl FnMut(&BlockMeta) + Send + 'static,
    impl FnOnce(Result<crate::store::CheckReport, StoreError>) + Send + 'static,
) {
    let counts = Arc::new(Mutex::new(CensusCounts::default()));
    for b in &buckets {
        counts.locked().buckets.entry(b.clone()).or_default();
    }
    let counting = counts.clone();
    let visit = move |meta: &BlockMeta| counting.locked().add(meta, &buckets, required);
    let done = move |checked: Result<_, StoreError>| {
        if checked.is_ok() {
            let mut counts = std::mem::take(&mut *counts.locked());
            counts.at_ms = now_ms();
            let mut current = census.counts.locked();
            if current.is_none() {
                *current = Some(counts);
            }
        }
    };
    (visit, done)
}

/// Count the store's blocks per bucket of `buckets` and state, deleting nothing.
pub fn count_blocks(store: &BlockStore, buckets: &[String], required: Confirmed) -> Result<CensusCounts, StoreError> {
    let mut counts = CensusCounts { at_ms: now_ms(), ..CensusCounts::default() };
    for b in buckets {
        counts.buckets.entry(b.clone()).or_default();
    }
    for n in store.numbers()? {
        match store.read_meta(n) {
            Ok(meta) => counts.add(&meta, buckets, required),
            Err(StoreError::NotFound(_)) => {}
            Err(StoreError::CorruptMeta { .. }) => {
                for b in buckets {
                    counts.buckets.entry(b.clone()).or_default().pending += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(counts)
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
        report.census = count_blocks(store, buckets, required)?;
        return Ok(report);
    }
    report.census.at_ms = now_ms();
    for b in buckets {
        report.census.buckets.entry(b.clone()).or_default();
    }
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    for n in store.numbers()? {
        let meta = match store.read_meta(n) {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => continue,
            Err(StoreError::CorruptMeta { .. }) => {
                report.retained += 1;
                for b in buckets {
                    report.census.buckets.entry(b.clone()).or_default().pending += 1;
                }
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
            report.census.add(&meta, buckets, required);
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

/// Run retention passes forever, the first after one period `every`, with
/// the settings in force at each pass, each updating `census` (which the
/// start-up check counts first: [`census_of_check`]).
pub fn spawn_retention(
    store: Arc<BlockStore>,
    settings: tokio::sync::watch::Receiver<RetentionSettings>,
    acks: impl Fn() -> BlockNodeAcks + Send + 'static,
    census: Arc<Census>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let every = settings.borrow().every;
            tokio::time::sleep(every).await;
            let (s, r, a) = (store.clone(), settings.borrow().clone(), acks());
            let result =
                tokio::task::spawn_blocking(move || run_retention(&s, &r.buckets, r.period, r.required, a)).await;
            if let Ok(Ok(report)) = &result {
                census.set(report.census.clone());
            }
            match result {
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
