//! What every connection shares with the publisher: the buffer, the store,
//! the settings, the counters and the status, and the stop signal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockferry_proto::framing::split_block;
use bytes::Bytes;

use crate::buffer::{Block, BlockBuffer};
use crate::store::BlockStore;
use crate::sync::Locked;

use super::{Archive, PublishConfig};

/// The states of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Created; the stream is not open yet.
    #[default]
    Uninitialized,
    /// The stream is open, not yet chosen to send.
    Ready,
    /// Sending blocks (one connection at a time).
    Active,
    /// Ending; nothing new is sent.
    Closing,
    /// Ended; never reused.
    Closed,
}

/// What a running connection is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep going.
    None,
    /// Close gracefully: a node of higher priority is reachable.
    Switch,
    /// Close now: the publisher shuts down.
    Shutdown,
}

/// Counters and the header-sent → acknowledged latency histogram.
#[derive(Debug, Default)]
pub struct PublishCounters {
    /// `(metric, labels)` → count; labels are `node` or `node,detail`.
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// From a block's header sent to its acknowledgement.
    ack_latency: crate::telemetry::Histogram,
}

impl PublishCounters {
    /// Every counter: `(metric, labels, value)`.
    pub fn snapshot(&self) -> Vec<(&'static str, String, u64)> {
        let counts = self.counts.locked();
        counts.iter().map(|((m, l), v)| (*m, l.clone(), *v)).collect()
    }

    /// The value of `metric` with `labels`.
    pub fn get(&self, metric: &str, labels: &str) -> u64 {
        let counts = self.counts.locked();
        counts.iter().find(|((m, l), _)| *m == metric && l == labels).map_or(0, |(_, v)| *v)
    }

    /// The header-sent → acknowledged latency histogram.
    pub fn ack_latency(&self) -> &crate::telemetry::Histogram {
        &self.ack_latency
    }
}

/// Where publishing is now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PublishStatus {
    /// The node of the current connection.
    pub node: Option<String>,
    /// That connection's state.
    pub state: ConnectionState,
    /// The block being streamed.
    pub streaming_block: Option<u64>,
}

/// The shared context of the manager and its connections.
pub(crate) struct Ctx {
    pub(super) config: PublishConfig,
    pub(super) buffer: Arc<BlockBuffer>,
    pub(super) store: Option<Arc<BlockStore>>,
    pub(super) archive: Option<Arc<dyn Archive>>,
    /// The last block read back from the archive (asked for twice in a row:
    /// to decide whether to rewind, then to send it).
    pub(super) archived: Mutex<Option<Arc<Block>>>,
    pub(super) status: Mutex<PublishStatus>,
    pub(super) counters: PublishCounters,
    pub(super) streaming: AtomicU64,
}

impl Ctx {
    pub(super) fn pipeline_timeout(&self) -> Duration {
        Duration::from_millis(self.config.pipeline_operation_timeout_ms)
    }

    pub(super) fn set_state(&self, node: &str, state: ConnectionState, block: Option<u64>) {
        let mut status = self.status.locked();
        status.node = Some(node.to_string());
        status.state = state;
        if block.is_some() {
            status.streaming_block = block;
        }
    }

    pub(super) fn set_streaming(&self, block: u64) {
        self.streaming.store(block, Ordering::Relaxed);
        self.status.locked().streaming_block = Some(block);
    }

    pub(super) fn count(&self, metric: &'static str, labels: &str) {
        let mut counts = self.counters.counts.locked();
        *counts.entry((metric, labels.to_string())).or_default() += 1;
    }

    pub(super) fn observe_ack_latency(&self, latency: Duration) {
        self.counters.ack_latency.observe(latency);
    }

    /// Block `number` from the buffer, or read back from the store, or from
    /// the archive (a bucket) when retention deleted it.
    pub(super) async fn block(&self, number: u64) -> Option<Arc<Block>> {
        if let Some(block) = self.buffer.get(number) {
            return Some(block);
        }
        if let Some(store) = self.store.clone()
            && let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || store.read_block(number)).await
        {
            let items = split_block(&Bytes::from(bytes)).ok()?;
            return Some(Arc::new(Block::new(number, items)));
        }
        self.archived(number).await
    }

    /// Block `number` from the archive, if it is within
    /// `archive_max_blocks_behind` of the newest block held.
    pub(super) async fn archived(&self, number: u64) -> Option<Arc<Block>> {
        let archive = self.archive.clone()?;
        if let Some(block) = self.archived.locked().clone()
            && block.number == number
        {
            return Some(block);
        }
        let latest = self.buffer.state().latest.or(self.store_latest().await)?;
        if latest.saturating_sub(number) > self.config.archive_max_blocks_behind {
            return None;
        }
        let bytes = archive.fetch(number).await?;
        let items = split_block(&Bytes::from(bytes)).ok()?;
        let block = Arc::new(Block::new(number, items));
        *self.archived.locked() = Some(block.clone());
        let node = self.status.locked().node.clone().unwrap_or_default();
        self.count("archive_reads_total", &node);
        Some(block)
    }

    /// The newest block in the store.
    pub(super) async fn store_latest(&self) -> Option<u64> {
        let store = self.store.clone()?;
        tokio::task::spawn_blocking(move || store.numbers().ok()?.last().copied()).await.ok()?
    }

    /// The oldest block held at or after `from`.
    pub(super) async fn oldest_available(&self, from: u64) -> Option<u64> {
        let store = self.store.clone()?;
        tokio::task::spawn_blocking(move || store.numbers().ok()?.into_iter().find(|n| *n >= from)).await.ok()?
    }

    /// The range of blocks held (buffer and store), for `EndStream`.
    pub(super) async fn held_range(&self) -> (u64, u64) {
        let state = self.buffer.state();
        let numbers = match self.store.clone() {
            Some(store) => {
                tokio::task::spawn_blocking(move || store.numbers().unwrap_or_default()).await.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let earliest = numbers.first().copied().or(self.buffer.lowest_unacked()).unwrap_or(0);
        let latest = state.latest.max(numbers.last().copied()).unwrap_or(0);
        (earliest, latest)
    }
}
