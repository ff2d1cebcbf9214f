//! Every metric blockferry exports on `/metrics` (names, types, labels): the
//! list the alert rules and the dashboard are checked against
//! (`tests/all/packaging.rs`) and that a running host is checked to export
//! (`tests/all/operators.rs`, `tests/all/relay.rs`).

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter (name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram: series `<name>_bucket` (with `le`), `<name>_sum`, `<name>_count`.
    Histogram,
}

/// One metric family blockferry exports on `/metrics`.
#[derive(Debug)]
pub struct Metric {
    /// The family's name as queried (counters with `_total`, histograms without a suffix).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels (besides the `instance` and `job` labels Prometheus adds).
    pub labels: &'static [&'static str],
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    Metric { name, kind, labels }
}

use Kind::{Counter, Gauge, Histogram};

const BUCKET_PROVIDER: &[&str] = &["bucket", "provider"];

/// Every metric blockferry exports.
pub const METRICS: &[Metric] = &[
    // Uploads.
    m("blockferry_upload_succeeded_total", Counter, BUCKET_PROVIDER),
    m("blockferry_upload_already_present_total", Counter, BUCKET_PROVIDER),
    m("blockferry_upload_hash_mismatch_total", Counter, BUCKET_PROVIDER),
    m("blockferry_upload_failed_total", Counter, BUCKET_PROVIDER),
    m("blockferry_upload_duration_seconds", Histogram, BUCKET_PROVIDER),
    m("blockferry_upload_pending_blocks", Gauge, &["bucket"]),
    m("blockferry_upload_lag_seconds", Gauge, &["bucket"]),
    m("blockferry_retained_blocks", Gauge, &[]),
    m("blockferry_store_blocks", Gauge, &["bucket", "state"]),
    m("blockferry_store_hash_mismatched_blocks", Gauge, &[]),
    // Plugins.
    m("blockferry_plugin_calls_total", Counter, BUCKET_PROVIDER),
    m("blockferry_plugin_errors_total", Counter, &["bucket", "provider", "kind"]),
    m("blockferry_plugin_egress_refused_total", Counter, BUCKET_PROVIDER),
    m("blockferry_plugin_swaps_total", Counter, BUCKET_PROVIDER),
    m("blockferry_bucket_healthy", Gauge, BUCKET_PROVIDER),
    m("blockferry_abandoned_uploads_aborted_total", Counter, BUCKET_PROVIDER),
    m("blockferry_plugin_call_duration_seconds", Histogram, BUCKET_PROVIDER),
    // Block store.
    m("blockferry_store_blocks_written_total", Counter, &[]),
    m("blockferry_store_bytes_written_total", Counter, &[]),
    m("blockferry_store_write_duration_seconds", Histogram, &[]),
    // Ingest.
    m("blockferry_ingest_blocks_total", Counter, &[]),
    m("blockferry_ingest_bytes_total", Counter, &[]),
    m("blockferry_ingest_duplicate_blocks_total", Counter, &[]),
    m("blockferry_ingest_gaps_total", Counter, &[]),
    m("blockferry_ingest_invalid_requests_total", Counter, &[]),
    m("blockferry_ingest_persistence_failures_total", Counter, &[]),
    m("blockferry_ingest_refused_publishers_total", Counter, &[]),
    m("blockferry_ingest_publisher_connected", Gauge, &[]),
    m("blockferry_ingest_latest_block", Gauge, &[]),
    // Block buffer.
    m("blockferry_buffer_blocks", Gauge, &[]),
    m("blockferry_buffer_bytes", Gauge, &[]),
    m("blockferry_buffer_unacked_blocks", Gauge, &[]),
    m("blockferry_buffer_saturation_ratio", Gauge, &[]),
    m("blockferry_buffer_backpressure", Gauge, &[]),
    m("blockferry_buffer_backpressure_engaged_total", Counter, &[]),
    m("blockferry_buffer_pruned_blocks_total", Counter, &[]),
    // Publishing to block nodes.
    m("blockferry_publish_connections_opened_total", Counter, &["node"]),
    m("blockferry_publish_connections_closed_total", Counter, &["node", "reason"]),
    m("blockferry_publish_responses_total", Counter, &["node", "kind"]),
    m("blockferry_publish_end_streams_sent_total", Counter, &["node", "code"]),
    m("blockferry_publish_timeouts_total", Counter, &["node"]),
    m("blockferry_publish_item_too_large_total", Counter, &["node"]),
    m("blockferry_publish_end_of_stream_rate_limited_total", Counter, &["node"]),
    m("blockferry_publish_archive_reads_total", Counter, &["node"]),
    m("blockferry_publish_ack_latency_seconds", Histogram, &[]),
    m("blockferry_publish_streaming_block", Gauge, &[]),
    m("blockferry_publish_connected", Gauge, &[]),
    // Process.
    m("blockferry_ready", Gauge, &[]),
    m("blockferry_build_info", Gauge, &["version"]),
    m("blockferry_config_generation", Gauge, &[]),
    m("blockferry_config_loaded_timestamp_seconds", Gauge, &[]),
    m("blockferry_config_reloads_rejected_total", Counter, &[]),
];

/// The metrics of `METRICS` accepted by `wanted` that `text` (a `/metrics`
/// scrape) has no sample of.
pub fn missing(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<&'static str> {
    METRICS
        .iter()
        .filter(|m| wanted(m.name))
        .filter(|m| {
            let series = match m.kind {
                Kind::Histogram => format!("{}_count", m.name),
                _ => m.name.to_string(),
            };
            !text.lines().any(|l| l.starts_with(&format!("{series} ")) || l.starts_with(&format!("{series}{{")))
        })
        .map(|m| m.name)
        .collect()
}
