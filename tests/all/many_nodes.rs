//! Many nodes, one bucket: hosts (the real binary, each with its own store)
//! holding the same blocks upload them to one shared bucket at once. Every
//! object is written exactly once, no host reports a false mismatch, and a
//! host whose copy of one block differs reports exactly that block as a
//! mismatch, without overwriting the others' object.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;
use blockferry_sim::block_bytes;

/// Honest hosts uploading at once.
const HOSTS: usize = 4;
const BLOCKS: u64 = 40;
const SIZE: usize = 4096;
/// The block the late host holds a different copy of.
const ODD_BLOCK: u64 = 7;

/// A host under `dir` whose store starts with `blocks` (number, bytes), imported
/// from block files; uploads to the `fs` bucket at `bucket`.
fn host(dir: &Path, bucket: &Path, blocks: impl Iterator<Item = (u64, Vec<u8>)>) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (n, bytes) in blocks {
        std::fs::write(src.join(format!("{n:036}.blk")), bytes).unwrap();
    }
    let config = dir.join("blockferry.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [[buckets]]\nname = \"shared\"\nplugin = {:?}\ndirectory = {:?}\nconcurrency = 4\n",
            workspace().join("target/test-plugin-cache").display().to_string(),
            plugin_path("blockferry_fs").display().to_string(),
            bucket.display().to_string(),
        ),
    )
    .unwrap();
    let out = blockferry(&["import", src.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    config
}

/// `blockferry run --exit-when-drained` on each config at once.
fn run_all(configs: &[PathBuf]) -> Vec<Output> {
    let children: Vec<_> = configs
        .iter()
        .map(|config| {
            Command::new(env!("CARGO_BIN_EXE_blockferry"))
                .args(["run", "--config", config.to_str().unwrap(), "--exit-when-drained"])
                .env("BLOCKFERRY_INGEST_LISTEN", "127.0.0.1:0")
                .env("BLOCKFERRY_HTTP_LISTEN", "127.0.0.1:0")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// (uploaded, already present, hash mismatches) from a run's summary line.
fn outcome(out: &Output) -> (u64, u64, u64) {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    let line = t.lines().find(|l| l.starts_with("bucket shared: ")).unwrap_or_else(|| panic!("no summary: {t}"));
    let numbers: Vec<u64> = line.split([' ', ',']).filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1], numbers[2])
}

/// The state of block `n` in the bucket, from a host's `.meta`.
fn state(config: &Path, n: u64) -> String {
    let meta = config.parent().unwrap().join("blocks").join(format!("{n:036}.meta"));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(meta).unwrap()).unwrap();
    meta["buckets"]["shared"]["state"].as_str().unwrap().to_string()
}

#[test]
fn hosts_sharing_a_bucket_write_each_object_once_and_only_a_differing_copy_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let honest: Vec<PathBuf> = (0..HOSTS)
        .map(|i| host(&tmp.path().join(format!("host{i}")), &bucket, (0..BLOCKS).map(|n| (n, block_bytes(n, SIZE)))))
        .collect();

    // The honest hosts race on every block.
    let outcomes: Vec<_> = run_all(&honest).iter().map(outcome).collect();
    let uploaded: u64 = outcomes.iter().map(|o| o.0).sum();
    assert_eq!(uploaded, BLOCKS, "every object written exactly once across the hosts: {outcomes:?}");
    for (i, (up, present, mismatched)) in outcomes.iter().enumerate() {
        assert_eq!(up + present, BLOCKS, "host {i} has every block safe: {outcomes:?}");
        assert_eq!(*mismatched, 0, "host {i}: no false mismatch: {outcomes:?}");
    }
    for n in 0..BLOCKS {
        let object = std::fs::read(bucket.join(format!("{n:036}.blk"))).unwrap();
        assert_eq!(object, block_bytes(n, SIZE), "object {n} is the block, byte for byte");
    }

    // A late host whose copy of one block differs (same number, other content).
    let odd = host(
        &tmp.path().join("odd"),
        &bucket,
        (0..BLOCKS).map(|n| (n, block_bytes(n, if n == ODD_BLOCK { SIZE + 300 } else { SIZE }))),
    );
    let out = &run_all(std::slice::from_ref(&odd))[0];
    assert_eq!(outcome(out), (0, BLOCKS - 1, 1), "exactly the differing block mismatches: {}", text(out));
    assert!(text(out).contains("hash mismatch"), "the mismatch is logged: {}", text(out));
    assert_eq!(state(&odd, ODD_BLOCK), "hash-mismatch");
    assert_eq!(state(&odd, ODD_BLOCK + 1), "already-present");
    assert!(["uploaded", "already-present"].contains(&state(&honest[0], ODD_BLOCK).as_str()));
    let object = std::fs::read(bucket.join(format!("{ODD_BLOCK:036}.blk"))).unwrap();
    assert_eq!(object, block_bytes(ODD_BLOCK, SIZE), "the honest object is not overwritten");

    // `status` on that host counts it; on an honest host, nothing.
    let status = |config: &Path| {
        let out = blockferry(&["status", "--json", "--config", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["buckets"][0]["hash_mismatch"].clone()
    };
    assert_eq!(status(&odd), 1);
    assert_eq!(status(&honest[0]), 0);
}
