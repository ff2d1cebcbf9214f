//! The S3 and MinIO provider plugins against real servers: `moto` (what
//! lands is read back with boto3, an independent client), `s3s-fs` (which
//! verifies SigV4 signatures), and a fault-injecting proxy in front of moto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::servers::{ACCESS_KEY, Fault, FaultProxy, Moto, S3sFs, SECRET_KEY, boto};
use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockferry::plugin::{
    BlockBody, BucketClient, CallError, Confirmation, Outcome, PluginFailure, PluginRuntime, PutReport, RemoteObject,
};
use md5::{Digest, Md5};

const MIB: usize = 1 << 20;

/// Settings for `bucket` at `endpoint`: path-style, us-east-1, the test keys, plus `extra`.
pub(crate) fn settings(endpoint: &str, bucket: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    settings_with(
        &[
            ("endpoint", endpoint),
            ("bucket", bucket),
            ("region", "us-east-1"),
            ("addressing", "path"),
            ("access_key_id", ACCESS_KEY),
            ("secret_access_key", SECRET_KEY),
        ],
        extra,
    )
}

/// Opens a bucket with plugin `plugin` and `settings`, a 60 s call deadline
/// (moto is slow on a loaded 2-core machine; the retry tests bound their own time).
async fn open(runtime: &PluginRuntime, plugin: &str, settings: Vec<(String, String)>) -> BucketClient {
    open_with_tls(runtime, plugin, settings, Default::default()).await
}

/// [`open`], the bucket's HTTPS connections made with `tls`.
async fn open_with_tls(
    runtime: &PluginRuntime,
    plugin: &str,
    settings: Vec<(String, String)>,
    tls: blockferry::plugin::tls::BucketTls,
) -> BucketClient {
    let mut spec = spec("s3-test");
    spec.settings = settings;
    spec.call_timeout = Duration::from_secs(60);
    spec.max_concurrency = 8;
    spec.tls = tls;
    BucketClient::open(load(runtime, plugin), spec).await.unwrap_or_else(|e| panic!("open {plugin}: {e}"))
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The MD5 (hex) of the object's bytes as boto3 downloads them.
fn boto_md5(endpoint: &str, bucket: &str, key: &str) -> String {
    boto(
        endpoint,
        &format!("print(hashlib.md5(s3.get_object(Bucket={bucket:?}, Key={key:?})['Body'].read()).hexdigest())"),
    )
    .trim()
    .to_string()
}

/// boto3's `head_object` of a key, as JSON.
fn boto_head(endpoint: &str, bucket: &str, key: &str) -> serde_json::Value {
    let out = boto(
        endpoint,
        &format!(
            "h = s3.head_object(Bucket={bucket:?}, Key={key:?})\n\
             h.pop('ResponseMetadata', None)\n\
             print(json.dumps(h, default=str))"
        ),
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// Incomplete multipart uploads in `bucket`.
fn open_uploads(endpoint: &str, bucket: &str) -> usize {
    boto(endpoint, &format!("print(len(s3.list_multipart_uploads(Bucket={bucket:?}).get('Uploads', [])))"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn plugin_check_accepts_both_components() {
    for (name, provider) in [("blockferry_s3", "s3"), ("blockferry_minio", "minio")] {
        let path = plugin_path(name);
        let out = blockferry(&["plugin", "check", path.to_str().unwrap()]);
        let text = text(&out);
        assert!(out.status.success(), "{name}: {text}");
        assert!(text.contains(&format!("provider: {provider}")), "{text}");
        assert!(text.contains("blockferry:uploader/reading-provider@0.1.3"), "{text}");
    }
}

#[tokio::test]
async fn bad_settings_are_refused_at_open_naming_the_key() {
    let runtime = runtime();
    for (extra, key) in [
        (vec![("endpoint", "s3.example.com")], "`endpoint`"),
        (vec![("sse", "sse-c")], "`sse_customer_key`"),
        (vec![("part_size", "100")], "`part_size`"),
        (vec![("addressing", "dns")], "`addressing`"),
    ] {
        let mut spec = spec("bad");
        spec.settings = settings("http://127.0.0.1:9", "blocks", &extra);
        let err = BucketClient::open(load(&runtime, "blockferry_s3"), spec).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Plugin(PluginFailure::Open { message, .. }) if message.contains(key)),
            "{err}"
        );
    }
    // The s3 provider needs a region; MinIO's does not.
    let mut spec = spec("no-region");
    spec.settings = settings("http://127.0.0.1:9", "blocks", &[]);
    spec.settings.retain(|(k, _)| k != "region");
    let err = BucketClient::open(load(&runtime, "blockferry_s3"), spec.clone()).await.unwrap_err();
    assert!(err.to_string().contains("`region`"), "{err}");
    BucketClient::open(load(&runtime, "blockferry_minio"), spec).await.expect("minio needs no region");
}

/// What the plugin writes under the `prefix` setting is what an independent
/// client reads, with the content-MD5 metadata; an object another client wrote
/// (no metadata) is a mismatch carrying its single-part ETag's MD5. (Upload,
/// `stat` and `already-present` as such are the conformance suite's.)
#[tokio::test]
async fn moto_upload_is_what_boto3_reads_under_the_prefix_and_a_foreign_object_is_a_mismatch() {
    let moto = Moto::start();
    moto.create_bucket("blocks");
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&moto.endpoint(), "blocks", &[("prefix", "net-a/")])).await;
    assert_eq!(client.provider(), "s3");

    let bytes = crate::common::bytes(64 * 1024 + 7, 1);
    let key = "blocks/000000000000000001.blk";
    assert_eq!(put(&client, 1, key, &bytes).await.unwrap(), Outcome::Uploaded);

    // An independent client sees the bytes and the content-MD5 metadata under the prefixed key.
    let full = format!("net-a/{key}");
    assert_eq!(boto_md5(&moto.endpoint(), "blocks", &full), md5_hex(&bytes));
    let head = boto_head(&moto.endpoint(), "blocks", &full);
    assert_eq!(head["Metadata"]["content-md5"], B64.encode(Md5::digest(&bytes)));
    assert_eq!(head["ContentLength"], bytes.len());

    // A different object pre-seeded under the key: hash mismatch, not overwritten.
    boto(&moto.endpoint(), "s3.put_object(Bucket='blocks', Key='net-a/blocks/2.blk', Body=b'someone else')");
    let ours = crate::common::bytes(4096, 2);
    let err = put(&client, 2, "blocks/2.blk", &ours).await.unwrap_err();
    match err {
        CallError::Plugin(PluginFailure::HashMismatch(remote)) => {
            assert_eq!(remote.size, 12);
            assert_eq!(remote.md5.as_deref(), Some(&Md5::digest(b"someone else")[..]), "single-part ETag");
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert_eq!(boto_md5(&moto.endpoint(), "blocks", "net-a/blocks/2.blk"), md5_hex(b"someone else"));
}

#[tokio::test]
async fn moto_multipart_above_the_threshold() {
    let moto = Moto::start();
    moto.create_bucket("big");
    let runtime = runtime();
    let client = open(
        &runtime,
        "blockferry_s3",
        settings(
            &moto.endpoint(),
            "big",
            &[("multipart_threshold", "1048576"), ("part_size", "5242880"), ("parts_in_flight", "3")],
        ),
    )
    .await;
    let bytes = crate::common::bytes(12 * MIB + 123, 3);
    let started = Instant::now();
    assert_eq!(put(&client, 3, "big.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    eprintln!("multipart upload of {} bytes to moto: {:?}", bytes.len(), started.elapsed());

    assert_eq!(boto_md5(&moto.endpoint(), "big", "big.blk"), md5_hex(&bytes));
    let head = boto_head(&moto.endpoint(), "big", "big.blk");
    assert!(head["ETag"].as_str().unwrap().ends_with("-3\""), "three parts: {head}");
    assert_eq!(head["Metadata"]["content-md5"], B64.encode(Md5::digest(&bytes)));
    assert_eq!(open_uploads(&moto.endpoint(), "big"), 0);

    // stat takes the MD5 from the metadata, never from the multipart ETag.
    let stat = client.stat("big.blk").await.unwrap().unwrap();
    assert_eq!(stat.md5.as_deref(), Some(&Md5::digest(&bytes)[..]));
    assert!(stat.etag.unwrap().contains('-'));

    // Uploading it again finds it present and leaves no incomplete upload.
    assert_eq!(put(&client, 3, "big.blk", &bytes).await.unwrap(), Outcome::AlreadyPresent);
    assert_eq!(open_uploads(&moto.endpoint(), "big"), 0);
}

#[tokio::test]
async fn moto_sse_and_storage_class_are_sent_as_headers() {
    let moto = Moto::start();
    moto.create_bucket("enc");
    let runtime = runtime();
    let bytes = crate::common::bytes(1000, 4);

    let aes = open(&runtime, "blockferry_s3", settings(&moto.endpoint(), "enc", &[("sse", "aes256")])).await;
    put(&aes, 1, "aes.blk", &bytes).await.unwrap();
    assert_eq!(boto_head(&moto.endpoint(), "enc", "aes.blk")["ServerSideEncryption"], "AES256");

    let kms = open(
        &runtime,
        "blockferry_s3",
        settings(
            &moto.endpoint(),
            "enc",
            &[("sse", "aws:kms"), ("sse_kms_key_id", "alias/blocks"), ("storage_class", "STANDARD_IA")],
        ),
    )
    .await;
    put(&kms, 2, "kms.blk", &bytes).await.unwrap();
    let head = boto_head(&moto.endpoint(), "enc", "kms.blk");
    assert_eq!(head["ServerSideEncryption"], "aws:kms", "{head}");
    assert_eq!(head["SSEKMSKeyId"], "alias/blocks", "{head}");
    assert_eq!(head["StorageClass"], "STANDARD_IA", "{head}");
    // With SSE-KMS the ETag is no MD5; the metadata still gives the content MD5.
    let stat = kms.stat("kms.blk").await.unwrap().unwrap();
    assert_eq!(stat.md5.as_deref(), Some(&Md5::digest(&bytes)[..]));
}

#[tokio::test]
async fn moto_wrong_bucket_is_a_permanent_error_naming_everything() {
    let moto = Moto::start();
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&moto.endpoint(), "no-such-bucket", &[])).await;
    let message = permanent(put(&client, 1, "k.blk", b"x").await.unwrap_err());
    for needle in ["PutObject", "s3://no-such-bucket/k.blk", "HTTP 404", "NoSuchBucket", "`bucket`"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
}

#[tokio::test]
async fn refused_egress_is_a_permanent_error() {
    let moto = Moto::start();
    let runtime = runtime();
    let mut spec = spec("denied");
    spec.settings = settings(&moto.endpoint(), "blocks", &[]);
    spec.denied_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let client = BucketClient::open(load(&runtime, "blockferry_s3"), spec).await.unwrap();
    let message = permanent(put(&client, 1, "k.blk", b"x").await.unwrap_err());
    assert!(message.contains("not permitted"), "{message}");
    assert!(client.refused_requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_racing_on_the_same_50_blocks_write_each_once() {
    let moto = Moto::start();
    moto.create_bucket("race");
    // Two hosts: two runtimes, each with its own client of the bucket.
    let (runtime_a, runtime_b) = (runtime(), runtime());
    let a = Arc::new(open(&runtime_a, "blockferry_s3", settings(&moto.endpoint(), "race", &[])).await);
    let b = Arc::new(open(&runtime_b, "blockferry_s3", settings(&moto.endpoint(), "race", &[])).await);
    let blocks: Vec<(u64, Vec<u8>)> =
        (0..50).map(|n| (n, crate::common::bytes(8 * 1024 + n as usize, 100 + n))).collect();
    let mut tasks = Vec::new();
    for client in [a.clone(), b.clone()] {
        for (n, bytes) in blocks.clone() {
            let client = client.clone();
            tasks.push(tokio::spawn(async move { (n, put(&client, n, &format!("race/{n:05}.blk"), &bytes).await) }));
        }
    }
    let mut uploaded = vec![0; 50];
    for task in tasks {
        let (n, result) = task.await.unwrap();
        match result {
            Ok(Outcome::Uploaded) => uploaded[n as usize] += 1,
            Ok(Outcome::AlreadyPresent) => {}
            Err(e) => panic!("block {n}: {e}"),
        }
    }
    assert!(uploaded.iter().all(|&c| c == 1), "each block uploaded exactly once: {uploaded:?}");
    let listed = boto(
        &moto.endpoint(),
        "print(json.dumps({o['Key']: o['ETag'] for o in s3.list_objects_v2(Bucket='race')['Contents']}))",
    );
    let listed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(listed.len(), 50);
    for (n, bytes) in &blocks {
        assert_eq!(listed[&format!("race/{n:05}.blk")], format!("\"{}\"", md5_hex(bytes)));
    }
}

#[tokio::test]
async fn s3s_fs_verifies_our_signatures_and_rejects_a_wrong_secret() {
    let server = S3sFs::start("signed");
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&server.endpoint(), "signed", &[])).await;
    let bytes = crate::common::bytes(256 * 1024, 5);
    assert_eq!(put(&client, 1, "dir/one.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(std::fs::read(server.root.join("signed/dir/one.blk")).unwrap(), bytes);

    // Multipart requests (query strings in the signature) are accepted too.
    let multipart = open(
        &runtime,
        "blockferry_minio",
        settings(&server.endpoint(), "signed", &[("multipart_threshold", "1048576"), ("part_size", "5242880")]),
    )
    .await;
    let big = crate::common::bytes(11 * MIB, 6);
    assert_eq!(put(&multipart, 2, "dir/big.blk", &big).await.unwrap(), Outcome::Uploaded);
    assert_eq!(md5_hex(&std::fs::read(server.root.join("signed/dir/big.blk")).unwrap()), md5_hex(&big));

    let wrong = open(
        &runtime,
        "blockferry_s3",
        settings(&server.endpoint(), "signed", &[("secret_access_key", "not-the-secret")]),
    )
    .await;
    let message = permanent(put(&wrong, 3, "dir/three.blk", b"abc").await.unwrap_err());
    assert!(message.contains("SignatureDoesNotMatch") && message.contains("HTTP 403"), "{message}");
    assert!(!server.root.join("signed/dir/three.blk").exists());
}

#[tokio::test]
async fn retries_through_5xx_resets_and_slow_responses_succeed() {
    let moto = Moto::start();
    moto.create_bucket("flaky");
    // First request of each put: 503 SlowDown (Retry-After 1 s), then 500, a
    // reset, a slow answer past the attempt timeout, a slow answer within it.
    let proxy = FaultProxy::start(moto.addr(), |n, _, _| match n {
        0 => Some(Fault::Status(503, "SlowDown", Some(1))),
        1 => Some(Fault::Status(500, "InternalError", None)),
        2 => Some(Fault::Reset),
        3 => Some(Fault::Delay(Duration::from_millis(3000))),
        4 => Some(Fault::Delay(Duration::from_millis(300))),
        _ => None,
    });
    let runtime = runtime();
    let client = open(
        &runtime,
        "blockferry_s3",
        settings(
            &proxy.endpoint(),
            "flaky",
            &[("retry_max_attempts", "6"), ("retry_base_delay_ms", "20"), ("request_timeout_ms", "1500")],
        ),
    )
    .await;
    let bytes = crate::common::bytes(100 * 1024, 7);
    let started = Instant::now();
    // The slow request that timed out still reaches moto later, so the
    // last attempt may find the object there: either outcome is right.
    let outcome = put(&client, 1, "flaky.blk", &bytes).await.unwrap();
    assert!(matches!(outcome, Outcome::Uploaded | Outcome::AlreadyPresent), "{outcome:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "Retry-After honoured: {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let seen = proxy.seen();
    assert!(seen.len() >= 5, "four failed attempts, then a slow success: {seen:?}");
    assert!(seen[..5].iter().all(|r| r.method == "PUT" && r.fault.is_some()), "{seen:?}");
    assert_eq!(boto_md5(&moto.endpoint(), "flaky", "flaky.blk"), md5_hex(&bytes));
}

#[tokio::test]
async fn retries_give_up_with_a_transient_error_naming_the_last_failure() {
    let moto = Moto::start();
    moto.create_bucket("down");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| Some(Fault::Status(503, "SlowDown", None)));
    let runtime = runtime();
    let client = open(
        &runtime,
        "blockferry_s3",
        settings(&proxy.endpoint(), "down", &[("retry_max_attempts", "3"), ("retry_base_delay_ms", "10")]),
    )
    .await;
    let message = transient(put(&client, 1, "down.blk", b"abc").await.unwrap_err());
    for needle in ["PutObject", "s3://down/down.blk", "gave up after 3 attempt", "HTTP 503", "SlowDown"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
    assert_eq!(proxy.seen().len(), 3);
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted() {
    let moto = Moto::start();
    moto.create_bucket("parts");
    // Every attempt at part 2 fails; everything else passes through.
    let proxy = FaultProxy::start(moto.addr(), |_, method, target| {
        (method == "PUT" && target.contains("partNumber=2&")).then_some(Fault::Status(500, "InternalError", None))
    });
    let runtime = runtime();
    let client = open(
        &runtime,
        "blockferry_s3",
        settings(
            &proxy.endpoint(),
            "parts",
            &[
                ("multipart_threshold", "1048576"),
                ("part_size", "5242880"),
                ("retry_max_attempts", "2"),
                ("retry_base_delay_ms", "10"),
            ],
        ),
    )
    .await;
    let bytes = crate::common::bytes(11 * MIB, 8);
    let result = put(&client, 1, "parts.blk", &bytes).await;
    let message = transient(result.unwrap_err());
    assert!(message.contains("UploadPart") && message.contains("HTTP 500"), "{message}");
    let seen = proxy.seen();
    assert!(seen.iter().any(|r| r.method == "DELETE" && r.target.contains("uploadId=")), "aborted: {seen:?}");
    assert_eq!(open_uploads(&moto.endpoint(), "parts"), 0);
    assert!(client.stat("parts.blk").await.unwrap().is_none());
}

#[tokio::test]
async fn minio_defaults_to_path_style_and_us_east_1() {
    let moto = Moto::start();
    moto.create_bucket("minio-blocks");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| None);
    let runtime = runtime();
    let mut minio_settings = settings(&proxy.endpoint(), "minio-blocks", &[]);
    minio_settings.retain(|(k, _)| k != "region" && k != "addressing");
    let client = open(&runtime, "blockferry_minio", minio_settings).await;
    assert_eq!(client.provider(), "minio");
    let bytes = crate::common::bytes(3000, 9);
    assert_eq!(put(&client, 1, "m/1.blk", &bytes).await.unwrap(), Outcome::Uploaded);
    assert_eq!(boto_md5(&moto.endpoint(), "minio-blocks", "m/1.blk"), md5_hex(&bytes));
    let request = &proxy.seen()[0];
    assert_eq!(request.target, "/minio-blocks/m/1.blk", "path-style");
    let auth = &request.headers.iter().find(|(k, _)| k == "authorization").unwrap().1;
    assert!(auth.contains("/us-east-1/s3/aws4_request"), "{auth}");
    let host = &request.headers.iter().find(|(k, _)| k == "host").unwrap().1;
    assert_eq!(host, &format!("127.0.0.1:{}", proxy.port));
}

/// Upload throughput of the S3 plugin beside a native Rust client
/// (`object_store`) writing the same blocks to the same `s3s-fs` server in the
/// same run, 8 uploads in flight each, conditional creates both; prints the
/// figures to stderr and `target/s3-throughput.txt` and returns them, with the
/// process CPU time (`cpu()`, seconds) each client used. A benchmark, not a
/// test: `cargo bench -p blockferry --bench s3_throughput` runs it (BENCHMARKS.md).
#[allow(dead_code)]
/// With `https`, both clients reach the server through one TLS terminator
/// (`tests/all/common/tls.rs`) and trust the same private CA.
pub async fn throughput_beside_a_native_client(cpu: fn() -> f64, https: bool) -> Vec<Throughput> {
    use futures::StreamExt;
    use object_store::aws::AmazonS3Builder;
    use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

    // Uploads in flight (BENCH_IN_FLIGHT, default 8); each client's best of ROUNDS rounds counts.
    let in_flight: usize = std::env::var("BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    const ROUNDS: usize = 3;
    let _ =
        tracing_subscriber::fmt().with_env_filter("info,wasmtime=warn,cranelift=warn").with_test_writer().try_init();
    let server = S3sFs::start("bench");
    let runtime = runtime();
    let ca = https.then(|| crate::common::tls::TestCa::new("blockferry bench CA"));
    let front = ca.as_ref().map(|ca| {
        let upstream = ([127, 0, 0, 1], server.port).into();
        crate::common::tls::TlsFront::start(upstream, &ca.server(&["localhost"]), Default::default())
    });
    let endpoint = front.as_ref().map_or_else(|| server.endpoint(), |front| front.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let tls = ca.as_ref().map(|ca| crate::common::tls::bucket_tls(dir.path(), Some(ca), None)).unwrap_or_default();
    let client = open_with_tls(&runtime, "blockferry_s3", settings(&endpoint, "bench", &[]), tls).await;
    let mut options = object_store::ClientOptions::new();
    if let Some(ca) = &ca {
        options = options.with_root_certificate(object_store::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    }
    let native = AmazonS3Builder::new()
        .with_client_options(options)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name("bench")
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_unsigned_payload(true)
        .build()
        .unwrap();

    let mut report = String::new();
    let mut figures = Vec::new();
    for (label, size, count) in [("64 KiB", 64 * 1024, 200usize), ("16 MiB", 16 * MIB, 6)] {
        let bodies: Vec<bytes::Bytes> =
            (0..count).map(|i| crate::common::bytes(size, 1000 + i as u64).into()).collect();
        let total = (size * count) as f64 / MIB as f64;
        // The host hashes a block once when it is written; the upload only reads the MD5.
        let infos: Vec<Vec<(blockferry::plugin::BlockInfo, BlockBody)>> = (0..ROUNDS)
            .map(|round| {
                bodies
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        (block(i as u64, &format!("plugin/{label}/{round}/{i}"), b), BlockBody::from_bytes(b.clone()))
                    })
                    .collect()
            })
            .collect();
        let (mut best_plugin, mut best_native) = (f64::MAX, f64::MAX);
        let (mut plugin_cpu, mut native_cpu) = (0.0, 0.0);
        for round in 0..ROUNDS {
            let (started, cpu_before) = (Instant::now(), cpu());
            let results: Vec<_> = futures::stream::iter(0..count)
                .map(|i| {
                    let (client, infos) = (&client, &infos);
                    async move {
                        let (info, body) = &infos[round][i];
                        client.put_block(info, body).await
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Uploaded))), "{results:?}");
            best_plugin = best_plugin.min(started.elapsed().as_secs_f64());
            plugin_cpu += cpu() - cpu_before;

            let (started, cpu_before) = (Instant::now(), cpu());
            let results: Vec<_> = futures::stream::iter(bodies.iter().enumerate())
                .map(|(i, body)| {
                    let native = &native;
                    async move {
                        let path = object_store::path::Path::from(format!("native/{label}/{round}/{i}"));
                        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
                        native.put_opts(&path, PutPayload::from(body.clone()), options).await
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
            best_native = best_native.min(started.elapsed().as_secs_f64());
            native_cpu += cpu() - cpu_before;
        }
        let gib = (size * count * ROUNDS) as f64 / (1u64 << 30) as f64;
        figures.push(Throughput {
            label,
            blocks_per_s: [count as f64 / best_plugin, count as f64 / best_native],
            mib_per_s: [total / best_plugin, total / best_native],
            cpu_s_per_gib: [plugin_cpu / gib, native_cpu / gib],
        });
        let line = format!(
            "{label} x {count}: plugin {:.1} MiB/s ({:.0} blocks/s), object_store {:.1} MiB/s ({:.0} blocks/s), ratio {:.2}\n",
            total / best_plugin,
            count as f64 / best_plugin,
            total / best_native,
            count as f64 / best_native,
            best_native / best_plugin
        );
        report.push_str(&line);
    }
    eprintln!("{report}");
    let name = if https { "target/s3-throughput-https.txt" } else { "target/s3-throughput.txt" };
    let _ = std::fs::write(workspace().join(name), &report);
    figures
}

/// One block size's figures from [`throughput_beside_a_native_client`]: each
/// pair is `[S3 plugin, object_store]`.
#[allow(dead_code)]
pub struct Throughput {
    /// `64 KiB` or `16 MiB`.
    pub label: &'static str,
    /// Blocks per second (best round).
    pub blocks_per_s: [f64; 2],
    /// MiB per second (best round).
    pub mib_per_s: [f64; 2],
    /// Process CPU seconds per GiB uploaded (all rounds).
    pub cpu_s_per_gib: [f64; 2],
}

#[tokio::test]
async fn uploads_to_one_endpoint_reuse_their_connections() {
    let server = S3sFs::start("pooled");
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&server.endpoint(), "pooled", &[])).await;
    for n in 0..20u64 {
        let bytes = crate::common::bytes(64 * 1024, n);
        let key = format!("keep/{n}.blk");
        assert_eq!(put(&client, n, &key, &bytes).await.unwrap(), Outcome::Uploaded);
        assert_eq!(std::fs::read(server.root.join("pooled").join(&key)).unwrap(), bytes, "block {n} intact");
    }
    // One upload after another: one connection serves them all.
    let (opened, reused) = client.connections();
    assert_eq!(opened, 1, "one connection serves one upload after another");
    assert!(reused >= 19, "every request after the first reuses it: {reused} reused");
}

#[tokio::test]
async fn one_bucket_serves_more_uploads_than_an_instance_s_resource_table_holds() {
    // wasmtime-wasi-http keeps the `request-options` of every request in
    // the instance's resource table: an instance used for more requests than
    // the table holds trapped (and its bucket paused) until the host retired
    // instances whose table had grown.
    use std::sync::atomic::Ordering::Relaxed;
    let server = S3sFs::start("long");
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&server.endpoint(), "long", &[])).await;
    let uploads = blockferry::plugin::sandbox::MAX_TABLE_ENTRIES as u64 + 100;
    for n in 0..uploads {
        let bytes = crate::common::bytes(1024, n);
        let outcome = put(&client, n, &format!("many/{n}.blk"), &bytes).await;
        assert_eq!(outcome.unwrap_or_else(|e| panic!("upload {n}: {e}")), Outcome::Uploaded, "upload {n}");
    }
    assert_eq!(client.stats.traps.load(Relaxed), 0, "no instance trapped");
    let retired = client.stats.retired.load(Relaxed);
    let at = blockferry::plugin::RETIRE_AT_TABLE_ENTRIES as u64;
    assert!(retired >= uploads / at - 1, "{retired} instances retired over {uploads} uploads");
    assert_eq!(std::fs::read_dir(server.root.join("long/many")).unwrap().count() as u64, uploads);
}

/// A proxy that answers one request per connection as if it kept the
/// connection alive (no `connection: close`), then closes it: a server whose
/// idle timeout ends every kept-alive connection at once.
fn closing_proxy(upstream: std::net::SocketAddr) -> (u16, StopOnDrop) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, runtime) = crate::common::servers::serve_on_loopback(move |mut client| async move {
        let mut buf = Vec::new();
        let Ok(Some(head)) = crate::common::servers::read_head(&mut client, &mut buf).await else { return };
        if crate::common::servers::read_body(&mut client, &mut buf, head.end + head.length).await.is_err() {
            return;
        }
        let mut request = format!("{}\r\n", head.request_line);
        for (k, v) in head.headers.iter().filter(|(k, _)| k != "connection") {
            request += &format!("{k}: {v}\r\n");
        }
        request += "connection: close\r\n\r\n";
        let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        server.write_all(request.as_bytes()).await.unwrap();
        server.write_all(&buf[head.end..]).await.unwrap();
        let mut response = Vec::new();
        server.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let end = text.find("\r\n\r\n").unwrap();
        let kept: Vec<&str> =
            text[..end].split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
        let mut out = kept.join("\r\n").into_bytes();
        out.extend_from_slice(&response[end..]);
        let _ = client.write_all(&out).await;
        let _ = client.shutdown().await;
    });
    (port, StopOnDrop(Some(runtime)))
}

/// Stops a test server's runtime without blocking (safe inside a test's runtime).
struct StopOnDrop(Option<tokio::runtime::Runtime>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[tokio::test]
async fn a_kept_alive_connection_the_server_closed_costs_no_upload() {
    let server = S3sFs::start("closing");
    let (port, _proxy) = closing_proxy(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&format!("http://127.0.0.1:{port}"), "closing", &[])).await;
    for n in 0..10u64 {
        let bytes = crate::common::bytes(16 * 1024, n);
        let key = format!("c/{n}.blk");
        assert_eq!(put(&client, n, &key, &bytes).await.unwrap(), Outcome::Uploaded, "block {n}");
        assert_eq!(std::fs::read(server.root.join("closing").join(&key)).unwrap(), bytes, "block {n} intact");
    }
    let (opened, _) = client.connections();
    assert!(opened >= 10, "a closed connection is not used again: {opened} opened");
}

/// Puts `bytes` as block `number` under `key`, with what the plugin reported.
async fn put_reported(client: &BucketClient, number: u64, key: &str, bytes: &[u8]) -> Result<PutReport, CallError> {
    client.put_block_reported(&block(number, key, bytes), &BlockBody::from_bytes(bytes.to_vec())).await
}

/// The remote object of a hash mismatch (panics on any other result).
fn mismatch(result: Result<PutReport, CallError>) -> RemoteObject {
    match result {
        Err(CallError::Plugin(PluginFailure::HashMismatch(remote))) => remote,
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
}

/// Whether a request the proxy saw is an `UploadPart` of part `number`.
fn is_part(target: &str, number: u32) -> bool {
    target.contains(&format!("partNumber={number}&"))
}

#[tokio::test]
async fn a_single_part_put_the_server_stored_with_other_bytes_is_a_mismatch_never_uploaded() {
    // moto does not check Content-MD5: a byte flipped on the way is stored,
    // and only the ETag it answers with tells.
    let moto = Moto::start();
    moto.create_bucket("flipped");
    let proxy =
        FaultProxy::start(moto.addr(), |n, method, _| (n == 0 && method == "PUT").then_some(Fault::FlipByte(100)));
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "flipped", &[])).await;
    let bytes = crate::common::bytes(64 * 1024, 21);
    let remote = mismatch(put_reported(&client, 1, "b/1.blk", &bytes).await);
    let stored = boto_md5(&moto.endpoint(), "flipped", "b/1.blk");
    assert_ne!(stored, md5_hex(&bytes), "the server stored the flipped bytes");
    assert_eq!(remote.md5.as_deref().map(hex::encode), Some(stored.clone()), "the server's digest is reported");
    assert_eq!(proxy.faults(), 1);
    // Not provably this call's write (no versioning): left for an operator, not deleted.
    assert_eq!(boto_md5(&moto.endpoint(), "flipped", "b/1.blk"), stored);
    // `stat` reports the server's digest, not the MD5 metadata the plugin wrote.
    let head = boto_head(&moto.endpoint(), "flipped", "b/1.blk");
    assert_eq!(head["Metadata"]["content-md5"], B64.encode(Md5::digest(&bytes)), "the claim is in the metadata");
    let stat = client.stat("b/1.blk").await.unwrap().unwrap();
    assert_eq!(stat.md5.map(hex::encode), Some(stored));
    // Another put of the same block finds the corrupt object: still a mismatch.
    mismatch(put_reported(&client, 1, "b/1.blk", &bytes).await);

    // A clean write is confirmed by the server's ETag.
    let report = put_reported(&client, 2, "b/2.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));
    let report = put_reported(&client, 2, "b/2.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::AlreadyPresent, Some(Confirmation::ServerDigest)));
}

#[tokio::test]
async fn in_a_versioned_bucket_the_corrupt_version_is_deleted_and_the_retry_uploads() {
    let moto = Moto::start();
    moto.create_bucket("versioned");
    boto(
        &moto.endpoint(),
        "s3.put_bucket_versioning(Bucket='versioned', VersioningConfiguration={'Status': 'Enabled'})",
    );
    let proxy =
        FaultProxy::start(moto.addr(), |n, method, _| (n == 0 && method == "PUT").then_some(Fault::FlipByte(7)));
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "versioned", &[])).await;
    let bytes = crate::common::bytes(32 * 1024, 22);
    let message = match put_reported(&client, 1, "v.blk", &bytes).await {
        Err(CallError::Plugin(PluginFailure::Transient(m))) => m,
        other => panic!("expected a transient failure, got {other:?}"),
    };
    assert!(message.contains("stored other bytes") && message.contains("deleted the version"), "{message}");
    let seen = proxy.seen();
    let delete = seen.iter().find(|r| r.method == "DELETE").expect("the corrupt version is deleted");
    assert!(delete.target.contains("versionId="), "by its version id: {}", delete.target);
    let versions =
        boto(&moto.endpoint(), "print(len(s3.list_object_versions(Bucket='versioned').get('Versions', [])))");
    assert_eq!(versions.trim(), "0", "nothing of the corrupt write is left");
    // The host's retry uploads the block.
    let report = put_reported(&client, 1, "v.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));
    assert_eq!(boto_md5(&moto.endpoint(), "versioned", "v.blk"), md5_hex(&bytes));
}

#[tokio::test]
async fn a_multipart_part_the_server_stored_with_other_bytes_is_sent_again() {
    let moto = Moto::start();
    moto.create_bucket("parts");
    // Part 2 of the first upload is flipped once: its ETag disagrees, the part is sent again.
    let flipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = flipped.clone();
    let proxy = FaultProxy::start(moto.addr(), move |_, method, target| {
        (method == "PUT" && is_part(target, 2) && !once.swap(true, std::sync::atomic::Ordering::SeqCst))
            .then_some(Fault::FlipByte(MIB))
    });
    let runtime = runtime();
    let multipart = [("multipart_threshold", "5242880"), ("part_size", "5242880"), ("retry_base_delay_ms", "10")];
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "parts", &multipart)).await;
    let bytes = crate::common::bytes(12 * MIB, 23);
    let report = put_reported(&client, 1, "big.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));
    assert_eq!(proxy.faults(), 1);
    let part_2 = proxy.seen().iter().filter(|r| r.method == "PUT" && is_part(&r.target, 2)).count();
    assert_eq!(part_2, 2, "part 2 was sent again");
    assert_eq!(boto_md5(&moto.endpoint(), "parts", "big.blk"), md5_hex(&bytes));
    let etag = boto_head(&moto.endpoint(), "parts", "big.blk")["ETag"].as_str().unwrap().to_string();
    assert!(etag.ends_with("-3\""), "a three-part upload: {etag}");
}

#[tokio::test]
async fn a_part_corrupted_on_every_attempt_is_never_uploaded() {
    let moto = Moto::start();
    moto.create_bucket("always");
    let proxy = FaultProxy::start(moto.addr(), |_, method, target| {
        (method == "PUT" && is_part(target, 3)).then_some(Fault::FlipByte(5))
    });
    let runtime = runtime();
    let multipart = [
        ("multipart_threshold", "5242880"),
        ("part_size", "5242880"),
        ("retry_base_delay_ms", "10"),
        ("retry_max_attempts", "3"),
    ];
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "always", &multipart)).await;
    let bytes = crate::common::bytes(12 * MIB, 24);
    let message = transient(put(&client, 1, "big.blk", &bytes).await.unwrap_err());
    assert!(message.contains("part 3") && message.contains("stored other bytes"), "{message}");
    let listed = boto(&moto.endpoint(), "print(s3.list_objects_v2(Bucket='always').get('KeyCount', 0))");
    assert_eq!(listed.trim(), "0", "no object was completed");
    assert_eq!(open_uploads(&moto.endpoint(), "always"), 0, "the upload was aborted");
}

#[tokio::test]
async fn s3s_fs_keeping_a_body_it_answered_bad_digest_for_is_a_mismatch() {
    // s3s-fs checks Content-MD5 and answers BadDigest, but keeps the object;
    // the retry then finds it, and its ETag (not the metadata) says it differs.
    let server = S3sFs::start("digest");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap(), |n, method, _| {
        (n == 0 && method == "PUT").then_some(Fault::FlipByte(3))
    });
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "digest", &[])).await;
    let bytes = crate::common::bytes(16 * 1024, 25);
    let message = transient(put(&client, 1, "d.blk", &bytes).await.unwrap_err());
    assert!(message.contains("BadDigest"), "{message}");
    let kept = std::fs::read(server.root.join("digest/d.blk")).expect("s3s-fs kept the object");
    assert_ne!(md5_hex(&kept), md5_hex(&bytes), "the flipped body was kept");
    let remote = mismatch(put_reported(&client, 1, "d.blk", &bytes).await);
    assert_eq!(remote.md5, Some(Md5::digest(&kept).to_vec()), "the server's digest of what it kept");
}

/// The CRC-32C of `bytes` as S3 writes it: big-endian, base64.
fn crc32c_b64(bytes: &[u8]) -> String {
    B64.encode(crc32c::crc32c(bytes).to_be_bytes())
}

/// The value of header `name` of a request the proxy saw.
fn seen_header<'a>(request: &'a crate::common::servers::SeenRequest, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn under_sse_kms_the_checksum_s3s_fs_verified_and_echoed_confirms_the_write() {
    // The proxy makes s3s-fs's answers say SSE-KMS, whose ETags are no digests
    // of the content: the additional checksum (sent by default under SSE-KMS,
    // verified and echoed by s3s-fs) is then the only evidence of what was stored.
    let server = S3sFs::start("kms");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap(), |_, _, _| {
        Some(Fault::SetResponseHeader("x-amz-server-side-encryption", "aws:kms".into()))
    });
    let runtime = runtime();
    let kms = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "kms", &[("sse", "aws:kms")])).await;
    let bytes = crate::common::bytes(64 * 1024, 26);
    let report = put_reported(&kms, 1, "k/1.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));
    let put = proxy.seen().into_iter().find(|r| r.method == "PUT").unwrap();
    assert_eq!(seen_header(&put, "x-amz-checksum-crc32c"), Some(crc32c_b64(&bytes).as_str()));
    assert_eq!(std::fs::read(server.root.join("kms/k/1.blk")).unwrap(), bytes);

    // Without the checksum, nothing the server said proves the content.
    let unchecked = settings(&proxy.endpoint(), "kms", &[("sse", "aws:kms"), ("checksum", "none")]);
    let unchecked = open(&runtime, "blockferry_s3", unchecked).await;
    let report = put_reported(&unchecked, 2, "k/2.blk", &bytes).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, None));
}

#[tokio::test]
async fn a_checksum_echo_that_differs_is_a_mismatch_never_uploaded() {
    // The server's echo of the checksum disagrees with what was sent (as a
    // server that stored other bytes would answer): never `uploaded`.
    let server = S3sFs::start("echo");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap(), |_, method, _| {
        (method == "PUT").then(|| Fault::SetResponseHeader("x-amz-checksum-sha256", B64.encode([0u8; 32])))
    });
    let runtime = runtime();
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "echo", &[("checksum", "sha256")])).await;
    let bytes = crate::common::bytes(8 * 1024, 27);
    let remote = mismatch(put_reported(&client, 1, "e.blk", &bytes).await);
    assert_eq!(remote.size, bytes.len() as u64);
}

#[tokio::test]
async fn a_multipart_upload_sends_part_checksums_and_a_part_whose_echo_differs_is_sent_again() {
    let server = S3sFs::start("crc");
    let once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = once.clone();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap(), move |_, method, target| {
        if method == "POST" && target.contains("uploadId=") {
            // The completion says SSE-KMS: its ETag proves nothing, only a composite checksum could.
            return Some(Fault::SetResponseHeader("x-amz-server-side-encryption", "aws:kms".into()));
        }
        (method == "PUT" && is_part(target, 2) && !first.swap(true, std::sync::atomic::Ordering::SeqCst))
            .then(|| Fault::SetResponseHeader("x-amz-checksum-crc32c", "AAAAAA==".into()))
    });
    let runtime = runtime();
    let multipart = [
        ("multipart_threshold", "5242880"),
        ("part_size", "5242880"),
        ("retry_base_delay_ms", "10"),
        ("checksum", "crc32c"),
    ];
    let client = open(&runtime, "blockferry_s3", settings(&proxy.endpoint(), "crc", &multipart)).await;
    let bytes = crate::common::bytes(12 * MIB, 28);
    let report = put_reported(&client, 1, "big.blk", &bytes).await.unwrap();
    // s3s-fs answers a completion with no checksum (AWS S3 gives the composite
    // `base64-N`, which the plugin compares): nothing proves the object then.
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, None));
    let seen = proxy.seen();
    let create = seen.iter().find(|r| r.method == "POST" && r.target.contains("uploads")).unwrap();
    assert_eq!(seen_header(create, "x-amz-checksum-algorithm"), Some("CRC32C"));
    let parts: Vec<_> = seen.iter().filter(|r| r.method == "PUT" && is_part(&r.target, 2)).collect();
    assert_eq!(parts.len(), 2, "part 2 was sent again");
    let part_2 = &bytes[5 * MIB..10 * MIB];
    assert_eq!(seen_header(parts[1], "x-amz-checksum-crc32c"), Some(crc32c_b64(part_2).as_str()));
    assert_eq!(std::fs::read(server.root.join("crc/big.blk")).unwrap(), bytes);
}
