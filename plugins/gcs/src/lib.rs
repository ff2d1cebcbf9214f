//! `gcs`: the blockferry storage provider for Google Cloud Storage, over the
//! JSON API and `wasi:http`.
//!
//! - Every object is created with `ifGenerationMatch=0`: when several nodes
//!   upload one block, exactly one write wins; a loser (HTTP 412) reads the
//!   object's metadata and answers `already-present` (same `md5Hash`) or
//!   `hash-mismatch`.
//! - Blocks up to `resumable_threshold` go up as one `uploadType=multipart`
//!   request (metadata with `md5Hash`, then the bytes); larger ones as a
//!   resumable upload in chunks spliced from the host's `block-body`, so the
//!   bytes never pass through the plugin's memory. After a failure the upload
//!   asks the server what it committed (`Content-Range: bytes */TOTAL`) and
//!   resumes from there.
//! - Retries follow Google's guidance: 408, 429, 5xx and connection errors,
//!   exponential backoff with full jitter, capped ([`blockferry_guest::retry`]),
//!   each operation run by [`blockferry_guest::operation`].
//! - Auth: none, a bearer token, or a service-account key ([`auth`]).
//! - Every object written reports its `generation` to the host
//!   (`host.object-version`).
//! - The reader: `get` reads the object's metadata (`objects.get`), then its
//!   bytes at that generation (`alt=media`) spliced into the host's sink;
//!   `list` is `objects.list` from `startOffset`; `health` is `buckets.get`;
//!   `incomplete-uploads` is always empty (see [`GcsBucket::incomplete_uploads`]).
//!
//! See README.md for the settings.

pub mod auth;
pub mod settings;

use std::cell::RefCell;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockferry_guest::block::{checked_size, existing_outcome};
use blockferry_guest::http::{Body, Request, Response};
use blockferry_guest::operation::{self, Accept, Failure, Service};
use blockferry_guest::retry::{self, Policy};
use blockferry_guest::uri_encode;
use blockferry_guest::{
    BlockBody, BlockInfo, Bucket, Confirmation, GuestBucket, Level, Outcome, RemoteObject, UploadError,
};
use blockferry_guest::{BlockSink, GuestReader, IncompleteUpload, ListedObject, ObjectPage, Reader};
use wasip2::http::types::Method;

use settings::Config;

/// Bytes asked per `block-body.read` when a multipart body is assembled.
const READ_CHUNK: u64 = 4 << 20;
/// GCS's longest object name, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// A resumable upload whose session the server lost is started afresh at most this often.
const MAX_SESSION_RESTARTS: u32 = 2;

/// Whether Google's guidance retries a response with this status.
pub fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// An opened GCS bucket.
pub struct GcsBucket {
    cfg: Config,
    /// The session of the last resumable upload that failed, kept so that
    /// the host's next attempt at the same block resumes it.
    unfinished: RefCell<Option<Unfinished>>,
}

/// A resumable upload session left unfinished by a failed call.
struct Unfinished {
    /// Object name, size and MD5 of the block it uploads.
    key: String,
    size: u64,
    md5: Vec<u8>,
    /// The session URI's path and query.
    session: String,
}

/// What a conditional create found.
enum Created {
    /// This call wrote the object; the server's metadata of it, if it sent any.
    Written(Option<Stored>),
    /// An object already existed under the key (HTTP 412).
    Exists,
}

/// An object's metadata as the server sent it.
struct Stored {
    /// Its size, MD5 and ETag.
    object: RemoteObject,
    /// Its `generation` (the object's version), if sent.
    generation: Option<String>,
}

impl GuestBucket for GcsBucket {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        Ok(Bucket::new(GcsBucket::new(&settings)?))
    }

    fn provider() -> String {
        "gcs".into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        let key = self.full_key(&block.key)?;
        let cfg = &self.cfg;
        let size = checked_size("objects.insert", &cfg.location(&key), &block, body)?;
        let created = if size > cfg.resumable_threshold {
            self.put_resumable(&block, body, &key)?
        } else {
            self.put_multipart(&block, body, &key)?
        };
        match created {
            Created::Written(written) => {
                if let Some(Stored { object: there, .. }) = &written
                    && there.md5.as_deref().is_some_and(|md5| md5 != &block.md5[..])
                {
                    blockferry_guest::log(
                        Level::Error,
                        &format!(
                            "objects.insert {}: the server stored content with MD5 {} but the block's is {}",
                            cfg.location(&key),
                            there.md5.as_deref().map(|m| B64.encode(m)).unwrap_or_default(),
                            B64.encode(&block.md5)
                        ),
                    );
                    return Err(UploadError::HashMismatch(there.clone()));
                }
                // `md5Hash` is computed by the service from the bytes it stored.
                if written.as_ref().is_some_and(|s| s.object.md5.as_deref() == Some(&block.md5[..])) {
                    blockferry_guest::object_confirmed(&block.key, Confirmation::ServerDigest);
                }
                if let Some(generation) = written.and_then(|s| s.generation) {
                    blockferry_guest::object_version(&block.key, &generation);
                }
                blockferry_guest::log(Level::Debug, &format!("uploaded {size} bytes to {}", cfg.location(&key)));
                Ok(Outcome::Uploaded)
            }
            Created::Exists => {
                let outcome = existing_outcome(&block, self.get_metadata(&key)?.map(|s| s.object), || {
                    format!(
                        "objects.insert {}: the server said an object exists (HTTP 412) but objects.get found \
                         none (deleted meanwhile?); retry later",
                        cfg.location(&key)
                    )
                })?;
                // Already present means the service's `md5Hash` equals the block's MD5.
                blockferry_guest::object_confirmed(&block.key, Confirmation::ServerDigest);
                Ok(outcome)
            }
        }
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        let key = self.full_key(&key)?;
        Ok(self.get_metadata(&key)?.map(|s| s.object))
    }
}

impl GuestReader for GcsBucket {
    fn open(settings: Vec<(String, String)>) -> Result<Reader, String> {
        Ok(Reader::new(GcsBucket::new(&settings)?))
    }

    /// `objects.get` of the metadata (`none` on a 404), then of the bytes at
    /// that generation (`alt=media`), spliced into the sink. The MD5 is the
    /// metadata's `md5Hash` (composite objects have none).
    fn get(&self, key: String, sink: &BlockSink) -> Result<Option<RemoteObject>, UploadError> {
        let key = self.full_key(&key)?;
        let Some(Stored { object, generation }) = self.get_metadata(&key)? else {
            return Ok(None);
        };
        let cfg = &self.cfg;
        let out = Rc::new(sink.stream().map_err(|e| {
            UploadError::Transient(format!("objects.get {}: the host gave no sink stream: {e}", cfg.location(&key)))
        })?);
        let mut path = format!("{}/{}?alt=media", cfg.objects_path(false), uri_encode(&key, false));
        if let Some(generation) = &generation {
            path.push_str(&format!("&generation={}", uri_encode(generation, false)));
        }
        let mut call = cfg.call(
            "objects.get (media)",
            &key,
            |_| {
                let mut request = cfg.request(Method::Get, false, path.clone(), Vec::new(), Body::Empty)?;
                request.sink = Some(out.clone());
                Ok(request)
            },
            |response| match response.status {
                200..=299 => Accept::Done(Ok(Some(response.streamed.unwrap_or_default()))),
                // Deleted since the metadata was read.
                404 if !bucket_missing(&response.body) => Accept::Done(Ok(None)),
                _ => Accept::Other(response),
            },
        );
        let Some(size) = call.run()? else {
            return Ok(None);
        };
        if size != object.size {
            return Err(UploadError::Transient(format!(
                "objects.get {}: read {size} bytes, but the object's metadata says {}; retry later",
                cfg.location(&key),
                object.size
            )));
        }
        Ok(Some(object))
    }

    /// `objects.list` from `startOffset` = `after` (inclusive, so an object
    /// named `after` is skipped); `next` is the last key when there is more.
    fn list(&self, prefix: String, after: Option<String>, limit: u32) -> Result<ObjectPage, UploadError> {
        let cfg = &self.cfg;
        let full_prefix = format!("{}{prefix}", cfg.prefix);
        let limit = limit.clamp(1, 1000);
        // One more when the first may be `after` itself.
        let ask = if after.is_some() { (limit + 1).min(1000) } else { limit };
        let mut path = format!(
            "{}?prefix={}&maxResults={ask}&fields=items(name,size),nextPageToken",
            cfg.objects_path(false),
            uri_encode(&full_prefix, false)
        );
        if let Some(after) = &after {
            path.push_str(&format!("&startOffset={}", uri_encode(&format!("{}{after}", cfg.prefix), false)));
        }
        let mut call = cfg.call(
            "objects.list",
            &full_prefix,
            |_| cfg.request(Method::Get, false, path.clone(), Vec::new(), Body::Empty),
            |response| match (response.status, object_page(&response.body, &cfg.prefix, after.as_deref(), limit)) {
                (200, Some(page)) => Accept::Done(page),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// `buckets.get`: a missing bucket (404) and refused credentials
    /// (401/403) are permanent, 408/429/5xx and connection errors are
    /// retried, then transient.
    fn health(&self) -> Result<(), UploadError> {
        let cfg = &self.cfg;
        let path = format!("/storage/v1/b/{}?fields=name", uri_encode(&cfg.bucket, false));
        let mut call = cfg.call(
            "buckets.get",
            "",
            |_| cfg.request(Method::Get, false, path.clone(), Vec::new(), Body::Empty),
            |response| match response.status {
                200 => Accept::Done(Ok(())),
                404 => Accept::Done(Err(UploadError::Permanent(format!(
                    "buckets.get {}: bucket {:?} does not exist (HTTP 404); create it, or fix the `bucket` \
                     setting (and `endpoint`)",
                    cfg.location(""),
                    cfg.bucket
                )))),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// Always empty: the abandoned uploads of GCS are resumable upload
    /// sessions, which cannot be listed, cost nothing and expire on their own
    /// after a week. The only record of one is in the memory of the `bucket`
    /// instance whose upload failed (kept to resume it), which no reader sees.
    fn incomplete_uploads(&self, _prefix: String) -> Result<Vec<IncompleteUpload>, UploadError> {
        Ok(Vec::new())
    }

    /// Cancels the resumable upload session whose URI (or path) is the
    /// upload's id (HTTP 499 is GCS's answer to a cancelled session; a session
    /// already gone, 404/410, is fine). Any other id names nothing this
    /// provider can abort: not an error.
    fn abort_upload(&self, upload: IncompleteUpload) -> Result<(), UploadError> {
        let cfg = &self.cfg;
        let Some(session) = path_of(&upload.id).filter(|p| p.starts_with(&format!("{}?", cfg.objects_path(true))))
        else {
            return Ok(());
        };
        let key = format!("{}{}", cfg.prefix, upload.key);
        let mut call = cfg.call(
            "resumable upload cancel",
            &key,
            |_| cfg.request(Method::Delete, true, session.clone(), Vec::new(), Body::Empty),
            |response| match response.status {
                200..=299 | 404 | 410 | 499 => Accept::Done(Ok(())),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }
}

impl Config {
    /// A request to the JSON API (or its upload endpoint when `upload`),
    /// authorised.
    fn request(
        &self,
        method: Method,
        upload: bool,
        path_and_query: String,
        mut headers: Vec<(String, String)>,
        body: Body,
    ) -> Result<Request, UploadError> {
        let endpoint = if upload { &self.upload_endpoint } else { &self.endpoint };
        if let Some(authorization) = self.auth.header(&self.policy, self.timeouts)? {
            headers.push(("authorization".into(), authorization));
        }
        Ok(Request {
            method,
            https: endpoint.https,
            authority: endpoint.authority.clone(),
            path_and_query,
            headers,
            body,
            timeouts: self.timeouts,
            sink: None,
        })
    }

    /// `/storage/v1/b/BUCKET/o`, the objects collection (prefixed with
    /// `/upload` for uploads).
    fn objects_path(&self, upload: bool) -> String {
        format!("{}/storage/v1/b/{}/o", if upload { "/upload" } else { "" }, uri_encode(&self.bucket, false))
    }
}

impl GcsBucket {
    /// Opens the bucket `settings` describe (for `bucket.open` and `reader.open`).
    fn new(settings: &[(String, String)]) -> Result<Self, String> {
        let (cfg, unknown) = Config::parse(settings)?;
        blockferry_guest::settings::warn_unknown("gcs", &unknown, settings::KNOWN_KEYS);
        Ok(GcsBucket { cfg, unfinished: RefCell::new(None) })
    }

    /// The object name of `key`: the `prefix` setting prepended when non-empty.
    fn full_key(&self, key: &str) -> Result<String, UploadError> {
        let full = format!("{}{key}", self.cfg.prefix);
        if key.is_empty() || full.len() > MAX_KEY_LEN || full.contains(['\r', '\n']) {
            return Err(UploadError::Permanent(format!(
                "invalid object name {full:?} for {}: GCS names are 1 to {MAX_KEY_LEN} bytes without \
                 line breaks; fix the bucket's key template or `prefix`",
                self.cfg.location("")
            )));
        }
        Ok(full)
    }

    /// `objects.get` of `key`'s metadata: what is stored there, or `None`.
    fn get_metadata(&self, key: &str) -> Result<Option<Stored>, UploadError> {
        let cfg = &self.cfg;
        let path = format!("{}/{}", cfg.objects_path(false), uri_encode(key, false));
        let mut call = cfg.call(
            "objects.get",
            key,
            |_| cfg.request(Method::Get, false, path.clone(), Vec::new(), Body::Empty),
            |response| match response.status {
                200 => match stored(&response.body) {
                    Some(object) => Accept::Done(Ok(Some(object))),
                    None => Accept::Other(response),
                },
                // Real GCS says which is missing; a missing bucket needs an operator.
                404 if !bucket_missing(&response.body) => Accept::Done(Ok(None)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// The whole block as one conditional `uploadType=multipart` request:
    /// the metadata (with `md5Hash`, which the server verifies) and the bytes.
    fn put_multipart(&self, block: &BlockInfo, body: &BlockBody, key: &str) -> Result<Created, UploadError> {
        let cfg = &self.cfg;
        let path = format!("{}?uploadType=multipart&ifGenerationMatch=0", cfg.objects_path(true));
        let mut call = cfg.call(
            "objects.insert (multipart)",
            key,
            |_| {
                let boundary = format!(
                    "blockferry-{:016x}{:016x}",
                    wasip2::random::random::get_random_u64(),
                    wasip2::random::random::get_random_u64()
                );
                let bytes =
                    multipart_body(&boundary, &object_metadata(block, key), &block.content_type, body, block.size)
                        .map_err(|e| {
                            UploadError::Transient(format!(
                                "objects.insert {}: reading the block body: {e}",
                                cfg.location(key)
                            ))
                        })?;
                let headers = vec![("content-type".into(), format!("multipart/related; boundary={boundary}"))];
                cfg.request(Method::Post, true, path.clone(), headers, Body::Bytes(bytes))
            },
            |response| match response.status {
                200 | 201 => Accept::Done(Ok(Created::Written(stored(&response.body)))),
                412 => Accept::Done(Ok(Created::Exists)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// A conditional resumable upload in chunks of `chunk_size`, each spliced
    /// from the host. After a failure the next attempt asks the server what it
    /// committed and resumes from there; a session the server lost (404/410)
    /// is started afresh.
    fn put_resumable(&self, block: &BlockInfo, body: &BlockBody, key: &str) -> Result<Created, UploadError> {
        let cfg = &self.cfg;
        let total = block.size;
        let mut restarts = 0;
        // A session an earlier call left unfinished for this very block is resumed.
        let mut resumed =
            self.unfinished.borrow_mut().take().filter(|u| u.key == key && u.size == total && u.md5 == block.md5);
        'session: loop {
            let (session, ask_first_initially) = match resumed.take() {
                Some(unfinished) => {
                    blockferry_guest::log(
                        Level::Info,
                        &format!("resumable upload {}: resuming the session an earlier call left", cfg.location(key)),
                    );
                    (unfinished.session, true)
                }
                None => match self.start_session(block, key)? {
                    Some(session) => (session, false),
                    None => return Ok(Created::Exists),
                },
            };
            blockferry_guest::log(
                Level::Debug,
                &format!(
                    "resumable upload of {total} bytes to {} in chunks of {} bytes",
                    cfg.location(key),
                    cfg.chunk_size
                ),
            );
            let mut offset = 0u64;
            // Ask where the session is before sending: for a session an earlier
            // call left, and after a 308 that claimed every byte without finishing.
            let mut ask_first = ask_first_initially;
            let mut stalls = 0u32;
            loop {
                let start = offset;
                let end = (start + cfg.chunk_size).min(total);
                let mut call = cfg.call(
                    "resumable upload",
                    key,
                    |failures| {
                        if failures > 0 || ask_first {
                            // Where is the session? (Content-Range: bytes */TOTAL, no body.)
                            let headers = vec![("content-range".into(), format!("bytes */{total}"))];
                            return cfg.request(Method::Put, true, session.clone(), headers, Body::Empty);
                        }
                        let stream = body.stream(start).map_err(|e| {
                            UploadError::Transient(format!(
                                "resumable upload {}: cannot stream the block body: {e}",
                                cfg.location(key)
                            ))
                        })?;
                        let headers = vec![("content-range".into(), format!("bytes {start}-{}/{total}", end - 1))];
                        cfg.request(
                            Method::Put,
                            true,
                            session.clone(),
                            headers,
                            Body::Stream { stream, len: end - start },
                        )
                    },
                    |response| match response.status {
                        308 => Accept::Done(Ok(Step::Committed(committed(&response)))),
                        200 | 201 => Accept::Done(Ok(Step::Finished(stored(&response.body)))),
                        412 => Accept::Done(Ok(Step::Exists)),
                        404 | 410 => Accept::Done(Ok(Step::SessionLost(response.status))),
                        _ => Accept::Other(response),
                    },
                );
                // The backoff keeps growing across steps that make no progress.
                let policy = Policy {
                    base_delay: cfg.policy.base_delay.saturating_mul(1 << stalls.min(16)).min(cfg.policy.max_delay),
                    ..cfg.policy
                };
                let step = match retry::run_one(&mut call, &policy) {
                    Ok(step) => step,
                    Err(e) => {
                        if matches!(e, UploadError::Transient(_)) {
                            self.keep_unfinished(block, key, &session);
                        }
                        return Err(e);
                    }
                };
                let (failures, last_failure) = (call.failures(), call.take_last_failure());
                drop(call);
                match step {
                    Step::Committed(committed) => {
                        if committed > start {
                            stalls = 0;
                        } else {
                            stalls += 1;
                            if stalls >= cfg.policy.max_attempts {
                                self.keep_unfinished(block, key, &session);
                                return Err(UploadError::Transient(format!(
                                    "resumable upload {}: no progress past byte {committed} of {total} in {stalls} \
                                     tries (retry_max_attempts = {}); last failure: {}",
                                    cfg.location(key),
                                    cfg.policy.max_attempts,
                                    last_failure.unwrap_or_else(|| "the server committed nothing new".into())
                                )));
                            }
                        }
                        if failures > 0 {
                            blockferry_guest::log(
                                Level::Info,
                                &format!(
                                    "resumable upload {}: resuming at byte {committed} of {total}, the offset \
                                     the server committed",
                                    cfg.location(key)
                                ),
                            );
                        }
                        ask_first = committed >= total;
                        offset = committed.min(total);
                    }
                    Step::Finished(written) => return Ok(Created::Written(written)),
                    Step::Exists => return Ok(Created::Exists),
                    Step::SessionLost(status) => {
                        restarts += 1;
                        let why = format!(
                            "resumable upload {}: the server lost the upload session (HTTP {status}) at byte \
                             {offset} of {total}",
                            cfg.location(key)
                        );
                        if restarts > MAX_SESSION_RESTARTS {
                            return Err(UploadError::Transient(format!("{why}, {restarts} times; retry later")));
                        }
                        blockferry_guest::log(Level::Warn, &format!("{why}; starting a new upload"));
                        continue 'session;
                    }
                }
            }
        }
    }

    /// Remembers `session` so the host's next attempt at `block` resumes it.
    fn keep_unfinished(&self, block: &BlockInfo, key: &str, session: &str) {
        *self.unfinished.borrow_mut() = Some(Unfinished {
            key: key.to_string(),
            size: block.size,
            md5: block.md5.clone(),
            session: session.to_string(),
        });
    }

    /// Starts a conditional resumable upload session; `None` when the object
    /// already exists. The session URI is returned as a path and query, sent
    /// to `upload_endpoint` (the server answers with its own address in
    /// `Location`, which may be one the plugin may not reach).
    fn start_session(&self, block: &BlockInfo, key: &str) -> Result<Option<String>, UploadError> {
        let cfg = &self.cfg;
        let path = format!(
            "{}?uploadType=resumable&name={}&ifGenerationMatch=0",
            cfg.objects_path(true),
            uri_encode(key, false)
        );
        let metadata = object_metadata(block, key);
        let mut call = cfg.call(
            "objects.insert (resumable start)",
            key,
            |_| {
                let headers = vec![
                    ("content-type".into(), "application/json; charset=UTF-8".into()),
                    ("x-upload-content-type".into(), block.content_type.clone()),
                    ("x-upload-content-length".into(), block.size.to_string()),
                ];
                cfg.request(Method::Post, true, path.clone(), headers, Body::Bytes(metadata.clone().into_bytes()))
            },
            |response| match (response.status, response.header("location").and_then(path_of)) {
                (200 | 201, Some(session)) => Accept::Done(Ok(Some(session))),
                (412, _) => Accept::Done(Ok(None)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }
}

/// What one step of a resumable upload reached.
enum Step {
    /// The server holds the bytes before this offset.
    Committed(u64),
    /// The upload is complete; the object's metadata, if sent.
    Finished(Option<Stored>),
    /// The precondition failed: an object already exists under the key.
    Exists,
    /// The session is gone (expired or unknown), with the status that said so.
    SessionLost(u16),
}

/// The offset a 308 says the server committed: one past the end of its
/// `Range: bytes=0-N`, or 0 without one.
fn committed(response: &Response) -> u64 {
    response
        .header("range")
        .and_then(|r| r.trim().strip_prefix("bytes=0-"))
        .and_then(|end| end.trim().parse::<u64>().ok())
        .map_or(0, |end| end + 1)
}

/// The path and query of a session URI from `Location`.
fn path_of(location: &str) -> Option<String> {
    let rest = location.split_once("://").map_or(location, |(_, rest)| rest);
    let path = &rest[rest.find('/')?..];
    path.contains("upload_id=").then(|| path.to_string())
}

/// The JSON metadata of a new object: name, content type, content MD5.
fn object_metadata(block: &BlockInfo, key: &str) -> String {
    serde_json::json!({
        "name": key,
        "contentType": block.content_type,
        "md5Hash": B64.encode(&block.md5),
        "metadata": { "blockferry-block-number": block.number.to_string() },
    })
    .to_string()
}

/// A `multipart/related` body: the metadata part, then `size` bytes of
/// `body`, read in bounded chunks into one buffer.
fn multipart_body(
    boundary: &str,
    metadata: &str,
    content_type: &str,
    body: &BlockBody,
    size: u64,
) -> Result<Vec<u8>, String> {
    let head = format!(
        "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\n\
         content-type: {content_type}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut out = Vec::with_capacity(head.len() + size as usize + tail.len());
    out.extend_from_slice(head.as_bytes());
    let mut offset = 0;
    while offset < size {
        let chunk = body.read(offset, (size - offset).min(READ_CHUNK) as u32)?;
        if chunk.is_empty() {
            return Err(format!("the body ended at byte {offset} of {size}"));
        }
        offset += chunk.len() as u64;
        out.extend_from_slice(&chunk);
    }
    out.extend_from_slice(tail.as_bytes());
    Ok(out)
}

/// An object resource's size, `md5Hash`, `etag` and `generation`, if `json` is one.
fn stored(json: &[u8]) -> Option<Stored> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let size = json_u64(&value["size"])?;
    let md5 = value["md5Hash"].as_str().and_then(|m| B64.decode(m).ok()).filter(|m| m.len() == 16);
    let generation = json_u64(&value["generation"]).map(|g| g.to_string());
    Some(Stored { object: RemoteObject { size, md5, etag: value["etag"].as_str().map(str::to_string) }, generation })
}

/// An int64 of the JSON API: a decimal string (or, from some emulators, a number).
fn json_u64(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The page of an `objects.list` answer: names without the `prefix` setting
/// `key_prefix`, those not after `after` skipped (`startOffset` is
/// inclusive), at most `limit`; `next` is the last key when there is more.
/// `None` when `json` is not a listing; an error when the server says there is
/// more but sent nothing after `after` (the listing could not go on).
fn object_page(
    json: &[u8],
    key_prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Option<Result<ObjectPage, UploadError>> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let items = match value.as_object()?.get("items") {
        None => &[][..],
        Some(serde_json::Value::Array(items)) => &items[..],
        Some(_) => return None,
    };
    let mut objects = Vec::new();
    for item in items {
        let (name, size) = (item["name"].as_str()?, json_u64(&item["size"])?);
        match name.strip_prefix(key_prefix) {
            Some(key) if after.is_none_or(|after| key > after) => {
                objects.push(ListedObject { key: key.to_string(), size })
            }
            _ => {}
        }
    }
    let more = value["nextPageToken"].as_str().is_some_and(|t| !t.is_empty()) || objects.len() > limit as usize;
    objects.truncate(limit as usize);
    if more && objects.is_empty() {
        return Some(Err(UploadError::Transient(format!(
            "objects.list: the server said there are more objects after {after:?} but sent none; retry later"
        ))));
    }
    let next = if more { objects.last().map(|o| o.key.clone()) } else { None };
    Some(Ok(ObjectPage { objects, next }))
}

/// `error.message` of a JSON API error document (empty if none).
fn error_message(json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether a 404's error document says the bucket (not the object) is missing
/// (GCS: "The specified bucket does not exist."; an object's is "No such object: b/k").
fn bucket_missing(json: &[u8]) -> bool {
    error_message(json).to_ascii_lowercase().contains("bucket does not exist")
}

/// `error.errors[0].reason` of a JSON API error document (empty if none).
fn error_reason(json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["error"]["errors"][0]["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Per-operation state of [`Config::judge`].
#[derive(Default)]
pub struct JudgeState {
    /// Whether a 401 already made the plugin fetch a new access token.
    refreshed_token: bool,
}

impl Service for Config {
    type State = JudgeState;

    /// `gs://bucket/key`, as messages name an object.
    fn location(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.bucket)
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn endpoints(&self) -> (String, &'static str) {
        let (api, upload) = (&self.endpoint.authority, &self.upload_endpoint.authority);
        let endpoints = if api == upload { api.clone() } else { format!("{api} / {upload}") };
        (endpoints, "`endpoint` and `upload_endpoint`")
    }

    /// A JSON API error document's reason and message; retried as Google's
    /// guidance says ([`retryable`]), a refused access token replaced once.
    fn judge(&self, target: &str, response: Response, state: &mut JudgeState) -> Failure {
        let status = response.status;
        let message = error_message(&response.body);
        let reason = error_reason(&response.body);
        let detail = match (reason.is_empty(), message.is_empty()) {
            (true, true) => String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned(),
            (true, false) => message.clone(),
            (false, true) => reason.clone(),
            (false, false) => format!("{reason}: {message}"),
        };
        let mut why = format!("{target}: HTTP {status} {detail}");
        if retryable(status) {
            return Failure::Retry { why, retry_after: operation::retry_after(&response) };
        }
        if status == 401 && !state.refreshed_token && self.auth.invalidate() {
            // The cached access token was refused (revoked, clock skew): one more try with a new one.
            state.refreshed_token = true;
            return Failure::Retry { why, retry_after: None };
        }
        let lower = message.to_ascii_lowercase();
        match status {
            401 | 403 => why.push_str(self.auth.hint()),
            404 => why.push_str("; check the `bucket` setting and that the bucket exists"),
            _ => {}
        }
        if status == 400 && (lower.contains("md5") || lower.contains("hash")) {
            // The bytes arrived damaged: another try later may pass.
            return Failure::Fail(UploadError::Transient(why));
        }
        Failure::Fail(UploadError::Permanent(why))
    }
}

/// The component: it exports the `bucket` and `reader` resources.
struct Component;

impl blockferry_guest::Guest for Component {
    type Bucket = GcsBucket;
}

impl blockferry_guest::ReaderGuest for Component {
    type Reader = GcsBucket;
}

blockferry_guest::export_reading_provider!(Component);

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)]) -> Response {
        Response {
            status: 308,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            streamed: None,
        }
    }

    #[test]
    fn committed_offset_from_range() {
        assert_eq!(committed(&response(&[])), 0);
        assert_eq!(committed(&response(&[("range", "bytes=0-262143")])), 262144);
        assert_eq!(committed(&response(&[("range", "junk")])), 0);
    }

    #[test]
    fn session_path_from_location() {
        assert_eq!(
            path_of("https://storage.googleapis.com/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=xa1"),
            Some("/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=xa1".into())
        );
        assert_eq!(path_of("http://127.0.0.1:1/upload/x"), None);
    }

    #[test]
    fn object_resource() {
        let s = stored(
            br#"{"size":"11","md5Hash":"XrY7u+Ae7tCTyyK7j1rNww==","etag":"CJ","generation":"1700000000123456"}"#,
        )
        .unwrap();
        let o = s.object;
        assert_eq!(o.size, 11);
        assert_eq!(o.md5.unwrap()[0], 0x5e);
        assert_eq!(o.etag.as_deref(), Some("CJ"));
        assert_eq!(s.generation.as_deref(), Some("1700000000123456"));
        // Composite objects have no md5Hash; some emulators send numbers.
        let s = stored(br#"{"size":3,"generation":7}"#).unwrap();
        assert_eq!((s.object.md5, s.generation.as_deref()), (None, Some("7")));
        assert!(stored(b"<html>").is_none());
    }

    /// `(key, size)` pairs and `next` of a parsed page.
    fn page(json: &[u8], key_prefix: &str, after: Option<&str>, limit: u32) -> (Vec<(String, u64)>, Option<String>) {
        let page = object_page(json, key_prefix, after, limit).unwrap().unwrap();
        (page.objects.into_iter().map(|o| (o.key, o.size)).collect(), page.next)
    }

    #[test]
    fn listings_skip_the_start_offset_and_page_by_the_last_key() {
        let json = br#"{"kind":"storage#objects","items":[{"name":"p/a/1","size":"9"},{"name":"p/a/2","size":"10"},
            {"name":"p/a/3","size":11}],"nextPageToken":"tok"}"#;
        let (objects, next) = page(json, "p/", Some("a/1"), 2);
        assert_eq!(objects, [("a/2".to_string(), 10), ("a/3".to_string(), 11)]);
        assert_eq!(next.as_deref(), Some("a/3"));
        // More than asked for (the start offset was not there): cut, with a next.
        let (objects, next) = page(json, "p/", Some("a/0"), 2);
        assert_eq!((objects.len(), next.as_deref()), (2, Some("a/2")));
        // The last page.
        let json = br#"{"items":[{"name":"a/1","size":"1"}]}"#;
        assert_eq!(page(json, "", None, 10), (vec![("a/1".to_string(), 1)], None));
        assert_eq!(page(b"{}", "", None, 10), (vec![], None));
        // More, but nothing after `after`: the listing cannot go on.
        let stuck = br#"{"items":[{"name":"a/1","size":"1"}],"nextPageToken":"t"}"#;
        assert!(object_page(stuck, "", Some("a/1"), 1).unwrap().is_err());
        assert!(object_page(b"<html>", "", None, 1).is_none());
        assert!(object_page(br#"{"items":[{"name":"a"}]}"#, "", None, 1).is_none());
    }

    #[test]
    fn retryable_statuses_follow_google() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412] {
            assert!(!retryable(s), "{s}");
        }
    }

    #[test]
    fn json_errors() {
        let body = br#"{"error":{"code":404,"message":"The specified bucket does not exist.","errors":[{"reason":"notFound"}]}}"#;
        assert_eq!(error_message(body), "The specified bucket does not exist.");
        assert_eq!(error_reason(body), "notFound");
        assert_eq!(error_message(b"nope"), "");
        assert!(bucket_missing(body));
        let object = br#"{"error":{"code":404,"message":"No such object: my-bucket/k.blk"}}"#;
        assert!(!bucket_missing(object));
    }
}
