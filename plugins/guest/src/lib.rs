//! Shared guest-side code of blockferry's provider plugins (WebAssembly
//! components for `wasm32-wasip2`).
//!
//! - [`block`]: the checks of `put_block` every provider makes (block info
//!   against body, what an object already under the key means).
//! - [`http`]: HTTP/1.1 exchanges over raw `wasi:http`, request bodies either
//!   from memory or spliced from a host `input-stream` (the block's bytes never
//!   pass through guest memory), 2xx response bodies optionally spliced into a
//!   host `output-stream` (a `block-sink`, for the reader's `get`), several
//!   exchanges driven at once with `wasi:io` pollables.
//! - [`retry`]: the retry policy (exponential backoff with full jitter, capped,
//!   `Retry-After`, attempt and elapsed-time limits) and a driver running many
//!   retried calls with bounded concurrency.
//! - [`settings`]: helpers of the providers' settings parsers (numbers,
//!   endpoint URLs, the `retry_*` and `request_timeout_ms` settings).
//! - [`sigv4`]: AWS Signature Version 4 request signing.
//! - [`xml`]: the few XML elements S3 answers with (errors, upload ids,
//!   listings).
//! - [`s3`]: the S3 provider itself, uploader and reader, generic over a
//!   [`s3::Flavor`] (defaults such as addressing style and region), exported by
//!   the `blockferry-s3` and `blockferry-minio` components with
//!   [`export_reading_provider!`].
//! - [`bindings`]: the `reading-provider` world (`provider` plus the
//!   `bucket-reader` export); the types and host functions are re-exported at
//!   the crate root, with [`Guest`]/[`GuestBucket`]/[`Bucket`] (the uploader)
//!   and [`ReaderGuest`]/[`GuestReader`]/[`Reader`] (the reader).
//!
//! A provider (S3, GCS, fs) implements [`GuestBucket`] and [`GuestReader`] and
//! exports both with [`export_reading_provider!`]. A component that must stay
//! uploader-only generates its own `provider`-world export with `with`
//! pointing at [`bindings`]' types and host functions (as the `misbehave` test
//! fixture does).

pub mod block;
pub mod http;
pub mod retry;
pub mod s3;
pub mod settings;
pub mod sigv4;
pub mod xml;

/// Bindings of blockferry's `reading-provider` world (the `provider` world
/// plus the `bucket-reader` export), generated once here for every provider
/// component built on this crate.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "reading-provider",
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
        },
        export_macro_name: "export_reading_provider",
        pub_export_macro: true,
        default_bindings_module: "blockferry_guest::bindings",
    });
}

pub use bindings::blockferry::uploader::host::{BlockBody, BlockSink, log, object_confirmed, object_version};
pub use bindings::blockferry::uploader::types::{
    BlockInfo, Confirmation, IncompleteUpload, Level, ListedObject, ObjectPage, Outcome, RemoteObject, UploadError,
};
/// Exports a type implementing both [`Guest`] and [`ReaderGuest`] as the
/// component's `bucket-uploader` and `bucket-reader`.
pub use bindings::export_reading_provider;
pub use bindings::exports::blockferry::uploader::bucket_reader::{Guest as ReaderGuest, GuestReader, Reader};
pub use bindings::exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// URI-encodes `s` as SigV4 and Google's APIs ask: every byte but
/// `A-Za-z0-9-._~` (and `/` when `keep_slash`) becomes `%XX` with upper-case hex.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The current time in seconds since the Unix epoch (from `wasi:clocks/wall-clock`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch of an ISO-8601 / RFC 3339 timestamp as
/// storage services write them: `YYYY-MM-DDTHH:MM:SS[.fff...](Z|±HH:MM)`
/// (S3's `2010-11-10T20:48:33.000Z`). `None` when it is not one, or is before 1970.
pub fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        millis = fraction[..len].iter().take(3).chain(b"00").take(3).fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        rest = &fraction[len..];
    }
    let offset_minutes = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let [h1, h2, m1, m2] = [h1, h2, m1, m2].map(|d| i64::from(d.wrapping_sub(b'0')));
            if [h1, h2, m1, m2].iter().any(|d| !(0..=9).contains(d)) {
                return None;
            }
            let minutes = (h1 * 10 + h2) * 60 + m1 * 10 + m2;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1_000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_storage_services_write_them() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp_ms("2010-11-10T20:48:33.000Z"), Some(1_289_422_113_000));
        assert_eq!(parse_timestamp_ms("2010-11-10T20:48:33.5Z"), Some(1_289_422_113_500));
        assert_eq!(parse_timestamp_ms("2010-11-10T20:48:33.123456789Z"), Some(1_289_422_113_123));
        assert_eq!(parse_timestamp_ms("2010-11-10T21:48:33+01:00"), Some(1_289_422_113_000));
        assert_eq!(parse_timestamp_ms("2000-02-29T12:00:00Z"), Some(951_825_600_000));
        assert_eq!(parse_timestamp_ms("2024-12-31T23:59:59.999Z"), Some(1_735_689_599_999));
        for bad in [
            "",
            "2010-11-10",
            "2010-11-10T20:48:33",
            "2010-13-10T20:48:33Z",
            "1969-12-31T23:59:59Z",
            "x010-11-10T20:48:33Z",
            "2010-11-10T20:48:33.Z",
            "2010-11-10T20:48:33+0100",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad}");
        }
    }
}
