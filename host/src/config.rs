//! The TOML configuration: where blocks are stored, how plugins run, and the
//! buckets every block is uploaded to.
//!
//! Every option is documented in `examples/blockferry.toml`, which the tests
//! load. Relative paths are resolved against the config file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::plugin::BucketSpec;
use crate::plugin::egress::DEFAULT_DENIED_NETWORKS;

/// A config file that cannot be used, with the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {error}; create one with `blockferry init {path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The credentials file named by the config could not be read.
    #[error(
        "cannot read credentials file {path}: {error}; create it (mode 600) with `[buckets.NAME]` tables \
         of secrets, or remove `credentials` from the config"
    )]
    ReadCredentials {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or name.
    #[error("config {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: `{key}` {problem}; {fix}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, in dotted form (`buckets[1].plugin`).
        key: String,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        fix: String,
    },
}

/// What the sidecar does with the blocks it receives (the writer modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WriterMode {
    /// Store blocks locally and stream them to block nodes; no uploads.
    /// Retention deletes a block once a block node acknowledged it.
    Grpc,
    /// Write blocks to local disk only.
    File,
    /// Write blocks to local disk and upload them to every bucket.
    #[default]
    FileAndBucket,
    /// Write, upload, and stream to block nodes.
    FileAndBucketAndGrpc,
}

impl WriterMode {
    /// The mode as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            WriterMode::Grpc => "grpc",
            WriterMode::File => "file",
            WriterMode::FileAndBucket => "file-and-bucket",
            WriterMode::FileAndBucketAndGrpc => "file-and-bucket-and-grpc",
        }
    }

    /// Whether blocks are uploaded to buckets in this mode.
    pub fn uploads(self) -> bool {
        matches!(self, WriterMode::FileAndBucket | WriterMode::FileAndBucketAndGrpc)
    }

    /// Whether blocks are streamed to block nodes in this mode.
    pub fn streams(self) -> bool {
        matches!(self, WriterMode::Grpc | WriterMode::FileAndBucketAndGrpc)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Writer mode.
    #[serde(default)]
    pub mode: WriterMode,
    /// Path of the credentials file (secrets per bucket), kept apart from this file.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Uploading: retries and retention.
    #[serde(default)]
    pub upload: UploadConfig,
    /// The local block store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The gRPC endpoint the consensus node publishes its block stream to.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The in-memory buffer of recent blocks and its backpressure.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The operators' HTTP endpoints (metrics, health, status page).
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The plugin runtime.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How blocks are streamed to block nodes.
    #[serde(default)]
    pub publish: PublishConfig,
    /// The block nodes blocks are streamed to (when the mode streams).
    #[serde(default)]
    pub block_nodes: Vec<BlockNodeConfig>,
    /// Buckets every block is uploaded to.
    #[serde(default, rename = "buckets")]
    pub buckets: Vec<BucketConfig>,
}

/// `[store]`: where blocks are kept on local disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of block files and their `.meta` files.
    #[serde(default = "default_store_dir")]
    pub dir: PathBuf,
    /// How block files are stored (and uploaded).
    #[serde(default)]
    pub compression: Compression,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { dir: default_store_dir(), compression: Compression::None }
    }
}

/// `[ingest]`: where the consensus node publishes its block stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address (`host:port`) of the `publishBlockStream` gRPC endpoint.
    #[serde(default = "default_ingest_listen")]
    pub listen: String,
    /// Largest request accepted, in bytes (a consensus node's hard limit:
    /// 6 MB + 1 KB by default; deployments raise it).
    #[serde(default = "default_hard_limit")]
    pub hard_limit_bytes: usize,
    /// Largest block accepted, in bytes (all its items together).
    #[serde(default = "default_max_block_bytes")]
    pub max_block_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: default_ingest_listen(),
            hard_limit_bytes: default_hard_limit(),
            max_block_bytes: default_max_block_bytes(),
        }
    }
}

fn default_ingest_listen() -> String {
    "127.0.0.1:40840".into()
}
fn default_hard_limit() -> usize {
    6_292_480
}
fn default_max_block_bytes() -> usize {
    64 * 1024 * 1024
}

/// `[log]`: what is logged (to stderr; `BLOCKFERRY_LOG_FORMAT=json` for JSON lines).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level or filter directives (`info`, `debug`, `info,blockferry::publish=debug`);
    /// `RUST_LOG`, when set, takes precedence.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// `[http]`: metrics, health and the status page.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address (`host:port`) of `/metrics`, `/healthz`, `/readyz`, `/api/status` and `/`.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Seconds between samples of each bucket's upload lag (the status page's chart).
    #[serde(default = "default_history_sample_secs")]
    pub history_sample_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: default_http_listen(), history_sample_secs: default_history_sample_secs() }
    }
}

fn default_http_listen() -> String {
    "127.0.0.1:9616".into()
}
fn default_history_sample_secs() -> u64 {
    10
}

/// `[buffer]`: recent blocks kept in memory until block nodes acknowledge
/// them, and the backpressure toward the consensus node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// How long an acknowledged block stays in memory, in seconds.
    #[serde(default = "default_buffer_ttl_secs")]
    pub ttl_secs: u64,
    /// The expected time between blocks, in milliseconds; the ideal buffer
    /// size is `ttl_secs` ÷ this (150 blocks by default).
    #[serde(default = "default_block_period_ms")]
    pub block_period_ms: u64,
    /// Bytes of unacknowledged blocks that count as a full buffer; also the
    /// most acknowledged blocks are kept in memory.
    #[serde(default = "default_buffer_max_bytes")]
    pub max_bytes: u64,
    /// How often acknowledged blocks past their TTL are pruned, in milliseconds.
    #[serde(default = "default_prune_interval_ms")]
    pub prune_interval_ms: u64,
    /// Saturation (percent) at which a warning is logged and counted.
    #[serde(default = "default_action_stage_percent")]
    pub action_stage_percent: f64,
    /// Saturation (percent) below which backpressure, engaged at 100 %, is released.
    #[serde(default = "default_recovery_percent")]
    pub recovery_percent: f64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            ttl_secs: default_buffer_ttl_secs(),
            block_period_ms: default_block_period_ms(),
            max_bytes: default_buffer_max_bytes(),
            prune_interval_ms: default_prune_interval_ms(),
            action_stage_percent: default_action_stage_percent(),
            recovery_percent: default_recovery_percent(),
        }
    }
}

impl BufferConfig {
    /// The ideal number of blocks in the buffer: TTL ÷ block period (at least 1).
    pub fn ideal_blocks(&self) -> u64 {
        (self.ttl_secs * 1000 / self.block_period_ms.max(1)).max(1)
    }
}

fn default_buffer_ttl_secs() -> u64 {
    300
}
fn default_block_period_ms() -> u64 {
    2_000
}
fn default_buffer_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_prune_interval_ms() -> u64 {
    1_000
}
fn default_action_stage_percent() -> f64 {
    50.0
}
fn default_recovery_percent() -> f64 {
    85.0
}

/// `[publish]`: streaming to block nodes. Durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Deadline of creating a stream, sending one request, and closing a
    /// stream (`pipelineOperationTimeout`).
    #[serde(default = "default_pipeline_timeout_ms")]
    pub pipeline_operation_timeout_ms: u64,
    /// A stream is closed gracefully and reopened this often (`streamResetPeriod`, 24 h).
    #[serde(default = "default_stream_reset_period_ms")]
    pub stream_reset_period_ms: u64,
    /// More `EndOfStream`s than this from one node within the time frame
    /// close its connection (`maxEndOfStreamsAllowed`).
    #[serde(default = "default_max_end_of_streams")]
    pub max_end_of_streams: u32,
    /// The rate limit's time frame (`endOfStreamTimeFrame`).
    #[serde(default = "default_eos_time_frame_ms")]
    pub end_of_stream_time_frame_ms: u64,
    /// How long a rate-limited node waits before it is tried again (`endOfStreamScheduleDelay`).
    #[serde(default = "default_eos_schedule_delay_ms")]
    pub end_of_stream_schedule_delay_ms: u64,
    /// Fixed delay before a node that ended the stream with SUCCESS, ERROR,
    /// PERSISTENCE_FAILED or UNKNOWN is tried again (the others are used meanwhile).
    #[serde(default = "default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// First delay of the exponential backoff (TIMEOUT, DUPLICATE_BLOCK,
    /// BAD_BLOCK_PROOF, INVALID_REQUEST, connection failures); doubles with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest backoff (`maxBackoffDelay`).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// A node that leaves a sent block unacknowledged this long is stalled:
    /// its connection is closed and another node used (`highLatencyThreshold`).
    #[serde(default = "default_ack_latency_bound_ms")]
    pub ack_latency_bound_ms: u64,
    /// How often a node of higher priority than the active one is probed,
    /// to switch back to it once it is reachable.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// A block node asking for a block local retention already deleted gets
    /// it read back from a bucket, if it is at most this many blocks older
    /// than the newest block held; older ones end the stream with
    /// `TOO_FAR_BEHIND`. 0: never read from buckets.
    #[serde(default = "default_archive_max_blocks_behind")]
    pub archive_max_blocks_behind: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            pipeline_operation_timeout_ms: default_pipeline_timeout_ms(),
            stream_reset_period_ms: default_stream_reset_period_ms(),
            max_end_of_streams: default_max_end_of_streams(),
            end_of_stream_time_frame_ms: default_eos_time_frame_ms(),
            end_of_stream_schedule_delay_ms: default_eos_schedule_delay_ms(),
            retry_delay_ms: default_retry_delay_ms(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            ack_latency_bound_ms: default_ack_latency_bound_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            archive_max_blocks_behind: default_archive_max_blocks_behind(),
        }
    }
}

fn default_pipeline_timeout_ms() -> u64 {
    3_000
}
fn default_stream_reset_period_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_max_end_of_streams() -> u32 {
    5
}
fn default_eos_time_frame_ms() -> u64 {
    30_000
}
fn default_eos_schedule_delay_ms() -> u64 {
    30_000
}
fn default_retry_delay_ms() -> u64 {
    30_000
}
fn default_initial_backoff_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    10_000
}
fn default_ack_latency_bound_ms() -> u64 {
    30_000
}
fn default_probe_interval_ms() -> u64 {
    10_000
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
    #[serde(default = "default_soft_limit")]
    pub soft_limit_bytes: usize,
    /// No request may exceed this (`messageSizeHardLimitBytes`, 6 MB + 1 KB).
    #[serde(default = "default_hard_limit")]
    pub hard_limit_bytes: usize,
}

impl BlockNodeConfig {
    /// `address:port`, as logs and metrics name the node.
    pub fn name(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

fn default_soft_limit() -> usize {
    2_097_152
}

/// Block file compression. `gzip` and `zstd` are deterministic (fixed level,
/// no name, time or checksum variations in the header), so two nodes storing
/// the same block produce the same bytes and the same MD5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Store the block's bytes as they arrived (`.blk`).
    #[default]
    None,
    /// Store them gzip-compressed (`.blk.gz`).
    Gzip,
    /// Store them zstd-compressed (`.blk.zstd`), as the Hiero block node's
    /// cloud-storage plugin writes its objects.
    Zstd,
}

/// `[upload]`: retries and local retention.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Failed attempts of one block to one bucket before it is reported as
    /// failed (error log, metric). Retrying goes on after that, at the longest backoff.
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: u32,
    /// First retry delay after a transient failure, in milliseconds (doubles each time).
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_backoff_ms: u64,
    /// How long a bucket that answered with a permanent error is held before
    /// the host tries it again, in seconds.
    #[serde(default = "default_hold_secs")]
    pub hold_after_permanent_error_secs: u64,
    /// Keep local blocks at least this long, in hours, and longer until they
    /// are safe in every bucket.
    #[serde(default = "default_retention_hours")]
    pub local_retention_hours: f64,
    /// How often retention runs, in seconds.
    #[serde(default = "default_retention_interval_secs")]
    pub retention_interval_secs: u64,
    /// How often each bucket's health is checked (and abandoned uploads
    /// cleaned up), in seconds; the first check runs at start-up.
    #[serde(default = "default_health_check_interval_secs")]
    pub health_check_interval_secs: u64,
    /// An upload started this many seconds ago and never completed (a
    /// multipart upload left by a killed process) is aborted.
    #[serde(default = "default_abandoned_upload_age_secs")]
    pub abandoned_upload_age_secs: u64,
    /// The evidence retention needs from every bucket before it deletes a
    /// local block.
    #[serde(default)]
    pub verify_before_delete: VerifyBeforeDelete,
}

/// `upload.verify_before_delete`: what must confirm a bucket's copy of a
/// block before retention deletes the local one. The plugin's word alone
/// (an `uploaded`, or MD5 metadata it wrote itself) is never enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyBeforeDelete {
    /// A digest the service computed from what it stored (ETag, `md5Hash`,
    /// checksum echo), or a read-back.
    #[default]
    ServerDigest,
    /// The stored bytes read back and hashed (`blockferry verify --deep`, a
    /// restore, or a provider that reads back what it wrote).
    ReadBack,
}

impl VerifyBeforeDelete {
    /// The weakest confirmation this setting accepts.
    pub fn required(self) -> crate::store::Confirmed {
        match self {
            VerifyBeforeDelete::ServerDigest => crate::store::Confirmed::ServerDigest,
            VerifyBeforeDelete::ReadBack => crate::store::Confirmed::ReadBack,
        }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            retry_attempts: default_retry_attempts(),
            retry_initial_backoff_ms: default_retry_initial_ms(),
            retry_max_backoff_ms: default_retry_max_ms(),
            hold_after_permanent_error_secs: default_hold_secs(),
            local_retention_hours: default_retention_hours(),
            retention_interval_secs: default_retention_interval_secs(),
            health_check_interval_secs: default_health_check_interval_secs(),
            abandoned_upload_age_secs: default_abandoned_upload_age_secs(),
            verify_before_delete: VerifyBeforeDelete::default(),
        }
    }
}

fn default_archive_max_blocks_behind() -> u64 {
    // A day of blocks at one block per two seconds.
    43_200
}
fn default_health_check_interval_secs() -> u64 {
    60
}
fn default_abandoned_upload_age_secs() -> u64 {
    24 * 3600
}
fn default_retry_attempts() -> u32 {
    3
}
fn default_retry_initial_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    60_000
}
fn default_hold_secs() -> u64 {
    300
}
fn default_retention_hours() -> f64 {
    168.0
}
fn default_retention_interval_secs() -> u64 {
    60
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("data/blocks")
}

/// `[plugins]`: how provider components are compiled and run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of compiled components (only the host writes there).
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Use the pooling instance allocator.
    #[serde(default = "yes")]
    pub pooling: bool,
    /// Plugin instances that may exist at once across all buckets.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Networks no plugin request may reach, even through a permitted name.
    #[serde(default = "default_denied_networks")]
    pub denied_networks: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            pooling: true,
            max_instances: default_max_instances(),
            denied_networks: default_denied_networks(),
        }
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("data/plugin-cache")
}
fn yes() -> bool {
    true
}
fn default_max_instances() -> u32 {
    256
}
fn default_denied_networks() -> Vec<String> {
    DEFAULT_DENIED_NETWORKS.iter().map(|s| s.to_string()).collect()
}

/// `[[buckets]]`: one bucket and the plugin that uploads to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Unique name, used in logs, metrics and `.meta` files.
    pub name: String,
    /// Path of the provider component (`.wasm`).
    pub plugin: PathBuf,
    /// Optional SHA-256 pin of the plugin file (hex).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Host directory lent to a filesystem provider (`root` setting).
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Extra `host:port` authorities the plugin may reach besides the URLs in its settings.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Memory cap of one plugin instance, in MiB.
    #[serde(default = "default_memory_limit_mib")]
    pub memory_limit_mib: u64,
    /// Deadline of one plugin call, in milliseconds (HTTP waits and retries included).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Uploads in flight at once to this bucket.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Log lines (`host.log`, stdout, stderr) the plugin may write per minute.
    #[serde(default = "default_log_lines_per_minute")]
    pub log_lines_per_minute: u32,
    /// Object key of a block: `{number}` is the block number zero-padded to
    /// 36 digits (`{number:N}` pads to N), `{ext}` the file extension
    /// (`.blk` or `.blk.gz`). Keys sort numerically.
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// PEM file of CA certificates its HTTPS connections trust beside the bundled web roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate presented for mutual TLS.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// Trust the operating system's CA store too.
    #[serde(default)]
    pub tls_system_roots: bool,
    /// The TLS client built from the `tls_*` keys and their files when the config was loaded.
    #[serde(skip)]
    pub tls: Option<crate::plugin::tls::LoadedTls>,
    /// Provider-specific settings, passed to the plugin as they are.
    #[serde(default)]
    pub settings: toml::Table,
    /// Secrets from the credentials file (never in the config file itself).
    #[serde(skip)]
    pub secrets: crate::credentials::Secrets,
}

fn default_memory_limit_mib() -> u64 {
    64
}
fn default_call_timeout_ms() -> u64 {
    30_000
}
fn default_concurrency() -> usize {
    4
}
fn default_log_lines_per_minute() -> u32 {
    crate::plugin::logs::DEFAULT_LINES_PER_MINUTE
}
fn default_key_template() -> String {
    "{number}{ext}".into()
}

impl Config {
    /// Load and validate the config at `path` and the credentials file it
    /// names; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::parse(&text, path, base)?;
        if let Some(creds) = config.credentials.clone() {
            let credentials = crate::credentials::Credentials::load(&creds)?;
            config.apply_credentials(&creds, credentials)?;
        }
        Ok(config)
    }

    /// Merge each bucket's secrets into its settings (the plugin receives
    /// both); a credentials entry for an unknown bucket is an error.
    fn apply_credentials(
        &mut self,
        path: &Path,
        credentials: crate::credentials::Credentials,
    ) -> Result<(), ConfigError> {
        for (bucket, secrets) in credentials.into_buckets() {
            let Some(b) = self.buckets.iter_mut().find(|b| b.name == bucket) else {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("buckets.{bucket}"),
                    problem: "names no bucket of the config".into(),
                    fix: "use the `name` of a [[buckets]] table, or remove the entry".into(),
                });
            };
            b.secrets = secrets;
        }
        Ok(())
    }

    /// Parse and validate `text` (named `path` in errors), resolving relative
    /// paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.resolve_paths(base);
        config.validate(path)?;
        for (i, b) in config.buckets.iter_mut().enumerate() {
            b.tls = b.tls_settings().load().map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("buckets[{i}].{}", e.key),
                problem: match e.path.as_os_str().is_empty() {
                    true => e.problem,
                    false => format!("= {:?}: {}", e.path.display().to_string(), e.problem),
                },
                fix: e.fix.to_string(),
            })?;
        }
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.store.dir);
        if let Some(c) = &mut self.credentials {
            resolve(c);
        }
        resolve(&mut self.plugins.cache_dir);
        for b in &mut self.buckets {
            resolve(&mut b.plugin);
            if let Some(d) = &mut b.directory {
                resolve(d);
            }
            for file in
                [&mut b.tls_ca_file, &mut b.tls_client_cert_file, &mut b.tls_client_key_file].into_iter().flatten()
            {
                resolve(file);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String, fix: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
            fix: fix.to_string(),
        };
        for (i, net) in self.plugins.denied_networks.iter().enumerate() {
            net.parse::<IpNet>().map_err(|e| {
                invalid(
                    format!("plugins.denied_networks[{i}]"),
                    format!("= {net:?} is not a network ({e})"),
                    "write it in CIDR form, e.g. \"169.254.0.0/16\"",
                )
            })?;
        }
        if self.plugins.max_instances == 0 {
            return Err(invalid(
                "plugins.max_instances".into(),
                "is 0".into(),
                "set it to at least the sum of the buckets' `concurrency`",
            ));
        }
        self.validate_stream(&invalid)?;
        let u = &self.upload;
        if u.retry_initial_backoff_ms == 0 || u.retry_max_backoff_ms < u.retry_initial_backoff_ms {
            return Err(invalid(
                "upload.retry_max_backoff_ms".into(),
                format!(
                    "= {} is below retry_initial_backoff_ms = {}",
                    u.retry_max_backoff_ms, u.retry_initial_backoff_ms
                ),
                "use 0 < retry_initial_backoff_ms <= retry_max_backoff_ms",
            ));
        }
        if !(u.local_retention_hours >= 0.0 && u.local_retention_hours.is_finite()) {
            return Err(invalid(
                "upload.local_retention_hours".into(),
                format!("= {} is not a duration", u.local_retention_hours),
                "use a number of hours >= 0, e.g. 168 for a week",
            ));
        }
        if u.retention_interval_secs == 0 {
            return Err(invalid(
                "upload.retention_interval_secs".into(),
                "is 0".into(),
                "use a number of seconds >= 1",
            ));
        }
        if self.mode.uploads() && self.buckets.is_empty() {
            return Err(invalid(
                "buckets".into(),
                format!("is empty but mode \"{}\" uploads to buckets", self.mode.name()),
                "add a [[buckets]] table, or set mode = \"file\"",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.buckets.iter().enumerate() {
            let key = |k: &str| format!("buckets[{i}].{k}");
            if b.name.trim().is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(
                    key("name"),
                    format!("= {:?} is not a valid bucket name", b.name),
                    "use letters, digits, `-` and `_` only",
                ));
            }
            if !names.insert(&b.name) {
                return Err(invalid(
                    key("name"),
                    format!("= {:?} is used by another bucket", b.name),
                    "give every bucket a unique name",
                ));
            }
            if let Some(pin) = &b.sha256
                && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(invalid(
                    key("sha256"),
                    format!("= {pin:?} is not a SHA-256 digest"),
                    "use the 64 hex digits `sha256sum PLUGIN.wasm` prints",
                ));
            }
            if b.memory_limit_mib < 1 || b.memory_limit_mib > 4096 {
                return Err(invalid(
                    key("memory_limit_mib"),
                    format!("= {} is out of range", b.memory_limit_mib),
                    "use 1 to 4096 (MiB)",
                ));
            }
            if b.call_timeout_ms < 10 {
                return Err(invalid(
                    key("call_timeout_ms"),
                    format!("= {} is too short", b.call_timeout_ms),
                    "use at least 10 ms; 30000 is the default",
                ));
            }
            if self.upload.abandoned_upload_age_secs.saturating_mul(1000) <= b.call_timeout_ms {
                return Err(invalid(
                    "upload.abandoned_upload_age_secs".into(),
                    format!(
                        "= {} is not longer than bucket {:?}'s call_timeout_ms = {}, so uploads still running \
                         (here or on another node) could be aborted as abandoned",
                        self.upload.abandoned_upload_age_secs, b.name, b.call_timeout_ms
                    ),
                    "make it longer than every bucket's call timeout; 86400 (a day) is the default",
                ));
            }
            if b.log_lines_per_minute == 0 {
                return Err(invalid(key("log_lines_per_minute"), "is 0".into(), "use at least 1; 600 is the default"));
            }
            if b.concurrency == 0 || b.concurrency > 1024 {
                return Err(invalid(
                    key("concurrency"),
                    format!("= {} is out of range", b.concurrency),
                    "use 1 to 1024",
                ));
            }
            if let Some(dir) = &b.directory {
                for (other, name) in [(&self.store.dir, "store.dir"), (&self.plugins.cache_dir, "plugins.cache_dir")] {
                    if overlaps(dir, other) {
                        return Err(invalid(
                            key("directory"),
                            format!("= {} overlaps {name} = {}", dir.display(), other.display()),
                            "give the bucket a directory of its own, outside the block store and the plugin cache \
                             (a plugin may write anything in its directory)",
                        ));
                    }
                }
            }
            let denied = self.denied_networks();
            for (j, host) in b.allow_hosts.iter().enumerate() {
                if let Some(why) = crate::plugin::egress::denied_literal(host, &denied) {
                    return Err(invalid(
                        key(&format!("allow_hosts[{j}]")),
                        format!("= {host:?} can never be reached: {why}"),
                        "remove the entry, or remove its network from plugins.denied_networks",
                    ));
                }
            }
            for (name, value) in b.settings_list() {
                if let Some(why) =
                    crate::plugin::egress::denied_literal(&value, &denied).filter(|_| value.contains("://"))
                {
                    return Err(invalid(
                        key(&format!("settings.{name}")),
                        format!("= {value:?} can never be reached: {why}"),
                        "use the service's address, or remove its network from plugins.denied_networks",
                    ));
                }
            }
            if let Err(problem) = check_key_template(&b.key_template) {
                return Err(invalid(
                    key("key_template"),
                    problem,
                    "use `{number}` (or `{number:N}`) and optionally `{ext}`, e.g. \"blocks/{number}{ext}\"",
                ));
            }
            for (k, v) in &b.settings {
                if !matches!(
                    v,
                    toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)
                ) {
                    return Err(invalid(
                        format!("buckets[{i}].settings.{k}"),
                        "is a table or an array".into(),
                        "settings are plain values: strings, numbers or booleans",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Check `[ingest]` and `[buffer]`.
    fn validate_stream(&self, invalid: &dyn Fn(String, String, &str) -> ConfigError) -> Result<(), ConfigError> {
        let i = &self.ingest;
        if i.listen.parse::<std::net::SocketAddr>().is_err() && !i.listen.contains(':') {
            return Err(invalid(
                "ingest.listen".into(),
                format!("= {:?} is not an address", i.listen),
                "use host:port, e.g. \"127.0.0.1:40840\"",
            ));
        }
        if i.hard_limit_bytes < 1024 {
            return Err(invalid(
                "ingest.hard_limit_bytes".into(),
                format!("= {} is too small", i.hard_limit_bytes),
                "use at least 6292480 (6 MB + 1 KB), a consensus node's default",
            ));
        }
        if i.max_block_bytes < i.hard_limit_bytes {
            return Err(invalid(
                "ingest.max_block_bytes".into(),
                format!("= {} is below hard_limit_bytes = {}", i.max_block_bytes, i.hard_limit_bytes),
                "a block may hold several requests: use max_block_bytes >= hard_limit_bytes",
            ));
        }
        self.validate_block_nodes(invalid)?;
        if !self.http.listen.contains(':') {
            return Err(invalid(
                "http.listen".into(),
                format!("= {:?} is not an address", self.http.listen),
                "use host:port, e.g. \"127.0.0.1:9616\"",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level".into(),
                format!("= {:?} is not a log level or filter ({e})", self.log.level),
                "use error, warn, info, debug or trace, optionally per module: \"info,blockferry::publish=debug\"",
            ));
        }
        if self.http.history_sample_secs == 0 {
            return Err(invalid("http.history_sample_secs".into(), "is 0".into(), "use a value >= 1"));
        }
        let b = &self.buffer;
        for (key, value) in [
            ("buffer.ttl_secs", b.ttl_secs),
            ("buffer.block_period_ms", b.block_period_ms),
            ("buffer.max_bytes", b.max_bytes),
            ("buffer.prune_interval_ms", b.prune_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(key.into(), "is 0".into(), "use a value >= 1"));
            }
        }
        if !(b.recovery_percent > 0.0 && b.recovery_percent < 100.0) {
            return Err(invalid(
                "buffer.recovery_percent".into(),
                format!("= {} is not between 0 and 100", b.recovery_percent),
                "backpressure engages at 100 % and is released below this: use e.g. 85",
            ));
        }
        if !(b.action_stage_percent > 0.0 && b.action_stage_percent <= 100.0) {
            return Err(invalid(
                "buffer.action_stage_percent".into(),
                format!("= {} is not between 0 and 100", b.action_stage_percent),
                "use e.g. 50",
            ));
        }
        Ok(())
    }

    /// Check `[publish]` and `[[block_nodes]]`.
    fn validate_block_nodes(&self, invalid: &dyn Fn(String, String, &str) -> ConfigError) -> Result<(), ConfigError> {
        if self.mode.streams() && self.block_nodes.is_empty() {
            return Err(invalid(
                "block_nodes".into(),
                format!("is empty but mode \"{}\" streams to block nodes", self.mode.name()),
                "add a [[block_nodes]] table (address, port), or use mode = \"file-and-bucket\"",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in self.block_nodes.iter().enumerate() {
            let key = |k: &str| format!("block_nodes[{i}].{k}");
            if n.address.trim().is_empty() || n.port == 0 {
                return Err(invalid(
                    key("address"),
                    format!("= {:?} port {} is not an address", n.address, n.port),
                    "give a host name or IP and a port > 0",
                ));
            }
            if !seen.insert(n.name()) {
                return Err(invalid(
                    key("address"),
                    format!("{} is listed twice", n.name()),
                    "list every block node once",
                ));
            }
            if n.hard_limit_bytes < 1024 {
                return Err(invalid(
                    key("hard_limit_bytes"),
                    format!("= {} is too small", n.hard_limit_bytes),
                    "use at least 6292480 (6 MB + 1 KB)",
                ));
            }
            if n.soft_limit_bytes == 0 || n.soft_limit_bytes > n.hard_limit_bytes {
                return Err(invalid(
                    key("soft_limit_bytes"),
                    format!("= {} is not between 1 and hard_limit_bytes = {}", n.soft_limit_bytes, n.hard_limit_bytes),
                    "use soft_limit_bytes <= hard_limit_bytes (2097152 and 6292480 by default)",
                ));
            }
        }
        let p = &self.publish;
        for (key, value) in [
            ("publish.pipeline_operation_timeout_ms", p.pipeline_operation_timeout_ms),
            ("publish.stream_reset_period_ms", p.stream_reset_period_ms),
            ("publish.max_end_of_streams", u64::from(p.max_end_of_streams)),
            ("publish.end_of_stream_time_frame_ms", p.end_of_stream_time_frame_ms),
            ("publish.initial_backoff_ms", p.initial_backoff_ms),
            ("publish.ack_latency_bound_ms", p.ack_latency_bound_ms),
            ("publish.probe_interval_ms", p.probe_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(key.into(), "is 0".into(), "use a value >= 1"));
            }
        }
        if p.max_backoff_ms < p.initial_backoff_ms {
            return Err(invalid(
                "publish.max_backoff_ms".into(),
                format!("= {} is below initial_backoff_ms = {}", p.max_backoff_ms, p.initial_backoff_ms),
                "use initial_backoff_ms <= max_backoff_ms",
            ));
        }
        Ok(())
    }

    /// Whether blocks are streamed to block nodes.
    pub fn streams(&self) -> bool {
        self.mode.streams() && !self.block_nodes.is_empty()
    }

    /// The parsed denied networks (validated at load).
    pub fn denied_networks(&self) -> Vec<IpNet> {
        self.plugins.denied_networks.iter().filter_map(|n| n.parse().ok()).collect()
    }

    /// The buckets every stored block is recorded as pending in (none when
    /// the writer mode does not upload).
    pub fn upload_buckets(&self) -> Vec<String> {
        if self.mode.uploads() { self.buckets.iter().map(|b| b.name.clone()).collect() } else { Vec::new() }
    }

    /// The sections of `self` that differ from `running` and take effect
    /// only at the next start (a reload applies buckets, uploads, retention,
    /// block nodes and log level).
    pub fn restart_only_changes(&self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, name| {
            if differs {
                changed.push(name);
            }
        };
        check(self.mode != running.mode, "mode");
        check(self.store != running.store, "[store]");
        check(self.ingest != running.ingest, "[ingest]");
        check(self.buffer != running.buffer, "[buffer]");
        check(self.http != running.http, "[http]");
        check(self.plugins != running.plugins, "[plugins]");
        check(self.publish != running.publish, "[publish]");
        changed
    }
}

impl BucketConfig {
    /// The settings as the plugin receives them: strings, in key order.
    pub fn settings_list(&self) -> Vec<(String, String)> {
        let plain = self.settings.iter().map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        });
        plain.chain(self.secrets.pairs()).collect()
    }

    /// The fixed start of every key: the key template up to its first placeholder.
    pub fn key_prefix(&self) -> &str {
        self.key_template.split('{').next().unwrap_or_default()
    }

    /// The object key of block `number` stored with extension `ext`.
    pub fn key(&self, number: u64, ext: &str) -> String {
        render_key(&self.key_template, number, ext)
    }

    /// The bucket's `tls_*` keys.
    pub fn tls_settings(&self) -> crate::plugin::tls::TlsSettings {
        crate::plugin::tls::TlsSettings {
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client_cert_file: self.tls_client_cert_file.clone(),
            tls_client_key_file: self.tls_client_key_file.clone(),
            tls_system_roots: self.tls_system_roots,
        }
    }

    /// What the host grants this bucket's plugin.
    pub fn spec(&self, denied_networks: Vec<IpNet>) -> BucketSpec {
        BucketSpec {
            name: self.name.clone(),
            settings: self.settings_list(),
            directory: self.directory.clone(),
            allow_hosts: self.allow_hosts.clone(),
            denied_networks,
            memory_limit: self.memory_limit_mib * 1024 * 1024,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            max_concurrency: self.concurrency,
            secrets: self.secrets.pairs().map(|(name, _)| name).collect(),
            log_lines_per_minute: self.log_lines_per_minute,
            tls: crate::plugin::tls::LoadedTls::client_of(self.tls.as_ref()),
        }
    }
}

/// Whether one of two directories contains the other (compared as they
/// really are when they exist, symlinks resolved).
fn overlaps(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (a, b) = (real(a), real(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Check a key template: `{number}` or `{number:N}` must appear, and only
/// known placeholders.
fn check_key_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut has_number = false;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| format!("= {template:?} has an unclosed `{{`"))? + open;
        let name = &rest[open + 1..close];
        match name.split_once(':') {
            None if name == "number" => has_number = true,
            None if name == "ext" => {}
            Some(("number", "bn")) => has_number = true,
            Some(("number", width)) if width.parse::<usize>().is_ok_and(|w| (1..=40).contains(&w)) => has_number = true,
            _ => return Err(format!("= {template:?} has an unknown placeholder `{{{name}}}`")),
        }
        rest = &rest[close + 1..];
    }
    if has_number {
        Ok(())
    } else {
        Err(format!("= {template:?} does not contain `{{number}}`, so every block would get the same key"))
    }
}

/// Render a (validated) key template.
pub fn render_key(template: &str, number: u64, ext: &str) -> String {
    let mut out = String::with_capacity(template.len() + 40);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}').map(|c| c + open) else { break };
        match rest[open + 1..close].split_once(':') {
            None if &rest[open + 1..close] == "ext" => out.push_str(ext),
            None => out.push_str(&format!("{number:036}")),
            Some((_, "bn")) => out.push_str(&block_node_path(number)),
            Some((_, width)) => out.push_str(&format!("{number:0width$}", width = width.parse().unwrap_or(36))),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The Hiero block node's object path of block `number`: the number padded
/// to 19 digits and split 4/4/4/4/3 (`0000/0000/0010/8273/182`); a number of
/// 20 digits gets them in its first group.
fn block_node_path(number: u64) -> String {
    let digits = format!("{number:019}");
    let first = digits.len() - 15;
    let split = [
        &digits[..first],
        &digits[first..first + 4],
        &digits[first + 4..first + 8],
        &digits[first + 8..first + 12],
        &digits[first + 12..],
    ];
    split.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_node_layout() {
        assert_eq!(render_key("blocks/{number:bn}{ext}", 1, ".blk.zstd"), "blocks/0000/0000/0000/0000/001.blk.zstd");
        assert_eq!(
            render_key("blocks/{number:bn}{ext}", 108_273_182, ".blk.zstd"),
            "blocks/0000/0000/0010/8273/182.blk.zstd"
        );
        assert_eq!(render_key("{number:bn}{ext}", u64::MAX, ".blk"), "18446/7440/7370/9551/615.blk");
        assert!(check_key_template("blocks/{number:bn}{ext}").is_ok());
        assert!(check_key_template("blocks/{number:bx}{ext}").is_err());
    }

    #[test]
    fn key_templates_render_zero_padded_numbers() {
        assert_eq!(render_key("{number}{ext}", 42, ".blk"), format!("{:036}.blk", 42));
        assert_eq!(render_key("blocks/{number:19}.blk", 7, ".blk.gz"), "blocks/0000000000000000007.blk");
        assert!(check_key_template("static.blk").is_err());
        assert!(check_key_template("{number}{nope}").is_err());
        assert!(check_key_template("{number:19}{ext}").is_ok());
    }
}
