//! The TOML configuration: where blocks are stored, how plugins run, and the
//! buckets every block is uploaded to.
//!
//! Each stage owns its section (`[store]` in `store`, `[upload]` and
//! `[[buckets]]` in `upload`, …); this module combines them into one file,
//! loads the credentials file beside it, resolves relative paths and checks
//! what spans sections (`validate`). Every option is documented in
//! `examples/blockferry.toml`, which the tests load. Relative paths are
//! resolved against the config file's directory.

mod credentials;
mod error;
mod validate;

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

pub use credentials::Credentials;
pub use error::ConfigError;

pub use crate::buffer::BufferConfig;
pub use crate::http::HttpConfig;
pub use crate::ingest::IngestConfig;
pub use crate::plugin::PluginsConfig;
pub use crate::publish::{BlockNodeConfig, PublishConfig};
pub use crate::store::{Compression, StoreConfig};
pub use crate::telemetry::LogConfig;
pub use crate::upload::{BucketConfig, Secrets, UploadConfig, VerifyBeforeDelete, render_key};

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
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Writer mode.
    pub mode: WriterMode,
    /// Path of the credentials file (secrets per bucket), kept apart from this file.
    pub credentials: Option<PathBuf>,
    /// Uploading: retries and retention.
    pub upload: UploadConfig,
    /// The local block store.
    pub store: StoreConfig,
    /// The gRPC endpoint the consensus node publishes its block stream to.
    pub ingest: IngestConfig,
    /// The in-memory buffer of recent blocks and its backpressure.
    pub buffer: BufferConfig,
    /// The operators' HTTP endpoints (metrics, health, status page).
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The plugin runtime.
    pub plugins: PluginsConfig,
    /// How blocks are streamed to block nodes.
    pub publish: PublishConfig,
    /// The block nodes blocks are streamed to (when the mode streams).
    pub block_nodes: Vec<BlockNodeConfig>,
    /// Buckets every block is uploaded to.
    pub buckets: Vec<BucketConfig>,
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
            let credentials = Credentials::load(&creds)?;
            config.apply_credentials(&creds, credentials)?;
        }
        Ok(config)
    }

    /// Merge each bucket's secrets into its settings (the plugin receives
    /// both); a credentials entry for an unknown bucket is an error.
    fn apply_credentials(&mut self, path: &Path, credentials: Credentials) -> Result<(), ConfigError> {
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
        for (i, b) in self.buckets.iter().enumerate() {
            self.validate_credentials_source(path, i, b)?;
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
            b.resolved_source = b.source_settings().resolve(&b.name, |name| std::env::var(name).ok()).map_err(|e| {
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("buckets[{i}].{}", e.key),
                    problem: e.problem,
                    fix: e.fix,
                }
            })?;
        }
        #[cfg(feature = "runtime")]
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
            for path in [&mut b.directory, &mut b.web_identity_token_file, &mut b.container_authorization_token_file]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
            for file in
                [&mut b.tls_ca_file, &mut b.tls_client_cert_file, &mut b.tls_client_key_file].into_iter().flatten()
            {
                resolve(file);
            }
        }
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
