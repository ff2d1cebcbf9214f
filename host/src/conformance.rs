//! The provider conformance suite: every promise of `wit/uploader.wit`,
//! checked against a live bucket through a provider plugin.
//!
//! One definition of "conforms": `blockferry plugin test` runs it for plugin
//! authors against their endpoint, and the project's own tests run it
//! against every bundled provider on its emulator. Each check is a line of a
//! checklist: passed, failed (what was expected and what came back) or not
//! applicable (and why). All objects are written under one scratch prefix.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde::Serialize;

use crate::plugin::{
    BlockBody, BlockInfo, BlockSink, BucketClient, BucketSpec, CallError, Outcome, Plugin, PluginFailure, PutReport,
    RemoteObject, SinkTarget,
};
use crate::sync::Locked;

/// What the suite runs against, and how.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The bucket under test: its settings, sandbox and deadline.
    pub spec: BucketSpec,
    /// Which settings are credentials (from the credentials file): the
    /// wrong-credentials check garbles them, and no message may contain
    /// their values.
    pub credential_keys: Vec<String>,
    /// Every key is written under this prefix (it should end with `/`).
    pub prefix: String,
    /// Size of the block for the large-block check: past the provider's
    /// multipart or resumable threshold.
    pub large_block_bytes: usize,
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// As the contract says.
    Pass,
    /// Not as the contract says.
    Fail {
        /// What the contract expects.
        expected: String,
        /// What came back.
        got: String,
    },
    /// The check does not apply to this provider or these settings.
    NotApplicable {
        /// Why.
        why: String,
    },
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Its name, e.g. `upload-new`.
    pub name: &'static str,
    /// What it checks, in a sentence.
    pub what: &'static str,
    /// How it ended.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// The suite's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The provider's name (`provider()`), when the plugin answered it.
    pub provider: String,
    /// The scratch prefix used.
    pub prefix: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| matches!(c.verdict, Verdict::Fail { .. }))
    }

    /// The names of the failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| matches!(c.verdict, Verdict::Fail { .. })).map(|c| c.name).collect()
    }

    /// The checklist as text, one line per check (and the expectation on a
    /// failure), and a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let (mark, detail) = match &c.verdict {
                Verdict::Pass => ("pass", String::new()),
                Verdict::Fail { expected, got } => {
                    ("FAIL", format!("\n       expected: {expected}\n       got:      {got}"))
                }
                Verdict::NotApplicable { why } => ("n/a ", format!(" ({why})")),
            };
            let _ = writeln!(out, "{mark}  {:<26} {:>6} ms  {}{detail}", c.name, c.millis, c.what);
        }
        let count = |f: fn(&Verdict) -> bool| self.checks.iter().filter(|c| f(&c.verdict)).count();
        let _ = writeln!(
            out,
            "{}: {} passed, {} failed, {} not applicable (provider {}, keys under {})",
            if self.passed() { "conforms" } else { "does not conform" },
            count(|v| matches!(v, Verdict::Pass)),
            count(|v| matches!(v, Verdict::Fail { .. })),
            count(|v| matches!(v, Verdict::NotApplicable { .. })),
            self.provider,
            self.prefix
        );
        out
    }
}

/// The suite's state while it runs.
struct Suite {
    plugin: Arc<Plugin>,
    prefix: String,
    checks: Vec<Check>,
    /// Every message a plugin call returned, to look for secrets in.
    said: Arc<Mutex<Vec<String>>>,
}

type CheckResult = Result<(), (String, String)>;

/// A failed expectation: what was expected and what came back (as Rust
/// shows it).
fn fail<T>(expected: impl Into<String>, got: impl std::fmt::Debug) -> Result<T, (String, String)> {
    fail_text(expected, format!("{got:?}"))
}

/// A failed expectation: what was expected and what came back, in words.
fn fail_text<T>(expected: impl Into<String>, got: String) -> Result<T, (String, String)> {
    Err((expected.into(), got))
}

fn md5(bytes: &[u8]) -> Vec<u8> {
    Md5::digest(bytes).to_vec()
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The block info of `bytes` as block `number` under `key`.
fn info(number: u64, key: &str, bytes: &[u8]) -> BlockInfo {
    BlockInfo {
        number,
        size: bytes.len() as u64,
        md5: md5(bytes),
        key: key.to_string(),
        content_type: "application/octet-stream".into(),
    }
}

impl Suite {
    /// Record a check that ran `f`.
    async fn check<F: Future<Output = CheckResult>>(&mut self, name: &'static str, what: &'static str, f: F) {
        let start = Instant::now();
        let verdict = match f.await {
            Ok(()) => Verdict::Pass,
            Err((expected, got)) => Verdict::Fail { expected, got },
        };
        self.checks.push(Check { name, what, verdict, millis: start.elapsed().as_millis() as u64 });
    }

    /// Record a check that does not apply.
    fn not_applicable(&mut self, name: &'static str, what: &'static str, why: impl Into<String>) {
        self.checks.push(Check { name, what, verdict: Verdict::NotApplicable { why: why.into() }, millis: 0 });
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// Put `bytes` under `key`, remembering what the plugin said.
async fn put(
    client: &BucketClient,
    said: &Mutex<Vec<String>>,
    number: u64,
    key: &str,
    bytes: &[u8],
) -> Result<Outcome, CallError> {
    put_as(client, said, &info(number, key, bytes), bytes).await.map(|put| put.outcome)
}

/// Put `bytes` as the block `block` describes (which may lie about them),
/// with what the plugin reported; remembering what the plugin said.
async fn put_as(
    client: &BucketClient,
    said: &Mutex<Vec<String>>,
    block: &BlockInfo,
    bytes: &[u8],
) -> Result<PutReport, CallError> {
    let result = client.put_block_reported(block, &BlockBody::from_bytes(bytes.to_vec())).await;
    if let Err(e) = &result {
        said.locked().push(e.to_string());
    }
    result
}

/// What the bucket holds under `key`: its content MD5 (read back through the
/// reader when the plugin has one, else from `stat`) and size.
async fn stored(client: &BucketClient, key: &str, limit: u64) -> Result<Option<(Vec<u8>, u64)>, CallError> {
    if client.can_read() {
        let sink = BlockSink::new(SinkTarget::Digest, limit);
        Ok(client.get(key, sink).await?.map(|(remote, received)| (received.md5.to_vec(), remote.size)))
    } else {
        Ok(client.stat(key).await?.and_then(|o| o.md5.map(|m| (m, o.size))))
    }
}

/// Requires the bucket to hold `bytes` under `key`.
async fn holds(client: &BucketClient, key: &str, bytes: &[u8]) -> CheckResult {
    match stored(client, key, bytes.len() as u64 + 1).await {
        Ok(Some((m, size))) if m == md5(bytes) && size == bytes.len() as u64 => Ok(()),
        other => fail(
            format!("{key} holds {} bytes with MD5 {}", bytes.len(), hex::encode(md5(bytes))),
            other.map(|o| o.map(|(m, s)| format!("{s} bytes, MD5 {}", hex::encode(m)))),
        ),
    }
}

/// Run the whole suite with `plugin` against the bucket of `opts`.
pub async fn run(plugin: Arc<Plugin>, opts: SuiteOptions) -> Report {
    let provider = match plugin.provider_name().await {
        // A name the host would refuse is shown escaped and cut, never as the plugin wrote it.
        Ok(name) if crate::plugin::check::provider_name_problem(&name).is_some() => {
            crate::plugin::check::shown(&name, 64)
        }
        Ok(name) => name,
        Err(e) => crate::plugin::logs::escape_controls(&format!("(provider() failed: {e})")),
    };
    let mut suite =
        Suite { plugin: plugin.clone(), prefix: opts.prefix.clone(), checks: Vec::new(), said: Arc::default() };
    let mut client = None;
    let spec = opts.spec.clone();
    suite
        .check("open", "the bucket opens with these settings", async {
            match BucketClient::open(plugin, spec).await {
                Ok(c) => {
                    client = Some(c);
                    Ok(())
                }
                Err(e) => fail_text("open succeeds", e.to_string()),
            }
        })
        .await;
    if let Some(client) = client {
        uploads(&mut suite, &client, opts.large_block_bytes).await;
        errors(&mut suite, &opts).await;
        reader(&mut suite, &client).await;
        hygiene(&mut suite, &client, &opts).await;
    }
    Report { provider, prefix: suite.prefix, checks: suite.checks }
}

/// The upload promises: new, again, different, concurrent, large, bad MD5, stat.
async fn uploads(suite: &mut Suite, client: &BucketClient, large_block_bytes: usize) {
    let said = suite.said.clone();
    let mut confirmed = None;
    let (a, b) = (test_bytes(70_000, 1), test_bytes(70_000, 2));
    let key = suite.key("upload/000000000000000000000000000000000001.blk");
    suite
        .check("upload-new", "a new key is `uploaded` and reads back byte for byte with its MD5", async {
            match put_as(client, &said, &info(1, &key, &a), &a).await {
                Ok(put) if matches!(put.outcome, Outcome::Uploaded) => {
                    confirmed = Some(put.confirmed);
                    holds(client, &key, &a).await
                }
                other => fail("Ok(Uploaded)", other.map(|put| put.outcome)),
            }
        })
        .await;
    suite
        .check(
            "upload-confirmed",
            "the new upload is confirmed by a digest the server computed or a read-back (`host.object-confirmed`)",
            async {
                match confirmed {
                    Some(Some(_)) => Ok(()),
                    Some(None) => fail_text(
                        "host.object-confirmed(key, server-digest | read-back) during put-block",
                        "no confirmation: only the plugin's word, so retention never deletes a local block".into(),
                    ),
                    None => fail_text("a new upload to confirm", "upload-new did not upload".into()),
                }
            },
        )
        .await;
    suite
        .check("upload-same-again", "the same bytes again are `already-present`", async {
            match put(client, &said, 1, &key, &a).await {
                Ok(Outcome::AlreadyPresent) => Ok(()),
                other => fail("Ok(AlreadyPresent)", other),
            }
        })
        .await;
    suite
        .check("stat-present", "`stat` of an uploaded key gives its size and content MD5", async {
            match client.stat(&key).await {
                Ok(Some(RemoteObject { size, md5: Some(m), .. })) if size == a.len() as u64 && m == md5(&a) => Ok(()),
                other => fail(format!("Ok(Some(size {}, MD5 {}))", a.len(), hex::encode(md5(&a))), other),
            }
        })
        .await;
    let absent = suite.key("upload/absent.blk");
    suite
        .check("stat-absent", "`stat` of a key that does not exist is `none`", async {
            match client.stat(&absent).await {
                Ok(None) => Ok(()),
                other => fail("Ok(None)", other),
            }
        })
        .await;

    suite
        .check(
            "upload-different",
            "different bytes are `hash-mismatch` carrying what is there, and the object is unchanged",
            async {
                match put(client, &said, 1, &key, &b).await {
                    Err(CallError::Plugin(PluginFailure::HashMismatch(RemoteObject {
                        md5: Some(m), size, ..
                    }))) if m == md5(&a) && size == a.len() as u64 => holds(client, &key, &a).await,
                    Err(CallError::Plugin(PluginFailure::HashMismatch(RemoteObject { md5: None, .. }))) => {
                        holds(client, &key, &a).await
                    }
                    other => {
                        let kept = holds(client, &key, &a).await.map_or(" (and the object was replaced)", |()| "");
                        fail_text(
                            "Err(HashMismatch) carrying the stored object's MD5 and size",
                            format!("{other:?}{kept}"),
                        )
                    }
                }
            },
        )
        .await;
    let (c1, c2) = (test_bytes(200_000, 3), test_bytes(200_000, 4));
    let race = suite.key("upload/000000000000000000000000000000000002.blk");
    suite
        .check(
            "concurrent-create",
            "two uploads of one key with different bytes at once: one `uploaded`, the other `hash-mismatch`",
            async {
                let (r1, r2) = tokio::join!(put(client, &said, 2, &race, &c1), put(client, &said, 2, &race, &c2));
                let mismatch = |r: &Result<Outcome, CallError>| {
                    matches!(r, Err(CallError::Plugin(PluginFailure::HashMismatch(_))))
                };
                match (&r1, &r2) {
                    (Ok(Outcome::Uploaded), r) if mismatch(r) => holds(client, &race, &c1).await,
                    (r, Ok(Outcome::Uploaded)) if mismatch(r) => holds(client, &race, &c2).await,
                    _ => fail("one Ok(Uploaded) and one Err(HashMismatch)", (r1, r2)),
                }
            },
        )
        .await;

    let large = test_bytes(large_block_bytes, 5);
    let big = suite.key("upload/000000000000000000000000000000000003.blk");
    let prefix = suite.prefix.clone();
    suite
        .check(
            "large-block",
            "a block past the multipart/resumable threshold arrives intact and leaves no incomplete upload",
            async {
                match put(client, &said, 3, &big, &large).await {
                    Ok(Outcome::Uploaded) => {}
                    other => return fail("Ok(Uploaded)", other),
                }
                holds(client, &big, &large).await?;
                if client.can_read() {
                    match client.incomplete_uploads(&prefix).await {
                        Ok(left) if left.is_empty() => {}
                        other => return fail("no incomplete upload under the prefix", other),
                    }
                }
                Ok(())
            },
        )
        .await;

    let (claimed, sent) = (test_bytes(30_000, 6), test_bytes(30_000, 7));
    let lying = suite.key("upload/000000000000000000000000000000000004.blk");
    suite
        .check("md5-enforced", "a body whose bytes do not match the MD5 the host gives is never `uploaded`", async {
            match put_as(client, &said, &info(4, &lying, &claimed), &sent).await.map(|put| put.outcome) {
                result @ Ok(Outcome::Uploaded | Outcome::AlreadyPresent) => {
                    fail("an error or hash-mismatch (the server's integrity check refuses the body)", result)
                }
                _ => Ok(()),
            }
        })
        .await;
}

/// The error promises: wrong credentials are permanent, an unreachable
/// endpoint is transient within the deadline.
async fn errors(suite: &mut Suite, opts: &SuiteOptions) {
    let said = suite.said.clone();
    let key = suite.key("errors/000000000000000000000000000000000005.blk");
    let body = test_bytes(1000, 8);
    let creds = &opts.credential_keys;
    if creds.is_empty() {
        suite.not_applicable(
            "wrong-credentials",
            "wrong credentials are a `permanent` failure",
            "no credentials were given (pass --credentials)",
        );
    } else {
        let mut spec = opts.spec.clone();
        for (k, v) in &mut spec.settings {
            if creds.contains(k) {
                // Same length and alphabet, different value.
                *v = v.chars().rev().collect::<String>() + "x";
            }
        }
        let plugin = suite.plugin.clone();
        suite
            .check("wrong-credentials", "wrong credentials are a `permanent` failure", async {
                let result = match BucketClient::open(plugin, spec).await {
                    Ok(c) => put(&c, &said, 5, &key, &body).await,
                    Err(e) => Err(e),
                };
                match result {
                    Err(CallError::Plugin(PluginFailure::Permanent(_) | PluginFailure::Open { .. })) => Ok(()),
                    other => fail("Err(Permanent)", other),
                }
            })
            .await;
    }

    // Every URL setting pointed at a loopback port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let mut spec = opts.spec.clone();
    let mut changed = false;
    for (_, v) in &mut spec.settings {
        if let (Some(rest), Ok(port)) = (v.strip_prefix("http://").or_else(|| v.strip_prefix("https://")), &closed) {
            let path = rest.find('/').map_or("", |i| &rest[i..]);
            *v = format!("http://127.0.0.1:{port}{path}");
            changed = true;
        }
    }
    if !changed {
        suite.not_applicable(
            "unreachable-endpoint",
            "an unreachable endpoint is a `transient` failure within the call deadline",
            "no http(s) URL among the settings",
        );
        return;
    }
    let deadline = spec.call_timeout;
    let plugin = suite.plugin.clone();
    suite
        .check(
            "unreachable-endpoint",
            "an unreachable endpoint is a `transient` failure within the call deadline",
            async {
                let start = Instant::now();
                let result = match BucketClient::open(plugin, spec).await {
                    Ok(c) => put(&c, &said, 5, &key, &body).await,
                    Err(e) => Err(e),
                };
                let took = start.elapsed();
                match result {
                    Err(e) if e.is_retryable() && took <= deadline + Duration::from_secs(2) => Ok(()),
                    other => fail_text(
                        format!("a transient error within {} ms", deadline.as_millis()),
                        format!("{other:?} after {} ms", took.as_millis()),
                    ),
                }
            },
        )
        .await;
}

/// The bucket-reader promises, when the plugin exports it.
async fn reader(suite: &mut Suite, client: &BucketClient) {
    const NAMES: [(&str, &str); 5] = [
        ("reader-get", "`get` streams an object into the sink byte for byte, with its content MD5"),
        ("reader-missing", "`get` of a missing key is `none`; a sink smaller than the object fails the read"),
        ("reader-list", "`list` pages in key order within the prefix, with `next` until the end"),
        ("reader-health", "`health` passes on a good bucket"),
        ("reader-incomplete", "`incomplete-uploads` lists (and `abort-upload` aborts) unfinished uploads"),
    ];
    if !client.can_read() {
        for (name, what) in NAMES {
            suite.not_applicable(name, what, "the plugin exports no bucket-reader");
        }
        return;
    }
    let said = suite.said.clone();
    let bodies: Vec<Vec<u8>> = (0..5).map(|i| test_bytes(1000 + 4096 * i, 70 + i as u64)).collect();
    let keys: Vec<String> = (0..5).map(|i| suite.key(&format!("reader/{i:036}.blk"))).collect();
    let outside = suite.key("reader-outside/000.blk");
    let list_prefix = suite.key("reader/");
    let prefix = suite.prefix.clone();
    suite
        .check(NAMES[0].0, NAMES[0].1, async {
            for (i, (key, body)) in keys.iter().zip(&bodies).enumerate() {
                if let Err(e) = put(client, &said, 10 + i as u64, key, body).await {
                    return fail(format!("{key} uploads"), e);
                }
            }
            if let Err(e) = put(client, &said, 19, &outside, b"not under the listed prefix").await {
                return fail(format!("{outside} uploads"), e);
            }
            for (key, body) in keys.iter().zip(&bodies) {
                let sink = BlockSink::new(SinkTarget::Memory(Vec::new()), 1 << 20);
                match client.get(key, sink).await {
                    Ok(Some((remote, received))) => {
                        let SinkTarget::Memory(got) = &received.target else {
                            return fail("the memory sink", "another");
                        };
                        if got != body || received.md5[..] != md5(body)[..] {
                            return fail_text(
                                format!("{key}: {} bytes as uploaded", body.len()),
                                format!("{} bytes", got.len()),
                            );
                        }
                        if remote.size != body.len() as u64 || remote.md5.as_deref() != Some(&md5(body)[..]) {
                            return fail(format!("{key}: size {} and its content MD5", body.len()), remote);
                        }
                    }
                    other => return fail(format!("{key} is found"), other.map(|o| o.map(|(r, _)| r))),
                }
            }
            Ok(())
        })
        .await;
    let missing = suite.key("reader/missing.blk");
    let biggest = keys[4].clone();
    suite
        .check(NAMES[1].0, NAMES[1].1, async {
            match client.get(&missing, BlockSink::new(SinkTarget::Digest, 1 << 20)).await {
                Ok(None) => {}
                other => return fail("Ok(None)", other.map(|o| o.map(|(r, _)| r))),
            }
            match client.get(&biggest, BlockSink::new(SinkTarget::Digest, 100)).await {
                Err(_) => Ok(()),
                other => fail("an error: the object is larger than the sink allows", other.map(|o| o.map(|(r, _)| r))),
            }
        })
        .await;
    suite
        .check(NAMES[2].0, NAMES[2].1, async {
            let (mut listed, mut after, mut pages) = (Vec::new(), None::<String>, 0);
            loop {
                let page = match client.list(&list_prefix, after.as_deref(), 2).await {
                    Ok(page) => page,
                    Err(e) => return fail("a page", e),
                };
                if page.objects.len() > 2 {
                    return fail("at most 2 objects per page", page.objects.len());
                }
                listed.extend(page.objects.iter().map(|o| (o.key.clone(), o.size)));
                pages += 1;
                match page.next {
                    Some(next) if pages < 10 => after = Some(next),
                    Some(_) => return fail_text("paging ends", "more than 10 pages for 5 objects".into()),
                    None => break,
                }
            }
            let expected: Vec<(String, u64)> =
                keys.iter().cloned().zip(bodies.iter().map(|b| b.len() as u64)).collect();
            if listed != expected || pages < 3 {
                return fail_text(
                    format!("{expected:?} in 3 pages of at most 2"),
                    format!("{listed:?} in {pages} pages"),
                );
            }
            Ok(())
        })
        .await;
    suite.check(NAMES[3].0, NAMES[3].1, async { client.health().await.or_else(|e| fail("Ok(())", e)) }).await;
    suite
        .check(NAMES[4].0, NAMES[4].1, async {
            match client.incomplete_uploads(&prefix).await {
                Ok(left) => {
                    for upload in &left {
                        if let Err(e) = client.abort_upload(upload).await {
                            return fail(format!("abort-upload of {upload:?}"), e);
                        }
                    }
                    Ok(())
                }
                Err(e) => fail("a list of incomplete uploads", e),
            }
        })
        .await;
}

/// What the plugin did in its sandbox: only its own authorities, no secret
/// in anything it said.
async fn hygiene(suite: &mut Suite, client: &BucketClient, opts: &SuiteOptions) {
    let refused = client.refused_requests();
    suite
        .check(
            "sandbox-egress",
            "the plugin reached only the authorities its settings name (the host refused nothing)",
            async { if refused == 0 { Ok(()) } else { fail_text("0 refused requests", format!("{refused} refused")) } },
        )
        .await;
    let secrets: Vec<String> = opts
        .spec
        .settings
        .iter()
        .filter(|(k, v)| opts.credential_keys.contains(k) && v.len() >= 6)
        .map(|(_, v)| v.clone())
        .collect();
    if secrets.is_empty() {
        suite.not_applicable(
            "sandbox-secrets",
            "no message of the plugin contains a credential it was given",
            "no credentials were given",
        );
        return;
    }
    let said = suite.said.locked().clone();
    suite
        .check("sandbox-secrets", "no message of the plugin contains a credential it was given", async {
            match said.iter().find(|m| secrets.iter().any(|s| m.contains(s.as_str()))) {
                None => Ok(()),
                Some(m) => fail_text("no credential value in any error message", m.chars().take(200).collect()),
            }
        })
        .await;
}
