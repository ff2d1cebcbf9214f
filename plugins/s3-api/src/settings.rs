//! The settings of an S3 bucket, parsed and checked in `bucket.open`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

use crate::sigv4::Credentials;
use blockferry_guest::UploadError;
use blockferry_guest::http::Timeouts;
use blockferry_guest::retry::Policy;
use blockferry_guest::settings::{
    Endpoint, RetryDefaults, credentials_source, number, parse_endpoint, retry_settings, setting,
};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Part size used when the settings name none (raised for huge bodies).
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// Bodies above this size use multipart upload unless the settings say otherwise.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 100 * MIB;

/// Where the signing keys come from.
#[derive(Clone, Debug)]
pub enum Keys {
    /// The bucket's own settings (`access_key_id`, ...).
    Static(Credentials),
    /// The host's platform credentials (`host.credentials`), from the source
    /// named by setting `credentials_source`.
    Host(String),
}

impl Keys {
    /// The keys to sign one request with; `target` names the request in errors.
    pub fn current(&self, target: impl FnOnce() -> String) -> Result<Credentials, UploadError> {
        let source = match self {
            Keys::Static(credentials) => return Ok(credentials.clone()),
            Keys::Host(source) => source,
        };
        let target = target();
        let mut values = blockferry_guest::host_credentials(
            &target,
            source,
            &["access_key_id", "secret_access_key", "session_token"],
        )?
        .into_iter();
        match (values.next().flatten(), values.next().flatten(), values.next().flatten()) {
            (Some(access_key_id), Some(secret_access_key), session_token) => {
                Ok(Credentials { access_key_id, secret_access_key, session_token })
            }
            _ => Err(UploadError::Permanent(format!(
                "{target}: the host's credentials from `credentials_source` = {source:?} have no \
                 `access_key_id` and `secret_access_key`: use an AWS source for an S3 bucket"
            ))),
        }
    }
}

/// How the bucket appears in request URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

/// Server-side encryption requested for new objects.
#[derive(Clone, PartialEq, Eq)]
pub enum Sse {
    /// None asked (the bucket's default applies).
    None,
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    Aes256,
    /// SSE-KMS, with the key id (or the account's default key).
    Kms {
        /// `x-amz-server-side-encryption-aws-kms-key-id`, if set.
        key_id: Option<String>,
    },
    /// SSE-C: the customer's 256-bit key, base64, and its MD5, base64.
    CustomerKey {
        /// The key, base64.
        key: String,
        /// MD5 of the key bytes, base64.
        key_md5: String,
    },
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::None => f.write_str("none"),
            Sse::Aes256 => f.write_str("aes256"),
            Sse::Kms { key_id } => write!(f, "aws:kms({key_id:?})"),
            Sse::CustomerKey { .. } => f.write_str("sse-c"),
        }
    }
}

/// An additional checksum sent with every write (`checksum` setting): S3
/// computes it over the bytes it received, refuses the write when it differs
/// (`BadDigest`) and echoes it, which confirms the object where the ETag is
/// not a digest of the content (SSE-KMS, SSE-C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// CRC-32C (Castagnoli): `x-amz-checksum-crc32c`.
    Crc32c,
    /// SHA-256: `x-amz-checksum-sha256`.
    Sha256,
}

impl Checksum {
    /// The request and response header carrying it.
    pub fn header(self) -> &'static str {
        match self {
            Checksum::Crc32c => "x-amz-checksum-crc32c",
            Checksum::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Its name in `x-amz-checksum-algorithm`.
    pub fn algorithm(self) -> &'static str {
        match self {
            Checksum::Crc32c => "CRC32C",
            Checksum::Sha256 => "SHA256",
        }
    }

    /// Its element in a `CompleteMultipartUpload` part.
    pub fn element(self) -> &'static str {
        match self {
            Checksum::Crc32c => "ChecksumCRC32C",
            Checksum::Sha256 => "ChecksumSHA256",
        }
    }
}

/// Reads the `checksum` setting: `auto` (the default) sends CRC-32C when the
/// bucket's encryption makes ETags no digests of the content (SSE-KMS, SSE-C)
/// and none otherwise (the ETag is checked then).
fn parse_checksum(value: Option<&str>, sse: &Sse) -> Result<Option<Checksum>, String> {
    match value.unwrap_or("auto") {
        "auto" => Ok(matches!(sse, Sse::Kms { .. } | Sse::CustomerKey { .. }).then_some(Checksum::Crc32c)),
        "none" => Ok(None),
        "crc32c" => Ok(Some(Checksum::Crc32c)),
        "sha256" => Ok(Some(Checksum::Sha256)),
        other => Err(format!(
            "setting `checksum` = {other:?} is not supported: use `auto` (CRC-32C when SSE-KMS or SSE-C \
             make ETags no digests, the default), `crc32c`, `sha256` or `none`"
        )),
    }
}

/// Defaults of the `retry_*` and `request_timeout_ms` settings (those of [`Policy::default`]).
const RETRY_DEFAULTS: RetryDefaults = RetryDefaults {
    max_attempts: 5,
    base_delay_ms: 100,
    max_delay_ms: 5_000,
    max_elapsed_ms: 20_000,
    request_timeout_ms: 15_000,
};

/// Defaults that differ between the S3 and MinIO flavours.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// The provider's name (`s3`, `minio`), used in messages.
    pub provider: &'static str,
    /// Addressing when `addressing` is not set.
    pub addressing: Addressing,
    /// Region when `region` is not set; `None` makes `region` required.
    pub region: Option<&'static str>,
}

/// A checked bucket configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `https` endpoint (true) or plain `http`.
    pub https: bool,
    /// The endpoint's `host[:port]` as written in the settings.
    pub endpoint_authority: String,
    /// The signing region.
    pub region: String,
    /// The bucket's name.
    pub bucket: String,
    /// Path-style or virtual-hosted URLs.
    pub addressing: Addressing,
    /// Signing credentials.
    pub credentials: Keys,
    /// Prepended to every key when non-empty.
    pub prefix: String,
    /// `x-amz-storage-class` of new objects, if set.
    pub storage_class: Option<String>,
    /// Server-side encryption of new objects.
    pub sse: Sse,
    /// Bodies larger than this use multipart upload.
    pub multipart_threshold: u64,
    /// Part size asked for, if set (raised when a body would need more than 10,000 parts).
    pub part_size: Option<u64>,
    /// Parts uploaded at once.
    pub parts_in_flight: usize,
    /// The additional checksum sent with every write, if any.
    pub checksum: Option<Checksum>,
    /// Retry policy of every request.
    pub policy: Policy,
    /// Time limits of each attempt.
    pub timeouts: Timeouts,
}

/// Every key the S3 and MinIO providers read.
pub const KNOWN_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "bucket",
    "addressing",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "credentials_source",
    "prefix",
    "storage_class",
    "sse",
    "sse_kms_key_id",
    "sse_customer_key",
    "checksum",
    "multipart_threshold",
    "part_size",
    "parts_in_flight",
    "retry_max_attempts",
    "retry_base_delay_ms",
    "retry_max_delay_ms",
    "retry_max_elapsed_ms",
    "request_timeout_ms",
];

impl Config {
    /// Parses and checks `settings`; the error names the bad key and the fix.
    /// Also returns the keys it does not know (for a warning).
    pub fn parse(settings: &[(String, String)], defaults: &Defaults) -> Result<(Config, Vec<String>), String> {
        let get = |key: &str| setting(settings, key);
        let unknown = settings.iter().map(|(k, _)| k.clone()).filter(|k| !KNOWN_KEYS.contains(&k.as_str())).collect();

        let endpoint = get("endpoint").ok_or_else(|| {
            "setting `endpoint` is missing: set it to the service's URL, e.g. \
             `https://s3.eu-west-1.amazonaws.com` for AWS or `http://minio.internal:9000` \
             (the host lets the plugin reach only the endpoints named in its settings)"
                .to_string()
        })?;
        let Endpoint { https, authority: endpoint_authority } =
            parse_endpoint("endpoint", endpoint, "a local test server")?;

        let region = match (get("region"), defaults.region) {
            (Some(region), _) => region.to_string(),
            (None, Some(default)) => default.to_string(),
            (None, None) => {
                return Err("setting `region` is missing: set it to the bucket's region, \
                            e.g. `us-east-1` or `eu-west-1`"
                    .into());
            }
        };
        if !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!(
                "setting `region` = {region:?} is not a region name: use letters, digits and `-`, e.g. `us-east-1`"
            ));
        }

        let bucket = get("bucket").ok_or("setting `bucket` is missing: set it to the bucket's name")?.to_string();
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!(
                "setting `bucket` = {bucket:?} is not a valid bucket name: use 3 to 63 lower-case \
                 letters, digits, `-` and `.`"
            ));
        }

        let addressing = match get("addressing") {
            None => defaults.addressing,
            Some("path") => Addressing::Path,
            Some("virtual") => Addressing::Virtual,
            Some(other) => {
                return Err(format!(
                    "setting `addressing` = {other:?} is not supported: use `path` \
                     (https://endpoint/bucket/key, MinIO and most emulators) or `virtual` \
                     (https://bucket.endpoint/key, AWS)"
                ));
            }
        };

        let credentials = match credentials_source(settings, &["access_key_id", "secret_access_key", "session_token"])?
        {
            Some(source) => Keys::Host(source.to_string()),
            None => {
                let access_key_id = get("access_key_id")
                    .ok_or(
                        "setting `access_key_id` is missing: put the access key id in the bucket's credentials, \
                         or set the bucket's `credentials_source` (e.g. \"aws-instance\") for the platform's",
                    )?
                    .to_string();
                let secret_access_key = get("secret_access_key")
                    .ok_or(
                        "setting `secret_access_key` is missing: put the secret access key in the bucket's credentials",
                    )?
                    .to_string();
                let session_token = get("session_token").map(str::to_string);
                Keys::Static(Credentials { access_key_id, secret_access_key, session_token })
            }
        };

        let prefix = settings.iter().rev().find(|(k, _)| k == "prefix").map(|(_, v)| v.clone()).unwrap_or_default();
        if prefix.starts_with('/') {
            return Err(format!(
                "setting `prefix` = {prefix:?} starts with `/`: S3 keys have no leading slash, remove it"
            ));
        }

        let storage_class = get("storage_class").map(str::to_string);
        if let Some(class) = &storage_class
            && !class.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        {
            return Err(format!(
                "setting `storage_class` = {class:?} is not a storage class: use an S3 name such as \
                 `STANDARD`, `STANDARD_IA`, `INTELLIGENT_TIERING`, `GLACIER_IR`"
            ));
        }

        let sse = parse_sse(get("sse"), get("sse_kms_key_id"), get("sse_customer_key"))?;
        let checksum = parse_checksum(get("checksum"), &sse)?;

        let multipart_threshold =
            number(get("multipart_threshold"), "multipart_threshold", DEFAULT_MULTIPART_THRESHOLD)?;
        if multipart_threshold == 0 {
            return Err("setting `multipart_threshold` is 0: set the body size in bytes above which \
                 multipart upload is used (default 104857600, 100 MiB)"
                .into());
        }
        let part_size = match get("part_size") {
            None => None,
            Some(_) => {
                let size = number(get("part_size"), "part_size", DEFAULT_PART_SIZE)?;
                if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
                    return Err(format!(
                        "setting `part_size` = {size} is outside S3's limits: set between \
                         {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB) bytes"
                    ));
                }
                Some(size)
            }
        };
        let parts_in_flight = number(get("parts_in_flight"), "parts_in_flight", 4)?;
        if !(1..=64).contains(&parts_in_flight) {
            return Err(format!("setting `parts_in_flight` = {parts_in_flight} is out of range: set 1 to 64"));
        }

        let (policy, timeouts) = retry_settings(settings, &RETRY_DEFAULTS)?;

        Ok((
            Config {
                https,
                endpoint_authority,
                region,
                bucket,
                addressing,
                credentials,
                prefix,
                storage_class,
                sse,
                multipart_threshold,
                part_size,
                parts_in_flight: parts_in_flight as usize,
                checksum,
                policy,
                timeouts,
            },
            unknown,
        ))
    }

    /// The part size for a body of `size` bytes: the configured (or default)
    /// size, raised (to a whole MiB) so the body needs at most 10,000 parts.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let wanted = self.part_size.unwrap_or(DEFAULT_PART_SIZE);
        let least = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        wanted.max(least).max(MIN_PART_SIZE)
    }
}

/// Parses the encryption settings.
fn parse_sse(sse: Option<&str>, kms_key_id: Option<&str>, customer_key: Option<&str>) -> Result<Sse, String> {
    let sse = match sse.map(str::to_ascii_lowercase).as_deref() {
        None | Some("none") => Sse::None,
        Some("aes256") | Some("sse-s3") => Sse::Aes256,
        Some("aws:kms") | Some("sse-kms") => Sse::Kms { key_id: kms_key_id.map(str::to_string) },
        Some("sse-c") => {
            let key = customer_key.ok_or(
                "setting `sse` = \"sse-c\" needs `sse_customer_key`: set it to a base64 256-bit key \
                 (e.g. the output of `openssl rand -base64 32`)",
            )?;
            let bytes = B64.decode(key).map_err(|_| {
                "setting `sse_customer_key` is not base64: set it to a base64 256-bit key \
                 (e.g. the output of `openssl rand -base64 32`)"
                    .to_string()
            })?;
            if bytes.len() != 32 {
                return Err(format!(
                    "setting `sse_customer_key` decodes to {} bytes, SSE-C needs 32: set a base64 \
                     256-bit key (e.g. the output of `openssl rand -base64 32`)",
                    bytes.len()
                ));
            }
            Sse::CustomerKey { key: key.to_string(), key_md5: B64.encode(Md5::digest(&bytes)) }
        }
        Some(other) => {
            return Err(format!(
                "setting `sse` = {other:?} is not supported: use `none`, `aes256` (SSE-S3), \
                 `aws:kms` (SSE-KMS, with `sse_kms_key_id`) or `sse-c` (with `sse_customer_key`)"
            ));
        }
    };
    if kms_key_id.is_some() && !matches!(sse, Sse::Kms { .. }) {
        return Err(
            "setting `sse_kms_key_id` is set but `sse` is not `aws:kms`: set `sse = \"aws:kms\"` or remove the key id"
                .into(),
        );
    }
    if customer_key.is_some() && !matches!(sse, Sse::CustomerKey { .. }) {
        return Err(
            "setting `sse_customer_key` is set but `sse` is not `sse-c`: set `sse = \"sse-c\"` or remove the key"
                .into(),
        );
    }
    Ok(sse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3: Defaults = Defaults { provider: "s3", addressing: Addressing::Virtual, region: None };
    const MINIO: Defaults = Defaults { provider: "minio", addressing: Addressing::Path, region: Some("us-east-1") };

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let base = [
            ("endpoint", "http://127.0.0.1:9000"),
            ("bucket", "blocks"),
            ("access_key_id", "AK"),
            ("secret_access_key", "SK"),
        ];
        blockferry_guest::settings::owned_settings(&base, pairs)
    }

    #[test]
    fn minio_defaults_to_path_style_and_us_east_1() {
        let (c, unknown) = Config::parse(&settings(&[]), &MINIO).unwrap();
        assert_eq!(c.addressing, Addressing::Path);
        assert_eq!(c.region, "us-east-1");
        assert!(!c.https);
        assert_eq!(c.endpoint_authority, "127.0.0.1:9000");
        assert_eq!(c.multipart_threshold, 100 * MIB);
        assert_eq!(c.parts_in_flight, 4);
        assert_eq!(c.policy, Policy::default());
        assert!(unknown.is_empty());
    }

    #[test]
    fn s3_needs_a_region_and_defaults_to_virtual_hosting() {
        let err = Config::parse(&settings(&[]), &S3).unwrap_err();
        assert!(err.contains("`region`"), "{err}");
        let (c, _) = Config::parse(&settings(&[("region", "eu-west-1")]), &S3).unwrap();
        assert_eq!(c.addressing, Addressing::Virtual);
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (pair, key) in [
            (("endpoint", "s3.amazonaws.com"), "`endpoint`"),
            (("endpoint", "https://h/x"), "`endpoint`"),
            (("addressing", "dns"), "`addressing`"),
            (("sse", "rot13"), "`sse`"),
            (("sse", "sse-c"), "`sse_customer_key`"),
            (("part_size", "1024"), "`part_size`"),
            (("parts_in_flight", "0"), "`parts_in_flight`"),
            (("retry_max_attempts", "x"), "`retry_max_attempts`"),
            (("bucket", "Bad_Bucket"), "`bucket`"),
            (("storage_class", "cheap"), "`storage_class`"),
            (("multipart_threshold", "0"), "`multipart_threshold`"),
            (("checksum", "md5"), "`checksum`"),
        ] {
            let err = Config::parse(&settings(&[pair]), &MINIO).unwrap_err();
            assert!(err.contains(key), "{pair:?}: {err}");
        }
    }

    #[test]
    fn host_credentials_replace_the_keys_and_exclude_them() {
        let host = blockferry_guest::settings::owned_settings(
            &[("endpoint", "http://127.0.0.1:9000"), ("bucket", "blocks")],
            &[("credentials_source", "aws-instance")],
        );
        let (c, unknown) = Config::parse(&host, &MINIO).unwrap();
        assert!(matches!(&c.credentials, Keys::Host(source) if source == "aws-instance"), "{:?}", c.credentials);
        assert!(unknown.is_empty());
        let err = Config::parse(&settings(&[("credentials_source", "aws-ecs")]), &MINIO).unwrap_err();
        assert!(err.contains("`credentials_source`") && err.contains("`access_key_id`"), "{err}");
        let (c, _) = Config::parse(&settings(&[("credentials_source", "static")]), &MINIO).unwrap();
        assert!(matches!(c.credentials, Keys::Static(_)));
    }

    #[test]
    fn sse_c_key_is_checked_and_hashed() {
        let key = B64.encode([7u8; 32]);
        let (c, _) = Config::parse(&settings(&[("sse", "sse-c"), ("sse_customer_key", &key)]), &MINIO).unwrap();
        assert!(matches!(c.sse, Sse::CustomerKey { .. }));
        let short = B64.encode([7u8; 16]);
        assert!(Config::parse(&settings(&[("sse", "sse-c"), ("sse_customer_key", &short)]), &MINIO).is_err());
    }

    #[test]
    fn checksum_is_crc32c_by_default_only_where_etags_are_no_digests() {
        let checksum = |pairs: &[(&str, &str)]| Config::parse(&settings(pairs), &MINIO).unwrap().0.checksum;
        assert_eq!(checksum(&[]), None);
        assert_eq!(checksum(&[("sse", "aes256")]), None);
        assert_eq!(checksum(&[("sse", "aws:kms")]), Some(Checksum::Crc32c));
        let key = B64.encode([7u8; 32]);
        assert_eq!(checksum(&[("sse", "sse-c"), ("sse_customer_key", &key)]), Some(Checksum::Crc32c));
        assert_eq!(checksum(&[("checksum", "sha256")]), Some(Checksum::Sha256));
        assert_eq!(checksum(&[("sse", "aws:kms"), ("checksum", "none")]), None);
    }

    #[test]
    fn part_sizes_follow_the_5_mib_and_10000_parts_rule() {
        let (c, _) = Config::parse(&settings(&[]), &MINIO).unwrap();
        assert_eq!(c.part_size_for(200 * MIB), DEFAULT_PART_SIZE);
        let huge = 200 * 1024 * MIB;
        let size = c.part_size_for(huge);
        assert!(huge.div_ceil(size) <= MAX_PARTS && size % MIB == 0);
        let (c, _) = Config::parse(&settings(&[("part_size", "5242880")]), &MINIO).unwrap();
        assert_eq!(c.part_size_for(12 * MIB), MIN_PART_SIZE);
    }
}
