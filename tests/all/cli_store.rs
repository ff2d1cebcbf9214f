//! The store tools of the `blockferry` binary: `import`, `status`, `verify`,
//! run on the embedded default (the real `fs` provider) next to `run`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Output;

use crate::common::*;
use blockferry_proto::framing::encode_block;
use blockferry_sim::{block_bytes, generate_block};

/// Run `blockferry <command> --dir <work> <args>`.
fn on(command: &str, work: &Path, args: &[&str]) -> Output {
    let mut all = vec![command, "--dir", work.to_str().unwrap()];
    all.extend_from_slice(args);
    blockferry(&all)
}

/// Run and require success.
fn ok(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Write `files` (path under `dir`, contents), creating directories.
fn lay_out(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, contents) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
}

/// The object of block `n` in the embedded default's bucket.
fn object(work: &Path, n: u64) -> std::path::PathBuf {
    work.join("bucket").join(format!("{n:036}.blk"))
}

/// `status --json`, parsed.
fn status_json(work: &Path) -> serde_json::Value {
    let out = on("status", work, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out)))
}

#[test]
fn import_backfills_node_files_which_run_uploads_and_refuses_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, work) = (tmp.path().join("src"), tmp.path().join("work"));
    let block = |n: u64| block_bytes(n, 500 + 97 * n as usize);
    // As a consensus node writes them, plus short all-digit names and files that are no blocks.
    let mut files: Vec<(String, Vec<u8>)> =
        (0..4).map(|n| (format!("block-0.0.3/{n:036}.blk.gz"), gzip(&block(n)))).collect();
    files.push(("more/4.blk".into(), block(4)));
    files.push(("more/deeper/5.blk.gz".into(), gzip(&block(5))));
    files.push(("block-0.0.3/README.txt".into(), b"not a block".to_vec()));
    files.push(("more/x7.blk".into(), block(7)));
    lay_out(&src, &files);

    let t = ok(on("import", &work, &[src.to_str().unwrap()]));
    assert!(t.contains("imported 6 blocks (0 already present, 2 skipped)"), "{t}");
    assert!(t.contains("README.txt") && t.contains("x7.blk"), "names the skipped files: {t}");
    assert!(t.contains("blockferry run"), "{t}");
    assert!(!object(&work, 0).exists(), "import does not upload");
    let t = ok(on("status", &work, &[]));
    assert!(t.contains("6 blocks on disk"), "{t}");
    assert!(t.contains("bucket local: 0 uploaded, 0 already present, 6 pending"), "{t}");
    assert!(t.contains("oldest pending block 0, lag"), "{t}");

    let t = ok(on("run", &work, &["--exit-when-drained"]));
    assert!(t.contains("bucket local: 6 uploaded"), "{t}");
    for n in 0..6 {
        assert_eq!(fs::read(object(&work, n)).unwrap(), block(n), "block {n} in the bucket, decompressed");
    }
    let t = ok(on("status", &work, &[]));
    assert!(t.contains("bucket local: 6 uploaded, 0 already present, 0 pending, 0 failed"), "{t}");
    assert!(t.contains("nothing pending"), "{t}");

    // Again: nothing new.
    let t = ok(on("import", &work, &[src.to_str().unwrap()]));
    assert!(t.contains("imported 0 blocks (6 already present, 2 skipped)"), "{t}");

    // Different bytes for block 2 (a valid block 2 all the same) and a new block 9: reported, exit 1,
    // nothing overwritten.
    let other = tmp.path().join("other");
    lay_out(
        &other,
        &[
            (format!("block-0.0.3/{:036}.blk.gz", 2), gzip(&block_bytes(2, 4000))),
            (format!("block-0.0.3/{:036}.blk.gz", 9), gzip(&block(9))),
        ],
    );
    let stored = fs::read(work.join("blocks").join(format!("{:036}.blk", 2))).unwrap();
    let out = on("import", &work, &[other.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("1 blocks conflict") && t.contains("block 2 is already stored"), "{t}");
    assert!(t.contains("imported 1 blocks (0 already present, 0 skipped)"), "{t}");
    assert_eq!(fs::read(work.join("blocks").join(format!("{:036}.blk", 2))).unwrap(), stored);
    assert_eq!(stored, block(2));
    let t = ok(on("run", &work, &["--exit-when-drained"]));
    assert!(t.contains("bucket local: 1 uploaded"), "only block 9 is new: {t}");
    assert_eq!(fs::read(object(&work, 2)).unwrap(), block(2));
    assert_eq!(fs::read(object(&work, 9)).unwrap(), block(9));
}

#[test]
fn import_takes_complete_node_blocks_byte_for_byte_reports_pending_ones_and_refuses_invalid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, work) = (tmp.path().join("src"), tmp.path().join("work"));
    let name = |n: u64, ext: &str| format!("block-0.0.3/{n:036}.{ext}");
    let size = |n: u64| 3000 + 700 * n as usize;
    let stored = |n: u64| work.join("blocks").join(format!("{n:036}.blk"));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // Blocks 0-2 complete, each with its marker.
    for n in 0..3 {
        files.push((name(n, "blk.gz"), gzip(&block_bytes(n, size(n)))));
        files.push((name(n, "mf"), Vec::new()));
    }
    // Block 3 still being written.
    files.push((name(3, "pnd.gz"), gzip(&block_bytes(3, size(3))[..1000])));
    files.push((name(3, "pnd.json"), br#"{"blockNumber":3}"#.to_vec()));
    // Block 4's file holds block 5; block 6 lacks its proof; block 7 is no Block at all.
    files.push((name(4, "blk.gz"), gzip(&block_bytes(5, size(4)))));
    files.push((name(4, "mf"), Vec::new()));
    let mut unproven = generate_block(6, size(6));
    unproven.pop();
    files.push((name(6, "blk.gz"), gzip(&encode_block(&unproven))));
    files.push((name(7, "blk.gz"), gzip(b"not a block at all")));
    lay_out(&src, &files);

    let out = on("import", &work, &[src.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("imported 3 blocks (0 already present, 0 skipped)"), "{t}");
    assert!(!t.contains("warning"), "markers and pending files are no foreign files: {t}");
    assert!(
        t.contains(
            "1 blocks still being written (.pnd.gz) were not imported; import again once the node has finished them"
        ),
        "{t}"
    );
    assert!(t.contains("3 block files could not be read or are not valid blocks"), "{t}");
    assert!(
        t.contains(&format!("{}: header says block 5 but the file is named for block 4", name(4, "blk.gz"))),
        "{t}"
    );
    assert!(t.contains(&format!("{}: no block_proof item", name(6, "blk.gz"))), "{t}");
    assert!(t.contains(&format!("{}: not a serialized Block: ", name(7, "blk.gz"))), "{t}");
    assert!(t.contains("0 conflicting, 3 unreadable or invalid"), "{t}");
    for n in 0..3 {
        assert_eq!(fs::read(stored(n)).unwrap(), block_bytes(n, size(n)), "block {n} stored byte for byte");
    }
    for n in 3..8 {
        assert!(!stored(n).exists(), "block {n} is not stored");
    }
    assert!(ok(on("status", &work, &[])).contains("3 blocks on disk"));

    // The node finishes block 3; the refused files are taken away: import again.
    for ext in ["pnd.gz", "pnd.json"] {
        fs::remove_file(src.join(name(3, ext))).unwrap();
    }
    for n in [4, 6, 7] {
        fs::remove_file(src.join(name(n, "blk.gz"))).unwrap();
    }
    lay_out(&src, &[(name(3, "blk.gz"), gzip(&block_bytes(3, size(3)))), (name(3, "mf"), Vec::new())]);
    let t = ok(on("import", &work, &[src.to_str().unwrap()]));
    assert!(t.contains("imported 1 blocks (3 already present, 0 skipped)"), "{t}");
    assert!(!t.contains("still being written") && !t.contains("error"), "{t}");
    assert_eq!(fs::read(stored(3)).unwrap(), block_bytes(3, size(3)));
}

#[test]
fn status_counts_change_as_run_uploads_and_json_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, work) = (tmp.path().join("src"), tmp.path().join("work"));
    ok(on("run", &work, &["--generate", "6", "--exit-when-drained"]));
    let s = status_json(&work);
    assert_eq!(s["blocks"], 6);
    assert_eq!(s["buckets"][0]["name"], "local");
    assert_eq!(s["buckets"][0]["uploaded"], 6);
    assert_eq!(s["buckets"][0]["pending"], 0);
    assert!(s["buckets"][0]["oldest_pending"].is_null(), "{s}");

    // Three more blocks, one of which the bucket already holds with other content.
    lay_out(&src, &(100..103).map(|n| (format!("{n}.blk"), block_bytes(n, 2000))).collect::<Vec<_>>());
    ok(on("import", &work, &[src.to_str().unwrap()]));
    fs::write(object(&work, 102), b"someone else's block 102").unwrap();
    let s = status_json(&work);
    let b = &s["buckets"][0];
    assert_eq!(
        (s["blocks"].as_u64(), b["uploaded"].as_u64(), b["pending"].as_u64()),
        (Some(9), Some(6), Some(3)),
        "{s}"
    );
    assert_eq!(b["oldest_pending"], 100, "{s}");
    assert!(b["lag_ms"].is_u64() && b["lag"].is_string(), "{s}");
    assert_eq!(
        s["bytes"].as_u64().unwrap(),
        fs::read_dir(work.join("blocks"))
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                e.file_name().to_string_lossy().ends_with(".blk").then(|| e.metadata().unwrap().len())
            })
            .sum::<u64>()
    );

    ok(on("run", &work, &["--exit-when-drained"]));
    let s = status_json(&work);
    let b = &s["buckets"][0];
    assert_eq!(
        (b["uploaded"].as_u64(), b["pending"].as_u64(), b["hash_mismatch"].as_u64()),
        (Some(8), Some(0), Some(1)),
        "{s}"
    );
    assert!(b["oldest_pending"].is_null() && b["lag"].is_null(), "{s}");
    let t = ok(on("status", &work, &[]));
    assert!(t.contains("8 uploaded, 0 already present, 0 pending, 0 failed (0 permanent), 1 hash-mismatched"), "{t}");
}

#[test]
fn verify_finds_mismatched_and_missing_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    ok(on("run", &work, &["--generate", "8", "--exit-when-drained"]));
    let t = ok(on("verify", &work, &[]));
    assert!(t.contains("bucket local: 8 matching, 0 missing, 0 mismatched, 0 unknown MD5"), "{t}");

    // Replace object 3 behind the provider's back (and drop its recorded MD5 so it is recomputed).
    fs::write(object(&work, 3), b"tampered").unwrap();
    fs::remove_file(work.join("bucket/.blockferry/meta").join(format!("{:036}.blk.json", 3))).unwrap();
    let out = on("verify", &work, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("7 matching, 0 missing, 1 mismatched") && t.contains("mismatched: 3\n"), "{t}");

    fs::remove_file(object(&work, 5)).unwrap();
    let out = on("verify", &work, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("6 matching, 1 missing, 1 mismatched") && t.contains("missing: 5\n"), "{t}");

    // A range that avoids both is clean.
    let t = ok(on("verify", &work, &["--range", "6..8"]));
    assert!(t.contains("bucket local: 2 matching, 0 missing, 0 mismatched"), "{t}");
    let out = on("verify", &work, &["--range", "0..=3"]);
    assert!(text(&out).contains("3 matching, 0 missing, 1 mismatched"), "{}", text(&out));

    // A block imported but not uploaded yet is absent remotely without being "missing".
    let src = tmp.path().join("src");
    lay_out(&src, &[("20.blk".into(), block_bytes(20, 100))]);
    ok(on("import", &work, &[src.to_str().unwrap()]));
    let t = ok(on("verify", &work, &["--range", "20..=20"]));
    assert!(t.contains("0 matching, 0 missing, 0 mismatched, 0 unknown MD5, 1 not uploaded yet"), "{t}");
}

#[test]
fn two_buckets_from_a_config_with_gzip_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (tmp.path().join("src"), tmp.path());
    for b in ["a", "b"] {
        fs::create_dir_all(dir.join(b)).unwrap();
    }
    let plugin = plugin_path("blockferry_fs");
    let config = dir.join("bf.toml");
    fs::write(
        &config,
        format!(
            "[store]\ncompression = \"gzip\"\n\
             [[buckets]]\nname = \"a\"\nplugin = {plugin:?}\ndirectory = \"a\"\nconcurrency = 1\n\
             [[buckets]]\nname = \"b\"\nplugin = {plugin:?}\ndirectory = \"b\"\nconcurrency = 3\n"
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    lay_out(&src, &(0..5).map(|n| (format!("block-0.0.3/{n:036}.blk"), block_bytes(n, 3000))).collect::<Vec<_>>());
    let t = ok(blockferry(&["import", src.to_str().unwrap(), "--config", c]));
    assert!(t.contains("imported 5 blocks") && t.contains("uploads them to a, b"), "{t}");
    let s: serde_json::Value =
        serde_json::from_slice(&blockferry(&["status", "--config", c, "--json"]).stdout).unwrap();
    assert_eq!((s["buckets"][0]["pending"].as_u64(), s["buckets"][1]["pending"].as_u64()), (Some(5), Some(5)), "{s}");

    ok(blockferry(&["run", "--config", c, "--exit-when-drained"]));
    for b in ["a", "b"] {
        for n in 0..5u64 {
            // The store's compression applies: the object is the gzip of the block.
            let object = fs::read(dir.join(b).join(format!("{n:036}.blk.gz"))).unwrap();
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&object[..]), &mut raw).unwrap();
            assert_eq!(raw, block_bytes(n, 3000), "bucket {b}, block {n}");
        }
    }
    let t = ok(blockferry(&["verify", "--config", c]));
    assert!(t.contains("bucket a: 5 matching, 0 missing") && t.contains("bucket b: 5 matching, 0 missing"), "{t}");

    fs::remove_file(dir.join("b").join(format!("{:036}.blk.gz", 4))).unwrap();
    let out = blockferry(&["verify", "--config", c]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("bucket a: 5 matching, 0 missing") && t.contains("bucket b: 4 matching, 1 missing"), "{t}");
}

/// A bucket added to a store whose blocks are all uploaded elsewhere: the
/// host is ready without reading the store's `.meta` files first; the
/// start-up check that reads them afterwards queues every block to the new
/// bucket as it finds it (a torn `.meta` among them is rebuilt, its block
/// uploaded too) and only then counts the blocks; a bucket added by a reload
/// gets every block as well.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_added_to_a_stored_backlog_gets_every_block_found_after_ready() {
    use crate::common::sidecar::{Sidecar, http_get};
    use blockferry::store::{BlockStore, BucketStatus, Confirmed};
    const BLOCKS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path().join("blocks"), blockferry::config::Compression::None).unwrap();
    let uploaded = BucketStatus::Uploaded { at_ms: 1, version: None, confirmed: Some(Confirmed::ServerDigest) };
    for n in 0..BLOCKS {
        store.write_block(n, &block_bytes(n, 512), &["a".to_string()]).unwrap();
        store.update_meta(n, |m| drop(m.buckets.insert("a".into(), uploaded.clone()))).unwrap();
    }
    let torn = 7;
    let md5 = store.read_meta(torn).unwrap().md5;
    fs::write(store.meta_path(torn), b"{\"number\": 7, \"fi").unwrap(); // a power cut tore its first .meta
    let config = dir.path().join("blockferry.toml");
    let write_config = |buckets: &[&str]| {
        let mut text = format!(
            "[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n[upload]\nlocal_retention_hours = 1000\n\
             retention_interval_secs = 3600\n",
            workspace().join("target/test-plugin-cache").display().to_string()
        );
        for b in buckets {
            fs::create_dir_all(dir.path().join(format!("bucket-{b}"))).unwrap();
            text += &format!(
                "[[buckets]]\nname = \"{b}\"\nplugin = {:?}\ndirectory = \"bucket-{b}\"\n",
                plugin_path("blockferry_fs").display().to_string()
            );
        }
        fs::write(&config, text).unwrap();
    };
    write_config(&["a", "b"]);
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    let metric = |name: &str| -> Option<f64> {
        let text = http_get(&sidecar.url("/metrics")).1;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let in_bucket = |b: &str| (0..BLOCKS).all(|n| dir.path().join(format!("bucket-{b}/{n:036}.blk")).exists());
    let started = std::time::Instant::now();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "timed out until {what}\n{}",
                sidecar.log()
            );
            // Until counted, the counts are absent, not zero.
            if metric("blockferry_store_blocks_counted") == Some(0.0) {
                assert_eq!(metric("blockferry_store_blocks{bucket=\"b\",state=\"pending\"}"), None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    until("ready", &|| http_get(&sidecar.url("/readyz")).0 == 200);
    until("every block is in the added bucket b", &|| in_bucket("b"));
    for n in 0..BLOCKS {
        let object = fs::read(dir.path().join(format!("bucket-b/{n:036}.blk"))).unwrap();
        assert_eq!(object, block_bytes(n, 512), "block {n} in bucket b");
    }
    assert!(!dir.path().join(format!("bucket-a/{:036}.blk", 1)).exists(), "nothing uploaded again to a");
    let rebuilt = store.read_meta(torn).unwrap();
    assert_eq!(rebuilt.md5, md5, "the torn .meta is rebuilt the same");
    until("every block is recorded safe in b", &|| {
        (0..BLOCKS).all(|n| store.read_meta(n).is_ok_and(|m| m.status("b").is_safe()))
    });
    // Counted once, by the start-up check, when every block was still pending in b.
    until("the blocks are counted", &|| metric("blockferry_store_blocks_counted") == Some(1.0));
    let state = |b: &str, s: &str| metric(&format!("blockferry_store_blocks{{bucket=\"{b}\",state=\"{s}\"}}"));
    // The torn block was rebuilt pending everywhere: it is counted pending in a too.
    assert_eq!(state("a", "confirmed"), Some((BLOCKS - 1) as f64), "{}", sidecar.log());
    assert_eq!(state("a", "pending"), Some(1.0));
    assert_eq!(state("b", "pending"), Some(BLOCKS as f64));
    assert!(sidecar.log().contains("store checked"), "{}", sidecar.log());

    // A bucket added by a reload gets every block too, uploads starting before its scan ends.
    write_config(&["a", "b", "c"]);
    sidecar.signal(libc::SIGHUP);
    until("every block is in the bucket c added by a reload", &|| in_bucket("c"));
    drop(sidecar.stop());
}
