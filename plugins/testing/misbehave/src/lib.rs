//! `misbehave`: a blockferry provider for host tests. What `put-block` does is
//! chosen by the block's key, so one instance can misbehave and then behave:
//!
//! | key | behaviour |
//! |---|---|
//! | `trap` | panics (a trap: the crate is built with `panic = "abort"`) |
//! | `loop` | spins forever without calling the host |
//! | `oom` | allocates and touches 1 MiB chunks until memory runs out |
//! | `egress:<url>` | HTTP GET of `<url>`: `uploaded` on 2xx, `transient("status N")` otherwise, `permanent` on an error |
//! | `print` | prints a line to stdout and one to stderr, then `uploaded` |
//! | `sleep:<ms>` | sleeps that many milliseconds, then `uploaded` |
//! | `huge-error` | fails with a 4 MiB permanent-error message |
//! | `open-file:<path>` | tries to read `<path>`: `permanent("read N bytes")` if it could, `permanent("cannot read: …")` if not |
//! | `env` | `permanent` listing the environment variables it sees (`none` when empty) |
//! | `settings` | `permanent` listing the names of the settings it was opened with |
//! | `stream…` | reads the body through `block-body.stream(0)`, checks its MD5, then `uploaded` |
//! | `streams` | opens `block-body` streams (keeping them) until refused: `permanent("opened N streams, then: …")` |
//! | `fields` | creates `wasi:http` fields with a 1 KiB header (keeping them) until refused or trapped |
//! | `log-flood:<n>` | calls `host.log` `n` times, then `uploaded` |
//! | `log-long:<bytes>` | one `host.log` line of that many bytes, then `uploaded` |
//! | `stdout-flood:<bytes>` | writes that many bytes to stdout in 1 KiB lines, then `uploaded` |
//! | `stderr-flood:<bytes>` | writes that many bytes to stderr without a newline, then `uploaded` |
//! | `hostile` | `streams`, floods of `host.log`, stdout and stderr, then `transient` saying every setting's value (in its log too) |
//! | `read-big:<n>` | `n` reads of 16 MiB (the most one `read` may ask for), then `uploaded` |
//! | `leak` | says every setting's value in `host.log`, stdout and stderr, then fails `permanent` with them |
//! | anything else | reads the body with `read` in 64 KiB chunks, checks its MD5, then `uploaded` |
//!
//! `open` fails when the settings contain a `fail-open` key; `stat` always
//! returns `none`. A `mode` setting chooses the behaviour of every block in
//! place of its key. A `provider-name` setting replaces the name `provider`
//! returns once the bucket is opened (a forged name, for the host's tests).
//!
//! It is built against the plain `provider` world (no `bucket-reader`), so the
//! host's tests also have an uploader-only provider. The types and host
//! functions are `blockferry_guest`'s; only the export is generated here.

use md5::{Digest, Md5};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use std::io::Write;

use blockferry_guest::{BlockBody, BlockInfo, Level, Outcome, RemoteObject, UploadError};

/// The `provider` world's `bucket-uploader` export; everything it imports is
/// `blockferry_guest`'s.
#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "provider",
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "blockferry:uploader/types@0.1.3": blockferry_guest::bindings::blockferry::uploader::types,
            "blockferry:uploader/host@0.1.3": blockferry_guest::bindings::blockferry::uploader::host,
        },
    });
}

use bindings::exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// Bytes read per call on the body paths.
const CHUNK: u32 = 64 * 1024;

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = Misbehave;
}

/// A bucket that stores nothing; it remembers its settings.
struct Misbehave {
    settings: Vec<(String, String)>,
}

/// The name `provider` returns, once a bucket set it (`provider-name`).
static PROVIDER_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl GuestBucket for Misbehave {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        if settings.iter().any(|(key, _)| key == "fail-open") {
            return Err("fail-open requested".into());
        }
        if let Some((_, name)) = settings.iter().find(|(key, _)| key == "provider-name") {
            let _ = PROVIDER_NAME.set(name.clone());
        }
        Ok(Bucket::new(Misbehave { settings }))
    }

    fn provider() -> String {
        PROVIDER_NAME.get().cloned().unwrap_or_else(|| "misbehave".into())
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        // A `mode` setting chooses the behaviour for every block instead of its key.
        let mode = self.settings.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.as_str());
        let key = mode.unwrap_or(block.key.as_str());
        match key {
            "trap" => panic!("trap requested"),
            "loop" => spin(),
            "oom" => exhaust_memory(),
            "print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
            }
            "huge-error" => return Err(UploadError::Permanent("x".repeat(4 << 20))),
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                return Err(UploadError::Permanent(if vars.is_empty() { "none".into() } else { vars.join(" ") }));
            }
            "settings" => {
                let names: Vec<&str> = self.settings.iter().map(|(k, _)| k.as_str()).collect();
                return Err(UploadError::Permanent(names.join(",")));
            }
            "streams" => return Err(UploadError::Permanent(open_streams(body))),
            "fields" => return Err(UploadError::Permanent(make_fields())),
            "hostile" => {
                let streams = open_streams(body);
                flood("log-flood:2000")?;
                flood("stdout-flood:1000000")?;
                flood("stderr-flood:1000000")?;
                let values: Vec<&str> = self.settings.iter().map(|(_, v)| v.as_str()).collect();
                let said = format!("{streams}; my settings: {}", values.join(" "));
                blockferry_guest::log(Level::Error, &said);
                eprintln!("{said}");
                return Err(UploadError::Transient(said));
            }
            "leak" => {
                let values: Vec<&str> = self.settings.iter().map(|(_, v)| v.as_str()).collect();
                let said = format!("my settings: {}", values.join(" "));
                blockferry_guest::log(Level::Error, &said);
                println!("{said}");
                eprintln!("{said}");
                return Err(UploadError::Permanent(said));
            }
            _ if key.contains("-flood:") || key.starts_with("log-long:") => flood(key)?,
            _ if key.starts_with("read-big:") => {
                let rounds: u64 = key["read-big:".len()..]
                    .parse()
                    .map_err(|e| UploadError::Permanent(format!("bad key `{key}`: {e}")))?;
                for round in 0..rounds {
                    let chunk = body.read(round % 2, 16 << 20).map_err(UploadError::Transient)?;
                    std::hint::black_box(chunk);
                }
            }
            _ if key.starts_with("open-file:") => {
                let path = &key["open-file:".len()..];
                return Err(UploadError::Permanent(match std::fs::read(path) {
                    Ok(bytes) => format!("read {} bytes of {path}", bytes.len()),
                    Err(e) => format!("cannot read {path}: {e}"),
                }));
            }
            _ if key.starts_with("egress:") => egress(&key["egress:".len()..])?,
            _ if key.starts_with("sleep:") => {
                let ms: u64 = key["sleep:".len()..]
                    .parse()
                    .map_err(|e| UploadError::Permanent(format!("bad key `{key}`: {e}")))?;
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            }
            _ if key.starts_with("stream") => check_md5(&block, read_stream(body)?)?,
            _ => check_md5(&block, read_chunks(body)?)?,
        }
        Ok(Outcome::Uploaded)
    }

    fn stat(&self, _key: String) -> Result<Option<RemoteObject>, UploadError> {
        Ok(None)
    }
}

/// Opens streams over `body`, keeping every one, until the host refuses one.
fn open_streams(body: &BlockBody) -> String {
    let mut streams = Vec::new();
    loop {
        match body.stream(0) {
            Ok(stream) => streams.push(stream),
            Err(e) => return format!("opened {} streams, then: {e}", streams.len()),
        }
    }
}

/// Creates `wasi:http` fields holding a 1 KiB header, keeping every one, until
/// the host refuses one (or traps the call).
fn make_fields() -> String {
    let value = vec![b'v'; 1024];
    let mut all = Vec::new();
    loop {
        match Fields::from_list(&[("x-flood".to_string(), value.clone())]) {
            Ok(fields) => all.push(fields),
            Err(e) => return format!("made {} fields, then: {e:?}", all.len()),
        }
    }
}

/// The `*-flood:<n>` and `log-long:<n>` modes.
fn flood(key: &str) -> Result<(), UploadError> {
    let (mode, n) = key.split_once(':').unwrap_or_default();
    let n: usize = n.parse().map_err(|e| UploadError::Permanent(format!("bad key `{key}`: {e}")))?;
    match mode {
        "log-flood" => (0..n).for_each(|i| blockferry_guest::log(Level::Info, &format!("flood line {i}"))),
        "log-long" => blockferry_guest::log(Level::Info, &"L".repeat(n)),
        "stdout-flood" => {
            let line = format!("{}\n", "o".repeat(1023));
            let mut out = std::io::stdout().lock();
            for _ in 0..n / line.len() {
                out.write_all(line.as_bytes()).map_err(|e| UploadError::Transient(format!("stdout: {e}")))?;
            }
        }
        "stderr-flood" => {
            let chunk = vec![b'e'; 64 * 1024];
            let mut err = std::io::stderr().lock();
            for _ in 0..n.div_ceil(chunk.len()) {
                err.write_all(&chunk).map_err(|e| UploadError::Transient(format!("stderr: {e}")))?;
            }
        }
        _ => return Err(UploadError::Permanent(format!("bad key `{key}`"))),
    }
    Ok(())
}

/// Loops forever without calling the host; `black_box` keeps the loop alive.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks, writing every byte, until allocation fails (a trap).
fn exhaust_memory() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&mut chunks);
    }
}

/// HTTP GET of `url` through `wasi:http/outgoing-handler`.
fn egress(url: &str) -> Result<(), UploadError> {
    let status = get(url).map_err(|e| UploadError::Permanent(format!("egress to {url} failed: {e}")))?;
    if (200..300).contains(&status) { Ok(()) } else { Err(UploadError::Transient(format!("status {status}"))) }
}

/// Sends a GET request and returns the response status; errors are rendered with `Debug`.
fn get(url: &str) -> Result<u16, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };

    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).map_err(|()| "set-method refused")?;
    request.set_scheme(Some(&scheme)).map_err(|()| "set-scheme refused")?;
    request.set_authority(Some(authority)).map_err(|()| format!("authority {authority:?} refused"))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("path {path:?} refused"))?;
    let body = request.body().map_err(|()| "request body already taken")?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;

    let response = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    let result = response.get().ok_or("response not ready after its pollable fired")?;
    let response = result.map_err(|()| "response already taken")?.map_err(|e| format!("{e:?}"))?;
    Ok(response.status())
}

/// Reads the body with `block-body.read` in `CHUNK`-sized calls; returns its MD5.
fn read_chunks(body: &BlockBody) -> Result<[u8; 16], UploadError> {
    let mut md5 = Md5::new();
    let mut offset = 0u64;
    loop {
        let chunk = body.read(offset, CHUNK).map_err(|e| UploadError::Transient(format!("read at {offset}: {e}")))?;
        if chunk.is_empty() {
            return Ok(md5.finalize().into());
        }
        md5.update(&chunk);
        offset += chunk.len() as u64;
    }
}

/// Reads the whole body through `block-body.stream(0)`; returns its MD5.
fn read_stream(body: &BlockBody) -> Result<[u8; 16], UploadError> {
    let stream = body.stream(0).map_err(UploadError::Transient)?;
    let mut md5 = Md5::new();
    loop {
        match stream.blocking_read(u64::from(CHUNK)) {
            Ok(chunk) => md5.update(&chunk),
            Err(StreamError::Closed) => return Ok(md5.finalize().into()),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(UploadError::Transient(format!("stream read: {}", e.to_debug_string())));
            }
        }
    }
}

/// Fails with a permanent error when the body read does not hash to `block.md5`.
fn check_md5(block: &BlockInfo, md5: [u8; 16]) -> Result<(), UploadError> {
    if md5[..] == block.md5[..] {
        Ok(())
    } else {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Err(UploadError::Permanent(format!(
            "put-block `{}`: the host's body doesn't match its MD5 (body {}, block.md5 {})",
            block.key,
            hex(&md5),
            hex(&block.md5)
        )))
    }
}

bindings::export!(Component with_types_in bindings);
