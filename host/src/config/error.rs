//! The one error of a config or credentials file that cannot be used.

use std::path::PathBuf;

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
