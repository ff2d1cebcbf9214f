//! Typed errors of the plugin runtime: loading a component, and one call into it.

use std::path::PathBuf;

/// Why a plugin could not be loaded, checked or opened. Each message names the
/// file (or bucket) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {source}; check the `plugin` path in the config")]
    Read {
        /// The file named in the config.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's SHA-256 does not match the digest pinned in the config.
    #[error(
        "plugin {path} has SHA-256 {actual} but the config pins {expected}; \
         replace the file with the pinned build or update `sha256` in the config"
    )]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// Digest pinned in the config.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },
    /// The file is not a WebAssembly component (a core module, or not wasm at all).
    #[error(
        "{path} is not a WebAssembly component ({detail}); build the provider with \
         `cargo build --target wasm32-wasip2 --release` or `cargo component build --release`"
    )]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The component does not implement a compatible `provider` world.
    #[error("{path} is not a compatible blockferry provider: {detail}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What is missing or mismatched, and what the host supports.
        detail: String,
    },
    /// Compiling or linking the component failed.
    #[error("cannot compile plugin {path}: {detail}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// The compiler's or linker's message.
        detail: String,
    },
    /// The compiled-artifact cache could not be used.
    #[error("plugin cache {path}: {detail}")]
    Cache {
        /// The cache directory or file.
        path: PathBuf,
        /// What went wrong and what to do.
        detail: String,
    },
}

/// Why one call into a plugin failed. The host and other plugins carry on; the
/// instance that failed is discarded, so the next call gets a fresh one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error of its own (its `upload-error`, or
    /// `open` refusing the settings).
    #[error("{0}")]
    Plugin(PluginFailure),
    /// The plugin trapped (panic, unreachable, bad memory access).
    #[error("plugin {plugin} trapped in {call}: {detail}")]
    Trap {
        /// Plugin and bucket.
        plugin: String,
        /// The function called.
        call: &'static str,
        /// The trap message and guest backtrace.
        detail: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error(
        "plugin {plugin} did not finish {call} within {timeout_ms} ms and was stopped; \
         raise `call_timeout_ms` for this bucket if the storage service is just slow"
    )]
    Timeout {
        /// Plugin and bucket.
        plugin: String,
        /// The function called.
        call: &'static str,
        /// The deadline in milliseconds.
        timeout_ms: u64,
    },
    /// The plugin tried to grow its memory past the cap and failed.
    #[error(
        "plugin {plugin} ran out of memory in {call} (cap {limit_bytes} bytes); \
         raise `memory_limit_mib` for this bucket if the provider really needs more"
    )]
    OutOfMemory {
        /// Plugin and bucket.
        plugin: String,
        /// The function called.
        call: &'static str,
        /// The configured cap.
        limit_bytes: u64,
    },
    /// The plugin exports no `bucket-reader`, so the host cannot read its bucket.
    #[error(
        "plugin {plugin} cannot {what}: it exports no bucket-reader (it was built against the `provider` \
         world); use a provider built against the `reading-provider` world of wit/uploader.wit"
    )]
    NoReader {
        /// Plugin and bucket.
        plugin: String,
        /// What the host wanted to do.
        what: &'static str,
    },
    /// The plugin's `provider` function returned something that is not a
    /// short identifier (it would end up in metric labels, logs and pages).
    #[error(
        "plugin {plugin} names its provider {name}, which is not a short identifier ({problem}); \
         the plugin is faulty or hostile: use a provider built from a trusted source"
    )]
    BadProviderName {
        /// Plugin and bucket.
        plugin: String,
        /// The name, escaped and cut for display.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Instantiating the plugin failed (for example, no free instance slot).
    #[error("cannot instantiate plugin {plugin}: {detail}")]
    Instantiate {
        /// Plugin and bucket.
        plugin: String,
        /// The runtime's message.
        detail: String,
    },
}

/// An error the plugin itself reported, by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    /// `bucket.open` refused the settings.
    #[error("plugin {plugin} refused the settings of its bucket: {message}")]
    Open {
        /// Plugin and bucket.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// Worth retrying later.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Needs an operator.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Different content already exists under the key.
    #[error("hash mismatch: the bucket holds different content ({0:?})")]
    HashMismatch(crate::plugin::RemoteObject),
}

impl CallError {
    /// True when retrying later may succeed (transient plugin errors, traps,
    /// timeouts, instantiation failures); false for permanent errors and
    /// hash mismatches, which need an operator.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            CallError::Plugin(
                PluginFailure::Permanent(_) | PluginFailure::HashMismatch(_) | PluginFailure::Open { .. }
            ) | CallError::NoReader { .. }
                | CallError::BadProviderName { .. }
        )
    }
}
