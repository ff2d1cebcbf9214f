//! The subcommands of the `blockferry` binary.

pub mod import;
pub mod init;
pub mod plugin;
pub mod run;
pub mod status;
pub mod verify;

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Changes the log filter after start-up (`[log] level`).
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Log to stderr; level from `RUST_LOG`, else `[log] level` once the config
/// is loaded (`info` until then); JSON when `BLOCKFERRY_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = std::env::var("BLOCKFERRY_LOG_FORMAT").as_deref() == Ok("json");
    tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| fmt::layer().json().with_writer(std::io::stderr)))
        .with((!json).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)))
        .init();
}

/// Apply the config's log level, unless `RUST_LOG` decides.
pub fn apply_log_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(handle), Ok(filter)) = (LOG_FILTER.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}
