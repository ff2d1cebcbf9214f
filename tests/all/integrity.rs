//! Never delete the only good copy: the real host against moto behind a
//! byte-flipping proxy (moto does not check `Content-MD5`, so a body changed
//! on the way is stored as it arrives). A corrupted upload is never recorded
//! as uploaded, retention keeps its block, `verify` reports it, and the
//! mismatch stays visible on `/metrics`, `/api/status` and `/readyz` after a
//! restart; `verify --deep` records what it finds so retention keeps the block.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::servers::{Fault, FaultProxy, Moto, boto, write_s3_credentials};
use crate::common::sidecar::{Sidecar, http_get as get};
use crate::common::*;
use base64::Engine as _;
use blockferry::config::Compression;
use blockferry::store::{BlockMeta, BlockStore, BucketStatus, Confirmed};
use blockferry_sim::{PublisherOptions, publish};

/// The object key (and file name) of block `n`.
fn key(n: u64) -> String {
    format!("{n:036}.blk")
}

/// Writes a config with one `s3` bucket `cloud` (bucket `blocks` at `endpoint`) and
/// the `[upload]` table `upload`.
fn write_config(dir: &Path, endpoint: &str, upload: &str) -> PathBuf {
    write_s3_credentials(dir, &["cloud"]);
    let path = dir.join("blockferry.toml");
    std::fs::write(
        &path,
        format!(
            "credentials = \"credentials.toml\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [http]\nhistory_sample_secs = 1\n[upload]\nretry_initial_backoff_ms = 50\n{upload}\n\
             [[buckets]]\nname = \"cloud\"\nplugin = {:?}\n\
             [buckets.settings]\nendpoint = \"{endpoint}\"\nbucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
            workspace().join("target/test-plugin-cache").display().to_string(),
            plugin_path("blockferry_s3").display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// The host's block store in `dir`, opened beside the host (reads only).
fn store(dir: &Path) -> BlockStore {
    BlockStore::open(dir.join("blocks"), Compression::None).unwrap()
}

/// Block `n`'s `.meta`.
fn meta(dir: &Path, n: u64) -> BlockMeta {
    store(dir).read_meta(n).unwrap()
}

async fn feed(sidecar: &Sidecar, blocks: u64) {
    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), 0, blocks, 8192)).await.unwrap().complete());
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every block of the store is final in bucket `cloud`.
fn all_final(dir: &Path) -> bool {
    let store = store(dir);
    store.numbers().unwrap().into_iter().all(|n| store.read_meta(n).is_ok_and(|m| m.status("cloud").is_final()))
}

/// The value of the metric line `name{labels} value` (labels as written).
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

const MISMATCH_GAUGE: &str = "blockferry_store_blocks{bucket=\"cloud\",state=\"hash_mismatch\"}";

/// `/metrics`, `/api/status` and `/readyz` all report one mismatched block in `cloud`, the host ready.
async fn reports_one_mismatch(sidecar: &Sidecar) {
    wait_for("the mismatch is counted", || metric(&get(&sidecar.url("/metrics")).1, MISMATCH_GAUGE) == Some(1.0)).await;
    let scraped = get(&sidecar.url("/metrics")).1;
    assert_eq!(metric(&scraped, "blockferry_store_hash_mismatched_blocks"), Some(1.0), "{scraped}");
    let (status, body) = get(&sidecar.url("/api/status"));
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["buckets"][0]["mismatched"], 1, "{json}");
    assert_eq!(json["buckets"][0]["blocks"]["hash_mismatch"], 1, "{json}");
    assert_eq!(json["mismatched_blocks"], 1, "{json}");
    assert!(json["warnings"][0].as_str().unwrap().contains("hash mismatch"), "{json}");
    // Ready (the host still takes blocks safely), with the mismatch as a warning.
    let (status, body) = get(&sidecar.url("/readyz"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("warning: bucket cloud holds different content for 1 stored block"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_upload_is_never_uploaded_never_deleted_and_still_reported_after_a_restart() {
    let moto = Moto::start();
    moto.create_bucket("blocks");
    // The first PUT of block 0's body loses a byte on the way.
    let flipped = Arc::new(AtomicBool::new(false));
    let once = flipped.clone();
    let proxy = FaultProxy::start(moto.addr(), move |_, method, target| {
        (method == "PUT" && target.ends_with(&key(0)) && !once.swap(true, Ordering::SeqCst))
            .then_some(Fault::FlipByte(77))
    });
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &proxy.endpoint(), "local_retention_hours = 0\nretention_interval_secs = 1\n");
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    wait_for("ready", || get(&sidecar.url("/readyz")).0 == 200).await;
    feed(&sidecar, 6).await;
    wait_for("every block is final", || all_final(dir.path())).await;
    assert!(flipped.load(Ordering::SeqCst));

    // Block 0: a hash mismatch, never `uploaded`; moto holds the flipped bytes.
    let zero = meta(dir.path(), 0);
    assert!(matches!(zero.status("cloud"), BucketStatus::HashMismatch { remote_md5: Some(_) }), "{zero:?}");
    assert!(zero.hash_mismatch);
    let stored_md5 = boto(
        &moto.endpoint(),
        &format!("print(hashlib.md5(s3.get_object(Bucket='blocks', Key={:?})['Body'].read()).hexdigest())", key(0)),
    );
    assert_ne!(stored_md5.trim(), hex::encode(zero.md5_bytes()), "the bucket holds other bytes");
    // Retention deletes the blocks the server's ETag confirmed, never block 0.
    wait_for("retention deleted the confirmed blocks", || store(dir.path()).numbers().unwrap() == vec![0]).await;
    assert!(dir.path().join("blocks").join(key(0)).exists());
    reports_one_mismatch(&sidecar).await;

    // Plain `verify` reports it: the server's ETag, not the MD5 metadata the plugin wrote.
    let out = blockferry(&["verify", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 mismatched") && text(&out).contains("mismatched: 0"), "{}", text(&out));

    // After a restart, the mismatch is still everywhere, and the block still kept.
    drop(sidecar.stop());
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    wait_for("ready again", || get(&sidecar.url("/readyz")).0 == 200).await;
    reports_one_mismatch(&sidecar).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // two retention passes
    assert_eq!(store(dir.path()).numbers().unwrap(), vec![0]);
    drop(sidecar.stop());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_deep_records_a_rewritten_object_and_retention_keeps_its_block() {
    let moto = Moto::start();
    moto.create_bucket("blocks");
    let dir = tempfile::tempdir().unwrap();
    // First a long retention: everything is kept while the bucket is tampered with.
    let config =
        write_config(dir.path(), &moto.endpoint(), "local_retention_hours = 1000\nretention_interval_secs = 1\n");
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    wait_for("ready", || get(&sidecar.url("/readyz")).0 == 200).await;
    feed(&sidecar, 4).await;
    wait_for("every block is final", || all_final(dir.path())).await;
    drop(sidecar.stop());
    for n in 0..4 {
        let m = meta(dir.path(), n);
        assert!(m.status("cloud").is_confirmed(Confirmed::ServerDigest), "block {n}: {m:?}");
    }

    // Behind blockferry's back, block 1's object is rewritten with other bytes
    // of the same size, as a multipart upload (whose ETag is no MD5) that
    // carries the MD5 metadata of the original: only its content tells.
    let one = meta(dir.path(), 1);
    let claimed = base64::engine::general_purpose::STANDARD.encode(one.md5_bytes());
    boto(
        &moto.endpoint(),
        &format!(
            "u = s3.create_multipart_upload(Bucket='blocks', Key={k:?}, Metadata={{'content-md5': {claimed:?}}})\n\
             p = s3.upload_part(Bucket='blocks', Key={k:?}, UploadId=u['UploadId'], PartNumber=1, Body=b'x' * {size})\n\
             s3.complete_multipart_upload(Bucket='blocks', Key={k:?}, UploadId=u['UploadId'],\n\
                 MultipartUpload={{'Parts': [{{'ETag': p['ETag'], 'PartNumber': 1}}]}})",
            k = key(1),
            size = one.size
        ),
    );
    let plain = blockferry(&["verify", "--config", config.to_str().unwrap()]);
    assert!(plain.status.success(), "by metadata it matches: {}", text(&plain));
    let deep = blockferry(&["verify", "--deep", "--config", config.to_str().unwrap()]);
    assert!(!deep.status.success(), "{}", text(&deep));
    assert!(text(&deep).contains("block 1: content differs"), "{}", text(&deep));
    // Recorded: block 1 is a mismatch now; the others are confirmed by a read-back.
    let one = meta(dir.path(), 1);
    assert!(one.hash_mismatch && matches!(one.status("cloud"), BucketStatus::HashMismatch { .. }), "{one:?}");
    assert_eq!(meta(dir.path(), 2).status("cloud").confirmed(), Some(Confirmed::ReadBack));

    // Retention with a zero period and read-back required deletes the rest and keeps block 1.
    let config = write_config(
        dir.path(),
        &moto.endpoint(),
        "local_retention_hours = 0\nretention_interval_secs = 1\nverify_before_delete = \"read-back\"\n",
    );
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    wait_for("retention deleted the confirmed blocks", || store(dir.path()).numbers().unwrap() == vec![1]).await;
    reports_one_mismatch(&sidecar).await;
    drop(sidecar.stop());
}
