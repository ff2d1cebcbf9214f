//! Disk trouble: the store's file system (a 1 MiB tmpfs mounted by the test)
//! fills up while the consensus node streams. The real binary ends the stream
//! with PERSISTENCE_FAILED and a clear error, turns not ready, leaves no
//! partial or corrupt file, and takes the stream again once space returns.
//! Needs root to mount (the test machines run the tests as root); it fails,
//! never skips, without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::sidecar::{Sidecar, http_get};
use crate::common::*;
use blockferry_sim::{PublisherOptions, block_bytes, publish};
use md5::{Digest, Md5};

const SIZE: usize = 64 * 1024;

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        let out = out.expect("running mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (the disk-full test needs root): {}",
            at.display(),
            text(&out)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Give the file system `size` (space returns).
    fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

async fn wait_for(what: &str, sidecar: &Sidecar, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}:\n{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every block file in the store has a valid `.meta` whose MD5 matches, and
/// no temporary file is left; returns the block numbers.
fn check_store(store: &Path) -> Vec<u64> {
    let leftovers: Vec<_> = std::fs::read_dir(store.join(".tmp")).unwrap().filter_map(Result::ok).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(store).unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".blk") else { continue };
        let n: u64 = stem.parse().unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(store.join(format!("{stem}.meta"))).unwrap())
                .unwrap_or_else(|e| panic!("block {n}: corrupt .meta: {e}"));
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(bytes, block_bytes(n, SIZE), "block {n} is stored whole");
        let md5 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, Md5::digest(&bytes));
        assert_eq!(meta["md5"], md5, "block {n}: .meta matches the file");
        numbers.push(n);
    }
    numbers.sort();
    numbers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_disk_refuses_blocks_cleanly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fs = Tmpfs::mount(&d.join("storefs"), "1m");
    std::fs::create_dir_all(d.join("bucket")).unwrap();
    let config = d.join("blockferry.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndir = \"storefs/blocks\"\n[http]\nhistory_sample_secs = 1\n[plugins]\ncache_dir = {:?}\n\
             [[buckets]]\nname = \"b\"\nplugin = {:?}\ndirectory = \"bucket\"\n",
            workspace().join("target/test-plugin-cache").display().to_string(),
            plugin_path("blockferry_fs").display().to_string(),
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start(&config, d, &[]);

    // 40 blocks of 64 KiB do not fit in 1 MiB: the stream ends with PERSISTENCE_FAILED.
    let report = publish(&PublisherOptions::new(sidecar.endpoint(), 0, 40, SIZE)).await.unwrap();
    assert!(!report.complete(), "{}", report.summary());
    let end = report.end_of_stream.as_ref().unwrap_or_else(|| panic!("no EndOfStream: {}", report.summary()));
    assert_eq!(end.status, blockferry_proto::EndOfStreamCode::PersistenceFailed as i32);
    let acked = report.acknowledged();
    assert!(acked > 0 && acked < 40, "some blocks fit: {}", report.summary());
    let log = sidecar.log();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("free space on the file system of `store.dir`"), "the error says what to do: {log}");

    // Not ready while full; nothing partial or corrupt on disk.
    wait_for("not ready", &sidecar, || http_get(&sidecar.url("/readyz")).0 == 503).await;
    assert!(http_get(&sidecar.url("/readyz")).1.contains("No space left on device"));
    let stored = check_store(&d.join("storefs/blocks"));
    assert_eq!(stored, (0..acked).collect::<Vec<_>>(), "exactly the acknowledged blocks are stored");
    let metrics = http_get(&sidecar.url("/metrics")).1;
    assert!(!metrics.contains("blockferry_ingest_persistence_failures_total 0"), "{metrics}");

    // Space returns: the node's next stream is taken, from where it stopped.
    fs.resize("16m");
    let report = publish(&PublisherOptions::new(sidecar.endpoint(), acked, 40 - acked, SIZE)).await.unwrap();
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(check_store(&d.join("storefs/blocks")), (0..40).collect::<Vec<_>>());
    wait_for("ready again", &sidecar, || http_get(&sidecar.url("/readyz")).0 == 200).await;
    wait_for("every block uploaded", &sidecar, || {
        std::fs::read_dir(d.join("bucket"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "blk"))
            .count()
            == 40
    })
    .await;
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}
