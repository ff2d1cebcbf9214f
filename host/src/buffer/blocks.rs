//! The buffer itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::BufferConfig;
use crate::sync::Locked;
use bytes::Bytes;
use tokio::sync::watch;

/// One block as it arrived: its number and its items, byte for byte.
#[derive(Debug)]
pub struct Block {
    /// The block number (from its header).
    pub number: u64,
    /// The serialized `BlockItem`s, header first, proofs last.
    pub items: Vec<Bytes>,
    /// Bytes of the serialized `Block` (items with their framing).
    pub size: u64,
}

impl Block {
    /// A block of `items`; its size counts the framing a serialized `Block` adds.
    pub fn new(number: u64, items: Vec<Bytes>) -> Self {
        let size = items.iter().map(|i| blockferry_proto::framing::item_frame_len(i.len()) as u64).sum();
        Self { number, items, size }
    }

    /// The serialized `Block`: what the block file holds.
    pub fn encode(&self) -> Vec<u8> {
        blockferry_proto::framing::encode_block(&self.items)
    }
}

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneResult {
    /// Blocks looked at.
    pub checked: u64,
    /// Blocks still waiting for an acknowledgement.
    pub pending_ack: u64,
    /// Blocks removed from memory.
    pub pruned: u64,
}

/// A snapshot of the buffer for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BufferState {
    /// Blocks in memory.
    pub blocks: u64,
    /// Bytes of blocks in memory.
    pub bytes: u64,
    /// Blocks waiting for an acknowledgement.
    pub unacked_blocks: u64,
    /// Saturation in percent (may exceed 100).
    pub saturation: f64,
    /// Whether backpressure is engaged.
    pub backpressure: bool,
    /// The newest block.
    pub latest: Option<u64>,
    /// The highest acknowledged block.
    pub highest_acked: Option<u64>,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct BufferCounters {
    /// Times backpressure engaged.
    pub backpressure_engaged: AtomicU64,
    /// Times saturation crossed the action-stage threshold upward.
    pub action_stage_crossed: AtomicU64,
    /// Blocks pruned from memory.
    pub pruned: AtomicU64,
}

struct Entry {
    block: Arc<Block>,
    added: Instant,
    acked: bool,
}

#[derive(Default)]
struct Inner {
    blocks: BTreeMap<u64, Entry>,
    bytes: u64,
    unacked_blocks: u64,
    unacked_bytes: u64,
    highest_acked: Option<u64>,
    backpressure: bool,
    above_action_stage: bool,
}

/// The buffer of recent blocks. Shared (`Arc`) between ingest, the publisher
/// and the pruner.
pub struct BlockBuffer {
    config: BufferConfig,
    tracks_acks: bool,
    inner: Mutex<Inner>,
    /// `true` while backpressure is engaged.
    pressure: watch::Sender<bool>,
    /// The newest block number, for the publisher to follow.
    latest: watch::Sender<Option<u64>>,
    counters: BufferCounters,
}

impl BlockBuffer {
    /// An empty buffer. `tracks_acks`: blocks wait for block-node
    /// acknowledgements (streaming is on); otherwise they are acknowledged on insert.
    pub fn new(config: BufferConfig, tracks_acks: bool) -> Self {
        Self {
            config,
            tracks_acks,
            inner: Mutex::new(Inner::default()),
            pressure: watch::Sender::new(false),
            latest: watch::Sender::new(None),
            counters: BufferCounters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// Add a durable block. A block already in the buffer is left as it is.
    pub fn insert(&self, block: Arc<Block>) {
        let number = block.number;
        {
            let mut inner = self.lock();
            if inner.blocks.contains_key(&number) {
                return;
            }
            let acked = !self.tracks_acks || inner.highest_acked.is_some_and(|h| number <= h);
            inner.bytes += block.size;
            if !acked {
                inner.unacked_blocks += 1;
                inner.unacked_bytes += block.size;
            }
            inner.blocks.insert(number, Entry { block, added: Instant::now(), acked });
            if !self.tracks_acks {
                inner.highest_acked = inner.highest_acked.max(Some(number));
            }
            self.evict_acked_over_bytes(&mut inner);
            self.check(&mut inner);
        }
        self.latest.send_if_modified(|latest| {
            let newer = latest.is_none_or(|l| number > l);
            if newer {
                *latest = Some(number);
            }
            newer
        });
    }

    /// A block node acknowledged every block up to `number`.
    pub fn acknowledge(&self, number: u64) {
        let mut inner = self.lock();
        if inner.highest_acked.is_some_and(|h| h >= number) {
            return;
        }
        inner.highest_acked = Some(number);
        let mut freed = (0, 0);
        for entry in inner.blocks.range_mut(..=number).map(|(_, e)| e).filter(|e| !e.acked) {
            entry.acked = true;
            freed.0 += 1;
            freed.1 += entry.block.size;
        }
        inner.unacked_blocks -= freed.0;
        inner.unacked_bytes -= freed.1;
        self.evict_acked_over_bytes(&mut inner);
        self.check(&mut inner);
    }

    /// Block `number`, if it is still in memory.
    pub fn get(&self, number: u64) -> Option<Arc<Block>> {
        self.lock().blocks.get(&number).map(|e| e.block.clone())
    }

    /// The highest acknowledged block.
    pub fn highest_acked(&self) -> Option<u64> {
        self.lock().highest_acked
    }

    /// The lowest block not yet acknowledged: highest acknowledged + 1, or the
    /// oldest block in memory when none was acknowledged.
    pub fn lowest_unacked(&self) -> Option<u64> {
        let inner = self.lock();
        match inner.highest_acked {
            Some(h) => Some(h + 1),
            None => inner.blocks.keys().next().copied(),
        }
    }

    /// Follow the newest block number (the publisher waits on it).
    pub fn subscribe_latest(&self) -> watch::Receiver<Option<u64>> {
        self.latest.subscribe()
    }

    /// The state now.
    pub fn state(&self) -> BufferState {
        let inner = self.lock();
        BufferState {
            blocks: inner.blocks.len() as u64,
            bytes: inner.bytes,
            unacked_blocks: inner.unacked_blocks,
            saturation: self.saturation_of(&inner),
            backpressure: inner.backpressure,
            latest: inner.blocks.keys().next_back().copied(),
            highest_acked: inner.highest_acked,
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> &BufferCounters {
        &self.counters
    }

    /// Whether backpressure is engaged.
    pub fn backpressure(&self) -> bool {
        *self.pressure.borrow()
    }

    /// Return once backpressure is released (at once when it is not engaged).
    pub async fn wait_for_capacity(&self) {
        let mut rx = self.pressure.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|engaged| !engaged).await;
    }

    /// Remove acknowledged blocks older than the TTL (as of `now`), then
    /// re-check saturation.
    pub fn prune(&self, now: Instant) -> PruneResult {
        let ttl = Duration::from_secs(self.config.ttl_secs);
        let mut inner = self.lock();
        let mut result = PruneResult { checked: inner.blocks.len() as u64, ..Default::default() };
        let expired: Vec<u64> = inner
            .blocks
            .iter()
            .filter(|(_, e)| e.acked && now.saturating_duration_since(e.added) >= ttl)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            if let Some(e) = inner.blocks.remove(&n) {
                inner.bytes -= e.block.size;
                result.pruned += 1;
            }
        }
        result.pending_ack = inner.unacked_blocks;
        self.counters.pruned.fetch_add(result.pruned, Ordering::Relaxed);
        self.check(&mut inner);
        result
    }

    /// Prune every `prune_interval_ms` until the buffer is dropped.
    pub fn spawn_pruner(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.prune_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(buffer) = weak.upgrade() else { return };
                buffer.prune(Instant::now());
            }
        })
    }

    /// Keep acknowledged blocks within the byte bound: drop the oldest first.
    fn evict_acked_over_bytes(&self, inner: &mut Inner) {
        let bound = self.config.max_bytes;
        if inner.bytes - inner.unacked_bytes <= bound {
            return;
        }
        let mut over = inner.bytes - inner.unacked_bytes - bound;
        let oldest: Vec<(u64, u64)> =
            inner.blocks.iter().filter(|(_, e)| e.acked).map(|(n, e)| (*n, e.block.size)).collect();
        for (n, size) in oldest {
            if over == 0 {
                break;
            }
            inner.blocks.remove(&n);
            inner.bytes -= size;
            over = over.saturating_sub(size);
            self.counters.pruned.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn saturation_of(&self, inner: &Inner) -> f64 {
        let by_count = inner.unacked_blocks as f64 / self.config.ideal_blocks() as f64;
        let by_bytes = inner.unacked_bytes as f64 / self.config.max_bytes as f64;
        by_count.max(by_bytes) * 100.0
    }

    /// Update the action stage and backpressure from the saturation now.
    fn check(&self, inner: &mut Inner) {
        let saturation = self.saturation_of(inner);
        let above = saturation >= self.config.action_stage_percent;
        if above && !inner.above_action_stage {
            self.counters.action_stage_crossed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                saturation = format!("{saturation:.0}%"),
                unacked_blocks = inner.unacked_blocks,
                "block buffer past its action stage: block nodes are falling behind"
            );
        }
        inner.above_action_stage = above;
        let engaged = if inner.backpressure { saturation >= self.config.recovery_percent } else { saturation >= 100.0 };
        if engaged != inner.backpressure {
            inner.backpressure = engaged;
            if engaged {
                self.counters.backpressure_engaged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    saturation = format!("{saturation:.0}%"),
                    unacked_blocks = inner.unacked_blocks,
                    "block buffer saturated: backpressure on the consensus node until block nodes catch up"
                );
            } else {
                tracing::info!(
                    saturation = format!("{saturation:.0}%"),
                    "block buffer recovered: backpressure released"
                );
            }
            self.pressure.send_replace(engaged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl_secs: u64, ideal: u64, max_bytes: u64) -> BufferConfig {
        BufferConfig { ttl_secs, block_period_ms: ttl_secs * 1000 / ideal, max_bytes, ..BufferConfig::default() }
    }

    fn block(number: u64, size: usize) -> Arc<Block> {
        Arc::new(Block::new(number, vec![Bytes::from(vec![7u8; size])]))
    }

    #[test]
    fn prune_honours_ttl_and_acknowledgements() {
        let buffer = BlockBuffer::new(config(10, 100, 1 << 30), true);
        for n in 0..5 {
            buffer.insert(block(n, 100));
        }
        buffer.acknowledge(2);
        assert_eq!(buffer.lowest_unacked(), Some(3));
        // Not yet past the TTL: nothing goes.
        let r = buffer.prune(Instant::now());
        assert_eq!(r, PruneResult { checked: 5, pending_ack: 2, pruned: 0 });
        // Past the TTL: only the acknowledged blocks go.
        let later = Instant::now() + Duration::from_secs(11);
        let r = buffer.prune(later);
        assert_eq!(r, PruneResult { checked: 5, pending_ack: 2, pruned: 3 });
        assert!(buffer.get(2).is_none());
        assert!(buffer.get(3).is_some() && buffer.get(4).is_some());
        buffer.acknowledge(4);
        assert_eq!(buffer.prune(later).pruned, 2);
        assert_eq!(buffer.state().blocks, 0);
        assert_eq!(buffer.highest_acked(), Some(4));
    }

    #[test]
    fn without_streaming_blocks_are_acknowledged_on_insert() {
        let buffer = BlockBuffer::new(config(10, 2, 1 << 30), false);
        for n in 0..10 {
            buffer.insert(block(n, 10));
        }
        let s = buffer.state();
        assert_eq!((s.unacked_blocks, s.highest_acked, s.backpressure), (0, Some(9), false));
    }

    #[tokio::test]
    async fn backpressure_engages_at_full_and_releases_below_recovery() {
        // Ideal size 10 blocks; recovery at 85 %.
        let buffer = Arc::new(BlockBuffer::new(config(10, 10, 1 << 30), true));
        for n in 0..9 {
            buffer.insert(block(n, 10));
        }
        assert!(!buffer.backpressure(), "90 % is below full");
        buffer.insert(block(9, 10));
        assert!(buffer.backpressure(), "100 % engages backpressure");
        assert_eq!(buffer.counters().backpressure_engaged.load(Ordering::Relaxed), 1);

        let waiter = tokio::spawn({
            let b = buffer.clone();
            async move { b.wait_for_capacity().await }
        });
        // Acknowledging one block (90 %) is not enough: no flapping.
        buffer.acknowledge(0);
        assert!(buffer.backpressure());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // Two more (70 %): released.
        buffer.acknowledge(2);
        assert!(!buffer.backpressure());
        waiter.await.unwrap();
        // Nothing was dropped, in order.
        let numbers: Vec<u64> = (0..10).filter(|n| buffer.get(*n).is_some()).collect();
        assert_eq!(numbers, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn saturation_counts_bytes_too() {
        let buffer = BlockBuffer::new(config(10, 1000, 1000), true);
        buffer.insert(block(0, 600));
        assert!(buffer.state().saturation > 60.0);
        buffer.insert(block(1, 600));
        assert!(buffer.backpressure(), "over the byte bound");
        assert!(buffer.get(0).is_some(), "an unacknowledged block is never dropped");
    }

    #[test]
    fn acknowledged_blocks_beyond_the_byte_bound_leave_memory() {
        let buffer = BlockBuffer::new(config(3600, 1000, 1000), true);
        for n in 0..5 {
            buffer.insert(block(n, 300));
        }
        buffer.acknowledge(4);
        let s = buffer.state();
        assert!(s.bytes <= 1000, "{s:?}");
        assert!(buffer.get(4).is_some() && buffer.get(0).is_none(), "the oldest go first");
    }

    #[test]
    fn latest_is_followed() {
        let buffer = BlockBuffer::new(config(10, 10, 1 << 30), true);
        let rx = buffer.subscribe_latest();
        buffer.insert(block(5, 1));
        buffer.insert(block(3, 1));
        assert_eq!(*rx.borrow(), Some(5));
    }
}
