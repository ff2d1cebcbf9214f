//! Power cuts, not just kills. The block store and an `fs` bucket live on a
//! power-cut file system (`crate::common::powercut`: a FUSE file system that keeps
//! only what was fsynced, file data and directory entries alike, when the
//! power goes). The consensus node simulator streams blocks over gRPC; at a
//! random moment blockferry is killed with SIGKILL and, in three rounds of
//! four, the power is cut and the file system mounted again; then blockferry
//! restarts and the publisher resumes. A round with a kill alone leaves
//! unsynced state in the page cache for the next start to build on, which a
//! later cut then tests.
//!
//! After every round: every acknowledged block is in the store byte for
//! byte, or retention deleted it and it is whole in the bucket; every `.meta`
//! parses and matches its block, or is one recovery rebuilds (missing after
//! a kill between the block's rename and its own; empty or torn after a cut,
//! as a new block's first `.meta` is not fsynced), and after the restart it
//! parses and matches; no block is recorded safe in the bucket unless the
//! object is there, whole. In the end, after a drain, every block is in the
//! bucket (even after one more cut), none is left locally, and no temporary
//! file is left.
//!
//! The store directory does not exist beforehand (blockferry creates it, two
//! levels deep) and the bucket's keys have two directory levels, so the
//! directories blockferry and the provider create must be made durable too.
//!
//! `BLOCKFERRY_POWERCUT_ROUNDS` sets the number of rounds (default 5).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::powercut::PowerCutFs;
use crate::common::sidecar::Sidecar;
use crate::common::*;
use blockferry::store::BlockMeta;
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_sim::{PublishError, Session, block_bytes, generate_block};

/// Target size of each block.
const SIZE: usize = 4096;
/// The bucket's key template: two directory levels the provider creates.
const KEY_DIR: &str = "archive/node0";
/// No block acknowledged yet.
const NONE: u64 = u64::MAX;

/// The layout of one run: the file system, the store and bucket on it.
struct Rig {
    dir: tempfile::TempDir,
    fs: PowerCutFs,
    config: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        // The bucket's directory exists (durably) before the first mount, as an operator makes it.
        std::fs::create_dir_all(backing.join("disk/bucket")).unwrap();
        let mnt = dir.path().join("mnt");
        let fs = PowerCutFs::mount(&backing, &mnt);
        let config = dir.path().join("blockferry.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[store]
dir = "{mnt}/node/blocks"
[plugins]
cache_dir = "{cache}"
[upload]
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 200
local_retention_hours = 0
retention_interval_secs = 1
health_check_interval_secs = 1
abandoned_upload_age_secs = 3
[[buckets]]
name = "b"
plugin = "{plugin}"
directory = "{mnt}/bucket"
key_template = "{KEY_DIR}/{{number}}{{ext}}"
call_timeout_ms = 2000
concurrency = 2
"#,
                mnt = mnt.display(),
                cache = workspace().join("target/test-plugin-cache").display(),
                plugin = plugin_path("blockferry_fs").display(),
            ),
        )
        .unwrap();
        Rig { dir, fs, config }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("mnt/node/blocks")
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("mnt/bucket").join(KEY_DIR)
    }

    /// Start blockferry and wait until its start-up check has read every
    /// `.meta` (rebuilding those a cut tore): the store takes blocks before
    /// that, but only then is every `.meta` whole again.
    fn start(&self) -> Sidecar {
        let sidecar = Sidecar::start(&self.config, self.dir.path(), &[]);
        let started = std::time::Instant::now();
        let counted = || {
            crate::common::sidecar::http_get(&sidecar.url("/metrics")).1.lines().any(|l| {
                l.strip_prefix("blockferry_store_blocks_counted ").and_then(|v| v.trim().parse().ok()) == Some(1.0)
            })
        };
        while !counted() {
            assert!(started.elapsed() < Duration::from_secs(60), "the start-up check did not end\n{}", sidecar.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        sidecar
    }
}

/// Streams blocks from `from` on, one at a time, as a consensus node does
/// after a reconnect, until the stream breaks. `acked` holds the highest
/// block the sidecar said it holds (acknowledged, or skipped as already
/// stored); every block below it was, in this round or an earlier one.
async fn publish_from(endpoint: String, from: u64, acked: Arc<AtomicU64>) -> Result<(), PublishError> {
    let mut session = Session::connect(&endpoint).await?;
    let mut next = from;
    loop {
        session.send_items(generate_block(next, SIZE)).await?;
        session.send_block_end(next).await?;
        loop {
            let Some(response) = session.next_response(Duration::from_secs(30)).await? else { return Ok(()) };
            match response.response {
                Some(Response::Acknowledgement(ack)) if ack.block_number >= next => {
                    acked.store(ack.block_number, Ordering::SeqCst);
                    next = ack.block_number + 1;
                    break;
                }
                Some(Response::SkipBlock(skip)) if skip.block_number == next => {
                    acked.store(next, Ordering::SeqCst);
                    next += 1;
                    break;
                }
                Some(Response::NodeBehindPublisher(behind)) => {
                    let latest = behind.block_number;
                    let had = acked.load(Ordering::SeqCst);
                    assert!(
                        had == NONE || (latest != u64::MAX && latest >= had),
                        "the sidecar asks for block {} although block {had} was acknowledged",
                        latest.wrapping_add(1)
                    );
                    if latest != u64::MAX {
                        acked.store(latest, Ordering::SeqCst);
                    }
                    next = latest.wrapping_add(1);
                    break;
                }
                Some(Response::EndStream(end)) => panic!("the sidecar ended the stream: {end:?}"),
                _ => {}
            }
        }
    }
}

/// What a check of the store and bucket found.
#[derive(Debug, Default)]
struct Found {
    /// Block files in the store.
    blocks: u64,
    /// `.meta` files a kill left missing or a cut left missing, empty or torn (recovery rebuilds them).
    rebuilt_meta: u64,
    /// Blocks recorded safe in the bucket (each checked there).
    safe: u64,
    /// Acknowledged blocks whose local copy retention deleted (each checked in the bucket).
    only_in_bucket: u64,
    /// Temporary files of the store and the provider.
    temp_files: usize,
}

/// When a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// blockferry is running (recovery done): retention may delete as we read.
    Running,
    /// blockferry was killed, the power stayed on.
    Killed,
    /// Just after a power cut, before recovery: a new block's `.meta` may be torn.
    AfterCut,
}

/// Checks the store and the bucket. `in_bucket` holds the blocks already
/// found whole in the bucket after a cut: nothing deletes an object, and
/// what a cut left durable stays so, so they are not read again.
fn check(rig: &Rig, acked: u64, when: When, in_bucket: &mut BTreeSet<u64>) -> Found {
    let store = rig.store();
    let mut found = Found::default();
    let mut files: BTreeMap<u64, String> = BTreeMap::new();
    let listing = std::fs::read_dir(&store).unwrap_or_else(|e| {
        let lost = if acked == NONE { 0 } else { acked + 1 };
        panic!("the store directory {} is gone ({e}): {lost} acknowledged blocks lost with it", store.display())
    });
    for entry in listing {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".blk") {
            files.insert(stem.parse().unwrap(), name.clone());
        }
    }
    // While blockferry runs, retention may delete a block between the listing and the reads.
    let live = when == When::Running;
    let torn_allowed = when == When::AfterCut;
    let mut unsafe_blocks = Vec::new();
    for (&n, file) in &files {
        let bytes = match std::fs::read(store.join(file)) {
            Ok(bytes) => bytes,
            Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("block {n} is listed but cannot be read: {e}"),
        };
        assert!(bytes == block_bytes(n, SIZE), "stored block {n} is corrupt ({} bytes)", bytes.len());
        found.blocks += 1;
        let meta = match std::fs::read(store.join(format!("{n:036}.meta"))) {
            Ok(text) => match BlockMeta::parse(&text, n) {
                Ok(meta) => meta,
                // A new block's first .meta is not fsynced: a cut may leave it empty or torn.
                Err(_) if torn_allowed => {
                    found.rebuilt_meta += 1;
                    continue;
                }
                Err(e) => panic!("block {n}: its .meta ({} bytes) is not valid ({when:?}): {e}", text.len()),
            },
            // Deleted by retention just now.
            Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => {
                found.blocks -= 1;
                continue;
            }
            // Killed (or cut) between the block's rename and its .meta's: recovery rebuilds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                found.rebuilt_meta += 1;
                continue;
            }
            Err(e) => panic!("block {n}: reading its .meta: {e}"),
        };
        assert_eq!((&meta.file, meta.size), (file, bytes.len() as u64), "block {n}: .meta");
        assert_eq!(meta.md5, blockferry::store::md5_base64(&md5(&bytes)), "block {n}: .meta MD5");
        if meta.status("b").is_safe() {
            match std::fs::read(rig.objects().join(file)) {
                Ok(there) if there == bytes => found.safe += 1,
                Ok(_) => unsafe_blocks.push(format!("{n} (not whole)")),
                Err(e) => unsafe_blocks.push(format!("{n} ({e})")),
            }
        }
    }
    assert!(
        unsafe_blocks.is_empty(),
        "{} blocks are recorded safe in the bucket but are not there, whole: {unsafe_blocks:?}",
        unsafe_blocks.len()
    );
    // Every acknowledged block is in the store, or retention deleted it
    // because it was safe in the bucket: then it is there.
    if acked != NONE {
        for n in (0..=acked).filter(|n| !files.contains_key(n)) {
            found.only_in_bucket += 1;
            if in_bucket.contains(&n) {
                continue;
            }
            let object = rig.objects().join(format!("{n:036}.blk"));
            let there = std::fs::read(&object).unwrap_or_else(|e| {
                panic!("acknowledged block {n} is lost: not in the store, not in the bucket ({e})")
            });
            assert!(there == block_bytes(n, SIZE), "acknowledged block {n} is corrupt in the bucket");
            if when == When::AfterCut {
                in_bucket.insert(n);
            }
        }
    }
    found.temp_files = count(&store.join(".tmp")) + count(&rig.dir.path().join("mnt/bucket/.blockferry/tmp"));
    found
}

fn md5(bytes: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    Md5::digest(bytes).to_vec()
}

/// Entries of `dir` (none if it does not exist).
fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn power_cuts_at_random_moments_lose_no_acknowledged_block() {
    let rounds: u64 = std::env::var("BLOCKFERRY_POWERCUT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let mut rig = Rig::new();
    let acked = Arc::new(AtomicU64::new(NONE));
    let mut in_bucket = BTreeSet::new();
    let (mut rebuilt, mut max_temp, mut cuts) = (0, 0, 0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let sidecar = rig.start();
        // Recovery and the start-up check have run: every .meta is whole again.
        check(&rig, acked.load(Ordering::SeqCst), When::Running, &mut in_bucket);
        let from = acked.load(Ordering::SeqCst).wrapping_add(1);
        let publisher = tokio::spawn(publish_from(sidecar.endpoint(), from, acked.clone()));
        tokio::time::sleep(Duration::from_millis(50 + seed % 450)).await;
        if publisher.is_finished() {
            let result = publisher.await.unwrap();
            panic!("round {round}: the publisher stopped before the kill: {result:?}\n{}", sidecar.log());
        }
        sidecar.signal(libc::SIGKILL);
        drop(sidecar);
        publisher.abort();
        let _ = publisher.await;
        // One round in four is a kill alone: what it left in the page cache
        // (a directory created, an object linked, neither fsynced yet) must
        // be made durable by the next start before it is relied on.
        let cut = !seed.is_multiple_of(4);
        if cut {
            rig.fs.power_cut();
            cuts += 1;
        }
        let found =
            check(&rig, acked.load(Ordering::SeqCst), if cut { When::AfterCut } else { When::Killed }, &mut in_bucket);
        rebuilt += found.rebuilt_meta;
        max_temp = max_temp.max(found.temp_files);
        let how = if cut { "kill + power cut" } else { "kill" };
        println!("round {round} ({how}): acknowledged up to {}, {found:?}", acked.load(Ordering::SeqCst) as i64);
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked != NONE && acked > 0, "blocks were acknowledged");

    // The drain: every block uploaded (and deleted locally), abandoned
    // temporary files cleaned up.
    let sidecar = rig.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let found = check(&rig, acked, When::Running, &mut in_bucket);
        if found.blocks == 0 && found.temp_files == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not drained: {found:?}\n{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
    // One more cut: every block is durably in the bucket, whole.
    rig.fs.power_cut();
    in_bucket.clear();
    let found = check(&rig, acked, When::AfterCut, &mut in_bucket);
    assert_eq!(found.blocks, 0, "retention's deletions are durable");
    assert_eq!(found.only_in_bucket, acked + 1);
    println!(
        "power-cut test: {rounds} rounds ({cuts} with a power cut), {} blocks acknowledged, every one in the \
         bucket; {rebuilt} .meta missing or torn (rebuilt); at most {max_temp} temporary files after a round",
        acked + 1,
    );
}

/// The file system's controls: what was not made durable is gone after a cut,
/// what was is kept.
#[test]
fn the_power_cut_file_system_keeps_only_what_was_made_durable() {
    use std::fs::{self, File};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let mut fs = PowerCutFs::mount(&dir.path().join("backing"), &mnt);
    let sync_dir = |d: &Path| File::open(d).unwrap().sync_all().unwrap();
    let write = |name: &str, data: &[u8], sync: bool| {
        let mut f = File::create(mnt.join(name)).unwrap();
        f.write_all(data).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
    };
    // Made durable: file and directory entry fsynced.
    write("kept", b"kept", true);
    write("renamed.tmp", b"renamed", true);
    write("unlinked", b"unlinked", true);
    // Its entry is durable, its data never was.
    write("no-data-sync", b"lost data", false);
    sync_dir(&mnt);
    fs::rename(mnt.join("renamed.tmp"), mnt.join("renamed")).unwrap();
    sync_dir(&mnt);

    // Not durable: new data without fsync, a new file without a directory
    // fsync, a new directory whose parent was not fsynced, an unlink.
    let mut f = fs::OpenOptions::new().write(true).open(mnt.join("kept")).unwrap();
    f.write_all(b"over").unwrap();
    drop(f);
    write("no-dir-sync", b"file synced, directory not", true);
    fs::create_dir_all(mnt.join("new/deeper")).unwrap();
    write("new/deeper/file", b"in a new directory", true);
    sync_dir(&mnt.join("new/deeper"));
    sync_dir(&mnt.join("new"));
    fs::remove_file(mnt.join("unlinked")).unwrap();
    fs::hard_link(mnt.join("renamed"), mnt.join("linked")).unwrap();
    assert_eq!(fs::read(mnt.join("kept")).unwrap(), b"over");

    fs.power_cut();
    for m in [mnt.clone(), fs.disk()] {
        assert_eq!(fs::read(m.join("kept")).unwrap(), b"kept", "data written since the fsync is lost");
        assert_eq!(fs::read(m.join("renamed")).unwrap(), b"renamed");
        assert!(!m.join("renamed.tmp").exists(), "a synced rename is kept");
        assert_eq!(fs::read(m.join("unlinked")).unwrap(), b"unlinked", "an unsynced unlink is undone");
        assert_eq!(fs::read(m.join("no-data-sync")).unwrap(), b"", "data never fsynced is lost");
        assert!(!m.join("no-dir-sync").exists(), "a file whose directory was not fsynced vanishes");
        assert!(!m.join("new").exists(), "a directory whose parent was not fsynced vanishes, with what is in it");
        assert!(!m.join("linked").exists(), "an unsynced link vanishes");
    }

    // What survives is usable, and durable again once fsynced.
    fs::create_dir(mnt.join("new")).unwrap();
    write("new/file", b"now durable", true);
    sync_dir(&mnt.join("new"));
    sync_dir(&mnt);
    fs.power_cut();
    assert_eq!(fs::read(mnt.join("new/file")).unwrap(), b"now durable");
}

/// The store makes the directories it creates durable: a store opened in a
/// directory that did not exist keeps its acknowledged block after a cut.
#[test]
fn a_store_blockferry_creates_survives_a_power_cut() {
    use blockferry::store::BlockStore;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let mut fs = PowerCutFs::mount(&dir.path().join("backing"), &mnt);
    let store = BlockStore::open(mnt.join("new/deeper/blocks"), Default::default()).unwrap();
    store.write_block(7, b"seven", &["b".into()]).unwrap();
    drop(store);
    fs.power_cut();
    let store = BlockStore::open(mnt.join("new/deeper/blocks"), Default::default()).unwrap();
    assert_eq!(store.numbers().unwrap(), vec![7], "the written block survives the cut");
    store.recover(&["b".into()]).unwrap();
    assert_eq!(store.read_block(7).unwrap(), b"seven");
}

/// The `fs` provider answers `uploaded` only once the object and every
/// directory it created for the key are durable.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_the_fs_provider_reports_uploaded_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::create_dir_all(backing.join("disk/bucket")).unwrap();
    let mnt = dir.path().join("mnt");
    let mut fs = PowerCutFs::mount(&backing, &mnt);
    let runtime = runtime();
    let mut s = spec("fs");
    s.directory = Some(mnt.join("bucket"));
    let client = blockferry::plugin::BucketClient::open(load(&runtime, "blockferry_fs"), s).await.unwrap();
    let outcome = put(&client, 3, "a/b/c/three.blk", b"three").await.unwrap();
    assert_eq!(outcome, blockferry::plugin::Outcome::Uploaded);
    drop(client);
    fs.power_cut();
    let there = std::fs::read(mnt.join("bucket/a/b/c/three.blk"));
    assert_eq!(there.ok().as_deref(), Some(&b"three"[..]), "an object reported uploaded is there after a cut");
}
