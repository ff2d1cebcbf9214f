//! Helpers shared by the providers' settings parsers: reading a key, numbers,
//! endpoint URLs, and the `retry_*` / `request_timeout_ms` settings.

use std::time::Duration;

use crate::http::Timeouts;
use crate::retry::Policy;

/// Scheme and authority of an endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` (true) or plain `http`.
    pub https: bool,
    /// `host[:port]`, lower-case.
    pub authority: String,
}

/// A provider's defaults for the `retry_*` and `request_timeout_ms` settings.
#[derive(Clone, Copy, Debug)]
pub struct RetryDefaults {
    /// `retry_max_attempts` when unset.
    pub max_attempts: u64,
    /// `retry_base_delay_ms` when unset.
    pub base_delay_ms: u64,
    /// `retry_max_delay_ms` when unset.
    pub max_delay_ms: u64,
    /// `retry_max_elapsed_ms` when unset.
    pub max_elapsed_ms: u64,
    /// `request_timeout_ms` when unset.
    pub request_timeout_ms: u64,
}

/// Owned settings: the pairs of `base`, then those of `extra` (the form a
/// bucket's settings reach `bucket.open` in); for building settings in tests.
pub fn owned_settings(base: &[(&str, &str)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    base.iter().chain(extra).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Logs (as a warning) the settings `unknown` that `provider` ignores, with
/// the `known` ones: a misspelt key is seen, not silently dropped.
pub fn warn_unknown(provider: &str, unknown: &[String], known: &[&str]) {
    if !unknown.is_empty() {
        crate::log(
            crate::Level::Warn,
            &format!("{provider}: ignoring unknown settings {unknown:?} (known: {known:?})"),
        );
    }
}

/// The last non-empty value of setting `key`, trimmed.
pub fn setting<'s>(settings: &'s [(String, String)], key: &str) -> Option<&'s str> {
    settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// The platform source the host brokers the bucket's credentials from
/// (setting `credentials_source`, which the host passes: `aws-instance`,
/// `aws-ecs`, `aws-web-identity`, `gcp-metadata`); `None` for static
/// credentials. Fails when static keys among `static_keys` are set too.
pub fn credentials_source<'s>(
    settings: &'s [(String, String)],
    static_keys: &[&str],
) -> Result<Option<&'s str>, String> {
    let Some(source) = setting(settings, "credentials_source").filter(|s| *s != "static") else {
        return Ok(None);
    };
    if let Some(key) = static_keys.iter().find(|k| setting(settings, k).is_some()) {
        return Err(format!(
            "settings `credentials_source` = {source:?} and `{key}` are both set: keep one (the host's \
             platform credentials, or static keys)"
        ));
    }
    Ok(Some(source))
}

/// Parses a number setting, or returns `default` when unset.
pub fn number(value: Option<&str>, key: &str, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .replace('_', "")
            .parse()
            .map_err(|_| format!("setting `{key}` = {v:?} is not a whole number: write digits only, e.g. `{default}`")),
    }
}

/// Splits the URL of setting `key` into scheme and authority (a missing
/// default port is left out, as the host's allow-list normalises it);
/// `local` names what plain `http://` is for in the error message.
pub fn parse_endpoint(key: &str, url: &str, local: &str) -> Result<Endpoint, String> {
    let bad = |why: &str| {
        format!(
            "setting `{key}` = {url:?} {why}: write `https://host[:port]` (or `http://` for {local}), without a path"
        )
    };
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("is not an http(s) URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("has a path, query or user part"));
    }
    Ok(Endpoint { https, authority: authority.to_ascii_lowercase() })
}

/// The retry policy and per-attempt time limits from the `retry_*` and
/// `request_timeout_ms` settings, with `defaults` for the unset ones.
pub fn retry_settings(settings: &[(String, String)], defaults: &RetryDefaults) -> Result<(Policy, Timeouts), String> {
    let get = |key: &str| setting(settings, key);
    let max_attempts = number(get("retry_max_attempts"), "retry_max_attempts", defaults.max_attempts)?;
    if !(1..=100).contains(&max_attempts) {
        return Err(format!("setting `retry_max_attempts` = {max_attempts} is out of range: set 1 (no retry) to 100"));
    }
    let ms = |key: &str, default: u64| number(get(key), key, default).map(Duration::from_millis);
    let policy = Policy {
        max_attempts: max_attempts as u32,
        base_delay: ms("retry_base_delay_ms", defaults.base_delay_ms)?,
        max_delay: ms("retry_max_delay_ms", defaults.max_delay_ms)?,
        max_elapsed: ms("retry_max_elapsed_ms", defaults.max_elapsed_ms)?,
    };
    if policy.base_delay > policy.max_delay {
        return Err(format!(
            "setting `retry_base_delay_ms` ({} ms) is above `retry_max_delay_ms` ({} ms): lower it or raise the maximum",
            policy.base_delay.as_millis(),
            policy.max_delay.as_millis()
        ));
    }
    let request_timeout = ms("request_timeout_ms", defaults.request_timeout_ms)?;
    if request_timeout.is_zero() {
        return Err("setting `request_timeout_ms` is 0: set a positive number of milliseconds".into());
    }
    let timeouts = Timeouts {
        connect: request_timeout.min(Duration::from_secs(5)),
        first_byte: request_timeout,
        between_bytes: request_timeout,
    };
    Ok((policy, timeouts))
}
