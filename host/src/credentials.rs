//! The credentials file: each bucket's secrets, kept apart from the config
//! so the config can be shared and changed freely.
//!
//! ```toml
//! [buckets.my-s3]
//! access_key_id = "AKIA…"
//! secret_access_key = "…"
//! ```
//! The file must be readable by its owner only; secrets are merged into the
//! bucket's plugin settings and never logged (their `Debug` is redacted).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;

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

/// The parsed credentials file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    buckets: BTreeMap<String, Secrets>,
}

impl Credentials {
    /// Load `path`, refusing a file that others may read or write.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path)
            .map_err(|error| ConfigError::ReadCredentials { path: path.to_path_buf(), error })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "(file permissions)".into(),
                problem: format!("are {mode:o}: the credentials file is readable or writable by others"),
                fix: format!("run `chmod 600 {}` so only its owner can read it", path.display()),
            });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::ReadCredentials { path: path.to_path_buf(), error })?;
        // The parser's message may quote the offending line; never let a secret reach it.
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} (line {}); expected `[buckets.NAME]` tables of `key = \"value\"` strings",
                e.message(),
                e.span().map_or(0, |s| text[..s.start].lines().count().max(1))
            ),
        })
    }

    /// Each bucket's name with its secrets.
    pub fn into_buckets(self) -> impl Iterator<Item = (String, Secrets)> {
        self.buckets.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_values() {
        let s: Secrets = toml::from_str("secret_access_key = \"hunter2\"").unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("secret_access_key") && !shown.contains("hunter2"), "{shown}");
    }
}
