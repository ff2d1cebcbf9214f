//! Metrics: every stage's counters in the Prometheus exposition format
//! (`/metrics`), encoded by `prometheus-client` at scrape time from the
//! stages' own counters, so the hot paths only touch atomics.
//!
//! Names follow Prometheus conventions: `blockferry_` prefix, `_total` for
//! counters, `_seconds` and `_bytes` in base units. The list, with the meaning
//! of each, is in `docs/operator-guide.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use std::fmt::Write as _;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::buffer::BlockBuffer;
use crate::ingest::Ingest;
use crate::plugin::BucketClient;
use crate::publish::{ConnectionState, Publisher};
use crate::reload::ConfigInForce;
use crate::store::BlockStore;
use crate::sync::Locked;
use crate::telemetry::{Histogram, LATENCY_BOUNDS, now_ms};
use crate::upload::{BucketStats, Health, UploadManager};

/// One bucket's sources.
#[derive(Clone)]
pub struct BucketSource {
    /// The bucket's name.
    pub name: String,
    /// Its upload counters.
    pub stats: Arc<BucketStats>,
    /// Its plugin client (provider name, call counters).
    pub client: Arc<BucketClient>,
}

/// Whether the host is ready, and why not.
#[derive(Debug, Default)]
pub struct Readiness {
    reasons: std::sync::Mutex<Vec<String>>,
}

impl Readiness {
    /// Replace the reasons the host is not ready (empty: ready).
    pub fn set(&self, reasons: Vec<String>) {
        *self.reasons.locked() = reasons;
    }

    /// Why the host is not ready (empty: ready).
    pub fn reasons(&self) -> Vec<String> {
        self.reasons.locked().clone()
    }
}

/// Everything `/metrics` reads.
pub struct Sources {
    /// The block store.
    pub store: Arc<BlockStore>,
    /// The upload manager (the buckets in force).
    pub uploads: Arc<UploadManager>,
    /// The block buffer.
    pub buffer: Arc<BlockBuffer>,
    /// Ingest.
    pub ingest: Arc<Ingest>,
    /// The publisher, when streaming to block nodes.
    pub publisher: Option<Arc<Publisher>>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// Blocks in the local store (updated by the status sampler).
    pub retained_blocks: AtomicU64,
    /// The store's blocks per bucket and state, counted from the `.meta`
    /// files at start-up and at every retention pass.
    pub census: Arc<crate::upload::Census>,
    /// The config in force: generation, when loaded, reloads rejected.
    pub config: Arc<ConfigInForce>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

impl Sources {
    /// The buckets in force, in config order.
    pub fn buckets(&self) -> Vec<BucketSource> {
        self.uploads
            .targets()
            .into_iter()
            .map(|(t, stats)| BucketSource { name: t.name, stats, client: t.client })
            .collect()
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

/// A metric's label pairs.
type Labels<'a> = Vec<(&'a str, String)>;

/// A label value escaped as the text format requires (`\\`, `"`, newline):
/// prometheus-client writes label values as they are, and some come from
/// plugins and the config.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Encodes one metric family at a time.
struct Enc<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Enc<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(value);
        c.encode(self.0.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(value);
        g.encode(self.0.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    /// A family: one value per label set.
    fn family<T: Copy>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        rows: &[(Labels, T)],
        encode: impl Fn(T, prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut family = self.0.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in rows {
            let labels: Vec<(&str, Escaped)> = labels.iter().map(|(k, v)| (*k, Escaped(v))).collect();
            encode(*value, family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counters(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> Result<(), std::fmt::Error> {
        self.family(name, help, MetricType::Counter, rows, |v, e| ConstCounter::new(v).encode(e))
    }

    fn gauges(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) -> Result<(), std::fmt::Error> {
        self.family(name, help, MetricType::Gauge, rows, |v, e| ConstGauge::new(v).encode(e))
    }

    fn histograms(&mut self, name: &str, help: &str, rows: &[(Labels, &Histogram)]) -> Result<(), std::fmt::Error> {
        self.family(name, help, MetricType::Histogram, rows, |h, mut e| encode_histogram(h, &mut e))
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> Result<(), std::fmt::Error> {
        let mut e = self.0.encode_descriptor(name, help, None, MetricType::Histogram)?;
        encode_histogram(h, &mut e)
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut e = Enc(&mut encoder);
        let version = env!("CARGO_PKG_VERSION").to_string();
        e.gauges("blockferry_build_info", "The running blockferry's version", &[(vec![("version", version)], 1.0)])?;
        e.gauge(
            "blockferry_ready",
            "1 when ready (plugins loaded, store writable, buffer not saturated)",
            bool_f(self.readiness.reasons().is_empty()),
        )?;
        e.gauge("blockferry_config_generation", "The config generation in force", self.config.generation() as f64)?;
        e.gauge(
            "blockferry_config_loaded_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
            self.config.loaded_at_ms() as f64 / 1e3,
        )?;
        e.counter(
            "blockferry_config_reloads_rejected",
            "Config reloads rejected (invalid config or a plugin that failed its check); the running config stayed",
            self.config.rejected(),
        )?;
        self.encode_uploads(&mut e)?;
        self.encode_store(&mut e)?;
        self.encode_ingest_and_buffer(&mut e)?;
        self.encode_publish(&mut e)
    }
}

fn bool_f(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Sources {
    fn encode_uploads(&self, e: &mut Enc) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let labels = |b: &BucketSource| vec![("bucket", b.name.clone()), ("provider", b.client.provider().to_string())];
        let rows = |f: &dyn Fn(&BucketSource) -> u64| -> Vec<(Labels, u64)> {
            buckets.iter().map(|b| (labels(b), f(b))).collect()
        };
        e.counters("blockferry_upload_succeeded", "Blocks uploaded by this host", &rows(&|b| load(&b.stats.uploaded)))?;
        e.counters(
            "blockferry_upload_already_present",
            "Blocks found already in the bucket with the same MD5 (uploaded by another node)",
            &rows(&|b| load(&b.stats.already_present)),
        )?;
        e.counters(
            "blockferry_upload_hash_mismatch",
            "Blocks whose object in the bucket has different content (kept, never overwritten)",
            &rows(&|b| load(&b.stats.hash_mismatches)),
        )?;
        e.counters(
            "blockferry_upload_failed",
            "Failed upload attempts (retried)",
            &rows(&|b| load(&b.stats.failures)),
        )?;
        let histograms: Vec<_> = buckets.iter().map(|b| (labels(b), &b.stats.upload_seconds)).collect();
        e.histograms("blockferry_upload_duration_seconds", "Time of one successful upload", &histograms)?;
        let pending: Vec<_> =
            buckets.iter().map(|b| (vec![("bucket", b.name.clone())], load(&b.stats.pending) as f64)).collect();
        e.gauges("blockferry_upload_pending_blocks", "Blocks not yet safe in the bucket", &pending)?;
        let lag: Vec<_> =
            buckets.iter().map(|b| (vec![("bucket", b.name.clone())], self.lag_seconds(&b.stats))).collect();
        e.gauges(
            "blockferry_upload_lag_seconds",
            "Age of the oldest block not yet safe in the bucket (0 when none)",
            &lag,
        )?;
        e.gauge("blockferry_retained_blocks", "Blocks in the local store", load(&self.retained_blocks) as f64)?;
        let census = self.census.get();
        e.gauge(
            "blockferry_store_blocks_counted",
            "1 once the store's blocks are counted from their .meta files (by the start-up check, which runs after \
             ready); 0 before: blockferry_store_blocks and blockferry_store_hash_mismatched_blocks are absent until then",
            if census.is_some() { 1.0 } else { 0.0 },
        )?;
        if let Some(census) = census {
            let mut rows = Vec::new();
            for (bucket, c) in &census.buckets {
                for (state, v) in [
                    ("confirmed", c.confirmed),
                    ("unconfirmed", c.unconfirmed),
                    ("pending", c.pending),
                    ("failed", c.failed),
                    ("hash_mismatch", c.hash_mismatch),
                ] {
                    rows.push((vec![("bucket", bucket.clone()), ("state", state.to_string())], v as f64));
                }
            }
            e.gauges(
                "blockferry_store_blocks",
                "Blocks in the local store per bucket and state, counted from their .meta files (at start-up and \
                 every retention pass): confirmed by the service's digest or a read-back, unconfirmed (the plugin's \
                 word only), pending, failed, hash_mismatch",
                &rows,
            )?;
            e.gauge(
                "blockferry_store_hash_mismatched_blocks",
                "Blocks in the local store some bucket holds with different content (kept forever), from their .meta files",
                census.mismatched_blocks as f64,
            )?;
        }

        e.counters(
            "blockferry_plugin_calls",
            "Calls into the bucket's provider plugin",
            &rows(&|b| load(&b.client.stats.calls)),
        )?;
        let mut errors = Vec::new();
        for b in &buckets {
            let s = &b.client.stats;
            for (kind, v) in [
                // Failed attempts are one of: permanent, trap, timeout, out of memory, or transient.
                (
                    "transient",
                    load(&b.stats.failures)
                        .saturating_sub(load(&b.stats.permanent_failures))
                        .saturating_sub(load(&s.traps) + load(&s.timeouts) + load(&s.out_of_memory)),
                ),
                ("permanent", load(&b.stats.permanent_failures)),
                ("hash_mismatch", load(&b.stats.hash_mismatches)),
                ("trap", load(&s.traps)),
                ("timeout", load(&s.timeouts)),
                ("out_of_memory", load(&s.out_of_memory)),
            ] {
                let mut l = labels(b);
                l.push(("kind", kind.to_string()));
                errors.push((l, v));
            }
        }
        e.counters("blockferry_plugin_errors", "Plugin calls that failed, by kind", &errors)?;
        e.counters(
            "blockferry_plugin_swaps",
            "Times a config reload replaced the bucket's plugin component",
            &rows(&|b| load(&b.stats.plugin_swaps)),
        )?;
        e.counters(
            "blockferry_abandoned_uploads_aborted",
            "Uploads left incomplete in the bucket (e.g. by a killed process) that blockferry aborted",
            &rows(&|b| load(&b.stats.aborted_uploads)),
        )?;
        let health: Vec<_> = buckets
            .iter()
            .filter_map(|b| match b.stats.health() {
                Health::Healthy { .. } => Some((labels(b), 1.0)),
                Health::Unhealthy { .. } => Some((labels(b), 0.0)),
                Health::Unknown | Health::Unchecked => None,
            })
            .collect();
        e.gauges(
            "blockferry_bucket_healthy",
            "1 when the bucket's last health check passed, 0 when it failed (absent: not checked)",
            &health,
        )?;
        e.counters(
            "blockferry_plugin_egress_refused",
            "Outbound requests of the plugin refused by the allow-list or denied networks",
            &rows(&|b| b.client.refused_requests()),
        )?;
        let calls: Vec<_> = buckets.iter().map(|b| (labels(b), &b.client.stats.call_seconds)).collect();
        e.histograms("blockferry_plugin_call_duration_seconds", "Time of one plugin call", &calls)
    }

    /// Age of the oldest block not yet safe in a bucket.
    pub fn lag_seconds(&self, stats: &BucketStats) -> f64 {
        let oldest = load(&stats.oldest_pending);
        if oldest == u64::MAX {
            return 0.0;
        }
        match self.store.read_meta(oldest) {
            Ok(meta) => now_ms().saturating_sub(meta.created_at_ms) as f64 / 1e3,
            Err(_) => 0.0,
        }
    }

    fn encode_store(&self, e: &mut Enc) -> Result<(), std::fmt::Error> {
        let s = self.store.stats();
        e.counter("blockferry_store_blocks_written", "Blocks written to the local store", load(&s.blocks_written))?;
        e.counter("blockferry_store_bytes_written", "Bytes of block files written", load(&s.bytes_written))?;
        e.histogram(
            "blockferry_store_write_duration_seconds",
            "Time to write one block durably (file, .meta, fsyncs)",
            &s.write_seconds,
        )
    }

    fn encode_ingest_and_buffer(&self, e: &mut Enc) -> Result<(), std::fmt::Error> {
        let c = self.ingest.counters();
        e.counter(
            "blockferry_ingest_blocks",
            "Blocks received from the consensus node and acknowledged",
            load(&c.blocks),
        )?;
        e.counter("blockferry_ingest_bytes", "Bytes of those blocks", load(&c.bytes))?;
        e.counter(
            "blockferry_ingest_duplicate_blocks",
            "Headers of blocks already stored (SkipBlock)",
            load(&c.duplicates),
        )?;
        e.counter("blockferry_ingest_gaps", "Headers beyond the next block (BehindPublisher)", load(&c.gaps))?;
        e.counter("blockferry_ingest_invalid_requests", "Streams ended with INVALID_REQUEST", load(&c.invalid))?;
        e.counter(
            "blockferry_ingest_persistence_failures",
            "Streams ended with PERSISTENCE_FAILED (the store could not write)",
            load(&c.persistence_failed),
        )?;
        e.counter(
            "blockferry_ingest_refused_publishers",
            "Publishers refused because another was streaming",
            load(&c.refused_publishers),
        )?;
        e.gauge(
            "blockferry_ingest_publisher_connected",
            "1 while a consensus node is streaming",
            bool_f(self.ingest.publisher().is_some()),
        )?;
        e.gauge(
            "blockferry_ingest_latest_block",
            "The newest block stored",
            self.ingest.latest().map_or(-1.0, |n| n as f64),
        )?;

        let b = self.buffer.state();
        let bc = self.buffer.counters();
        e.gauge("blockferry_buffer_blocks", "Blocks in the buffer (memory)", b.blocks as f64)?;
        e.gauge("blockferry_buffer_bytes", "Bytes of blocks in the buffer", b.bytes as f64)?;
        e.gauge(
            "blockferry_buffer_unacked_blocks",
            "Blocks waiting for a block node's acknowledgement",
            b.unacked_blocks as f64,
        )?;
        e.gauge(
            "blockferry_buffer_saturation_ratio",
            "Buffer saturation (1.0 = full: backpressure)",
            b.saturation / 100.0,
        )?;
        e.gauge(
            "blockferry_buffer_backpressure",
            "1 while backpressure holds the consensus node",
            bool_f(b.backpressure),
        )?;
        e.counter(
            "blockferry_buffer_backpressure_engaged",
            "Times backpressure engaged",
            load(&bc.backpressure_engaged),
        )?;
        e.counter("blockferry_buffer_pruned_blocks", "Blocks pruned from memory", load(&bc.pruned))
    }

    fn encode_publish(&self, e: &mut Enc) -> Result<(), std::fmt::Error> {
        let Some(publisher) = &self.publisher else { return Ok(()) };
        let status = publisher.status();
        e.gauge(
            "blockferry_publish_connected",
            "1 while a block node connection is ACTIVE",
            bool_f(status.state == ConnectionState::Active),
        )?;
        e.gauge(
            "blockferry_publish_streaming_block",
            "The block being streamed to the block node",
            status.streaming_block.map_or(-1.0, |n| n as f64),
        )?;
        let mut by_metric: std::collections::BTreeMap<&str, Vec<(Labels, u64)>> = Default::default();
        for (metric, labels, value) in publisher.counters().snapshot() {
            let mut parts = labels.splitn(2, ',');
            let node = parts.next().unwrap_or_default().to_string();
            let detail = parts.next().map(str::to_string);
            let label_name = match metric {
                "connections_closed_total" => "reason",
                "responses_total" => "kind",
                "end_streams_sent_total" => "code",
                _ => "detail",
            };
            let mut l = vec![("node", node)];
            if let Some(d) = detail {
                l.push((label_name, d));
            }
            by_metric.entry(metric).or_default().push((l, value));
        }
        for (metric, help) in [
            ("connections_opened_total", "Block node streams opened"),
            ("connections_closed_total", "Block node streams closed, by reason"),
            ("responses_total", "Responses from block nodes, by kind (and EndOfStream code)"),
            ("end_streams_sent_total", "EndStream requests sent, by code"),
            ("timeouts_total", "Pipeline timeouts and stalled nodes"),
            ("item_too_large_total", "Blocks with an item above the node's hard limit"),
            ("end_of_stream_rate_limited_total", "Nodes rescheduled for sending too many EndOfStreams"),
            ("archive_reads_total", "Blocks local retention had deleted, read back from a bucket for a block node"),
        ] {
            let mut rows = by_metric.remove(metric).unwrap_or_default();
            // Per-node counters start at 0 for every configured node.
            if !metric.contains("closed") && !metric.contains("responses") && !metric.contains("end_streams") {
                for node in publisher.node_names() {
                    if !rows.iter().any(|(l, _)| l[0].1 == node) {
                        rows.push((vec![("node", node)], 0));
                    }
                }
            }
            let name = format!("blockferry_publish_{}", metric.trim_end_matches("_total"));
            e.counters(&name, help, &rows)?;
        }
        e.histogram(
            "blockferry_publish_ack_latency_seconds",
            "From a block's header sent to its acknowledgement",
            publisher.counters().ack_latency(),
        )
    }
}

/// One histogram in the exposition format.
fn encode_histogram(
    h: &Histogram,
    encoder: &mut prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    let counts = h.counts();
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS.iter().copied().zip(counts.iter().copied()).collect();
    buckets.push((f64::INFINITY, counts[LATENCY_BOUNDS.len()]));
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum(), counts.iter().sum(), &buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A family whose label value is a forged provider name.
    #[derive(Debug)]
    struct Forged;

    impl Collector for Forged {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let forged = "x\"} 1\nblockferry_injected_metric 1\n\\".to_string();
            Enc(&mut encoder).counters("t_calls", "Calls", &[(vec![("provider", forged)], 3)])
        }
    }

    #[test]
    fn label_values_are_escaped_so_they_cannot_forge_lines() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Forged));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.lines().any(|l| l.starts_with("blockferry_injected_metric")), "{out}");
        assert!(out.contains(r#"t_calls_total{provider="x\"} 1\nblockferry_injected_metric 1\n\\"} 3"#), "{out}");
    }
}
