//! The settings of a GCS bucket, parsed and checked in `bucket.open`.

use blockferry_guest::http::Timeouts;
use blockferry_guest::retry::Policy;
pub use blockferry_guest::settings::Endpoint;
use blockferry_guest::settings::{RetryDefaults, credentials_source, number, retry_settings, setting};

use crate::auth::{Auth, parse_endpoint};

/// 256 KiB: resumable chunks (all but the last) are multiples of it.
pub const CHUNK_QUANTUM: u64 = 256 * 1024;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// The public JSON API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Blocks above this size use a resumable upload unless the settings say otherwise.
pub const DEFAULT_RESUMABLE_THRESHOLD: u64 = 8 * MIB;
/// The largest `resumable_threshold`: a block up to it is held in the
/// plugin's memory once (the host's default memory cap is 64 MiB).
pub const MAX_RESUMABLE_THRESHOLD: u64 = 32 * MIB;
/// Chunk size of resumable uploads unless the settings say otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * MIB;

/// Every key the GCS provider reads.
pub const KNOWN_KEYS: &[&str] = &[
    "endpoint",
    "upload_endpoint",
    "bucket",
    "prefix",
    "service_account_json",
    "bearer_token",
    "credentials_source",
    "resumable_threshold",
    "chunk_size",
    "retry_max_attempts",
    "retry_base_delay_ms",
    "retry_max_delay_ms",
    "retry_max_elapsed_ms",
    "request_timeout_ms",
];

/// A checked bucket configuration.
pub struct Config {
    /// Where metadata requests (`objects.get`) go.
    pub endpoint: Endpoint,
    /// Where uploads (`/upload/storage/v1/...`) go.
    pub upload_endpoint: Endpoint,
    /// The bucket's name.
    pub bucket: String,
    /// Prepended to every key when non-empty.
    pub prefix: String,
    /// How requests are authorised.
    pub auth: Auth,
    /// Blocks larger than this use a resumable upload.
    pub resumable_threshold: u64,
    /// Bytes per resumable chunk (a multiple of 256 KiB).
    pub chunk_size: u64,
    /// Retry policy of every request.
    pub policy: Policy,
    /// Time limits of each attempt.
    pub timeouts: Timeouts,
}

impl Config {
    /// Parses and checks `settings`; the error names the bad key and the fix.
    /// Also returns the keys it does not know (for a warning).
    pub fn parse(settings: &[(String, String)]) -> Result<(Config, Vec<String>), String> {
        let get = |key: &str| setting(settings, key);
        let unknown = settings.iter().map(|(k, _)| k.clone()).filter(|k| !KNOWN_KEYS.contains(&k.as_str())).collect();

        let endpoint = parse_endpoint("endpoint", get("endpoint").unwrap_or(DEFAULT_ENDPOINT))?;
        let upload_endpoint = match get("upload_endpoint") {
            Some(url) => parse_endpoint("upload_endpoint", url)?,
            None => endpoint.clone(),
        };

        let bucket = get("bucket").ok_or("setting `bucket` is missing: set it to the bucket's name")?.to_string();
        if bucket.len() < 3
            || bucket.len() > 222
            || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
            || !bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(format!(
                "setting `bucket` = {bucket:?} is not a valid bucket name: use 3 to 63 lower-case \
                 letters, digits, `-`, `_` and `.` (up to 222 with dots), starting with a letter or digit"
            ));
        }

        let prefix = settings.iter().rev().find(|(k, _)| k == "prefix").map(|(_, v)| v.clone()).unwrap_or_default();
        if prefix.starts_with('/') {
            return Err(format!(
                "setting `prefix` = {prefix:?} starts with `/`: GCS object names have no leading slash, remove it"
            ));
        }

        let host = credentials_source(settings, &["service_account_json", "bearer_token"])?;
        let auth = match (host, get("service_account_json"), get("bearer_token")) {
            (Some(source), _, _) => Auth::Host(source.to_string()),
            (None, Some(_), Some(_)) => {
                return Err("settings `service_account_json` and `bearer_token` are both set: keep one \
                            (a service-account key is refreshed automatically, a bearer token is not)"
                    .into());
            }
            (None, Some(json), None) => Auth::service_account(json)?,
            (None, None, Some(token)) => Auth::Bearer(token.to_string()),
            (None, None, None) if endpoint.authority == "storage.googleapis.com" => {
                return Err("no credentials for storage.googleapis.com: set `service_account_json` to the \
                            service account's JSON key (in the bucket's credentials) or `bearer_token` to \
                            an OAuth 2 access token; only an emulator `endpoint` works without credentials"
                    .into());
            }
            (None, None, None) => Auth::None,
        };

        let resumable_threshold =
            number(get("resumable_threshold"), "resumable_threshold", DEFAULT_RESUMABLE_THRESHOLD)?;
        if resumable_threshold > MAX_RESUMABLE_THRESHOLD {
            return Err(format!(
                "setting `resumable_threshold` = {resumable_threshold} is above {MAX_RESUMABLE_THRESHOLD} (32 MiB): \
                 blocks up to the threshold go up in one request held in the plugin's memory; lower it (and keep \
                 it below half the bucket's `memory_limit_mib`)"
            ));
        }
        let chunk_size = number(get("chunk_size"), "chunk_size", DEFAULT_CHUNK_SIZE)?;
        if chunk_size == 0 || chunk_size % CHUNK_QUANTUM != 0 || chunk_size > 1024 * MIB {
            return Err(format!(
                "setting `chunk_size` = {chunk_size} is not a multiple of 262144 (256 KiB) between 256 KiB \
                 and 1 GiB: GCS needs resumable chunks in multiples of 256 KiB, e.g. 8388608 (8 MiB)"
            ));
        }

        let (policy, timeouts) = retry_settings(settings, &RETRY_DEFAULTS)?;
        Ok((
            Config {
                endpoint,
                upload_endpoint,
                bucket,
                prefix,
                auth,
                resumable_threshold,
                chunk_size,
                policy,
                timeouts,
            },
            unknown,
        ))
    }
}

/// Defaults of the `retry_*` and `request_timeout_ms` settings: Google's
/// recommended backoff (first wait up to 1 s, doubling, capped at 32 s) bounded
/// to 20 s in all so a call fits the host's default 30 s deadline.
pub const RETRY_DEFAULTS: RetryDefaults = RetryDefaults {
    max_attempts: 6,
    base_delay_ms: 1_000,
    max_delay_ms: 32_000,
    max_elapsed_ms: 20_000,
    request_timeout_ms: 15_000,
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        blockferry_guest::settings::owned_settings(
            &[("endpoint", "http://127.0.0.1:4443"), ("bucket", "blocks")],
            pairs,
        )
    }

    #[test]
    fn defaults() {
        let (c, unknown) = Config::parse(&settings(&[("colour", "blue")])).unwrap();
        assert_eq!(c.endpoint, Endpoint { https: false, authority: "127.0.0.1:4443".into() });
        assert_eq!(c.upload_endpoint, c.endpoint);
        assert_eq!((c.resumable_threshold, c.chunk_size), (8 * MIB, 8 * MIB));
        assert_eq!(c.policy.max_attempts, 6);
        assert_eq!(c.policy.base_delay, Duration::from_secs(1));
        assert!(matches!(c.auth, Auth::None));
        assert_eq!(unknown, ["colour"]);
    }

    #[test]
    fn the_public_endpoint_needs_credentials() {
        let err = Config::parse(&[("bucket".into(), "blocks".into())]).err().unwrap();
        assert!(err.contains("`service_account_json`"), "{err}");
        let (c, _) = Config::parse(&[("bucket".into(), "blocks".into()), ("bearer_token".into(), "t".into())]).unwrap();
        assert_eq!(c.endpoint, Endpoint { https: true, authority: "storage.googleapis.com".into() });
    }

    #[test]
    fn the_platform_token_of_the_host_needs_no_key_and_allows_none() {
        let host = blockferry_guest::settings::owned_settings(
            &[("bucket", "blocks"), ("credentials_source", "gcp-metadata")],
            &[],
        );
        let (c, _) = Config::parse(&host).unwrap();
        assert!(matches!(&c.auth, Auth::Host(source) if source == "gcp-metadata"));
        let err =
            Config::parse(&settings(&[("credentials_source", "gcp-metadata"), ("bearer_token", "t")])).err().unwrap();
        assert!(err.contains("`credentials_source`") && err.contains("`bearer_token`"), "{err}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (pair, key) in [
            (("endpoint", "storage.googleapis.com"), "`endpoint`"),
            (("upload_endpoint", "https://h/upload"), "`upload_endpoint`"),
            (("bucket", "Bad Bucket"), "`bucket`"),
            (("prefix", "/x"), "`prefix`"),
            (("chunk_size", "1000000"), "`chunk_size`"),
            (("chunk_size", "0"), "`chunk_size`"),
            (("resumable_threshold", "999999999"), "`resumable_threshold`"),
            (("retry_max_attempts", "0"), "`retry_max_attempts`"),
            (("retry_base_delay_ms", "x"), "`retry_base_delay_ms`"),
            (("request_timeout_ms", "0"), "`request_timeout_ms`"),
            (("service_account_json", "{}"), "`service_account_json`"),
        ] {
            let err = Config::parse(&settings(&[pair])).err().unwrap_or_else(|| panic!("{pair:?} accepted"));
            assert!(err.contains(key), "{pair:?}: {err}");
        }
        let err = Config::parse(&settings(&[("bearer_token", "t"), ("service_account_json", "{}")])).err().unwrap();
        assert!(err.contains("both"), "{err}");
    }
}
