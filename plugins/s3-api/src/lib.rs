//! `blockferry-s3-api`: blockferry's S3 provider, a library that the `s3`
//! and `minio` components wrap (as `gcs` is the GCS provider's crate).
//!
//! Conditional single PUTs and multipart uploads with
//! Content-MD5, content MD5 kept as user metadata, SigV4 signing, the retry
//! policy of [`blockferry_guest::retry`] through
//! [`blockferry_guest::operation`], and errors that name the operation, bucket,
//! key, HTTP status and S3 error code.
//!
//! What the server says it stored is checked, not assumed: a single-part
//! ETag must equal the block's MD5, each part's ETag the part's MD5 (a part
//! that disagrees is sent again), and the completed upload's ETag
//! MD5(part MD5s)-N, whenever the object's encryption keeps ETags MD5s (none,
//! SSE-S3). A write the server stored differently is never `uploaded`: in a
//! versioned bucket the provider deletes exactly the version it created and
//! the host retries; otherwise it reports `hash-mismatch`, so the host keeps
//! the block and alerts. A confirmed write is reported to the host with
//! `host.object-confirmed(server-digest)`.
//!
//! It is generic over a [`Flavor`] (the defaults that differ between AWS S3
//! and MinIO); the `blockferry-s3` and `blockferry-minio` components each
//! pick one and export `S3Bucket<TheirFlavor>` as both their `bucket` and
//! their `reader`.
//!
//! The reader: `get` is a `GetObject` whose body is spliced into the host's
//! sink; `list` is `ListObjectsV2` paged with `start-after`; `health` is
//! `HeadBucket`; `incomplete-uploads` is `ListMultipartUploads`;
//! `abort-upload` is `AbortMultipartUpload`. All go through the same retry
//! policy and error mapping as the uploads.

pub mod settings;
pub mod sigv4;
pub mod xml;

use std::marker::PhantomData;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use wasip2::http::types::Method;

pub use settings::{Addressing, Checksum, Config, Defaults, Keys, Sse};

use blockferry_guest::block::{checked_size, existing_outcome};
use blockferry_guest::http::{Body, Request, Response};
use blockferry_guest::operation::{self, Accept, Failure, Operation, Service};
use blockferry_guest::retry::{self, Policy};
use blockferry_guest::{BlockBody, BlockInfo, Bucket, Confirmation, GuestBucket, Level, Outcome, RemoteObject};
use blockferry_guest::{BlockSink, GuestReader, IncompleteUpload, ListedObject, ObjectPage, Reader, UploadError};
use blockferry_guest::{hex, log, object_confirmed, object_version, unix_now};

use crate::sigv4::Signable;

/// User-metadata header holding the content MD5 (base64) of every object written.
pub const MD5_META_HEADER: &str = "x-amz-meta-content-md5";
/// Bytes asked per `block-body.read` when hashing a part.
const HASH_CHUNK: u32 = 1 << 20;
/// S3's longest key, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// The defaults of one S3-compatible service.
pub trait Flavor: 'static {
    /// Its defaults (provider name, addressing, region).
    const DEFAULTS: Defaults;
}

/// An opened S3 bucket of flavour `F`.
pub struct S3Bucket<F: Flavor> {
    cfg: Config,
    _flavor: PhantomData<fn() -> F>,
}

/// What a conditional create found.
#[derive(Debug, PartialEq, Eq)]
enum Created {
    /// This call wrote the object.
    Written(Written),
    /// An object already existed under the key (412 Precondition Failed).
    Exists,
}

/// What the server answered to the write that created an object.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    /// The `x-amz-version-id` the server gave it, if any.
    version: Option<String>,
    /// The ETag it answered with, if any.
    etag: Option<String>,
    /// Whether that ETag is a digest of the content (it is not under SSE-KMS
    /// or SSE-C, whatever its form).
    etag_is_digest: bool,
    /// The additional checksum it echoed (base64, `-N` for a completed
    /// multipart upload), if one was sent and echoed.
    checksum: Option<String>,
}

impl Written {
    /// From the headers of the response to a PutObject or
    /// CompleteMultipartUpload (whose ETag may be in the body: `etag`).
    fn of(response: &Response, etag: Option<String>) -> Self {
        Written {
            version: version_id(response),
            etag: etag.or_else(|| response.header("etag").map(str::to_string)),
            etag_is_digest: !encrypted_opaquely(response),
            checksum: None,
        }
    }
}

/// What the server's digest says of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DigestCheck {
    /// It equals the content's: the server stored the block's bytes.
    Confirmed,
    /// The server gave no digest of the content (no ETag, or SSE-KMS/SSE-C).
    Unknown,
    /// It differs: the server stored other bytes.
    Differs,
}

/// Compares the ETag of a write with what the bytes sent give: `md5` is
/// their MD5 (lower-case hex), `multipart` the `hex-N` ETag of a multipart
/// upload of them. A plain 32-hex ETag is compared with `md5` (S3 gives it to
/// single-part objects; some S3-compatible servers to completed multipart
/// uploads too), a `hex-N` one with `multipart`; any other form says nothing.
fn check_etag(written: &Written, md5: &str, multipart: Option<&str>) -> DigestCheck {
    let Some(etag) = written.etag.as_deref().filter(|_| written.etag_is_digest).map(unquote_etag) else {
        return DigestCheck::Unknown;
    };
    let expected = if md5_of_etag(etag).is_some() {
        md5
    } else if let Some(multipart) = multipart.filter(|_| is_multipart_etag(etag)) {
        multipart
    } else {
        return DigestCheck::Unknown;
    };
    if etag.eq_ignore_ascii_case(expected) { DigestCheck::Confirmed } else { DigestCheck::Differs }
}

/// Compares the additional checksum a write echoed with the one sent
/// (both base64; `None` when none was sent or none echoed: it says nothing).
fn check_checksum(echoed: Option<&str>, sent: Option<&str>) -> DigestCheck {
    match (echoed.map(str::trim), sent) {
        (Some(echoed), Some(sent)) if echoed == sent => DigestCheck::Confirmed,
        (Some(_), Some(_)) => DigestCheck::Differs,
        _ => DigestCheck::Unknown,
    }
}

impl DigestCheck {
    /// Both verdicts together: any difference wins, then any confirmation.
    fn and(self, other: DigestCheck) -> DigestCheck {
        match (self, other) {
            (DigestCheck::Differs, _) | (_, DigestCheck::Differs) => DigestCheck::Differs,
            (DigestCheck::Confirmed, _) | (_, DigestCheck::Confirmed) => DigestCheck::Confirmed,
            _ => DigestCheck::Unknown,
        }
    }
}

/// Whether `etag` (unquoted) has the form of a multipart ETag: 32 hex digits, `-`, a count.
fn is_multipart_etag(etag: &str) -> bool {
    etag.split_once('-')
        .is_some_and(|(hex, n)| md5_of_etag(hex).is_some() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An ETag without its quotes (plain or XML-escaped) and weak prefix.
fn unquote_etag(etag: &str) -> &str {
    let e = etag.trim().trim_start_matches("W/");
    let e = e.strip_prefix("&quot;").and_then(|e| e.strip_suffix("&quot;")).unwrap_or(e);
    e.trim_matches('"')
}

/// Whether the response says the object is encrypted with SSE-KMS or SSE-C,
/// whose ETags are not MD5s of the content.
fn encrypted_opaquely(response: &Response) -> bool {
    response.header("x-amz-server-side-encryption").is_some_and(|v| v.trim().starts_with("aws:kms"))
        || response.header("x-amz-server-side-encryption-customer-algorithm").is_some()
}

/// The ETag S3 gives a multipart upload of parts whose MD5s are `part_md5s`:
/// hex MD5 of their concatenation, `-`, their count.
fn multipart_etag(part_md5s: &[Vec<u8>]) -> String {
    let mut md5 = Md5::new();
    for part in part_md5s {
        md5.update(part);
    }
    format!("{}-{}", hex(&md5.finalize()), part_md5s.len())
}

impl<F: Flavor> GuestBucket for S3Bucket<F> {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        Ok(Bucket::new(Self::new(&settings)?))
    }

    fn provider() -> String {
        F::DEFAULTS.provider.into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        let key = self.full_key(&block.key)?;
        let size = checked_size("PutObject", &self.cfg.location(&key), &block, body)?;
        let (created, expected) = if size > self.cfg.multipart_threshold {
            self.put_multipart(&block, body, &key)?
        } else {
            self.put_single(&block, body, &key)?
        };
        match created {
            Created::Written(written) => {
                let etag = check_etag(&written, &expected.md5, expected.multipart.as_deref());
                let checksum = check_checksum(written.checksum.as_deref(), expected.checksum.as_deref());
                if etag == DigestCheck::Differs {
                    let got = written.etag.as_deref().map(unquote_etag).unwrap_or_default();
                    let want = expected.multipart.as_deref().unwrap_or(&expected.md5);
                    return Err(self.stored_wrong(
                        &block,
                        &key,
                        &written,
                        &format!("its ETag is {got}, the block's bytes give {want}"),
                    ));
                }
                if checksum == DigestCheck::Differs {
                    let header = self.cfg.checksum.map(Checksum::header).unwrap_or_default();
                    let got = written.checksum.as_deref().unwrap_or_default();
                    let want = expected.checksum.as_deref().unwrap_or_default();
                    return Err(self.stored_wrong(
                        &block,
                        &key,
                        &written,
                        &format!("its {header} is {got}, the block's bytes give {want}"),
                    ));
                }
                let digest = etag.and(checksum);
                if let Some(version) = &written.version {
                    object_version(&block.key, version);
                }
                if digest == DigestCheck::Confirmed {
                    object_confirmed(&block.key, Confirmation::ServerDigest);
                }
                log(
                    Level::Debug,
                    &format!("uploaded {size} bytes to {} (server digest: {digest:?})", self.cfg.location(&key)),
                );
                Ok(Outcome::Uploaded)
            }
            Created::Exists => {
                let there = self.head_with_source(&key)?;
                let by_server = there.as_ref().is_some_and(|(_, by_server)| *by_server);
                let outcome = existing_outcome(&block, there.map(|(object, _)| object), || {
                    format!(
                        "PutObject {}: the server said an object exists (412 PreconditionFailed) but HEAD \
                         found none (deleted meanwhile?); retry later",
                        self.cfg.location(&key)
                    )
                })?;
                if by_server {
                    object_confirmed(&block.key, Confirmation::ServerDigest);
                }
                Ok(outcome)
            }
        }
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        let key = self.full_key(&key)?;
        self.head(&key)
    }
}

impl<F: Flavor> GuestReader for S3Bucket<F> {
    fn open(settings: Vec<(String, String)>) -> Result<Reader, String> {
        Ok(Reader::new(Self::new(&settings)?))
    }

    /// `GetObject`, its body spliced into the sink; `none` on a 404 that is
    /// not `NoSuchBucket`. The MD5 is the stored metadata's, else a
    /// single-part ETag's (see [`read_object`]).
    fn get(&self, key: String, sink: &BlockSink) -> Result<Option<RemoteObject>, UploadError> {
        let key = self.full_key(&key)?;
        let cfg = &self.cfg;
        let out = Rc::new(sink.stream().map_err(|e| {
            UploadError::Transient(format!("GetObject {}: the host gave no sink stream: {e}", cfg.location(&key)))
        })?);
        let mut call = cfg.call(
            "GetObject",
            &key,
            |_| {
                let mut request = cfg.request(Method::Get, &key, &[], cfg.sse_c_headers(), Body::Empty)?;
                request.sink = Some(out.clone());
                Ok(request)
            },
            |response| match response.status {
                200..=299 => {
                    let size = response.streamed.unwrap_or_default();
                    Accept::Done(Ok(Some(RemoteObject { size, ..read_object(&response) })))
                }
                404 if crate::xml::s3_error(&response.body).0 != "NoSuchBucket" => Accept::Done(Ok(None)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// `ListObjectsV2` with `start-after`; `next` is the page's last key when
    /// the answer is truncated.
    fn list(&self, prefix: String, after: Option<String>, limit: u32) -> Result<ObjectPage, UploadError> {
        let cfg = &self.cfg;
        let full_prefix = format!("{}{prefix}", cfg.prefix);
        let mut query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("max-keys".to_string(), limit.clamp(1, 1000).to_string()),
            ("prefix".to_string(), full_prefix.clone()),
        ];
        if let Some(after) = after {
            query.push(("start-after".to_string(), format!("{}{after}", cfg.prefix)));
        }
        let mut call = cfg.call(
            "ListObjectsV2",
            &full_prefix,
            |_| cfg.request(Method::Get, "", &query, Vec::new(), Body::Empty),
            |response| match (response.status, object_page(&response.body, &cfg.prefix)) {
                (200..=299, Some(page)) => Accept::Done(Ok(page)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// `HeadBucket`: a missing bucket (404) and refused credentials (403) are
    /// permanent, 5xx and connection errors are retried, then transient.
    fn health(&self) -> Result<(), UploadError> {
        let cfg = &self.cfg;
        let mut call = cfg.call(
            "HeadBucket",
            "",
            |_| cfg.request(Method::Head, "", &[], Vec::new(), Body::Empty),
            |response| match response.status {
                200..=299 => Accept::Done(Ok(())),
                404 => Accept::Done(Err(UploadError::Permanent(format!(
                    "HeadBucket {}: bucket {:?} does not exist (HTTP 404); create it, or fix the `bucket` \
                     setting (and `endpoint`)",
                    cfg.location(""),
                    cfg.bucket
                )))),
                403 => Accept::Done(Err(UploadError::Permanent(format!(
                    "HeadBucket {}: the credentials were refused (HTTP 403); check `access_key_id`, \
                     `secret_access_key` (and `session_token`) and that the bucket's policy lets them list, \
                     read and write it",
                    cfg.location("")
                )))),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// `ListMultipartUploads` under the prefix (one page: at most 1000); a
    /// service that does not implement it (HTTP 501) has none to list.
    fn incomplete_uploads(&self, prefix: String) -> Result<Vec<IncompleteUpload>, UploadError> {
        let cfg = &self.cfg;
        let full_prefix = format!("{}{prefix}", cfg.prefix);
        let query = vec![
            ("max-uploads".to_string(), "1000".to_string()),
            ("prefix".to_string(), full_prefix.clone()),
            ("uploads".to_string(), String::new()),
        ];
        let mut call = cfg.call(
            "ListMultipartUploads",
            &full_prefix,
            |_| cfg.request(Method::Get, "", &query, Vec::new(), Body::Empty),
            |response| match (response.status, incomplete_uploads(&response.body, &cfg.prefix)) {
                (200..=299, Some(uploads)) => Accept::Done(Ok(uploads)),
                // A service without multipart listing (e.g. s3s-fs) has nothing
                // this provider could abort: an empty list, not an error.
                (501, _) => Accept::Done(Ok(Vec::new())),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// `AbortMultipartUpload`; an upload already gone (404) is not an error.
    fn abort_upload(&self, upload: IncompleteUpload) -> Result<(), UploadError> {
        let key = self.full_key(&upload.key)?;
        self.abort(&key, &upload.id)
    }
}

impl Config {
    /// Builds and signs a request on `key` (the full key, prefix included;
    /// empty for a request on the bucket itself), with the bucket's static
    /// keys or the host's current credentials (asked for each request).
    fn request(
        &self,
        method: Method,
        key: &str,
        query: &[(String, String)],
        mut headers: Vec<(String, String)>,
        body: Body,
    ) -> Result<Request, UploadError> {
        let credentials = self.credentials.current(|| format!("{} {}", method_name(&method), self.location(key)))?;
        let (authority, path) = match self.addressing {
            Addressing::Path if key.is_empty() => (self.endpoint_authority.clone(), format!("/{}", self.bucket)),
            Addressing::Path => (self.endpoint_authority.clone(), format!("/{}/{key}", self.bucket)),
            Addressing::Virtual => (format!("{}.{}", self.bucket, self.endpoint_authority), format!("/{key}")),
        };
        let canonical_uri = sigv4::encode_path(&path);
        let payload_hash = match &body {
            Body::Empty => sigv4::EMPTY_SHA256.to_string(),
            Body::Bytes(bytes) => sigv4::sha256_hex(bytes),
            Body::Stream { .. } => sigv4::UNSIGNED_PAYLOAD.to_string(),
        };
        let date = sigv4::amz_date(unix_now());
        headers.push(("x-amz-date".into(), date.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        if let Some(token) = &credentials.session_token {
            headers.push(("x-amz-security-token".into(), token.clone()));
        }
        let mut signed = headers.clone();
        signed.push(("host".into(), authority.clone()));
        let method_name = method_name(&method);
        let authorization = sigv4::authorization(
            &Signable {
                method: method_name,
                canonical_uri: &canonical_uri,
                query,
                headers: &signed,
                payload_hash: &payload_hash,
            },
            &credentials,
            &self.region,
            "s3",
            &date,
        );
        headers.push(("authorization".into(), authorization));
        let path_and_query =
            if query.is_empty() { canonical_uri } else { format!("{canonical_uri}?{}", sigv4::canonical_query(query)) };
        Ok(Request {
            method,
            https: self.https,
            authority,
            path_and_query,
            headers,
            body,
            timeouts: self.timeouts,
            sink: None,
        })
    }

    /// Headers of a new object (single PUT or CreateMultipartUpload):
    /// content type, content MD5 metadata, storage class, encryption.
    fn object_headers(&self, block: &BlockInfo) -> Vec<(String, String)> {
        let mut headers = vec![
            ("content-type".to_string(), block.content_type.clone()),
            (MD5_META_HEADER.to_string(), B64.encode(&block.md5)),
        ];
        if let Some(class) = &self.storage_class {
            headers.push(("x-amz-storage-class".into(), class.clone()));
        }
        match &self.sse {
            Sse::None | Sse::CustomerKey { .. } => {}
            Sse::Aes256 => headers.push(("x-amz-server-side-encryption".into(), "AES256".into())),
            Sse::Kms { key_id } => {
                headers.push(("x-amz-server-side-encryption".into(), "aws:kms".into()));
                if let Some(id) = key_id {
                    headers.push(("x-amz-server-side-encryption-aws-kms-key-id".into(), id.clone()));
                }
            }
        }
        headers.extend(self.sse_c_headers());
        headers
    }

    /// SSE-C headers, needed on every request that writes or reads the object.
    fn sse_c_headers(&self) -> Vec<(String, String)> {
        match &self.sse {
            Sse::CustomerKey { key, key_md5 } => vec![
                ("x-amz-server-side-encryption-customer-algorithm".into(), "AES256".into()),
                ("x-amz-server-side-encryption-customer-key".into(), key.clone()),
                ("x-amz-server-side-encryption-customer-key-md5".into(), key_md5.clone()),
            ],
            _ => Vec::new(),
        }
    }
}

impl<F: Flavor> S3Bucket<F> {
    /// Opens the bucket `settings` describe (for `bucket.open` and `reader.open`).
    fn new(settings: &[(String, String)]) -> Result<Self, String> {
        let (cfg, unknown) = Config::parse(settings, &F::DEFAULTS)?;
        blockferry_guest::settings::warn_unknown(F::DEFAULTS.provider, &unknown, settings::KNOWN_KEYS);
        Ok(S3Bucket::<F> { cfg, _flavor: PhantomData })
    }

    /// The object key of `key`: the `prefix` setting prepended when non-empty.
    fn full_key(&self, key: &str) -> Result<String, UploadError> {
        let full = format!("{}{key}", self.cfg.prefix);
        if key.is_empty() || full.len() > MAX_KEY_LEN || full.starts_with('/') {
            return Err(UploadError::Permanent(format!(
                "invalid key {full:?} for {}: S3 keys are 1 to {MAX_KEY_LEN} bytes without a \
                 leading `/`; fix the bucket's key template or `prefix`",
                self.cfg.location("")
            )));
        }
        Ok(full)
    }

    /// HEAD of `key`: what is stored there, or `None`.
    fn head(&self, key: &str) -> Result<Option<RemoteObject>, UploadError> {
        Ok(self.head_with_source(key)?.map(|(object, _)| object))
    }

    /// HEAD of `key`: what is stored there, and whether its MD5 is the
    /// server's own digest (a single-part ETag) rather than metadata.
    fn head_with_source(&self, key: &str) -> Result<Option<(RemoteObject, bool)>, UploadError> {
        let cfg = &self.cfg;
        let mut call = cfg.call(
            "HeadObject",
            key,
            |_| cfg.request(Method::Head, key, &[], cfg.sse_c_headers(), Body::Empty),
            |response| match response.status {
                200..=299 => Accept::Done(Ok(Some(remote_object_with_source(&response)))),
                404 => Accept::Done(Ok(None)),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// The error of a write the server stored with other bytes than the
    /// block's (`evidence` says which digest differs). In a versioned bucket the
    /// version this call created is deleted (by its id, so nothing else can
    /// be deleted) and the error is transient: the host retries. Otherwise
    /// the object cannot be proven to be this call's own write, so it is
    /// left alone and reported as a hash mismatch: the host keeps its block.
    fn stored_wrong(&self, block: &BlockInfo, key: &str, written: &Written, evidence: &str) -> UploadError {
        let location = self.cfg.location(key);
        let what = format!(
            "{location}: the server stored other bytes than the block's: {evidence} (something between this host \
             and the server changed the body)"
        );
        log(Level::Error, &what);
        if let Some(version) = &written.version {
            match self.delete_version(key, version, written.etag.as_deref()) {
                Ok(()) => {
                    return UploadError::Transient(format!(
                        "{what}; deleted the version {version} this upload created; retry later"
                    ));
                }
                Err(e) => log(Level::Error, &format!("{location}: could not delete version {version}: {e:?}")),
            }
        }
        let md5 = written.etag.as_deref().filter(|_| written.etag_is_digest).and_then(md5_of_etag);
        UploadError::HashMismatch(RemoteObject { size: block.size, md5, etag: written.etag.clone() })
    }

    /// `DeleteObject` of version `version` of `key` (with `If-Match` on the
    /// ETag where known); already gone (404) is not an error.
    fn delete_version(&self, key: &str, version: &str, etag: Option<&str>) -> Result<(), UploadError> {
        let cfg = &self.cfg;
        let query = vec![("versionId".to_string(), version.to_string())];
        let mut call = cfg.call(
            "DeleteObject",
            key,
            |_| {
                let headers = etag.map(|e| vec![("if-match".to_string(), e.to_string())]).unwrap_or_default();
                cfg.request(Method::Delete, key, &query, headers, Body::Empty)
            },
            |response| match response.status {
                200..=299 | 404 => Accept::Done(Ok(())),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }

    /// One conditional PUT of the whole body, streamed from the host (read
    /// once before when the bucket sends an additional checksum). With what
    /// was created, the digests the server should give.
    fn put_single(&self, block: &BlockInfo, body: &BlockBody, key: &str) -> Result<(Created, Expected), UploadError> {
        let cfg = &self.cfg;
        let checksum = match cfg.checksum {
            Some(algorithm) => hash_part(body, 0, block.size, false, Some(algorithm))
                .map_err(|e| {
                    UploadError::Transient(format!("PutObject {}: reading the block body: {e}", cfg.location(key)))
                })?
                .checksum
                .map(|raw| B64.encode(raw)),
            None => None,
        };
        let mut call = cfg.call(
            "PutObject",
            key,
            |_| {
                let mut headers = cfg.object_headers(block);
                headers.push(("content-md5".into(), B64.encode(&block.md5)));
                if let (Some(algorithm), Some(checksum)) = (cfg.checksum, &checksum) {
                    headers.push((algorithm.header().into(), checksum.clone()));
                }
                headers.push(("if-none-match".into(), "*".into()));
                let stream = body.stream(0).map_err(|e| {
                    UploadError::Transient(format!(
                        "PutObject {}: cannot stream the block body: {e}",
                        cfg.location(key)
                    ))
                })?;
                cfg.request(Method::Put, key, &[], headers, Body::Stream { stream, len: block.size })
            },
            |response| match response.status {
                200..=299 => {
                    let mut written = Written::of(&response, None);
                    written.checksum = cfg.checksum.and_then(|c| response.header(c.header())).map(str::to_string);
                    Accept::Done(Ok(Created::Written(written)))
                }
                412 => Accept::Done(Ok(Created::Exists)),
                _ => Accept::Other(response),
            },
        );
        let created = call.run()?;
        drop(call);
        Ok((created, Expected { md5: hex(&block.md5), multipart: None, checksum }))
    }

    /// Multipart upload; aborted on any failure (and when the key turns out
    /// taken). With what was created, the ETag the parts sent should give.
    fn put_multipart(
        &self,
        block: &BlockInfo,
        body: &BlockBody,
        key: &str,
    ) -> Result<(Created, Expected), UploadError> {
        let cfg = &self.cfg;
        let mut create = cfg.call(
            "CreateMultipartUpload",
            key,
            |_| {
                let mut headers = cfg.object_headers(block);
                if let Some(algorithm) = cfg.checksum {
                    headers.push(("x-amz-checksum-algorithm".into(), algorithm.algorithm().into()));
                }
                cfg.request(Method::Post, key, &[("uploads".into(), String::new())], headers, Body::Empty)
            },
            |response| {
                if !(200..300).contains(&response.status) {
                    return Accept::Other(response);
                }
                match crate::xml::parse::<xml::InitiateMultipartUploadResult>(&response.body) {
                    Some(init) if !init.upload_id.is_empty() => Accept::Done(Ok(init.upload_id)),
                    _ => Accept::Other(response),
                }
            },
        );
        let upload_id = create.run()?;
        let result = self.upload_parts_and_complete(block, body, key, &upload_id);
        if !matches!(result, Ok((Created::Written(_), _))) {
            match self.abort(key, &upload_id) {
                Ok(()) => log(Level::Info, &format!("aborted multipart upload {upload_id} of {}", cfg.location(key))),
                Err(e) => log(
                    Level::Error,
                    &format!(
                        "could not abort multipart upload {upload_id} of {}: {e:?}; an incomplete upload is \
                         left (an AbortIncompleteMultipartUpload lifecycle rule on the bucket, or the host's \
                         cleanup of incomplete uploads, removes it)",
                        cfg.location(key)
                    ),
                ),
            }
        }
        result
    }

    /// Uploads the parts (several at once, each retried on its own, and
    /// sent again when the server's ETag of it is not its MD5), then
    /// completes the upload conditionally. With what was created, the ETag
    /// the parts sent should give.
    fn upload_parts_and_complete(
        &self,
        block: &BlockInfo,
        body: &BlockBody,
        key: &str,
        upload_id: &str,
    ) -> Result<(Created, Expected), UploadError> {
        let cfg = &self.cfg;
        let part_size = cfg.part_size_for(block.size);
        let count = block.size.div_ceil(part_size).max(1);
        log(
            Level::Debug,
            &format!(
                "multipart upload of {} bytes to {} in {count} parts of {part_size} bytes, {} at once",
                block.size,
                cfg.location(key),
                cfg.parts_in_flight
            ),
        );
        let mut parts: Vec<Operation<'_, Config, SentPart>> = (0..count)
            .map(|index| {
                let number = index + 1;
                let offset = index * part_size;
                let len = part_size.min(block.size - offset);
                let query = vec![
                    ("partNumber".to_string(), number.to_string()),
                    ("uploadId".to_string(), upload_id.to_string()),
                ];
                let digests: Rc<std::cell::RefCell<Option<Digests>>> = Rc::default();
                let sent = digests.clone();
                cfg.call(
                    "UploadPart",
                    key,
                    move |_| {
                        if digests.borrow().is_none() {
                            *digests.borrow_mut() =
                                Some(hash_part(body, offset, len, true, cfg.checksum).map_err(|e| {
                                    UploadError::Transient(format!(
                                        "UploadPart {} part {number}: reading the block body: {e}",
                                        cfg.location(key)
                                    ))
                                })?);
                        }
                        let digests = digests.borrow();
                        let digests = digests.as_ref().expect("hashed above");
                        let mut headers = cfg.sse_c_headers();
                        headers.push(("content-md5".into(), B64.encode(digests.md5.as_deref().unwrap_or_default())));
                        if let (Some(algorithm), Some(checksum)) = (cfg.checksum, &digests.checksum) {
                            headers.push((algorithm.header().into(), B64.encode(checksum)));
                        }
                        let stream = body.stream(offset).map_err(|e| {
                            UploadError::Transient(format!(
                                "UploadPart {} part {number}: cannot stream the block body: {e}",
                                cfg.location(key)
                            ))
                        })?;
                        cfg.request(Method::Put, key, &query, headers, Body::Stream { stream, len })
                    },
                    move |response| match (response.status, response.header("etag")) {
                        (200..=299, Some(etag)) => {
                            let written = Written::of(&response, Some(etag.to_string()));
                            let sent = sent.borrow();
                            let sent = sent.as_ref();
                            let expected = sent.and_then(|d| d.md5.as_deref()).map(hex).unwrap_or_default();
                            // Our own upload's part: sending it again replaces it.
                            if check_etag(&written, &expected, None) == DigestCheck::Differs {
                                return Accept::Retry(format!(
                                    "part {number}: the server stored other bytes (ETag {}, the part's MD5 {expected})",
                                    unquote_etag(etag)
                                ));
                            }
                            let checksum = sent.and_then(|d| d.checksum.clone());
                            if let Some(algorithm) = cfg.checksum {
                                let echoed = response.header(algorithm.header());
                                let want = checksum.as_ref().map(|c| B64.encode(c));
                                if check_checksum(echoed, want.as_deref()) == DigestCheck::Differs {
                                    return Accept::Retry(format!(
                                        "part {number}: the server stored other bytes ({} {}, the part's {})",
                                        algorithm.header(),
                                        echoed.unwrap_or_default(),
                                        want.unwrap_or_default()
                                    ));
                                }
                            }
                            Accept::Done(Ok(SentPart {
                                etag: etag.to_string(),
                                etag_is_digest: written.etag_is_digest,
                                checksum,
                            }))
                        }
                        _ => Accept::Other(response),
                    },
                )
            })
            .collect();
        let results = retry::run(&mut parts, cfg.parts_in_flight, &cfg.policy, true);
        drop(parts);
        let mut sent = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Some(Ok(part)) => sent.push(part),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        if sent.len() as u64 != count {
            return Err(UploadError::Transient(format!(
                "UploadPart {}: only {} of {count} parts were uploaded",
                cfg.location(key),
                sent.len()
            )));
        }
        // The parts' MD5s as the server computed them (checked equal to
        // those sent); none when some part's ETag is not a digest, and then
        // the completed upload's ETag cannot be checked.
        let part_md5s: Option<Vec<Vec<u8>>> =
            sent.iter().map(|part| md5_of_etag(&part.etag).filter(|_| part.etag_is_digest)).collect();
        let digests = part_md5s.is_some();
        let part_checksums: Option<Vec<Vec<u8>>> = sent.iter().map(|part| part.checksum.clone()).collect();
        let expected = Expected {
            md5: hex(&block.md5),
            multipart: part_md5s.map(|md5s| multipart_etag(&md5s)),
            checksum: cfg.checksum.zip(part_checksums).map(|(algorithm, raw)| composite_checksum(algorithm, &raw)),
        };

        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, part) in sent.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>",
                i + 1,
                crate::xml::escape(&part.etag)
            ));
            if let (Some(algorithm), Some(checksum)) = (cfg.checksum, &part.checksum) {
                xml.push_str(&format!("<{0}>{1}</{0}>", algorithm.element(), B64.encode(checksum)));
            }
            xml.push_str("</Part>");
        }
        xml.push_str("</CompleteMultipartUpload>");
        let query = vec![("uploadId".to_string(), upload_id.to_string())];
        let mut complete = cfg.call(
            "CompleteMultipartUpload",
            key,
            |_| {
                let mut headers = cfg.sse_c_headers();
                headers.push(("if-none-match".into(), "*".into()));
                headers.push(("content-type".into(), "application/xml".into()));
                cfg.request(Method::Post, key, &query, headers, Body::Bytes(xml.clone().into_bytes()))
            },
            |response| match response.status {
                // A 200 may still carry an <Error> document.
                200..=299 if crate::xml::root_name(&response.body).as_deref() != Some("Error") => {
                    let result = crate::xml::parse::<xml::CompleteMultipartUploadResult>(&response.body);
                    let checksum = cfg.checksum.and_then(|algorithm| result.as_ref()?.checksum(algorithm));
                    let mut written = Written::of(&response, result.and_then(|r| r.etag));
                    written.etag_is_digest &= digests;
                    // Only the composite form (`base64-N`, from the parts'
                    // checksums) can be compared; a full-object one says nothing here.
                    written.checksum = checksum.filter(|c| c.contains('-'));
                    Accept::Done(Ok(Created::Written(written)))
                }
                412 => Accept::Done(Ok(Created::Exists)),
                _ => Accept::Other(response),
            },
        );
        complete.run().map(|created| (created, expected))
    }

    /// Aborts multipart upload `upload_id` of `key`; one already gone (404
    /// `NoSuchUpload`) is not an error.
    fn abort(&self, key: &str, upload_id: &str) -> Result<(), UploadError> {
        let cfg = &self.cfg;
        let query = vec![("uploadId".to_string(), upload_id.to_string())];
        let mut call = cfg.call(
            "AbortMultipartUpload",
            key,
            |_| cfg.request(Method::Delete, key, &query, Vec::new(), Body::Empty),
            |response| match response.status {
                200..=299 | 404 => Accept::Done(Ok(())),
                _ => Accept::Other(response),
            },
        );
        call.run()
    }
}

/// The `x-amz-version-id` of a write's response, if the bucket is versioned.
fn version_id(response: &Response) -> Option<String> {
    response.header("x-amz-version-id").map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

/// The page of a `ListObjectsV2` answer, keys without the `prefix` setting
/// `key_prefix`; `next` is the last key when the answer is truncated. `None`
/// when the answer is not a listing.
fn object_page(xml: &[u8], key_prefix: &str) -> Option<ObjectPage> {
    let listing = crate::xml::parse::<xml::ListBucketResult>(xml)?;
    let objects: Vec<ListedObject> = listing
        .contents
        .into_iter()
        .filter_map(|c| Some(ListedObject { key: c.key.strip_prefix(key_prefix)?.to_string(), size: c.size }))
        .collect();
    let next = if listing.is_truncated { objects.last().map(|o| o.key.clone()) } else { None };
    Some(ObjectPage { objects, next })
}

/// The uploads of a `ListMultipartUploads` answer, keys without the
/// `prefix` setting `key_prefix`; `None` when the answer is not such a list.
fn incomplete_uploads(xml: &[u8], key_prefix: &str) -> Option<Vec<IncompleteUpload>> {
    let listing = crate::xml::parse::<xml::ListMultipartUploadsResult>(xml)?;
    let uploads = listing.upload.into_iter().filter_map(|upload| {
        Some(IncompleteUpload {
            key: upload.key.strip_prefix(key_prefix)?.to_string(),
            started_ms: upload.initiated.as_deref().and_then(parse_timestamp_ms).unwrap_or(0),
            id: upload.upload_id,
        })
    });
    Some(uploads.collect())
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp as S3 writes
/// them (`2010-11-10T20:48:33.000Z`; any offset, any fraction of a second),
/// read with the `time` crate. `None` when it is not one, or is before 1970.
fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let when = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(when.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The digests the server should give of what a write sent.
struct Expected {
    /// The block's MD5, lower-case hex (a single-part ETag).
    md5: String,
    /// The `hex-N` ETag of a multipart upload of it, where the parts' ETags were digests.
    multipart: Option<String>,
    /// The additional checksum sent, base64 (`base64-N` for a multipart upload).
    checksum: Option<String>,
}

/// One uploaded part of a multipart upload.
struct SentPart {
    /// The ETag the server gave it.
    etag: String,
    /// Whether that ETag is a digest of the part.
    etag_is_digest: bool,
    /// The part's additional checksum as sent (raw), if the bucket sends one.
    checksum: Option<Vec<u8>>,
}

/// Digests of a stretch of a block's body (raw bytes).
struct Digests {
    /// Its MD5, if asked for.
    md5: Option<Vec<u8>>,
    /// Its additional checksum, if asked for.
    checksum: Option<Vec<u8>>,
}

/// A running additional checksum.
enum Hasher {
    /// CRC-32C so far.
    Crc32c(u32),
    /// SHA-256 so far.
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A new one of `algorithm`.
    fn new(algorithm: Checksum) -> Self {
        match algorithm {
            Checksum::Crc32c => Hasher::Crc32c(0),
            Checksum::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Adds `data`.
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            Hasher::Sha256(sha) => sha.update(data),
        }
    }

    /// The checksum's bytes as S3 encodes them (CRC big-endian).
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            Hasher::Sha256(sha) => sha.finalize().to_vec(),
        }
    }
}

/// The checksum S3 gives a multipart upload whose parts' checksums are
/// `parts`: the checksum of their concatenation, base64, `-` and the count.
fn composite_checksum(algorithm: Checksum, parts: &[Vec<u8>]) -> String {
    let mut hasher = Hasher::new(algorithm);
    for part in parts {
        hasher.update(part);
    }
    format!("{}-{}", B64.encode(hasher.finish()), parts.len())
}

/// The MD5 (when `md5`) and the `checksum` of `len` bytes of `body` at
/// `offset`, read once in bounded chunks.
fn hash_part(
    body: &BlockBody,
    offset: u64,
    len: u64,
    md5: bool,
    checksum: Option<Checksum>,
) -> Result<Digests, String> {
    let mut md5 = md5.then(Md5::new);
    let mut checksum = checksum.map(Hasher::new);
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(u64::from(HASH_CHUNK)) as u32;
        let chunk = body.read(offset + done, want)?;
        if chunk.is_empty() {
            return Err(format!("the body ended at {} of {}", offset + done, offset + len));
        }
        if let Some(md5) = &mut md5 {
            md5.update(&chunk);
        }
        if let Some(checksum) = &mut checksum {
            checksum.update(&chunk);
        }
        done += chunk.len() as u64;
    }
    Ok(Digests { md5: md5.map(|m| m.finalize().to_vec()), checksum: checksum.map(Hasher::finish) })
}

/// What a HEAD response says about the object.
fn remote_object(response: &Response) -> RemoteObject {
    remote_object_with_source(response).0
}

/// What a GetObject response says about the object whose bytes the host
/// receives: the MD5 is the one the uploader recorded in the metadata when
/// there is one, else a single-part ETag's. The host compares it with the
/// MD5 of the bytes it received, so an object whose content disagrees with
/// its metadata (stored corrupt, or rewritten behind blockferry's back) is
/// noticed there too (the bytes always match the server's own ETag).
fn read_object(response: &Response) -> RemoteObject {
    let mut object = remote_object(response);
    if let Some(claimed) =
        response.header(MD5_META_HEADER).and_then(|v| B64.decode(v.trim()).ok()).filter(|md5| md5.len() == 16)
    {
        object.md5 = Some(claimed);
    }
    object
}

/// What a HEAD response says about the object, and whether its MD5 is the
/// server's own digest. A single-part ETag is the content MD5 (unless the
/// object is encrypted with SSE-KMS or SSE-C; a multipart ETag `...-N` never
/// is) and wins over the MD5 metadata this provider wrote, which is only
/// what the uploader claimed: the metadata is used only when there is no
/// such ETag (multipart uploads, SSE-KMS, SSE-C).
fn remote_object_with_source(response: &Response) -> (RemoteObject, bool) {
    let size = response.header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let etag = response.header("etag").map(str::to_string);
    let from_meta =
        response.header(MD5_META_HEADER).and_then(|v| B64.decode(v.trim()).ok()).filter(|md5| md5.len() == 16);
    let from_etag = etag.as_deref().filter(|_| !encrypted_opaquely(response)).and_then(md5_of_etag);
    let by_server = from_etag.is_some();
    (RemoteObject { size, md5: from_etag.or(from_meta), etag }, by_server)
}

/// The MD5 in a single-part ETag (`"<32 hex>"`), if it is one.
fn md5_of_etag(etag: &str) -> Option<Vec<u8>> {
    let hex = etag.trim().trim_start_matches("W/").trim_matches('"');
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
}

/// The method as SigV4 spells it.
fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// What to do about an S3 error response.
#[derive(Debug, PartialEq, Eq)]
enum ErrorClass {
    /// Retry under the policy.
    Retry,
    /// Fail now; the host may retry later.
    Transient,
    /// Fail now; an operator must act.
    Permanent,
}

/// Which S3 error responses are retried, and which need an operator.
fn classify(status: u16, code: &str) -> ErrorClass {
    match (status, code) {
        (500 | 502 | 503 | 504, _) | (429, _) => ErrorClass::Retry,
        (400, "RequestTimeout") | (409, "ConditionalRequestConflict" | "OperationAborted") => ErrorClass::Retry,
        (_, "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => ErrorClass::Retry,
        (400, "BadDigest" | "IncompleteBody") => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A hint for the operator, by error code or status.
fn hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "NoSuchBucket") => "; check the `bucket` setting and that the bucket exists",
        (_, "SignatureDoesNotMatch") => "; check `secret_access_key` (and `region`)",
        (_, "InvalidAccessKeyId") => "; check `access_key_id`",
        (_, "RequestTimeTooSkewed") => "; the machine's clock is off, sync it (NTP)",
        (_, "AccessDenied") | (403, _) => "; check the credentials and the bucket's policy",
        (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => "; check `region` and `endpoint`",
        _ => "",
    }
}

impl Service for Config {
    type State = ();

    /// `s3://bucket/key`, as messages name an object.
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn endpoints(&self) -> (String, &'static str) {
        (self.endpoint_authority.clone(), "`endpoint` and `addressing`")
    }

    /// An S3 error document's code and message, the operator's hint, and
    /// [`classify`]'s verdict.
    fn judge(&self, target: &str, response: Response, _: &mut ()) -> Failure {
        let (code, message) = crate::xml::s3_error(&response.body);
        let status = response.status;
        let code_text = if code.is_empty() {
            if response.body.is_empty() {
                "(no error code in the response)".to_string()
            } else {
                "(no S3 error code)".to_string()
            }
        } else {
            code.clone()
        };
        let message = if message.is_empty() { String::new() } else { format!(": {message}") };
        let why = format!("{target}: HTTP {status} {code_text}{message}{}", hint(status, &code));
        match classify(status, &code) {
            ErrorClass::Retry => Failure::Retry { why, retry_after: operation::retry_after(&response) },
            ErrorClass::Transient => Failure::Fail(UploadError::Transient(why)),
            ErrorClass::Permanent => Failure::Fail(UploadError::Permanent(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_and_permanent_errors() {
        for (status, code) in [
            (500, "InternalError"),
            (502, ""),
            (503, "SlowDown"),
            (504, ""),
            (400, "RequestTimeout"),
            (409, "ConditionalRequestConflict"),
            (429, ""),
        ] {
            assert_eq!(classify(status, code), ErrorClass::Retry, "{status} {code}");
        }
        for (status, code) in [
            (403, "AccessDenied"),
            (403, "SignatureDoesNotMatch"),
            (404, "NoSuchBucket"),
            (400, "InvalidArgument"),
            (400, ""),
            (403, ""),
        ] {
            assert_eq!(classify(status, code), ErrorClass::Permanent, "{status} {code}");
        }
        assert_eq!(classify(400, "BadDigest"), ErrorClass::Transient);
    }

    fn config(extra: &[(&str, &str)]) -> Config {
        let base = [
            ("endpoint", "https://s3.eu-west-1.amazonaws.com"),
            ("region", "eu-west-1"),
            ("bucket", "blocks"),
            ("access_key_id", "AK"),
            ("secret_access_key", "SK"),
        ];
        let settings = blockferry_guest::settings::owned_settings(&base, extra);
        let defaults = Defaults { provider: "s3", addressing: Addressing::Virtual, region: None };
        Config::parse(&settings, &defaults).unwrap().0
    }

    fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
        request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn requests_are_addressed_and_signed() {
        let query = vec![("partNumber".to_string(), "2".to_string()), ("uploadId".to_string(), "a/b".to_string())];
        let virtual_hosted = config(&[("session_token", "TOKEN")]);
        let r = virtual_hosted.request(Method::Put, "dir/a b.blk", &query, Vec::new(), Body::Empty).unwrap();
        assert!(r.https);
        assert_eq!(r.authority, "blocks.s3.eu-west-1.amazonaws.com");
        assert_eq!(r.path_and_query, "/dir/a%20b.blk?partNumber=2&uploadId=a%2Fb");
        assert_eq!(header(&r, "x-amz-content-sha256"), Some(sigv4::EMPTY_SHA256));
        assert_eq!(header(&r, "x-amz-security-token"), Some("TOKEN"));
        let auth = header(&r, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AK/"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
        assert!(auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"), "{auth}");

        let path_style = config(&[("addressing", "path"), ("endpoint", "http://127.0.0.1:9000/")]);
        let r = path_style.request(Method::Head, "k", &[], path_style.sse_c_headers(), Body::Empty).unwrap();
        assert!(!r.https);
        assert_eq!((r.authority.as_str(), r.path_and_query.as_str()), ("127.0.0.1:9000", "/blocks/k"));
        assert_eq!(header(&r, "x-amz-security-token"), None);

        // Requests on the bucket itself (HeadBucket, listings).
        let query = vec![("list-type".to_string(), "2".to_string()), ("prefix".to_string(), "a b/".to_string())];
        let r = path_style.request(Method::Get, "", &query, Vec::new(), Body::Empty).unwrap();
        assert_eq!(r.path_and_query, "/blocks?list-type=2&prefix=a%20b%2F");
        let r = virtual_hosted.request(Method::Head, "", &[], Vec::new(), Body::Empty).unwrap();
        assert_eq!((r.authority.as_str(), r.path_and_query.as_str()), ("blocks.s3.eu-west-1.amazonaws.com", "/"));
    }

    #[test]
    fn listings_drop_the_prefix_setting_and_page_by_the_last_key() {
        let xml = br#"<ListBucketResult><IsTruncated>true</IsTruncated>
<Contents><Key>pre/blocks/1.blk</Key><Size>10</Size></Contents><Contents><Key>pre/blocks/2.blk</Key><Size>20</Size></Contents>
</ListBucketResult>"#;
        let page = object_page(xml, "pre/").unwrap();
        let keys: Vec<(&str, u64)> = page.objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
        assert_eq!(keys, [("blocks/1.blk", 10), ("blocks/2.blk", 20)]);
        assert_eq!(page.next.as_deref(), Some("blocks/2.blk"));
        let last = br#"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size></Contents></ListBucketResult>"#;
        assert_eq!(object_page(last, "").unwrap().next, None);
        assert!(object_page(b"<Error><Code>NoSuchBucket</Code></Error>", "").is_none());
        assert!(object_page(b"<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>", "").is_none());

        let xml = br#"<ListMultipartUploadsResult><Upload><Key>pre/b/1.blk</Key><UploadId>u1</UploadId>
<Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload><Upload><Key>pre/b/2.blk</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let uploads = incomplete_uploads(xml, "pre/").unwrap();
        let got: Vec<(&str, &str, u64)> =
            uploads.iter().map(|u| (u.key.as_str(), u.id.as_str(), u.started_ms)).collect();
        assert_eq!(got, [("b/1.blk", "u1", 1_289_422_113_000), ("b/2.blk", "u2", 0)]);
        assert!(incomplete_uploads(b"<ListBucketResult/>", "").is_none());
    }

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

    #[test]
    fn version_ids_only_when_sent() {
        let response = |headers: &[(&str, &str)]| Response {
            status: 200,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            streamed: None,
        };
        assert_eq!(
            version_id(&response(&[("x-amz-version-id", "3/L4kqtJlcpXroDTDmJ")])).as_deref(),
            Some("3/L4kqtJlcpXroDTDmJ")
        );
        assert_eq!(version_id(&response(&[])), None);
    }

    #[test]
    fn object_headers_carry_md5_metadata_class_and_encryption() {
        let block = BlockInfo {
            number: 1,
            size: 3,
            md5: vec![1; 16],
            key: "k".into(),
            content_type: "application/octet-stream".into(),
        };
        let kms = config(&[("sse", "aws:kms"), ("sse_kms_key_id", "alias/x"), ("storage_class", "STANDARD_IA")]);
        let headers = kms.object_headers(&block);
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get(MD5_META_HEADER), Some(B64.encode([1u8; 16]).as_str()));
        assert_eq!(get("x-amz-server-side-encryption"), Some("aws:kms"));
        assert_eq!(get("x-amz-server-side-encryption-aws-kms-key-id"), Some("alias/x"));
        assert_eq!(get("x-amz-storage-class"), Some("STANDARD_IA"));
        let key = B64.encode([9u8; 32]);
        let sse_c = config(&[("sse", "sse-c"), ("sse_customer_key", &key)]);
        let headers = sse_c.object_headers(&block);
        assert!(headers.iter().any(|(k, v)| k == "x-amz-server-side-encryption-customer-key" && v == &key));
        assert!(!headers.iter().any(|(k, _)| k == "x-amz-server-side-encryption"));
        assert_eq!(sse_c.sse_c_headers().len(), 3);
    }

    #[test]
    fn md5_from_single_part_etags_only() {
        assert_eq!(
            md5_of_etag("\"9e107d9d372bb6826bd81d3542a419d6\""),
            Some(vec![0x9e, 0x10, 0x7d, 0x9d, 0x37, 0x2b, 0xb6, 0x82, 0x6b, 0xd8, 0x1d, 0x35, 0x42, 0xa4, 0x19, 0xd6])
        );
        assert_eq!(md5_of_etag("\"9e107d9d372bb6826bd81d3542a419d6-3\""), None);
        assert_eq!(md5_of_etag("\"abc\""), None);
    }

    #[test]
    fn writes_are_checked_against_the_server_s_etag() {
        let response = |headers: &[(&str, &str)]| Response {
            status: 200,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            streamed: None,
        };
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        let plain = Written::of(&response(&[("etag", &format!("\"{md5}\""))]), None);
        assert_eq!(check_etag(&plain, md5, None), DigestCheck::Confirmed);
        assert_eq!(check_etag(&plain, "00000000000000000000000000000000", None), DigestCheck::Differs);
        // The ETag of a completed multipart upload comes in its XML body, escaped.
        let multipart = Written::of(&response(&[]), Some(format!("&quot;{md5}-2&quot;")));
        assert_eq!(check_etag(&multipart, "ignored", Some(&format!("{md5}-2"))), DigestCheck::Confirmed);
        assert_eq!(check_etag(&multipart, "ignored", Some(&format!("{md5}-3"))), DigestCheck::Differs);
        // Servers that give a completed multipart upload the MD5 of its content.
        assert_eq!(check_etag(&plain, md5, Some(&format!("{md5}-2"))), DigestCheck::Confirmed);
        // An ETag of another form is no evidence either way.
        let opaque = Written::of(&response(&[("etag", "\"v1-abc\"")]), None);
        assert_eq!(check_etag(&opaque, md5, Some(&format!("{md5}-2"))), DigestCheck::Unknown);
        // SSE-KMS and SSE-C ETags are not digests; no ETag, nothing to check.
        let kms = Written::of(&response(&[("etag", "\"0123\""), ("x-amz-server-side-encryption", "aws:kms")]), None);
        assert_eq!(check_etag(&kms, md5, None), DigestCheck::Unknown);
        let sse_c = response(&[("etag", "\"0123\""), ("x-amz-server-side-encryption-customer-algorithm", "AES256")]);
        assert_eq!(check_etag(&Written::of(&sse_c, None), md5, None), DigestCheck::Unknown);
        assert_eq!(check_etag(&Written::of(&response(&[]), None), md5, None), DigestCheck::Unknown);
        // SSE-S3 keeps ETags MD5s.
        let sse_s3 = Written::of(&response(&[("etag", md5), ("x-amz-server-side-encryption", "AES256")]), None);
        assert_eq!(check_etag(&sse_s3, md5, None), DigestCheck::Confirmed);
    }

    #[test]
    fn checksum_echoes_are_compared_and_combined_with_the_etag() {
        assert_eq!(check_checksum(Some("AAAAAA=="), Some("AAAAAA==")), DigestCheck::Confirmed);
        assert_eq!(check_checksum(Some("AAAAAA=="), Some("4waSgw==")), DigestCheck::Differs);
        // Nothing sent, or nothing echoed (a server that ignores the header): no evidence.
        assert_eq!(check_checksum(None, Some("4waSgw==")), DigestCheck::Unknown);
        assert_eq!(check_checksum(Some("4waSgw=="), None), DigestCheck::Unknown);
        use DigestCheck::*;
        assert_eq!(Unknown.and(Confirmed), Confirmed);
        assert_eq!(Confirmed.and(Differs), Differs);
        assert_eq!(Differs.and(Unknown), Differs);
        assert_eq!(Unknown.and(Unknown), Unknown);
    }

    #[test]
    fn checksums_are_encoded_as_s3_does() {
        // The CRC-32C check value of "123456789" is 0xE3069283, sent big-endian.
        let mut crc = Hasher::new(Checksum::Crc32c);
        crc.update(b"1234");
        crc.update(b"56789");
        assert_eq!(crc.finish(), vec![0xE3, 0x06, 0x92, 0x83]);
        let mut sha = Hasher::new(Checksum::Sha256);
        sha.update(b"hello world");
        assert_eq!(B64.encode(sha.finish()), "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=");
        // A composite checksum: the checksum of the parts' checksums, then `-N`.
        let parts = vec![vec![0xE3, 0x06, 0x92, 0x83], vec![0, 0, 0, 1]];
        let mut whole = Hasher::new(Checksum::Crc32c);
        whole.update(&[0xE3, 0x06, 0x92, 0x83, 0, 0, 0, 1]);
        assert_eq!(composite_checksum(Checksum::Crc32c, &parts), format!("{}-2", B64.encode(whole.finish())));
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_part_md5s() {
        // Two parts of "a" and "b": MD5(MD5("a") ++ MD5("b"))-2, as S3 computes it.
        let parts = vec![Md5::digest(b"a").to_vec(), Md5::digest(b"b").to_vec()];
        let mut joined = Vec::new();
        joined.extend_from_slice(&parts[0]);
        joined.extend_from_slice(&parts[1]);
        assert_eq!(multipart_etag(&parts), format!("{}-2", hex(&Md5::digest(&joined))));
    }

    #[test]
    fn stat_prefers_the_server_s_digest_to_metadata_and_ignores_multipart_and_kms_etags() {
        let response = |headers: &[(&str, &str)]| Response {
            status: 200,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            streamed: None,
        };
        let md5 = [3u8; 16];
        let meta = B64.encode(md5);
        let r = remote_object(&response(&[
            ("content-length", "42"),
            ("etag", "\"0123456789abcdef0123456789abcdef-2\""),
            (MD5_META_HEADER, &meta),
        ]));
        assert_eq!((r.size, r.md5), (42, Some(md5.to_vec())));
        let r = remote_object(&response(&[("etag", "\"0123456789abcdef0123456789abcdef-2\"")]));
        assert_eq!(r.md5, None);
        let r = remote_object(&response(&[("etag", "\"0123456789abcdef0123456789abcdef\"")]));
        assert!(r.md5.is_some());
        // A single-part ETag that disagrees with the metadata wins: the
        // metadata is only what the uploader claimed.
        let (r, by_server) = remote_object_with_source(&response(&[
            ("etag", "\"0123456789abcdef0123456789abcdef\""),
            (MD5_META_HEADER, &meta),
        ]));
        assert_eq!(r.md5, md5_of_etag("0123456789abcdef0123456789abcdef"));
        assert!(by_server);
        let r = remote_object(&response(&[
            ("etag", "\"0123456789abcdef0123456789abcdef\""),
            ("x-amz-server-side-encryption", "aws:kms"),
        ]));
        assert_eq!(r.md5, None);
    }
}
