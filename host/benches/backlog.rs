//! Backlog drain: a store holding N small blocks (default 100,000 of 8 KiB)
//! pending in one `fs` bucket, as after a restart; measures start-up recovery
//! and the time to upload them all through the `fs` provider plugin, with the
//! `s3` and `gcs` plugins loaded beside it (a bucket opened for each, idle),
//! and the process's peak resident memory meanwhile. Then a second backlog
//! (default 20,000 blocks) drains through the `s3` plugin to a local `s3s-fs`
//! (its root on /dev/shm when writable).
//! `BACKLOG_BLOCKS=N BACKLOG_CONCURRENCY=8 BACKLOG_S3_BLOCKS=N BACKLOG_S3_CONCURRENCY=16
//! cargo bench -p blockferry --bench backlog` (after scripts/build-plugins.sh and
//! scripts/install-test-servers.sh).

mod report;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/common/servers.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockferry::config::{Compression, UploadConfig};
use blockferry::plugin::{BucketClient, BucketSpec, EngineSettings, PluginRuntime};
use blockferry::store::{BlockMeta, BlockStore};
use blockferry::upload::{Target, UploadManager};
use md5::{Digest, Md5};
use report::{Goal, row};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `100000` as `100,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    // What goes wrong during a drain shows (RUST_LOG, default: warnings).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let n = env("BACKLOG_BLOCKS", 100_000);
    let concurrency = env("BACKLOG_CONCURRENCY", 8) as usize;
    let n_s3 = env("BACKLOG_S3_BLOCKS", 20_000);
    let s3_concurrency = env("BACKLOG_S3_CONCURRENCY", 16) as usize;

    // s3s-fs keeps its objects under a temp dir: on the tmpfs when there is
    // one, so the figure is the upload path's and not this machine's disk.
    // TMPDIR is changed before any thread exists, and restored.
    let tmpdir = std::env::var_os("TMPDIR");
    if tempfile::tempdir_in("/dev/shm").is_ok() {
        unsafe { std::env::set_var("TMPDIR", "/dev/shm") };
    }
    let s3s = servers::S3sFs::start("blocks");
    match tmpdir {
        Some(v) => unsafe { std::env::set_var("TMPDIR", v) },
        None => unsafe { std::env::remove_var("TMPDIR") },
    }
    println!("s3s-fs root: {}", s3s.root.display());

    let dir = tempfile::tempdir().unwrap();
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    lay_down(&dir.path().join("store"), "fs", n);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let runtime = PluginRuntime::new(&EngineSettings::default(), None).unwrap();
        let settings = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let endpoint = s3s.endpoint();
        let s3_settings = settings(&[
            ("endpoint", &endpoint),
            ("bucket", "blocks"),
            ("region", "us-east-1"),
            ("addressing", "path"),
            ("access_key_id", servers::ACCESS_KEY),
            ("secret_access_key", servers::SECRET_KEY),
        ]);
        // An emulator endpoint and no credentials: `open` checks them without
        // the network; this bucket is never called.
        let gcs_settings = settings(&[("endpoint", "http://127.0.0.1:9"), ("bucket", "blocks")]);
        let fs = target(&runtime, "blockferry_fs", "fs", Vec::new(), Some(bucket_dir), concurrency).await;
        let s3 = target(&runtime, "blockferry_s3", "s3", s3_settings, None, s3_concurrency).await;
        let _gcs = target(&runtime, "blockferry_gcs", "gcs", gcs_settings, None, 1).await;

        let rate = drain(&dir.path().join("store"), fs, n).await;
        row(
            &format!("backlog drain, {} × 8 KiB blocks after a restart, to fs", thousands(n)),
            rate,
            "blocks/s",
            None,
            Goal::AtLeast(2000.0),
        );
        row(
            &format!("resident memory, 3 plugins loaded, {}-block backlog", thousands(n)),
            report::peak_rss_mib(),
            "MiB",
            None,
            Goal::AtMost(200.0),
        );

        lay_down(&dir.path().join("store-s3"), "s3", n_s3);
        let rate = drain(&dir.path().join("store-s3"), s3, n_s3).await;
        row(
            &format!(
                "backlog drain, {} × 8 KiB blocks after a restart, to a local S3 server (s3s-fs)",
                thousands(n_s3)
            ),
            rate,
            "blocks/s",
            None,
            Goal::AtLeast(500.0),
        );
    });
}

/// Writes `n` blocks of 8 KiB into a store at `store_dir`, each pending in
/// `bucket` (as a week of blocks would have been left).
fn lay_down(store_dir: &Path, bucket: &str, n: u64) {
    let store = BlockStore::open(store_dir, Compression::None).unwrap();
    let names = vec![bucket.to_string()];
    let block = vec![0xa5u8; 8192];
    let md5 = Md5::digest(&block);
    for i in 0..n {
        let file = format!("{i:036}.blk");
        std::fs::write(store_dir.join(&file), &block).unwrap();
        let meta = BlockMeta::new(i, file, block.len() as u64, &md5, &names);
        std::fs::write(store.meta_path(i), serde_json::to_vec(&meta).unwrap()).unwrap();
    }
}

/// Opens bucket `name` with plugin `plugin` (a built one) as an upload target.
async fn target(
    runtime: &PluginRuntime,
    plugin: &str,
    name: &str,
    settings: Vec<(String, String)>,
    directory: Option<PathBuf>,
    concurrency: usize,
) -> Target {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/wasm32-wasip2/plugin/{plugin}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh first", path.display());
    let spec = BucketSpec {
        name: name.into(),
        settings,
        directory,
        allow_hosts: Vec::new(),
        denied_networks: Vec::new(),
        memory_limit: 64 << 20,
        call_timeout: Duration::from_secs(30),
        max_concurrency: concurrency,
        secrets: Vec::new(),
        log_lines_per_minute: blockferry::plugin::logs::DEFAULT_LINES_PER_MINUTE,
        tls: Default::default(),
        credentials: None,
    };
    let client = BucketClient::open(runtime.load(&path, None).unwrap(), spec)
        .await
        .unwrap_or_else(|e| panic!("opening {name} with {plugin}: {e}"));
    Target {
        name: name.into(),
        client: Arc::new(client),
        key: Arc::new(|n, ext| format!("{n:036}{ext}")),
        concurrency,
        prefix: String::new(),
    }
}

/// Restarts on the store at `store_dir` (recovery scan, then uploads) and
/// uploads its `n` pending blocks to `target`; prints the times, returns blocks/s.
async fn drain(store_dir: &Path, target: Target, n: u64) -> f64 {
    let (name, concurrency) = (target.name.clone(), target.concurrency);
    let store = BlockStore::open(store_dir, Compression::None).unwrap();
    let started = Instant::now();
    let recovered = store.recover(std::slice::from_ref(&name)).unwrap();
    let recovery = started.elapsed();
    let started = Instant::now();
    let manager = UploadManager::start(Arc::new(store), vec![target], UploadConfig::default()).unwrap();
    let stats = manager.stats()[0].1.clone();
    let (mut last, mut progressed) = (0, Instant::now());
    while stats.safe() < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if stats.safe() > last {
            (last, progressed) = (stats.safe(), Instant::now());
        }
        assert!(
            progressed.elapsed() < Duration::from_secs(60),
            "{name}: no block uploaded for 60 s ({last} of {n} safe, {} failed attempts)",
            stats.failures.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let drained = started.elapsed();
    manager.shutdown().await;
    let rate = n as f64 / drained.as_secs_f64();
    println!(
        "backlog of {n} blocks of 8 KiB to {name} (concurrency {concurrency}): recovery scan {:.2} s ({} blocks), \
         drain {:.2} s = {rate:.0} blocks/s, {} failed attempts",
        recovery.as_secs_f64(),
        recovered.blocks,
        drained.as_secs_f64(),
        stats.failures.load(std::sync::atomic::Ordering::Relaxed),
    );
    rate
}
