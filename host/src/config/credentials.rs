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

use super::ConfigError;
use crate::upload::Secrets;

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
