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
//! - [`operation`]: one retried operation of a storage service, written once
//!   for every provider: a provider builds requests and reads the answers it
//!   expects; transport errors, error responses (through its
//!   [`operation::Service::judge`]), giving up and logging are handled there.
//! - [`settings`]: helpers of the providers' settings parsers (numbers,
//!   endpoint URLs, the `retry_*` and `request_timeout_ms` settings).
//! - [`bindings`]: the `reading-provider` world (`provider` plus the
//!   `bucket-reader` export); the types and host functions are re-exported at
//!   the crate root, with [`Guest`]/[`GuestBucket`]/[`Bucket`] (the uploader)
//!   and [`ReaderGuest`]/[`GuestReader`]/[`Reader`] (the reader).
//!
//! A provider (S3 in the `blockferry-s3-api` crate, GCS, fs) implements
//! [`GuestBucket`] and [`GuestReader`] and is exported with
//! [`export_reading_provider!`]. A component that must stay
//! uploader-only generates its own `provider`-world export with `with`
//! pointing at [`bindings`]' types and host functions (as the `misbehave` test
//! fixture does).

pub mod block;
pub mod http;
pub mod operation;
pub mod retry;
pub mod settings;

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

pub use bindings::blockferry::uploader::host::{
    BlockBody, BlockSink, IssuedCredentials, credentials, log, object_confirmed, object_version,
};
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

/// The host's current credentials for a bucket whose setting
/// `credentials_source` names a platform source (`host.credentials`, asked
/// for each request: the host caches and refreshes them): the values of
/// `keys`, in order, `None` for a key not issued. `target` (the operation
/// and object) prefixes the errors: the host's (transient or permanent, as
/// it classified them), and a permanent one when it issued nothing.
pub fn host_credentials(target: &str, source: &str, keys: &[&str]) -> Result<Vec<Option<String>>, UploadError> {
    let issued = credentials().map_err(|e| match e {
        UploadError::Transient(m) => UploadError::Transient(format!("{target}: {m}")),
        UploadError::Permanent(m) => UploadError::Permanent(format!("{target}: {m}")),
        other => other,
    })?;
    if issued.values.is_empty() {
        return Err(UploadError::Permanent(format!(
            "{target}: setting `credentials_source` = {source:?} but the host brokers no credentials for this \
             bucket: set `credentials_source` in the bucket's [[buckets]] table (not under `settings`)"
        )));
    }
    Ok(keys.iter().map(|key| issued.values.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())).collect())
}
