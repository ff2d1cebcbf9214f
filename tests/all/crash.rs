//! Crash test: the real sidecar is killed with SIGKILL at random moments while
//! it writes and uploads blocks, then restarted, many rounds. After every
//! round no `.meta` is corrupt and every block file matches its `.meta`; in
//! the end every block is in both buckets with the right bytes and no
//! temporary file of the store survives recovery.
//!
//! `BLOCKFERRY_CRASH_ROUNDS` sets the number of rounds (default 12).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use blockferry::store::BlockMeta;
use md5::{Digest, Md5};

const PER_ROUND: u64 = 30;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let plugin = plugin_path("blockferry_fs");
    let config = format!(
        r#"
[store]
dir = "blocks"
[plugins]
cache_dir = "{cache}"
[upload]
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 200
local_retention_hours = 1000
[[buckets]]
name = "a"
plugin = "{plugin}"
directory = "bucket-a"
concurrency = 3
[[buckets]]
name = "b"
plugin = "{plugin}"
directory = "bucket-b"
concurrency = 2
"#,
        cache = workspace().join("target/test-plugin-cache").display(),
        plugin = plugin.display()
    );
    for b in ["bucket-a", "bucket-b"] {
        std::fs::create_dir_all(dir.join(b)).unwrap();
    }
    let path = dir.join("blockferry.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Every `.meta` parses and matches its block file's size and MD5.
fn check_store(blocks: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(blocks).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "meta") {
            continue;
        }
        let meta: BlockMeta = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is corrupt: {e}", path.display()));
        let Ok(data) = std::fs::read(blocks.join(&meta.file)) else {
            continue; // block deleted, .meta left for recovery: allowed
        };
        assert_eq!(data.len() as u64, meta.size, "{}", path.display());
        assert_eq!(Md5::digest(&data).to_vec(), meta.md5_bytes(), "{}", path.display());
        count += 1;
    }
    count
}

#[test]
fn killed_at_random_moments_loses_nothing() {
    let rounds: u64 = std::env::var("BLOCKFERRY_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let exe = env!("CARGO_BIN_EXE_blockferry");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(exe)
            .args(["run", "--config", config.to_str().unwrap(), "--generate", &PER_ROUND.to_string()])
            .args(["--listen", "127.0.0.1:0", "--block-interval-ms", "3"])
            .env("RUST_LOG", "error")
            .env("BLOCKFERRY_HTTP_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + seed % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        check_store(&dir.path().join("blocks"));
    }
    let out = Command::new(exe)
        .args(["run", "--config", config.to_str().unwrap(), "--exit-when-drained", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env("BLOCKFERRY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let blocks = dir.path().join("blocks");
    let stored = check_store(&blocks);
    assert!(stored > 0, "some blocks were stored");
    let leftovers: Vec<_> = std::fs::read_dir(blocks.join(".tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files survived recovery: {leftovers:?}");
    for entry in std::fs::read_dir(&blocks).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "meta") {
            continue;
        }
        let meta: BlockMeta = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let local = std::fs::read(blocks.join(&meta.file)).unwrap();
        for bucket in ["bucket-a", "bucket-b"] {
            let remote = std::fs::read(dir.path().join(bucket).join(&meta.file))
                .unwrap_or_else(|e| panic!("block {} missing in {bucket}: {e}", meta.number));
            assert_eq!(remote, local, "block {} in {bucket}", meta.number);
            assert!(
                meta.status(&bucket[7..]).is_safe(),
                "block {} status in {bucket}: {:?}",
                meta.number,
                meta.buckets
            );
        }
    }
    for bucket in ["bucket-a", "bucket-b"] {
        let objects = std::fs::read_dir(dir.path().join(bucket))
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(objects, stored, "{bucket} holds exactly the stored blocks, once each");
    }
    println!("crash test: {rounds} rounds, {stored} blocks stored, every one in both buckets");
}
