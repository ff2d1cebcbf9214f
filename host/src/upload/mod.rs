//! The upload manager: every stored block goes to every bucket. Buckets work
//! in parallel, each with bounded concurrency and in block order; outcomes are
//! recorded in the block's `.meta`. A transient failure backs the bucket off
//! (exponentially, capped) and retries; a permanent one holds the bucket and
//! alerts; a hash mismatch is final and the local block is kept forever.
//!
//! The manager holds only block numbers in memory, never blocks or their
//! metadata, so a backlog of hundreds of thousands of blocks is cheap.

mod retention;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use retention::{BlockNodeAcks, RetentionReport, run_retention};

use crate::config::UploadConfig;
use crate::plugin::BucketClient;
use crate::store::{BlockStore, StoreError};

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
    pub upload_seconds: crate::metrics::Histogram,
    /// The oldest block not yet final in the bucket (`u64::MAX`: none).
    pub oldest_pending: AtomicU64,
}

impl BucketStats {
    /// Blocks safe in the bucket (uploaded + already present) counted so far.
    pub fn safe(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed) + self.already_present.load(Ordering::Relaxed)
    }
}

/// A running upload manager.
pub struct UploadManager {
    senders: Vec<(String, mpsc::UnboundedSender<u64>)>,
    stats: Vec<(String, Arc<BucketStats>)>,
    shutdown: watch::Sender<bool>,
    workers: JoinSet<()>,
}

impl UploadManager {
    /// Start one worker per target, each first resuming the blocks of the
    /// store that are not final in its bucket (start-up recovery).
    pub fn start(store: Arc<BlockStore>, targets: Vec<Target>, config: UploadConfig) -> Result<Self, StoreError> {
        let numbers = store.numbers()?;
        let mut backlog: Vec<Vec<u64>> = vec![Vec::new(); targets.len()];
        for &n in &numbers {
            let meta = match store.read_meta(n) {
                Ok(m) => m,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for (i, t) in targets.iter().enumerate() {
                if !meta.status(&t.name).is_final() {
                    backlog[i].push(n);
                }
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        let mut senders = Vec::new();
        let mut stats = Vec::new();
        for (target, initial) in targets.into_iter().zip(backlog) {
            let (tx, rx) = mpsc::unbounded_channel();
            let s = Arc::new(BucketStats::default());
            if !initial.is_empty() {
                tracing::info!(bucket = %target.name, blocks = initial.len(), "resuming uploads");
            }
            senders.push((target.name.clone(), tx));
            stats.push((target.name.clone(), s.clone()));
            let w = worker::Worker::new(store.clone(), target, config.clone(), s, initial);
            workers.spawn(w.run(rx, shutdown_rx.clone()));
        }
        Ok(Self { senders, stats, shutdown, workers })
    }

    /// Queue a newly stored block for every bucket.
    pub fn block_stored(&self, number: u64) {
        for (_, tx) in &self.senders {
            let _ = tx.send(number);
        }
    }

    /// A handle that queues newly stored blocks for every bucket, for a stage
    /// that outlives a borrow of the manager (ingest).
    pub fn notifier(&self) -> Arc<dyn Fn(u64) + Send + Sync> {
        let senders: Vec<_> = self.senders.iter().map(|(_, tx)| tx.clone()).collect();
        Arc::new(move |number| {
            for tx in &senders {
                let _ = tx.send(number);
            }
        })
    }

    /// Counters per bucket name.
    pub fn stats(&self) -> &[(String, Arc<BucketStats>)] {
        &self.stats
    }

    /// Blocks not yet final in some bucket (waiting or in flight).
    pub fn pending(&self) -> u64 {
        self.stats.iter().map(|(_, s)| s.pending.load(Ordering::Relaxed)).sum()
    }

    /// Stop the workers; uploads in flight are abandoned (their blocks stay
    /// pending in `.meta` and resume at the next start).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.workers.join_next().await.is_some() {}
    }
}
