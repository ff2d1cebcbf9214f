//! The subcommands of the `blockferry` binary.

pub mod import;
pub mod init;
pub mod plugin;
pub mod run;
pub mod status;
pub mod verify;

/// Log to stderr; level from `RUST_LOG` (default `info`), JSON when
/// `BLOCKFERRY_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var("BLOCKFERRY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
