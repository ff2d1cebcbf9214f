//! Checks of a parsed config: each value in range, and what spans sections
//! (a bucket's directory outside the store, retries shorter than the
//! abandoned-upload age, …). Every error names the key and the fix.

use std::path::Path;

use ipnet::IpNet;

use super::{Config, ConfigError};
use crate::plugin::network::denied_literal;
use crate::upload::check_key_template;

impl Config {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
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
                if let Some(why) = denied_literal(host, &denied) {
                    return Err(invalid(
                        key(&format!("allow_hosts[{j}]")),
                        format!("= {host:?} can never be reached: {why}"),
                        "remove the entry, or remove its network from plugins.denied_networks",
                    ));
                }
            }
            for (name, value) in b.settings_list() {
                if let Some(why) = denied_literal(&value, &denied).filter(|_| value.contains("://")) {
                    return Err(invalid(
                        key(&format!("settings.{name}")),
                        format!("= {value:?} can never be reached: {why}"),
                        "use the service's address, or remove its network from plugins.denied_networks",
                    ));
                }
            }
            self.validate_credentials_source(path, i, b)?;
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

    /// Check that bucket `i`, when its credentials come from a platform
    /// source, has no static keys too (in its settings or, once merged, the
    /// credentials file).
    pub(super) fn validate_credentials_source(
        &self,
        path: &Path,
        i: usize,
        b: &crate::upload::BucketConfig,
    ) -> Result<(), ConfigError> {
        if b.credentials_source.is_static() {
            return Ok(());
        }
        match b.static_credential_keys().first() {
            None => Ok(()),
            Some(key) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("buckets[{i}].credentials_source"),
                problem: format!(
                    "= \"{}\" and the static credentials {key} are both set for bucket {:?}",
                    b.credentials_source.name(),
                    b.name
                ),
                fix: "keep one: remove the static keys to use the platform's credentials, or remove \
                      `credentials_source` to sign with the static keys"
                    .into(),
            }),
        }
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
}

/// Whether one of two directories contains the other (compared as they
/// really are when they exist, symlinks resolved).
fn overlaps(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (a, b) = (real(a), real(b));
    a.starts_with(&b) || b.starts_with(&a)
}
