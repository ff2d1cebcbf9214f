//! The `fs` provider: a bucket that is a local directory, with the same
//! semantics as the cloud providers.

use crate::common::*;
use blockferry::plugin::{BlockBody, BucketClient, CallError, Confirmation, Outcome, PluginFailure};
use md5::{Digest, Md5};

async fn fs_bucket(dir: &std::path::Path) -> BucketClient {
    let runtime = Box::leak(Box::new(runtime()));
    let mut s = spec("fs");
    s.directory = Some(dir.to_path_buf());
    BucketClient::open(load(runtime, "blockferry_fs"), s).await.expect("open fs bucket")
}

async fn put(client: &BucketClient, key: &str, content: &[u8]) -> Result<Outcome, CallError> {
    client.put_block(&block(1, key, content), &BlockBody::from_bytes(content.to_vec())).await
}

/// What lands is the file, read independently of the plugin, and each
/// outcome says what confirmed it. (Upload, `already-present` and
/// `hash-mismatch` as such are the conformance suite's.)
#[tokio::test]
async fn what_lands_is_the_file_and_each_outcome_says_what_confirmed_it() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path()).await;
    assert_eq!(bucket.provider(), "fs");
    let content = bytes(10_000, 1);
    let key = format!("{:036}.blk", 1);
    assert_eq!(put(&bucket, &key, &content).await.unwrap(), Outcome::Uploaded);
    // What landed, read independently of the plugin.
    assert_eq!(std::fs::read(dir.path().join(&key)).unwrap(), content);
    // What each outcome rests on: the digest of the bytes written; a read-back of the file found.
    let fresh = bytes(500, 3);
    let info = block(3, "three.blk", &fresh);
    let report = bucket.put_block_reported(&info, &BlockBody::from_bytes(fresh.clone())).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::Uploaded, Some(Confirmation::ServerDigest)));
    let report = bucket.put_block_reported(&info, &BlockBody::from_bytes(fresh)).await.unwrap();
    assert_eq!((report.outcome, report.confirmed), (Outcome::AlreadyPresent, Some(Confirmation::ReadBack)));
}

/// An object placed by someone else (no metadata) still has its content MD5
/// (`stat`, and the mismatch it makes), and is never overwritten.
#[tokio::test]
async fn a_foreign_object_has_its_content_md5_and_is_a_mismatch_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path()).await;
    std::fs::write(dir.path().join("foreign.blk"), b"foreign").unwrap();
    let remote = bucket.stat("foreign.blk").await.unwrap().expect("present");
    assert_eq!((remote.size, remote.md5.as_deref()), (7, Some(&Md5::digest(b"foreign")[..])));
    let err = put(&bucket, "foreign.blk", b"ours").await.unwrap_err();
    let CallError::Plugin(PluginFailure::HashMismatch(remote)) = &err else {
        panic!("expected hash mismatch, got {err}")
    };
    assert_eq!((remote.size, remote.md5.as_deref()), (7, Some(&Md5::digest(b"foreign")[..])));
    assert!(!err.is_retryable());
    assert_eq!(std::fs::read(dir.path().join("foreign.blk")).unwrap(), b"foreign");
}

#[tokio::test]
async fn large_bodies_from_files_and_no_temporary_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path()).await;
    let src = tempfile::tempdir().unwrap();
    let content = bytes(20 * 1024 * 1024 + 3, 9);
    let path = src.path().join("big.blk");
    std::fs::write(&path, &content).unwrap();
    let outcome = bucket.put_block(&block(9, "big.blk", &content), &BlockBody::open(&path).unwrap()).await;
    assert_eq!(outcome.unwrap(), Outcome::Uploaded);
    assert_eq!(Md5::digest(std::fs::read(dir.path().join("big.blk")).unwrap()), Md5::digest(&content));
    let tmp = dir.path().join(".blockferry/tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn concurrent_writers_of_one_key_produce_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = std::sync::Arc::new(fs_bucket(dir.path()).await);
    let content = bytes(64 * 1024, 4);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (bucket, content) = (bucket.clone(), content.clone());
            tokio::spawn(async move { put(&bucket, "race.blk", &content).await.unwrap() })
        })
        .collect();
    let mut uploaded = 0;
    for t in tasks {
        if t.await.unwrap() == Outcome::Uploaded {
            uploaded += 1;
        }
    }
    assert_eq!(uploaded, 1, "exactly one writer wins");
    assert_eq!(std::fs::read(dir.path().join("race.blk")).unwrap(), content);
}

#[tokio::test]
async fn unsafe_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path()).await;
    for key in ["../escape.blk", "/abs.blk", "a//b", ".blockferry/meta/x", ""] {
        let err = put(&bucket, key, b"x").await.unwrap_err();
        assert!(matches!(err, CallError::Plugin(PluginFailure::Permanent(_))), "{key:?}: {err}");
    }
    assert!(!dir.path().parent().unwrap().join("escape.blk").exists());
}

#[tokio::test]
async fn a_missing_root_setting_is_a_clear_open_error() {
    let runtime = runtime();
    let err = BucketClient::open(load(&runtime, "blockferry_fs"), spec("noroot")).await.unwrap_err();
    assert!(err.to_string().contains("root"), "{err}");
}

#[tokio::test]
async fn many_uploads_through_one_instance_leak_no_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path()).await;
    let src = tempfile::tempdir().unwrap();
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let upload = |n: u64| {
        let path = src.path().join(format!("{n}.blk"));
        let content = bytes(100, n);
        std::fs::write(&path, &content).unwrap();
        let info = block(n, &format!("{n:036}.blk"), &content);
        let bucket = &bucket;
        async move { bucket.put_block(&info, &BlockBody::open(&path).unwrap()).await.unwrap() }
    };
    upload(0).await;
    let before = open_fds();
    for n in 1..=300 {
        upload(n).await;
    }
    let after = open_fds();
    assert!(after <= before + 5, "file descriptors grew from {before} to {after} over 300 uploads");
}

#[tokio::test]
async fn symlinks_in_the_bucket_are_never_followed_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside the bucket").unwrap();
    // Links a provider (or anyone with the directory) could leave in the bucket.
    let key = format!("{:036}.blk", 7);
    std::os::unix::fs::symlink(&secret, dir.path().join(&key)).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    let bucket = fs_bucket(dir.path()).await;

    // Reading the object (restore, verify --deep, serving old blocks) cannot reach the target.
    let sink = blockferry::plugin::BlockSink::new(blockferry::plugin::SinkTarget::Memory(Vec::new()), 1 << 20);
    if let Ok(Some((_, received))) = bucket.get(&key, sink).await {
        let blockferry::plugin::SinkTarget::Memory(got) = received.target else { unreachable!() };
        assert_ne!(got, b"outside the bucket", "the host read through a symlink");
    }
    assert!(bucket.stat(&key).await.map_or(true, |o| o.is_none_or(|o| o.size != 18)), "stat followed the link");
    // Nor can writes through a linked directory land outside.
    let _ = put(&bucket, "escape/planted.blk", b"x").await;
    assert!(!outside.path().join("planted.blk").exists(), "a write went through the symlinked directory");
    // Writing the key replaces nothing outside the bucket.
    let _ = put(&bucket, &key, b"new content").await;
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside the bucket");
}
