//! The plugin runtime against real components: misbehaving plugins get clear
//! errors while a good plugin in the same host keeps working; bad files are
//! refused with clear messages; compiled components are cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::*;
use blockferry::plugin::{
    BlockBody, BucketClient, CallError, LoadError, Outcome, PluginFailure, PluginRuntime, Provenance,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A misbehave bucket and an fs bucket in one runtime.
async fn two_buckets(
    runtime: &PluginRuntime,
    tweak: impl FnOnce(&mut blockferry::plugin::BucketSpec),
) -> (BucketClient, BucketClient, tempfile::TempDir) {
    let mut bad = spec("bad");
    bad.call_timeout = Duration::from_millis(500);
    bad.memory_limit = 16 << 20;
    tweak(&mut bad);
    let bad = BucketClient::open(load(runtime, "blockferry_misbehave"), bad).await.expect("open misbehave");
    let dir = tempfile::tempdir().unwrap();
    let mut good = spec("good");
    good.directory = Some(dir.path().to_path_buf());
    let good = BucketClient::open(load(runtime, "blockferry_fs"), good).await.expect("open fs");
    (bad, good, dir)
}

async fn put(client: &BucketClient, number: u64, key: &str) -> Result<Outcome, CallError> {
    let body = bytes(4096, number);
    client.put_block(&block(number, key, &body), &BlockBody::from_bytes(body)).await
}

/// After a bad call: the same plugin's next call works, and so does the good plugin.
async fn both_still_work(bad: &BucketClient, good: &BucketClient, n: u64) {
    assert_eq!(put(bad, n, "fine").await.expect("misbehave recovers"), Outcome::Uploaded);
    assert_eq!(put(good, n, &format!("{n:036}.blk")).await.expect("fs keeps working"), Outcome::Uploaded);
}

#[tokio::test]
async fn a_trap_fails_one_call_only() {
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |_| {}).await;
    let err = put(&bad, 1, "trap").await.unwrap_err();
    assert!(matches!(err, CallError::Trap { call: "put-block", .. }), "{err}");
    assert!(err.to_string().contains("misbehave/bad"), "names the plugin: {err}");
    assert!(err.is_retryable());
    both_still_work(&bad, &good, 2).await;
    assert_eq!(bad.stats.traps.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_looping_plugin_is_stopped_at_its_deadline() {
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |_| {}).await;
    let started = std::time::Instant::now();
    let err = put(&bad, 1, "loop").await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { timeout_ms: 500, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped promptly, took {:?}", started.elapsed());
    assert!(err.to_string().contains("call_timeout_ms"), "says what to raise: {err}");
    both_still_work(&bad, &good, 2).await;
}

#[tokio::test]
async fn a_loop_does_not_block_other_plugins_meanwhile() {
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |s| s.call_timeout = Duration::from_secs(5)).await;
    // Both run on this test's single thread: the looping guest must yield.
    let looping = async {
        let result = put(&bad, 1, "loop").await;
        (result, std::time::Instant::now())
    };
    let working = async {
        for n in 10..15 {
            assert_eq!(put(&good, n, &format!("k{n}")).await.unwrap(), Outcome::Uploaded);
        }
        std::time::Instant::now()
    };
    let ((looped, loop_done), good_done) = tokio::join!(looping, working);
    assert!(matches!(looped, Err(CallError::Timeout { .. })));
    assert!(good_done < loop_done, "the good plugin's uploads waited for the looping plugin's deadline");
}

#[tokio::test]
async fn allocating_past_the_cap_is_out_of_memory() {
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |_| {}).await;
    let err = put(&bad, 1, "oom").await.unwrap_err();
    assert!(matches!(err, CallError::OutOfMemory { limit_bytes: 16777216, .. }), "{err}");
    assert!(err.to_string().contains("memory_limit_mib"), "{err}");
    both_still_work(&bad, &good, 2).await;
}

/// A one-shot HTTP server on loopback answering 200 to every request.
async fn http_ok_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, _, task) = counting_ok_server().await;
    (addr, task)
}

/// [`http_ok_server`], counting the connections it accepts.
async fn counting_ok_server() -> (std::net::SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn egress_is_limited_to_the_authorities_in_the_settings() {
    let (allowed, _server) = http_ok_server().await;
    let (other, _server2) = http_ok_server().await;
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |s| {
        s.settings.push(("endpoint".into(), format!("http://{allowed}")));
    })
    .await;
    // The permitted endpoint works.
    assert_eq!(put(&bad, 1, &format!("egress:http://{allowed}/x")).await.unwrap(), Outcome::Uploaded);
    // Another server on the same machine is refused, and the refusal counted.
    let err = put(&bad, 2, &format!("egress:http://{other}/x")).await.unwrap_err();
    let CallError::Plugin(PluginFailure::Permanent(message)) = &err else { panic!("expected permanent, got {err}") };
    assert!(message.contains("egress to"), "{message}");
    assert_eq!(bad.refused_requests(), 1);
    both_still_work(&bad, &good, 3).await;
}

#[tokio::test]
async fn a_permitted_name_resolving_into_a_denied_network_is_refused() {
    let (server, _task) = http_ok_server().await;
    let runtime = runtime();
    let (bad, _good, _dir) = two_buckets(&runtime, |s| {
        s.settings.push(("endpoint".into(), format!("http://localhost:{}", server.port())));
        s.denied_networks.push("127.0.0.0/8".parse().unwrap());
        s.denied_networks.push("::1/128".parse().unwrap());
    })
    .await;
    let err = put(&bad, 1, &format!("egress:http://localhost:{}/", server.port())).await.unwrap_err();
    assert!(matches!(err, CallError::Plugin(PluginFailure::Permanent(_))), "{err}");
    assert_eq!(bad.refused_requests(), 1);
}

#[tokio::test]
async fn no_spelling_of_a_denied_address_reaches_the_metadata_canary() {
    // A loopback server stands in for the cloud metadata service; denying
    // loopback makes it as forbidden as 169.254.169.254 is by default.
    let (canary, hits, _task) = counting_ok_server().await;
    let port = canary.port();
    let spellings: Vec<String> = [
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0000:0000:0000:0000:0000:FFFF:7F00:0001]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "127.0.0.1",
    ]
    .iter()
    .map(|host| format!("{host}:{port}"))
    .collect();
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |s| {
        s.denied_networks.push("127.0.0.0/8".parse().unwrap());
        s.allow_hosts = spellings.clone();
        s.settings.push(("endpoint".into(), format!("http://[::ffff:127.0.0.1]:{port}/")));
    })
    .await;
    for (n, authority) in spellings.iter().enumerate() {
        let err = put(&bad, n as u64 + 1, &format!("egress:http://{authority}/latest/meta-data")).await.unwrap_err();
        let CallError::Plugin(PluginFailure::Permanent(message)) = &err else { panic!("{authority}: got {err}") };
        assert!(message.contains("egress to"), "{authority}: {message}");
    }
    assert_eq!(bad.refused_requests(), spellings.len() as u64);
    assert_eq!(hits.load(Ordering::Relaxed), 0, "a request reached the canary");
    both_still_work(&bad, &good, 100).await;

    // The same request from a bucket that does not deny loopback reaches the
    // canary (connecting to the IPv4 address): the refusals above are the policy's.
    let open = two_buckets(&runtime, |s| s.allow_hosts = spellings.clone()).await.0;
    assert_eq!(put(&open, 1, &format!("egress:http://[::ffff:127.0.0.1]:{port}/")).await.unwrap(), Outcome::Uploaded);
    assert_eq!(hits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_deadline_bounds_http_waits_too() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let runtime = runtime();
    let (bad, _good, _dir) =
        two_buckets(&runtime, |s| s.settings.push(("endpoint".into(), format!("http://{addr}")))).await;
    let started = std::time::Instant::now();
    let err = put(&bad, 1, &format!("egress:http://{addr}/slow")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(err, CallError::Timeout { .. } | CallError::Plugin(PluginFailure::Permanent(_))), "{err}");
}

#[tokio::test]
async fn a_plugin_refusing_its_settings_fails_at_open() {
    let runtime = runtime();
    let mut s = spec("refuses");
    s.settings.push(("fail-open".into(), "yes".into()));
    let err = BucketClient::open(load(&runtime, "blockferry_misbehave"), s).await.unwrap_err();
    assert!(matches!(err, CallError::Plugin(PluginFailure::Open { .. })), "{err}");
    assert!(err.to_string().contains("fail-open requested"), "{err}");
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn streams_and_resources_are_capped_per_instance_while_another_bucket_carries_on() {
    let runtime = runtime();
    let (bad, good, dir) = two_buckets(&runtime, |s| s.memory_limit = 64 << 20).await;
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(4096, 3);
    let path = tmp.path().join("block.blk");
    std::fs::write(&path, &content).unwrap();
    let body = BlockBody::open(&path).unwrap();
    let before = open_fds();
    // Streams over a file-backed body (each holds a file of the host) until refused, three times over.
    for n in 1..=3 {
        let err = bad.put_block(&block(n, "streams", &content), &body).await.unwrap_err();
        let message = permanent(err);
        assert!(message.contains("opened 64 streams, then: refused"), "{message}");
        assert!(message.contains("drop streams"), "says what to do: {message}");
    }
    assert!(open_fds() <= before + 2, "streams' files were closed: {before} fds before, {} after", open_fds());
    // HTTP fields until the resource table is full: the call traps, the host does not.
    let err = put(&bad, 4, "fields").await.unwrap_err();
    let trapped = matches!(&err, CallError::Trap { .. });
    let refused = matches!(&err, CallError::Plugin(PluginFailure::Permanent(m)) if m.contains("made"));
    assert!(trapped || refused, "{err}");
    both_still_work(&bad, &good, 5).await;
    assert_eq!(objects_in(dir.path()), 1);
}

#[tokio::test]
async fn a_forged_provider_name_is_refused_shown_escaped_and_cut() {
    let runtime = runtime();
    for (forged, shown) in [
        (
            "x\"} 1\nblockferry_injected_metric 1\nok: fake".to_string(),
            r#""x\"} 1\nblockferry_injected_metric 1\nok: fake""#,
        ),
        ("n".repeat(10 << 20), "more bytes"),
    ] {
        let mut s = spec("forged");
        s.settings.push(("provider-name".into(), forged.clone()));
        s.memory_limit = 128 << 20;
        let err = BucketClient::open(load(&runtime, "blockferry_misbehave"), s).await.unwrap_err();
        assert!(matches!(err, CallError::BadProviderName { .. }), "{err}");
        assert!(!err.is_retryable());
        let message = err.to_string();
        assert!(message.contains(shown) && !message.contains('\n'), "{message}");
        assert!(message.len() < 1024, "{} bytes", message.len());
    }
}

#[tokio::test]
async fn streamed_and_chunked_bodies_arrive_intact_from_files() {
    let runtime = runtime();
    let (bad, _good, _dir) = two_buckets(&runtime, |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(3 * 1024 * 1024 + 17, 7);
    let path = tmp.path().join("block.blk");
    std::fs::write(&path, &content).unwrap();
    let body = BlockBody::open(&path).unwrap();
    // "stream…" reads through a wasi:io input-stream; other keys through `read`.
    for key in ["stream-it", "chunks"] {
        let outcome = bad.put_block(&block(1, key, &content), &body).await;
        assert_eq!(outcome.unwrap(), Outcome::Uploaded, "{key}");
    }
    // A body whose bytes do not match the MD5 the host claims is caught by the guest.
    let mut wrong = block(1, "stream-wrong", &content);
    wrong.md5 = vec![0; 16];
    assert!(bad.put_block(&wrong, &body).await.is_err());
}

#[test]
fn wrong_version_is_refused_naming_both_versions() {
    let runtime = runtime();
    let err = runtime.load(&plugin_path("blockferry_wrong_version"), None).unwrap_err();
    assert!(matches!(err, LoadError::Incompatible { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("0.2.0") && msg.contains("0.1.3"), "{msg}");
}

#[test]
fn wrong_world_is_refused_naming_what_it_exports() {
    let runtime = runtime();
    let err = runtime.load(&plugin_path("blockferry-wrong-world"), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Incompatible { .. }), "{msg}");
    assert!(msg.contains("wasi:cli/run") && msg.contains("blockferry:uploader/bucket-uploader"), "{msg}");
}

#[test]
fn files_that_are_not_components_are_refused() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, wat::parse_str("(module (func (export \"f\")))").unwrap()).unwrap();
    for (path, expected) in [(&text, "no WebAssembly header"), (&module, "core WebAssembly module")] {
        let err = runtime.load(path, None).unwrap_err();
        assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(err.to_string().contains("wasm32-wasip2"), "says how to build one: {err}");
    }
    let missing = runtime.load(&dir.path().join("missing.wasm"), None).unwrap_err();
    assert!(matches!(missing, LoadError::Read { .. }), "{missing}");
}

#[test]
fn a_pinned_digest_must_match() {
    let runtime = runtime();
    let path = plugin_path("blockferry_fs");
    let actual = blockferry::plugin::sha256_hex(&std::fs::read(&path).unwrap());
    let wrong = "ab".repeat(32);
    let err = runtime.load(&path, Some(&wrong)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&actual), "both digests: {msg}");
    assert!(runtime.load(&path, Some(&actual.to_uppercase())).is_ok());
}

#[test]
fn a_second_start_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let settings = blockferry::plugin::EngineSettings::default();
    let first = PluginRuntime::new(&settings, Some(cache.path())).unwrap();
    let plugin = first.load(&plugin_path("blockferry_fs"), None).unwrap();
    assert_eq!(plugin.provenance, Provenance::Compiled);
    drop(first);
    let second = PluginRuntime::new(&settings, Some(cache.path())).unwrap();
    let plugin = second.load(&plugin_path("blockferry_fs"), None).unwrap();
    assert_eq!(plugin.provenance, Provenance::Cached);
    // A different engine setting is a different key: no stale artifact.
    let third =
        PluginRuntime::new(&blockferry::plugin::EngineSettings { pooling: false, ..settings }, Some(cache.path()))
            .unwrap();
    let _ = third.load(&plugin_path("blockferry_fs"), None).unwrap();
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = PluginRuntime::new(&Default::default(), Some(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("chmod go-w"), "{err}");
}

#[test]
fn a_corrupt_cached_artifact_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let settings = blockferry::plugin::EngineSettings::default();
    let runtime = PluginRuntime::new(&settings, Some(cache.path())).unwrap();
    runtime.load(&plugin_path("blockferry_fs"), None).unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let plugin = runtime.load(&plugin_path("blockferry_fs"), None).unwrap();
    assert_eq!(plugin.provenance, Provenance::Compiled);
}

#[tokio::test]
async fn a_huge_error_message_is_cut_and_the_host_carries_on() {
    let runtime = runtime();
    let (bad, good, _dir) = two_buckets(&runtime, |_| {}).await;
    let message = permanent(put(&bad, 1, "huge-error").await.unwrap_err());
    assert!(message.len() < 5000, "a 4 MiB message is cut: {} bytes kept", message.len());
    assert!(message.ends_with("more bytes cut by the host)"), "{}", &message[message.len() - 60..]);
    both_still_work(&bad, &good, 2).await;
}

#[tokio::test]
async fn a_plugin_sees_no_files_no_environment_and_only_its_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    // Another bucket's credentials, on the host's disk.
    let credentials = dir.path().join("credentials.toml");
    std::fs::write(&credentials, "[buckets.other]\nsecret_access_key = \"other-bucket-secret\"\n").unwrap();
    let runtime = runtime();
    let own = vec![("access_key_id".to_string(), "own-key".to_string())];
    let (bad, good, _fs_dir) = two_buckets(&runtime, |s| s.settings = own).await;
    for path in ["/etc/passwd", credentials.to_str().unwrap(), "/proc/self/environ", "."] {
        let message = permanent(put(&bad, 1, &format!("open-file:{path}")).await.unwrap_err());
        assert!(message.starts_with(&format!("cannot read {path}")), "the plugin read {path}: {message}");
    }
    assert_eq!(permanent(put(&bad, 2, "env").await.unwrap_err()), "none", "no environment variable reaches a plugin");
    assert_eq!(permanent(put(&bad, 3, "settings").await.unwrap_err()), "access_key_id", "only its own settings");
    both_still_work(&bad, &good, 4).await;
}

/// Peak resident memory of this process, in MiB (VmHWM).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Slack the host may use beyond the plugins' memory caps (docs/operator-guide.md).
const HOST_SLACK_MIB: u64 = 64;

/// Peak RSS is process-wide: nextest (scripts/test.sh) runs each test in its own process.
#[tokio::test(flavor = "multi_thread")]
async fn host_memory_stays_within_the_caps_times_concurrency() {
    let runtime = runtime();
    let base = peak_rss_mib();
    let (cap_mib, concurrency) = (256, 2);
    let mut s = spec("rss");
    s.memory_limit = cap_mib << 20;
    s.max_concurrency = concurrency;
    s.call_timeout = Duration::from_secs(120);
    let bad = BucketClient::open(load(&runtime, "blockferry_misbehave"), s).await.unwrap();
    // Three rounds of instances filling their memory to the cap, each discarded after.
    let calls = (0..concurrency as u64 * 3).map(|n| put(&bad, n, "oom"));
    for result in futures::future::join_all(calls).await {
        assert!(matches!(result, Err(CallError::OutOfMemory { .. })), "{result:?}");
    }
    // Then instances reading a 17 MiB body in 16 MiB reads, the most one read may ask for.
    let body = BlockBody::from_bytes(bytes(17 << 20, 5));
    let info = block(1, "read-big:5", &bytes(1, 1));
    for result in futures::future::join_all((0..concurrency * 2).map(|_| bad.put_block(&info, &body))).await {
        assert_eq!(result.unwrap(), Outcome::Uploaded);
    }
    let peak = peak_rss_mib();
    eprintln!("memory_limit_mib = {cap_mib}, concurrency = {concurrency}: base {base} MiB, peak {peak} MiB");
    assert!(
        peak <= base + cap_mib * concurrency as u64 + HOST_SLACK_MIB,
        "peak RSS {peak} MiB over base {base} + {cap_mib} x {concurrency} + {HOST_SLACK_MIB} MiB"
    );
}
