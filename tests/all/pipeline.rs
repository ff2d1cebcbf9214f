//! The store → upload manager → plugins pipeline with real `fs` plugins:
//! uploads to two buckets, hash mismatches, a bucket that is down, retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use blockferry::config::{Compression, UploadConfig};
use blockferry::plugin::{BucketClient, PluginRuntime};
use blockferry::store::{BlockStore, BucketStatus, Confirmed};
use blockferry::upload::BlockNodeAcks::{NotStreaming, UpTo};
use blockferry::upload::{Target, UploadManager, run_retention};

fn key(n: u64) -> String {
    format!("{n:036}.blk")
}

async fn fs_target(runtime: &PluginRuntime, name: &str, dir: &Path) -> Target {
    let mut s = spec(name);
    s.directory = Some(dir.to_path_buf());
    let client = BucketClient::open(load(runtime, "blockferry_fs"), s).await.expect("open fs bucket");
    Target {
        name: name.into(),
        client: Arc::new(client),
        key: Arc::new(|n, ext| format!("{n:036}{ext}")),
        concurrency: 4,
        prefix: String::new(),
    }
}

fn fast_retries() -> UploadConfig {
    UploadConfig {
        retry_attempts: 2,
        retry_initial_backoff_ms: 20,
        retry_max_backoff_ms: 200,
        hold_after_permanent_error_secs: 1,
        local_retention_hours: 0.0,
        retention_interval_secs: 1,
        ..UploadConfig::default()
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    store: Arc<BlockStore>,
    buckets: Vec<PathBuf>,
    names: Vec<String>,
}

fn setup(blocks: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(tmp.path().join("blocks"), Compression::None).unwrap());
    let names = vec!["a".to_string(), "b".to_string()];
    let buckets: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    for b in &buckets {
        std::fs::create_dir_all(b).unwrap();
    }
    for n in 0..blocks {
        store.write_block(n, &bytes(2000 + n as usize * 10, n), &names).unwrap();
    }
    Setup { _tmp: tmp, store, buckets, names }
}

/// Wait until every block is final in every bucket (or fail after 30 s).
async fn wait_final(store: &BlockStore, names: &[String]) {
    let started = Instant::now();
    loop {
        let all_final = store.numbers().unwrap().into_iter().all(|n| {
            let meta = store.read_meta(n).unwrap();
            names.iter().all(|b| meta.status(b).is_final())
        });
        if all_final {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "uploads did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn blocks_reach_both_buckets_and_retention_deletes_exactly_the_safe_ones() {
    let s = setup(10);
    // Bucket b already holds different content for block 3 (another writer).
    std::fs::write(s.buckets[1].join(key(3)), b"someone else's block 3").unwrap();
    let runtime = runtime();
    let targets = vec![fs_target(&runtime, "a", &s.buckets[0]).await, fs_target(&runtime, "b", &s.buckets[1]).await];
    // Nothing is safe yet: retention deletes nothing, even with a zero period.
    assert_eq!(
        run_retention(&s.store, &s.names, Duration::ZERO, Confirmed::ServerDigest, NotStreaming).unwrap().deleted,
        0
    );
    let manager = UploadManager::start(s.store.clone(), targets, fast_retries()).unwrap();
    wait_final(&s.store, &s.names).await;
    let stats_b = manager.stats()[1].1.clone();
    manager.shutdown().await;

    for n in 0..10 {
        let local = std::fs::read(s.store.dir().join(key(n))).unwrap();
        assert_eq!(std::fs::read(s.buckets[0].join(key(n))).unwrap(), local, "bucket a, block {n}");
        let meta = s.store.read_meta(n).unwrap();
        assert!(matches!(meta.status("a"), BucketStatus::Uploaded { .. }));
        if n == 3 {
            assert!(matches!(meta.status("b"), BucketStatus::HashMismatch { remote_md5: Some(_) }), "{meta:?}");
            assert!(meta.hash_mismatch);
            assert_eq!(std::fs::read(s.buckets[1].join(key(3))).unwrap(), b"someone else's block 3", "not overwritten");
        } else {
            assert_eq!(std::fs::read(s.buckets[1].join(key(n))).unwrap(), local, "bucket b, block {n}");
        }
    }
    assert_eq!(stats_b.hash_mismatches.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats_b.failures.load(std::sync::atomic::Ordering::Relaxed), 0, "a mismatch is not retried");

    // A long retention period keeps everything; so does streaming to block
    // nodes while they have acknowledged nothing; when they acknowledged up
    // to block 5, those go; without streaming, a zero period deletes every safe block.
    assert_eq!(
        run_retention(&s.store, &s.names, Duration::from_secs(3600), Confirmed::ServerDigest, NotStreaming)
            .unwrap()
            .deleted,
        0
    );
    assert_eq!(
        run_retention(&s.store, &s.names, Duration::ZERO, Confirmed::ServerDigest, UpTo(None)).unwrap().deleted,
        0
    );
    let report = run_retention(&s.store, &s.names, Duration::ZERO, Confirmed::ServerDigest, UpTo(Some(5))).unwrap();
    assert_eq!((report.deleted, report.retained), (5, 5), "0-5 but the mismatched 3");
    let report = run_retention(&s.store, &s.names, Duration::ZERO, Confirmed::ServerDigest, NotStreaming).unwrap();
    assert_eq!((report.deleted, report.retained), (4, 1));
    assert_eq!(s.store.numbers().unwrap(), vec![3], "only the mismatched block is kept");
    assert!(s.store.read_meta(3).unwrap().hash_mismatch);

    // A restart does not retry the mismatch.
    let targets = vec![fs_target(&runtime, "a", &s.buckets[0]).await, fs_target(&runtime, "b", &s.buckets[1]).await];
    let manager = UploadManager::start(s.store.clone(), targets, fast_retries()).unwrap();
    assert_eq!(manager.pending(), 0);
    manager.shutdown().await;

    // Mode `file` (no bucket, no block node) keeps everything; mode `grpc`
    // (no bucket) deletes what block nodes acknowledged.
    let none: Vec<String> = Vec::new();
    let late = |n: u64| s.store.write_block(n, &bytes(100, n), &none).unwrap();
    for n in 20..24 {
        late(n);
    }
    assert_eq!(
        run_retention(&s.store, &none, Duration::ZERO, Confirmed::ServerDigest, NotStreaming).unwrap().deleted,
        0
    );
    assert_eq!(
        run_retention(&s.store, &none, Duration::ZERO, Confirmed::ServerDigest, UpTo(Some(21))).unwrap().deleted,
        2
    );
    assert_eq!(s.store.numbers().unwrap(), vec![3, 22, 23]);
}

#[tokio::test]
async fn a_bucket_that_is_down_does_not_stop_the_other_and_drains_when_back() {
    let s = setup(0);
    // Break bucket b: its temporary directory is a file, so every upload fails.
    let tmp_b = s.buckets[1].join(".blockferry/tmp");
    std::fs::create_dir_all(tmp_b.parent().unwrap()).unwrap();
    std::fs::write(&tmp_b, b"in the way").unwrap();
    let runtime = runtime();
    let targets = vec![fs_target(&runtime, "a", &s.buckets[0]).await, fs_target(&runtime, "b", &s.buckets[1]).await];
    let manager = UploadManager::start(s.store.clone(), targets, fast_retries()).unwrap();
    for n in 0..20 {
        s.store.write_block(n, &bytes(1000, n), &s.names).unwrap();
        manager.block_stored(n);
    }
    let started = Instant::now();
    while manager.stats()[0].1.safe() < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "bucket a did not keep uploading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let meta = s.store.read_meta(0).unwrap();
    assert!(matches!(meta.status("b"), BucketStatus::Failed { permanent: false, .. }), "{meta:?}");
    assert!(manager.stats()[1].1.failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(manager.stats()[1].1.safe(), 0);
    // Nothing is deleted while b lacks the blocks.
    assert_eq!(
        run_retention(&s.store, &s.names, Duration::ZERO, Confirmed::ServerDigest, NotStreaming).unwrap().deleted,
        0
    );

    // Bucket b comes back: its backlog drains.
    std::fs::remove_file(&tmp_b).unwrap();
    wait_final(&s.store, &s.names).await;
    manager.shutdown().await;
    for n in 0..20 {
        assert_eq!(std::fs::read(s.buckets[1].join(key(n))).unwrap(), bytes(1000, n));
    }
}

#[tokio::test]
async fn a_permanent_error_holds_only_that_bucket() {
    let s = setup(5);
    let runtime = runtime();
    // Bucket b refuses every upload permanently: its keys escape the bucket directory.
    let mut b = fs_target(&runtime, "b", &s.buckets[1]).await;
    b.key = Arc::new(|n, ext| format!("../escape/{n:036}{ext}"));
    let targets = vec![fs_target(&runtime, "a", &s.buckets[0]).await, b];
    let manager = UploadManager::start(s.store.clone(), targets, fast_retries()).unwrap();
    let started = Instant::now();
    while manager.stats()[0].1.safe() < 5 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats_b = manager.stats()[1].1.clone();
    let permanent = || stats_b.permanent_failures.load(std::sync::atomic::Ordering::Relaxed);
    while permanent() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "bucket b never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = permanent();
    // Held after the first permanent errors (the uploads already in flight): no retry storm.
    assert!((1..=4).contains(&first), "{first} permanent failures");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(permanent(), first, "no attempts while the bucket is held");
    manager.shutdown().await;
    let meta = s.store.read_meta(0).unwrap();
    assert!(matches!(meta.status("b"), BucketStatus::Failed { permanent: true, .. }), "{meta:?}");
}
