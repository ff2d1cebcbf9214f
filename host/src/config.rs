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
    #[error("cannot read config {path}: {source}; create one with `blockferry init {path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The local block store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The plugin runtime.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Buckets every block is uploaded to.
    #[serde(default, rename = "buckets")]
    pub buckets: Vec<BucketConfig>,
}

/// `[store]`: where blocks are kept on local disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of block files and their `.meta` files.
    #[serde(default = "default_store_dir")]
    pub dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dir: default_store_dir(),
        }
    }
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("data/blocks")
}

/// `[plugins]`: how provider components are compiled and run.
#[derive(Debug, Clone, Deserialize)]
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
    DEFAULT_DENIED_NETWORKS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `[[buckets]]`: one bucket and the plugin that uploads to it.
#[derive(Debug, Clone, Deserialize)]
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
    /// Provider-specific settings, passed to the plugin as they are.
    #[serde(default)]
    pub settings: toml::Table,
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

impl Config {
    /// Load and validate the config at `path`; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parse and validate `text` (named `path` in errors), resolving relative
    /// paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.resolve_paths(base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.store.dir);
        resolve(&mut self.plugins.cache_dir);
        for b in &mut self.buckets {
            resolve(&mut b.plugin);
            if let Some(d) = &mut b.directory {
                resolve(d);
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
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.buckets.iter().enumerate() {
            let key = |k: &str| format!("buckets[{i}].{k}");
            if b.name.trim().is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
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
            if b.concurrency == 0 || b.concurrency > 1024 {
                return Err(invalid(
                    key("concurrency"),
                    format!("= {} is out of range", b.concurrency),
                    "use 1 to 1024",
                ));
            }
            for (k, v) in &b.settings {
                if !matches!(
                    v,
                    toml::Value::String(_)
                        | toml::Value::Integer(_)
                        | toml::Value::Boolean(_)
                        | toml::Value::Float(_)
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

    /// The parsed denied networks (validated at load).
    pub fn denied_networks(&self) -> Vec<IpNet> {
        self.plugins
            .denied_networks
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }
}

impl BucketConfig {
    /// The settings as the plugin receives them: strings, in key order.
    pub fn settings_list(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
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
        }
    }
}
