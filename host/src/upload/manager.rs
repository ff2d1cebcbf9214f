//! The manager of the buckets' upload workers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::UploadConfig;
use super::bucket::{BucketStats, Buckets, Running, Target, notify, read, write};
use crate::store::{BlockMeta, BlockStore, CheckReport, StoreError};
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
    /// Set at shutdown: the start-up check stops.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl UploadManager {
    /// Start one worker per target, and the start-up check of the store in
    /// the background ([`start_checking`](Self::start_checking)), which
    /// queues each stored block not final in a bucket to its worker as it
    /// finds it.
    pub fn start(store: Arc<BlockStore>, targets: Vec<Target>, config: UploadConfig) -> Result<Self, StoreError> {
        Ok(Self::start_checking(store, targets, config, |_| {}, |_| {}))
    }

    /// [`start`](Self::start), with the start-up check also handing every
    /// block's metadata to `visit`, then its report to `done`. The check
    /// reads each `.meta` once and rebuilds those a power cut tore
    /// ([`BlockStore::check_metas`]); it runs on the blocking pool, so the
    /// workers start, and the store takes blocks, without waiting for it.
    /// It stops at [`shutdown`](Self::shutdown).
    pub fn start_checking(
        store: Arc<BlockStore>,
        targets: Vec<Target>,
        config: UploadConfig,
        mut visit: impl FnMut(&BlockMeta) + Send + 'static,
        done: impl FnOnce(Result<CheckReport, StoreError>) + Send + 'static,
    ) -> Self {
        // A `.meta` rebuilt by the check is pending in these buckets (and, implicitly, in any other).
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let manager = Self::start_workers(store, targets, config);
        let store = manager.store.clone();
        let mut resumer = Resumer { buckets: manager.buckets.clone(), queued: Default::default() };
        let stopping = manager.stopping.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let checked = store.check_metas(&names, |meta| {
                resumer.found(meta);
                visit(meta);
                !stopping.load(Ordering::Relaxed)
            });
            match &checked {
                Ok(report) if stopping.load(Ordering::Relaxed) => {
                    tracing::info!(blocks = report.blocks, "start-up check stopped by the shutdown")
                }
                Ok(report) => tracing::info!(
                    blocks = report.blocks,
                    rebuilt_meta = report.rebuilt_meta,
                    seconds = started.elapsed().as_secs_f64(),
                    "store checked: every .meta read"
                ),
                Err(e) => tracing::error!("checking the store's .meta files: {e}"),
            }
            resumer.finish();
            done(checked);
        });
        manager
    }

    /// Start one worker per target, with nothing queued.
    fn start_workers(store: Arc<BlockStore>, targets: Vec<Target>, config: UploadConfig) -> Self {
        let buckets = Buckets::default();
        let shared_config = Arc::new(RwLock::new(config.clone()));
        let upkeep_now = Arc::new(tokio::sync::Notify::new());
        let upkeep = super::upkeep::spawn_upkeep(buckets.clone(), shared_config.clone(), upkeep_now.clone());
        let stopping = Arc::default();
        let manager = Self { store, buckets, config: shared_config, upkeep, upkeep_now, stopping };
        for target in targets {
            let (queue, rx) = mpsc::unbounded_channel();
            let running = manager.spawn(target, config.clone(), queue, rx);
            write(&manager.buckets).push(running);
        }
        // The first health checks and cleanup, now that the buckets are there.
        manager.upkeep_now.notify_one();
        manager
    }

    /// Start a worker for `target`, uploading the blocks `queue` is sent.
    fn spawn(
        &self,
        target: Target,
        config: UploadConfig,
        queue: mpsc::UnboundedSender<u64>,
        rx: mpsc::UnboundedReceiver<u64>,
    ) -> Running {
        let stats = Arc::new(BucketStats::default());
        let name = target.name.clone();
        let (settings, settings_rx) = watch::channel((target, config));
        let worker = super::worker::Worker::new(self.store.clone(), settings_rx, stats.clone());
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
            let (store, name, backlog) = (self.store.clone(), target.name.clone(), queue.clone());
            changes.added.push(target.name.clone());
            let running = self.spawn(target, config.clone(), queue, rx);
            write(&self.buckets).push(running);
            // The bucket's uploads start at once; its backlog is queued as it is found.
            tokio::task::spawn_blocking(move || match queue_backlog(&store, &name, &backlog) {
                Ok(blocks) if blocks > 0 => tracing::info!(bucket = %name, blocks, "resuming uploads"),
                Ok(_) => {}
                Err(e) => tracing::error!(bucket = %name, "finding the blocks to upload to the new bucket: {e}"),
            });
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
        self.stopping.store(true, Ordering::Relaxed);
        self.upkeep.abort();
        let stopped = std::mem::take(&mut *write(&self.buckets));
        for r in stopped {
            r.task.abort();
            let _ = r.task.await;
        }
    }
}

/// Send `queue` every stored block not final in bucket `name`, as they are
/// found, in one pass over the `.meta` files; the number sent. Stops early
/// when the bucket's worker is gone (the bucket was removed again).
fn queue_backlog(store: &BlockStore, name: &str, queue: &mpsc::UnboundedSender<u64>) -> Result<u64, StoreError> {
    let mut sent = 0;
    for n in store.numbers()? {
        let meta = match store.meta(n) {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if !meta.status(name).is_final() {
            if queue.send(n).is_err() {
                break;
            }
            sent += 1;
        }
    }
    Ok(sent)
}

/// Queues each stored block to the workers of the buckets it is not final
/// in, as the start-up check of the store finds it: uploads start with the
/// first block found, not after the whole store was read.
struct Resumer {
    buckets: Buckets,
    queued: std::collections::BTreeMap<String, u64>,
}

impl Resumer {
    /// Queue `meta`'s block to every bucket it is not final in.
    fn found(&mut self, meta: &BlockMeta) {
        for r in read(&self.buckets).iter() {
            if !meta.status(&r.name).is_final() && r.queue.send(meta.number).is_ok() {
                *self.queued.entry(r.name.clone()).or_default() += 1;
            }
        }
    }

    /// Log how many blocks each bucket resumed.
    fn finish(self) {
        for (bucket, blocks) in self.queued {
            tracing::info!(%bucket, blocks, "resuming uploads");
        }
    }
}
