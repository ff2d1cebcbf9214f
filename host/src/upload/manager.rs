//! The manager of the buckets' upload workers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::UploadConfig;
use super::bucket::{BucketStats, Buckets, Running, Target, notify, read, write};
use crate::store::{BlockStore, StoreError};
use crate::sync::ReadWrite;

/// What [`UploadManager::reconfigure`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconfigured {
    /// Buckets started (with the blocks of the store not yet final in them).
    pub added: Vec<String>,
    /// Buckets stopped (their pending entries in `.meta` are kept).
    pub removed: Vec<String>,
}

/// A running upload manager. Buckets can be added, removed and changed
/// while it runs ([`UploadManager::reconfigure`]).
pub struct UploadManager {
    store: Arc<BlockStore>,
    buckets: Buckets,
    config: Arc<RwLock<UploadConfig>>,
    upkeep: JoinHandle<()>,
    /// Wakes the upkeep task for a pass now.
    upkeep_now: Arc<tokio::sync::Notify>,
}

impl UploadManager {
    /// Start one worker per target, each first resuming the blocks of the
    /// store that are not final in its bucket (start-up recovery).
    pub fn start(store: Arc<BlockStore>, targets: Vec<Target>, config: UploadConfig) -> Result<Self, StoreError> {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let backlog = backlog(&store, &names)?;
        let buckets = Buckets::default();
        let shared_config = Arc::new(RwLock::new(config.clone()));
        let upkeep_now = Arc::new(tokio::sync::Notify::new());
        let upkeep = super::upkeep::spawn_upkeep(buckets.clone(), shared_config.clone(), upkeep_now.clone());
        let manager = Self { store, buckets, config: shared_config, upkeep, upkeep_now };
        for (target, initial) in targets.into_iter().zip(backlog) {
            let (queue, rx) = mpsc::unbounded_channel();
            let running = manager.spawn(target, config.clone(), queue, rx, initial);
            write(&manager.buckets).push(running);
        }
        // The first health checks and cleanup, now that the buckets are there.
        manager.upkeep_now.notify_one();
        Ok(manager)
    }

    /// Start a worker for `target` with `initial` blocks to upload.
    fn spawn(
        &self,
        target: Target,
        config: UploadConfig,
        queue: mpsc::UnboundedSender<u64>,
        rx: mpsc::UnboundedReceiver<u64>,
        initial: Vec<u64>,
    ) -> Running {
        if !initial.is_empty() {
            tracing::info!(bucket = %target.name, blocks = initial.len(), "resuming uploads");
        }
        let stats = Arc::new(BucketStats::default());
        let name = target.name.clone();
        let (settings, settings_rx) = watch::channel((target, config));
        let worker = super::worker::Worker::new(self.store.clone(), settings_rx, stats.clone(), initial);
        Running { name, queue, stats, settings, task: tokio::spawn(worker.run(rx)) }
    }

    /// Make the buckets those of `targets` (config reload): buckets no longer
    /// named stop (uploads in flight are abandoned, their blocks stay pending
    /// in `.meta`); new ones start with every stored block not final in them;
    /// the others take their new target and settings for the uploads they
    /// start from now on (uploads in flight finish with the old ones).
    pub async fn reconfigure(&self, targets: Vec<Target>, config: UploadConfig) -> Result<Reconfigured, StoreError> {
        let mut changes = Reconfigured::default();
        *self.config.writing() = config.clone();
        let stopped: Vec<Running> = {
            let mut buckets = write(&self.buckets);
            let (kept, stopped) =
                std::mem::take(&mut *buckets).into_iter().partition(|r| targets.iter().any(|t| t.name == r.name));
            *buckets = kept;
            stopped
        };
        for r in stopped {
            r.task.abort();
            let _ = r.task.await;
            changes.removed.push(r.name);
        }
        let mut order = Vec::new();
        for target in targets {
            order.push(target.name.clone());
            let existing = read(&self.buckets).iter().find(|r| r.name == target.name).map(|r| r.settings.clone());
            if let Some(settings) = existing {
                settings.send_replace((target, config.clone()));
                continue;
            }
            // Queue first, then scan: a block stored meanwhile is in one or both.
            let (queue, rx) = mpsc::unbounded_channel();
            let (store, name) = (self.store.clone(), target.name.clone());
            let initial = tokio::task::spawn_blocking(move || backlog(&store, &[name.as_str()]))
                .await
                .expect("backlog scan panicked")?
                .pop()
                .unwrap_or_default();
            changes.added.push(target.name.clone());
            let running = self.spawn(target, config.clone(), queue, rx, initial);
            write(&self.buckets).push(running);
        }
        write(&self.buckets).sort_by_key(|r| order.iter().position(|n| *n == r.name));
        // Health checks and cleanup of the new settings at once.
        self.upkeep_now.notify_one();
        Ok(changes)
    }

    /// Queue a newly stored block for every bucket.
    pub fn block_stored(&self, number: u64) {
        notify(&self.buckets, number);
    }

    /// A handle that queues newly stored blocks for every bucket (those of
    /// the moment the block is stored), for a stage that outlives a borrow of
    /// the manager (ingest).
    pub fn notifier(&self) -> Arc<dyn Fn(u64) + Send + Sync> {
        let buckets = self.buckets.clone();
        Arc::new(move |number| notify(&buckets, number))
    }

    /// Counters per bucket name, in config order.
    pub fn stats(&self) -> Vec<(String, Arc<BucketStats>)> {
        read(&self.buckets).iter().map(|r| (r.name.clone(), r.stats.clone())).collect()
    }

    /// The buckets' current targets, in config order.
    pub fn targets(&self) -> Vec<(Target, Arc<BucketStats>)> {
        read(&self.buckets).iter().map(|r| (r.settings.borrow().0.clone(), r.stats.clone())).collect()
    }

    /// Blocks not yet final in some bucket (waiting or in flight).
    pub fn pending(&self) -> u64 {
        read(&self.buckets).iter().map(|r| r.stats.pending.load(Ordering::Relaxed)).sum()
    }

    /// Stop the workers; uploads in flight are abandoned (their blocks stay
    /// pending in `.meta` and resume at the next start).
    pub async fn shutdown(&self) {
        self.upkeep.abort();
        let stopped = std::mem::take(&mut *write(&self.buckets));
        for r in stopped {
            r.task.abort();
            let _ = r.task.await;
        }
    }
}

/// For each of `names`, the stored blocks not final in that bucket, in one
/// pass over the `.meta` files.
fn backlog(store: &BlockStore, names: &[&str]) -> Result<Vec<Vec<u64>>, StoreError> {
    let mut backlog: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
    for n in store.numbers()? {
        let meta = match store.read_meta(n) {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for (i, name) in names.iter().enumerate() {
            if !meta.status(name).is_final() {
                backlog[i].push(n);
            }
        }
    }
    Ok(backlog)
}
