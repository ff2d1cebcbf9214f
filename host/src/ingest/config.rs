//! `[ingest]`: where the consensus node publishes its block stream.

use serde::Deserialize;

/// A consensus node's default hard limit of one request, and a block node's
/// `messageSizeHardLimitBytes`: 6 MB + 1 KB.
pub const DEFAULT_HARD_LIMIT_BYTES: usize = 6_292_480;

/// `[ingest]`: where the consensus node publishes its block stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address (`host:port`) of the `publishBlockStream` gRPC endpoint.
    pub listen: String,
    /// Largest request accepted, in bytes (a consensus node's hard limit:
    /// 6 MB + 1 KB by default; deployments raise it).
    pub hard_limit_bytes: usize,
    /// Largest block accepted, in bytes (all its items together).
    pub max_block_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:40840".into(),
            hard_limit_bytes: DEFAULT_HARD_LIMIT_BYTES,
            max_block_bytes: 64 * 1024 * 1024,
        }
    }
}
