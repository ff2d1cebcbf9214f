//! `[upload]` and `[[buckets]]`: retries, retention, and each bucket with
//! the plugin that uploads to it and the key its blocks get.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::credentials::{CredentialsSource, ResolvedSource, SourceSettings};
use crate::store::Confirmed;

/// `[upload]`: retries and local retention.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Failed attempts of one block to one bucket before it is reported as
    /// failed (error log, metric). Retrying goes on after that, at the longest backoff.
    pub retry_attempts: u32,
    /// First retry delay after a transient failure, in milliseconds (doubles each time).
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_backoff_ms: u64,
    /// How long a bucket that answered with a permanent error is held before
    /// the host tries it again, in seconds.
    pub hold_after_permanent_error_secs: u64,
    /// Keep local blocks at least this long, in hours, and longer until they
    /// are safe in every bucket.
    pub local_retention_hours: f64,
    /// How often retention runs, in seconds.
    pub retention_interval_secs: u64,
    /// How often each bucket's health is checked (and abandoned uploads
    /// cleaned up), in seconds; the first check runs at start-up.
    pub health_check_interval_secs: u64,
    /// An upload started this many seconds ago and never completed (a
    /// multipart upload left by a killed process) is aborted.
    pub abandoned_upload_age_secs: u64,
    /// The evidence retention needs from every bucket before it deletes a
    /// local block.
    pub verify_before_delete: VerifyBeforeDelete,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            retry_attempts: 3,
            retry_initial_backoff_ms: 1_000,
            retry_max_backoff_ms: 60_000,
            hold_after_permanent_error_secs: 300,
            local_retention_hours: 168.0,
            retention_interval_secs: 60,
            health_check_interval_secs: 60,
            abandoned_upload_age_secs: 24 * 3600,
            verify_before_delete: VerifyBeforeDelete::default(),
        }
    }
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
    pub fn required(self) -> Confirmed {
        match self {
            VerifyBeforeDelete::ServerDigest => Confirmed::ServerDigest,
            VerifyBeforeDelete::ReadBack => Confirmed::ReadBack,
        }
    }
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
    #[serde(default = "BucketConfig::default_memory_limit_mib")]
    pub memory_limit_mib: u64,
    /// Deadline of one plugin call, in milliseconds (HTTP waits and retries included).
    #[serde(default = "BucketConfig::default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Uploads in flight at once to this bucket.
    #[serde(default = "BucketConfig::default_concurrency")]
    pub concurrency: usize,
    /// Log lines (`host.log`, stdout, stderr) the plugin may write per minute.
    #[serde(default = "BucketConfig::default_log_lines_per_minute")]
    pub log_lines_per_minute: u32,
    /// Object key of a block: `{number}` is the block number zero-padded to
    /// 36 digits (`{number:N}` pads to N), `{ext}` the file extension
    /// (`.blk`, `.blk.gz` or `.blk.zstd`); `{number:bn}` the Hiero block
    /// node's path (`0000/0000/0010/8273/182`). Keys sort numerically.
    #[serde(default = "BucketConfig::default_key_template")]
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
    #[cfg(feature = "runtime")]
    #[serde(skip)]
    pub tls: Option<crate::plugin::tls::LoadedTls>,
    /// Where the bucket's credentials come from: `static` (keys in its
    /// settings and the credentials file) or a platform source the host asks
    /// (`aws-instance`, `aws-ecs`, `aws-web-identity`, `gcp-metadata`).
    #[serde(default)]
    pub credentials_source: CredentialsSource,
    /// URL of the credentials source, replacing the platform's default (and its environment variable).
    #[serde(default)]
    pub credentials_endpoint: Option<String>,
    /// IAM role assumed by `aws-web-identity` (default: `AWS_ROLE_ARN`).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Session name given to STS by `aws-web-identity` (default: `AWS_ROLE_SESSION_NAME`, else `blockferry-NAME`).
    #[serde(default)]
    pub role_session_name: Option<String>,
    /// Web identity token file of `aws-web-identity` (default: `AWS_WEB_IDENTITY_TOKEN_FILE`).
    #[serde(default)]
    pub web_identity_token_file: Option<PathBuf>,
    /// File holding the container endpoint's authorization token for `aws-ecs`
    /// (default: `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, else `AWS_CONTAINER_AUTHORIZATION_TOKEN`).
    #[serde(default)]
    pub container_authorization_token_file: Option<PathBuf>,
    /// The credentials source with the environment's defaults, resolved when the config was loaded.
    #[serde(skip)]
    pub resolved_source: Option<ResolvedSource>,
    /// Provider-specific settings, passed to the plugin as they are.
    #[serde(default)]
    pub settings: toml::Table,
    /// Secrets from the credentials file (never in the config file itself).
    #[serde(skip)]
    pub secrets: Secrets,
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
        // A provider learns from `credentials_source` to ask the host for credentials.
        let source = (!self.credentials_source.is_static())
            .then(|| ("credentials_source".to_string(), self.credentials_source.name().to_string()));
        plain.chain(self.secrets.pairs()).chain(source).collect()
    }

    /// The bucket's credentials keys.
    pub fn source_settings(&self) -> SourceSettings {
        SourceSettings {
            source: self.credentials_source,
            endpoint: self.credentials_endpoint.clone(),
            role_arn: self.role_arn.clone(),
            role_session_name: self.role_session_name.clone(),
            web_identity_token_file: self.web_identity_token_file.clone(),
            authorization_token_file: self.container_authorization_token_file.clone(),
        }
    }

    /// The static-credential keys among its settings and secrets (which a
    /// bucket with a non-static `credentials_source` must not have), as
    /// `settings.KEY` or `credentials file KEY`.
    pub fn static_credential_keys(&self) -> Vec<String> {
        let keys = crate::credentials::STATIC_CREDENTIAL_KEYS;
        let in_settings = self.settings.keys().filter(|k| keys.contains(&k.as_str())).map(|k| format!("settings.{k}"));
        let in_secrets = self
            .secrets
            .pairs()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, _)| format!("`{k}` of the credentials file"));
        in_settings.chain(in_secrets).collect()
    }

    /// The bucket's `tls_*` keys.
    #[cfg(feature = "runtime")]
    pub fn tls_settings(&self) -> crate::plugin::tls::TlsSettings {
        crate::plugin::tls::TlsSettings {
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client_cert_file: self.tls_client_cert_file.clone(),
            tls_client_key_file: self.tls_client_key_file.clone(),
            tls_system_roots: self.tls_system_roots,
        }
    }

    /// The fixed start of every key: the key template up to its first placeholder.
    pub fn key_prefix(&self) -> &str {
        self.key_template.split('{').next().unwrap_or_default()
    }

    /// The object key of block `number` stored with extension `ext`.
    pub fn key(&self, number: u64, ext: &str) -> String {
        render_key(&self.key_template, number, ext)
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
}

/// One bucket's secrets. `Debug` shows the keys, never the values.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    /// The secrets as plugin settings.
    pub fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone()))
    }

    /// The secret values, e.g. to check that none appears in a log.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

/// Check a key template (`Err` says what is wrong): `{number}` or `{number:N}` must appear, and only
/// known placeholders.
pub fn check_key_template(template: &str) -> Result<(), String> {
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

    #[test]
    fn debug_never_shows_secret_values() {
        let s: Secrets = toml::from_str("secret_access_key = \"hunter2\"").unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("secret_access_key") && !shown.contains("hunter2"), "{shown}");
    }
}
