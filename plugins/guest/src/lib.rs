//! Shared guest-side code of blockferry's provider plugins (WebAssembly
//! components for `wasm32-wasip2`).
//!
//! - [`block`]: the checks of `put_block` every provider makes (block info
//!   against body, what an object already under the key means).
//! - [`http`]: HTTP/1.1 exchanges over raw `wasi:http`, request bodies either
//!   from memory or spliced from a host `input-stream` (the block's bytes never
//!   pass through guest memory), several exchanges driven at once with
//!   `wasi:io` pollables.
//! - [`retry`]: the retry policy (exponential backoff with full jitter, capped,
//!   `Retry-After`, attempt and elapsed-time limits) and a driver running many
//!   retried calls with bounded concurrency.
//! - [`settings`]: helpers of the providers' settings parsers (numbers,
//!   endpoint URLs, the `retry_*` and `request_timeout_ms` settings).
//! - [`sigv4`]: AWS Signature Version 4 request signing.
//! - [`xml`]: the few XML elements S3 answers with.
//! - [`s3`]: the S3 provider itself, generic over a [`s3::Flavor`] (defaults
//!   such as addressing style and region), exported by the `blockferry-s3` and
//!   `blockferry-minio` components with [`export_provider!`].
//!
//! A future provider (GCS, ...) reuses [`http`], [`retry`] and the bindings,
//! and exports its own `GuestBucket` type with [`export_provider!`].

pub mod block;
pub mod http;
pub mod retry;
pub mod s3;
pub mod settings;
pub mod sigv4;
pub mod xml;

/// Bindings of blockferry's `provider` world, generated once here for every
/// provider component built on this crate.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "provider",
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
        },
        export_macro_name: "export_provider",
        pub_export_macro: true,
        default_bindings_module: "blockferry_guest::bindings",
    });
}

pub use bindings::blockferry::uploader::host::{BlockBody, log};
pub use bindings::blockferry::uploader::types::{BlockInfo, Level, Outcome, RemoteObject, UploadError};
/// Exports a `Guest` implementation as the component's `bucket-uploader`.
pub use bindings::export_provider;
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
