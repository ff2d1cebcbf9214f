//! The subcommands of the `blockferry` binary.

pub mod import;
pub mod init;
pub mod plugin;
pub mod restore;
pub mod run;
pub mod status;
pub mod verify;

use std::ops::RangeInclusive;
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

/// Block numbers listed per kind of problem.
pub const LISTED: usize = 10;

/// Parse a range of block numbers: `A..B` (B excluded), `A..=B`, `A..` or
/// `..B`, into an inclusive range.
pub fn parse_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| format!("`{text}` is not a range like 100..200"))?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("`{s}` in `{text}`: {e}"));
    let first = if start.is_empty() { 0 } else { number(start)? };
    let last = match end.strip_prefix('=') {
        Some(end) => number(end)?,
        None if end.is_empty() => u64::MAX,
        None => number(end)?.checked_sub(1).ok_or_else(|| format!("`{text}` is empty"))?,
    };
    if first > last {
        return Err(format!("`{text}` is empty"));
    }
    Ok(first..=last)
}

/// [`parse_range`], refusing a range without an end (`A..`).
pub fn parse_bounded_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    if text.trim_end().ends_with("..") {
        return Err(format!("`{text}` has no end: give one, as in 100..200 or 100..=199"));
    }
    parse_range(text)
}

/// A count and the first few block numbers counted.
#[derive(Debug, Default)]
pub struct Found {
    /// How many were counted.
    pub count: u64,
    /// The first [`LISTED`] of them, in the order counted.
    pub first: Vec<u64>,
}

impl Found {
    /// Count block `n`.
    pub fn add(&mut self, n: u64) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(n);
        }
    }

    /// `3, 7, 9` or `3, 7, 9, … (12 more)`.
    pub fn numbers(&self) -> String {
        let listed: Vec<String> = self.first.iter().map(u64::to_string).collect();
        let more = self.count - self.first.len() as u64;
        if more > 0 { format!("{}, … ({more} more)", listed.join(", ")) } else { listed.join(", ") }
    }
}

#[cfg(test)]
mod tests {
    use super::{Found, parse_bounded_range, parse_range};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("10..20"), Ok(10..=19));
        assert_eq!(parse_range("10..=20"), Ok(10..=20));
        assert_eq!(parse_range("10.."), Ok(10..=u64::MAX));
        assert_eq!(parse_range("..5"), Ok(0..=4));
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("..0").is_err());
        assert!(parse_range("x..3").is_err());
        assert!(parse_range("7").is_err());
        assert_eq!(parse_bounded_range("3..=3"), Ok(3..=3));
        assert_eq!(parse_bounded_range("..2"), Ok(0..=1));
        assert!(parse_bounded_range("10..").unwrap_err().contains("has no end"));
    }

    #[test]
    fn found_lists_the_first_ten() {
        let mut found = Found::default();
        (0..3).for_each(|n| found.add(n));
        assert_eq!(found.numbers(), "0, 1, 2");
        (3..15).for_each(|n| found.add(n));
        assert_eq!(found.numbers(), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … (5 more)");
    }
}
