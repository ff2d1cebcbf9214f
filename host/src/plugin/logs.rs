//! What a plugin says, on its way to the host's log: every line (from
//! `host.log`, stdout or stderr) is cut at [`MAX_LINE`] bytes, has the
//! bucket's secrets redacted and its control characters escaped, and is
//! counted against the bucket's line budget (a token bucket); lines past the
//! budget are dropped and summed up in one "lines dropped" line.

use crate::sync::Locked;
use std::sync::Mutex;
use std::time::Instant;

/// Longest line of a plugin the host logs, in bytes; longer lines are cut.
pub const MAX_LINE: usize = 8 * 1024;

/// Default budget of log lines per minute for one bucket's plugin.
pub const DEFAULT_LINES_PER_MINUTE: u32 = 600;

/// What replaces a secret in anything a plugin says.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not redacted (they would mangle every line).
const MIN_SECRET: usize = 4;

/// Short-lived secrets the host issued (`host.credentials`) kept for redaction:
/// the latest ones, enough for the credentials in use and those before them.
const MAX_ISSUED: usize = 16;
/// At most one "lines dropped" summary per this long, per plugin of a bucket.
const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One bucket's plugin log: shared by all of the bucket's instances.
#[derive(Debug)]
pub struct PluginLog {
    label: String,
    secrets: Vec<String>,
    /// Values of the credentials the host issued to the plugin lately.
    issued: Mutex<Vec<String>>,
    budget: Mutex<Budget>,
}

#[derive(Debug)]
struct Budget {
    /// Lines that may be logged now.
    tokens: f64,
    /// Most tokens the bucket holds (a minute's worth).
    capacity: f64,
    /// Tokens added per second.
    per_second: f64,
    refilled: Instant,
    /// Lines dropped since the last summary.
    dropped: u64,
    /// When drops were last summarised.
    summarised: Option<Instant>,
}

impl Budget {
    /// The lines dropped since the last summary, when one is due (the first
    /// at once, then at most one per [`SUMMARY_EVERY`]); 0 otherwise.
    fn take_summary(&mut self) -> u64 {
        let due = self.summarised.is_none_or(|at| at.elapsed() >= SUMMARY_EVERY);
        if self.dropped == 0 || !due {
            return 0;
        }
        self.summarised = Some(Instant::now());
        std::mem::take(&mut self.dropped)
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl PluginLog {
    /// The log of plugin `label`, redacting `secrets` and allowing
    /// `lines_per_minute` lines a minute (bursts up to the same number).
    pub fn new(label: &str, secrets: impl IntoIterator<Item = String>, lines_per_minute: u32) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= MIN_SECRET).collect();
        // Longest first, so a secret containing another is redacted whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let capacity = f64::from(lines_per_minute.max(1));
        let budget = Budget {
            tokens: capacity,
            capacity,
            per_second: capacity / 60.0,
            refilled: Instant::now(),
            dropped: 0,
            summarised: None,
        };
        Self { label: label.to_string(), secrets, issued: Mutex::new(Vec::new()), budget: Mutex::new(budget) }
    }

    /// Redact `values` too from now on: credentials the host issued to the
    /// plugin (the latest [`MAX_ISSUED`] values are kept).
    pub fn redact_issued<'a>(&self, values: impl IntoIterator<Item = &'a str>) {
        let mut issued = self.issued.locked();
        for value in values.into_iter().filter(|v| v.len() >= MIN_SECRET) {
            if !issued.iter().any(|known| known == value) {
                issued.push(value.to_string());
            }
        }
        let excess = issued.len().saturating_sub(MAX_ISSUED);
        issued.drain(..excess);
    }

    /// `text` with every secret of the bucket replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        let issued = self.issued.locked().clone();
        for secret in self.secrets.iter().chain(&issued) {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// Log one line the plugin wrote (`stream` names stdout or stderr; `None`
    /// for `host.log`), if the bucket's budget allows; `cut` says the plugin's
    /// line went on past what the host kept.
    pub fn line(&self, level: tracing::Level, stream: Option<&'static str>, text: &str, cut: bool) {
        // A line the host's log filter would not show costs nothing, and
        // is not counted as dropped.
        if !enabled(level) {
            return;
        }
        let mut line = escape_controls(&self.redact(cut_to(text, MAX_LINE)));
        if cut || text.len() > MAX_LINE {
            line.push_str(&format!(" … (line cut at {MAX_LINE} bytes by the host)"));
        }
        let dropped = {
            let mut budget = self.budget.locked();
            if !budget.take() {
                budget.dropped += 1;
                return;
            }
            budget.take_summary()
        };
        self.summarise(dropped);
        let plugin = self.label.as_str();
        let stream = stream.unwrap_or("host.log");
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, stream, "{line}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, stream, "{line}"),
            tracing::Level::INFO => tracing::info!(plugin, stream, "{line}"),
            tracing::Level::WARN => tracing::warn!(plugin, stream, "{line}"),
            tracing::Level::ERROR => tracing::error!(plugin, stream, "{line}"),
        }
    }

    /// Log how many lines were dropped since the last such line, if any and
    /// one is due (at the end of each call, so a flood that stops is still
    /// reported; at most one such line per [`SUMMARY_EVERY`]).
    pub fn flush_dropped(&self) {
        let dropped = self.budget.locked().take_summary();
        self.summarise(dropped);
    }

    fn summarise(&self, dropped: u64) {
        if dropped > 0 {
            tracing::warn!(
                plugin = %self.label,
                "{dropped} lines dropped: the plugin logs faster than its bucket's log_lines_per_minute allows"
            );
        }
    }
}

/// Whether the host's log filter shows lines of `level` from plugins.
fn enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::TRACE => tracing::enabled!(tracing::Level::TRACE),
        tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
        tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
        tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
        tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..cut]
}

/// `text` with control characters (newlines included) written as escapes, so
/// one plugin line is one log line and cannot forge others.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_longest_first_and_short_values_left_alone() {
        let log = PluginLog::new("p/b", ["hunter2secret".to_string(), "hunter2".into(), "abc".into()], 60);
        assert_eq!(log.redact("key hunter2secret and hunter2, abc"), "key [redacted] and [redacted], abc");
    }

    #[test]
    fn control_characters_are_escaped_and_lines_cut_at_a_char_boundary() {
        assert_eq!(escape_controls("a\nb\r\u{1b}[31m"), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(cut_to("ééé", 3), "é");
        assert_eq!(cut_to("abc", 8), "abc");
    }

    #[test]
    fn the_budget_refuses_past_its_capacity() {
        let log = PluginLog::new("p/b", [], 60);
        let mut budget = log.budget.locked();
        let taken = (0..100).filter(|_| budget.take()).count();
        // A minute's worth at once (plus at most a token refilled meanwhile).
        assert!((60..=61).contains(&taken), "{taken}");
    }

    #[test]
    fn lines_the_filter_hides_are_not_dropped_and_summaries_are_spaced() {
        let subscriber =
            tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(subscriber, || {
            let log = PluginLog::new("p/b", Vec::<String>::new(), 1);
            let dropped = || log.budget.locked().dropped;
            for _ in 0..10 {
                log.line(tracing::Level::DEBUG, None, "hidden", false);
            }
            assert_eq!(dropped(), 0, "a line the filter hides is not dropped");
            for _ in 0..10 {
                log.line(tracing::Level::WARN, None, "shown", false);
            }
            assert_eq!(dropped(), 9, "a budget of one line");
            log.flush_dropped();
            assert_eq!(dropped(), 0, "the first summary at once");
            log.line(tracing::Level::WARN, None, "shown", false);
            log.flush_dropped();
            assert_eq!(dropped(), 1, "the next one waits for its interval");
        });
    }
}
