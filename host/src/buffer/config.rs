//! `[buffer]`: its size, pruning and backpressure thresholds.

use serde::Deserialize;

/// `[buffer]`: recent blocks kept in memory until block nodes acknowledge
/// them, and the backpressure toward the consensus node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// How long an acknowledged block stays in memory, in seconds.
    pub ttl_secs: u64,
    /// The expected time between blocks, in milliseconds; the ideal buffer
    /// size is `ttl_secs` ÷ this (150 blocks by default).
    pub block_period_ms: u64,
    /// Bytes of unacknowledged blocks that count as a full buffer; also the
    /// most acknowledged blocks are kept in memory.
    pub max_bytes: u64,
    /// How often acknowledged blocks past their TTL are pruned, in milliseconds.
    pub prune_interval_ms: u64,
    /// Saturation (percent) at which a warning is logged and counted.
    pub action_stage_percent: f64,
    /// Saturation (percent) below which backpressure, engaged at 100 %, is released.
    pub recovery_percent: f64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            block_period_ms: 2_000,
            max_bytes: 1024 * 1024 * 1024,
            prune_interval_ms: 1_000,
            action_stage_percent: 50.0,
            recovery_percent: 85.0,
        }
    }
}

impl BufferConfig {
    /// The ideal number of blocks in the buffer: TTL ÷ block period (at least 1).
    pub fn ideal_blocks(&self) -> u64 {
        (self.ttl_secs * 1000 / self.block_period_ms.max(1)).max(1)
    }
}
