//! `[publish]` and `[[block_nodes]]`: streaming blocks on to block nodes.

use serde::Deserialize;

/// `[publish]`: streaming to block nodes. Durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Deadline of creating a stream, sending one request, and closing a
    /// stream (`pipelineOperationTimeout`).
    pub pipeline_operation_timeout_ms: u64,
    /// A stream is closed gracefully and reopened this often (`streamResetPeriod`, 24 h).
    pub stream_reset_period_ms: u64,
    /// More `EndOfStream`s than this from one node within the time frame
    /// close its connection (`maxEndOfStreamsAllowed`).
    pub max_end_of_streams: u32,
    /// The rate limit's time frame (`endOfStreamTimeFrame`).
    pub end_of_stream_time_frame_ms: u64,
    /// How long a rate-limited node waits before it is tried again (`endOfStreamScheduleDelay`).
    pub end_of_stream_schedule_delay_ms: u64,
    /// Fixed delay before a node that ended the stream with SUCCESS, ERROR,
    /// PERSISTENCE_FAILED or UNKNOWN is tried again (the others are used meanwhile).
    pub retry_delay_ms: u64,
    /// First delay of the exponential backoff (TIMEOUT, DUPLICATE_BLOCK,
    /// BAD_BLOCK_PROOF, INVALID_REQUEST, connection failures); doubles with jitter.
    pub initial_backoff_ms: u64,
    /// Longest backoff (`maxBackoffDelay`).
    pub max_backoff_ms: u64,
    /// A node that leaves a sent block unacknowledged this long is stalled:
    /// its connection is closed and another node used (`highLatencyThreshold`).
    pub ack_latency_bound_ms: u64,
    /// How often a node of higher priority than the active one is probed,
    /// to switch back to it once it is reachable.
    pub probe_interval_ms: u64,
    /// A block node asking for a block local retention already deleted gets
    /// it read back from a bucket, if it is at most this many blocks older
    /// than the newest block held; older ones end the stream with
    /// `TOO_FAR_BEHIND`. 0: never read from buckets.
    pub archive_max_blocks_behind: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            pipeline_operation_timeout_ms: 3_000,
            stream_reset_period_ms: 24 * 3600 * 1000,
            max_end_of_streams: 5,
            end_of_stream_time_frame_ms: 30_000,
            end_of_stream_schedule_delay_ms: 30_000,
            retry_delay_ms: 30_000,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 10_000,
            ack_latency_bound_ms: 30_000,
            probe_interval_ms: 10_000,
            // A day of blocks at one block per two seconds.
            archive_max_blocks_behind: 43_200,
        }
    }
}

/// One `[[block_nodes]]` entry: a block node blocks are streamed to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockNodeConfig {
    /// Host name or IP address.
    pub address: String,
    /// gRPC port.
    pub port: u16,
    /// Lower wins; random among equals.
    #[serde(default)]
    pub priority: u32,
    /// Requests are packed up to this many bytes (`messageSizeSoftLimitBytes`, 2 MB).
    #[serde(default = "BlockNodeConfig::default_soft_limit")]
    pub soft_limit_bytes: usize,
    /// No request may exceed this (`messageSizeHardLimitBytes`, 6 MB + 1 KB).
    #[serde(default = "BlockNodeConfig::default_hard_limit")]
    pub hard_limit_bytes: usize,
}

impl BlockNodeConfig {
    /// `address:port`, as logs and metrics name the node.
    pub fn name(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    fn default_soft_limit() -> usize {
        2_097_152
    }

    fn default_hard_limit() -> usize {
        crate::ingest::DEFAULT_HARD_LIMIT_BYTES
    }
}
