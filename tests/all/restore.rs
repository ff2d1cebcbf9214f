//! `blockferry restore` and `blockferry verify --deep`, run as the binary
//! against buckets filled by `blockferry run`: an `fs` bucket, an S3 bucket
//! on moto (content rewritten behind blockferry's back with boto3), and a
//! bucket whose plugin cannot read (the 0.1.0 `old-contract` fixture).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::servers::{Moto, boto, write_s3_credentials};
use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockferry::config::Compression;
use blockferry::store::{BlockMeta, BlockStore, BucketStatus};
use md5::{Digest, Md5};

/// Write `dir/<store>.toml`: the top-level lines `top`, the store in
/// `dir/<store>` with `compression`, the shared plugin cache, and the
/// `[[buckets]]` tables of `buckets`.
fn write_config(dir: &Path, top: &str, store: &str, compression: &str, buckets: &str) -> PathBuf {
    let path = dir.join(format!("{store}.toml"));
    let cache = workspace().join("target/test-plugin-cache");
    let text = format!(
        "{top}[store]\ndir = {store:?}\ncompression = {compression:?}\n[plugins]\ncache_dir = {:?}\n{buckets}",
        cache.display().to_string()
    );
    fs::write(&path, text).unwrap();
    path
}

/// A `[[buckets]]` table for a filesystem bucket `name` in `dir/name` (created).
fn dir_bucket(dir: &Path, name: &str, plugin: &str) -> String {
    fs::create_dir_all(dir.join(name)).unwrap();
    let plugin = plugin_path(plugin).display().to_string();
    format!("[[buckets]]\nname = {name:?}\nplugin = {plugin:?}\ndirectory = {name:?}\nconcurrency = 3\n")
}

/// Run `blockferry <args> --config <config>`.
fn with(config: &Path, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--config", config.to_str().unwrap()]);
    blockferry(&all)
}

/// Run and require success; the output.
fn ok(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// Run and require exit code `code`; the output.
fn fails(code: i32, out: Output) -> String {
    let t = text(&out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    t
}

/// `blockferry restore --from <bucket> --range <range> <into>`.
fn restore(config: &Path, bucket: &str, range: &str, into: &Path) -> Output {
    with(config, &["restore", "--from", bucket, "--range", range, into.to_str().unwrap()])
}

/// The name of block `n`'s file with extension `ext`.
fn file(n: u64, ext: &str) -> String {
    format!("{n:036}{ext}")
}

/// Block `n`'s `.meta` in the store `dir`, parsed as the store parses it.
fn meta(dir: &Path, n: u64) -> BlockMeta {
    let bytes = fs::read(dir.join(format!("{n:036}.meta"))).unwrap_or_else(|e| panic!("block {n}'s .meta: {e}"));
    BlockMeta::parse(&bytes, n).unwrap_or_else(|e| panic!("block {n}'s .meta: {e}"))
}

/// Requires `into` to hold blocks `numbers` exactly as the store `from` does
/// (file bytes, size, MD5), recorded as already present in `bucket`.
fn same_blocks(from: &Path, into: &Path, numbers: impl IntoIterator<Item = u64>, ext: &str, bucket: &str) {
    for n in numbers {
        let original = fs::read(from.join(file(n, ext))).unwrap();
        assert_eq!(fs::read(into.join(file(n, ext))).unwrap(), original, "block {n} byte for byte");
        let (want, got) = (meta(from, n), meta(into, n));
        assert_eq!((&got.file, got.size, &got.md5), (&want.file, want.size, &want.md5), "block {n}'s .meta");
        assert_eq!(got.md5, B64.encode(Md5::digest(&original)), "block {n}: the MD5 of the file");
        assert!(matches!(got.status(bucket), BucketStatus::AlreadyPresent { .. }), "block {n}: {got:?}");
    }
}

/// The block files in the store `dir`, by name.
fn block_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".blk") || n.ends_with(".blk.gz"))
        .collect();
    names.sort();
    names
}

/// Nothing left in the store's temporary directory.
fn no_temporary_files(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir.join(".tmp")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn restore_from_an_fs_bucket_reproduces_the_blocks_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bucket = dir_bucket(dir, "a", "blockferry_fs");
    let config = write_config(dir, "", "blocks", "none", &bucket);
    let t = ok(with(&config, &["run", "--generate", "12", "--block-size", "5000", "--exit-when-drained"]));
    assert!(t.contains("bucket a: 12 uploaded"), "{t}");
    let store = dir.join("blocks");

    // Blocks 2..10 into a new directory.
    let into = dir.join("restored");
    let t = ok(restore(&config, "a", "2..10", &into));
    let bytes: u64 = (2..10).map(|n| meta(&store, n).size).sum();
    assert!(
        t.contains(&format!(
            "restore from bucket a into {}: 8 restored, 0 skipped (already there), 0 missing, 0 unverified, 0 failed; \
             {bytes} bytes in ",
            into.display()
        )),
        "{t}"
    );
    same_blocks(&store, &into, 2..10, ".blk", "a");
    assert_eq!(block_files(&into), (2..10).map(|n| file(n, ".blk")).collect::<Vec<_>>());
    no_temporary_files(&into);

    // The restored directory is a block store the other commands read.
    let restored_config = write_config(dir, "", "restored", "none", &bucket);
    let s: serde_json::Value =
        serde_json::from_slice(&with(&restored_config, &["status", "--json"]).stdout).expect("status --json");
    assert_eq!(s["blocks"], 8, "{s}");
    assert_eq!((s["buckets"][0]["already_present"].as_u64(), s["buckets"][0]["pending"].as_u64()), (Some(8), Some(0)));
    let t = ok(with(&restored_config, &["verify", "--deep"]));
    assert!(t.contains("bucket a: 8 matching, 0 missing, 0 mismatched, 0 unknown MD5"), "{t}");

    // Again, wider: what is there is skipped, the rest restored.
    let t = ok(restore(&config, "a", "..=11", &into));
    assert!(t.contains(": 4 restored, 8 skipped (already there), 0 missing, 0 unverified, 0 failed;"), "{t}");
    same_blocks(&store, &into, 0..12, ".blk", "a");

    // A directory holding another block 5, and block 7's file without its .meta;
    // blocks 12-14 were never uploaded.
    let other = dir.join("other");
    BlockStore::open(&other, Compression::None).unwrap().write_block(5, b"not block 5", &[]).unwrap();
    fs::write(other.join(file(7, ".blk")), b"not block 7 either").unwrap();
    let t = fails(1, restore(&config, "a", "3..15", &other));
    assert!(t.contains("missing in bucket a: 12, 13, 14\n"), "{t}");
    assert!(
        t.contains(&format!("2 blocks could not be restored (nothing in {} was overwritten):", other.display())),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "block 5: DIR already holds it with MD5 {} but `{}` in bucket a has MD5 {}; the block in DIR is kept \
             (never overwritten)",
            B64.encode(Md5::digest(b"not block 5")),
            file(5, ".blk"),
            meta(&store, 5).md5
        )),
        "{t}"
    );
    assert!(t.contains("block 7's file is in the store without its .meta, so it is kept as it is"), "{t}");
    assert!(t.contains(": 7 restored, 0 skipped (already there), 3 missing, 0 unverified, 2 failed;"), "{t}");
    assert_eq!(fs::read(other.join(file(5, ".blk"))).unwrap(), b"not block 5");
    assert_eq!(fs::read(other.join(file(7, ".blk"))).unwrap(), b"not block 7 either");
    assert!(!other.join(format!("{:036}.meta", 7)).exists());
    same_blocks(&store, &other, [3, 4, 6, 8, 9, 10, 11], ".blk", "a");
    no_temporary_files(&other);

    // A bucket the config does not have.
    let t = fails(2, restore(&config, "nope", "0..1", &other));
    assert!(t.contains("error: the config has no bucket named `nope`; its buckets: a"), "{t}");
}

#[test]
fn verify_deep_finds_an_fs_object_rewritten_with_the_same_size_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = write_config(dir, "", "blocks", "none", &dir_bucket(dir, "a", "blockferry_fs"));
    ok(with(&config, &["run", "--generate", "6", "--block-size", "4000", "--exit-when-drained"]));
    let t = ok(with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket a: 6 matching, 0 missing, 0 mismatched, 0 unknown MD5, 0 not uploaded yet, 0 errors"));
    assert!(t.contains("verified 6 local blocks (deep: content downloaded): nothing missing or mismatched"), "{t}");

    // Rewrite object 4 in place: same size, the provider's recorded MD5 and size left as they were.
    let object = dir.join("a").join(file(4, ".blk"));
    let mut bytes = fs::read(&object).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&object, &bytes).unwrap();

    let t = ok(with(&config, &["verify"]));
    assert!(t.contains("bucket a: 6 matching, 0 missing, 0 mismatched"), "metadata alone cannot tell: {t}");
    let t = fails(1, with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket a: 5 matching, 0 missing, 1 mismatched, 0 unknown MD5"), "{t}");
    assert!(t.contains("  mismatched: 4\n"), "{t}");
    let local = meta(&dir.join("blocks"), 4).md5;
    let downloaded = B64.encode(Md5::digest(&bytes));
    assert!(t.contains(&format!("  block 4: content differs (downloaded MD5 {downloaded}, local {local})\n")), "{t}");
    assert!(t.contains("verified 6 local blocks (deep: content downloaded): problems found"), "{t}");
    // --range narrows the deep check too.
    let t = ok(with(&config, &["verify", "--deep", "--range", "0..4"]));
    assert!(t.contains("bucket a: 4 matching, 0 missing, 0 mismatched"), "{t}");
}

#[test]
fn restore_from_s3_reproduces_gzip_blocks_and_verify_deep_finds_rewritten_content() {
    let moto = Moto::start();
    moto.create_bucket("blocks");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_s3_credentials(dir, &["s3"]);
    let bucket = format!(
        "[[buckets]]\nname = \"s3\"\nplugin = {:?}\ncall_timeout_ms = 60000\nconcurrency = 4\n\
         [buckets.settings]\nendpoint = {:?}\nbucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
        plugin_path("blockferry_s3").display().to_string(),
        moto.endpoint()
    );
    let config = write_config(dir, "credentials = \"credentials.toml\"\n", "blocks", "gzip", &bucket);
    let t = ok(with(&config, &["run", "--generate", "6", "--block-size", "20000", "--exit-when-drained"]));
    assert!(t.contains("bucket s3: 6 uploaded"), "{t}");
    let store = dir.join("blocks");
    let t = ok(with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket s3: 6 matching, 0 missing, 0 mismatched, 0 unknown MD5"), "{t}");

    let into = dir.join("restored");
    let t = ok(restore(&config, "s3", "0..=5", &into));
    assert!(t.contains(": 6 restored, 0 skipped (already there), 0 missing, 0 unverified, 0 failed;"), "{t}");
    same_blocks(&store, &into, 0..6, ".blk.gz", "s3");
    assert_eq!(block_files(&into), (0..6).map(|n| file(n, ".blk.gz")).collect::<Vec<_>>());
    no_temporary_files(&into);

    // Rewrite object 2 behind blockferry's back: same size, same metadata (the recorded content MD5).
    let key = file(2, ".blk.gz");
    boto(
        &moto.endpoint(),
        &format!(
            "o = s3.get_object(Bucket='blocks', Key={key:?})\n\
             body = bytearray(o['Body'].read())\n\
             body[50] ^= 0xff\n\
             s3.put_object(Bucket='blocks', Key={key:?}, Body=bytes(body), Metadata=o['Metadata'], \
             ContentType=o['ContentType'])\n\
             h = s3.head_object(Bucket='blocks', Key={key:?})\n\
             assert h['Metadata'] == o['Metadata'] and h['ContentLength'] == o['ContentLength'], h"
        ),
    );
    let mut rewritten = fs::read(store.join(&key)).unwrap();
    rewritten[50] ^= 0xff;

    // The server's ETag of the single-part object wins over the metadata: plain verify tells,
    // and records the mismatch.
    let t = fails(1, with(&config, &["verify"]));
    assert!(t.contains("bucket s3: 5 matching, 0 missing, 1 mismatched"), "{t}");
    assert!(t.contains("  mismatched: 2\n"), "{t}");
    assert!(meta(&store, 2).hash_mismatch, "recorded in the .meta");
    let t = fails(1, with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket s3: 5 matching, 0 missing, 1 mismatched, 0 unknown MD5"), "{t}");
    let local = meta(&store, 2).md5;
    let downloaded = B64.encode(Md5::digest(&rewritten));

    // Restore checks what it receives against the MD5 the bucket reports: block 2 is refused.
    let fresh = dir.join("fresh");
    let t = fails(1, restore(&config, "s3", "1..4", &fresh));
    assert!(
        t.contains(&format!(
            "block 2: the {} bytes received from `{key}` have MD5 {downloaded} but the bucket reports MD5 {local}; \
             not restored",
            rewritten.len()
        )),
        "{t}"
    );
    assert!(t.contains(": 2 restored, 0 skipped (already there), 0 missing, 0 unverified, 1 failed;"), "{t}");
    assert_eq!(block_files(&fresh), vec![file(1, ".blk.gz"), file(3, ".blk.gz")]);
    no_temporary_files(&fresh);
    // The directory restored before holds the original; the bucket's own digest says it holds
    // other bytes now: refused, the original kept.
    let t = fails(1, restore(&config, "s3", "2..3", &into));
    assert!(
        t.contains(&format!(
            "block 2: DIR already holds it with MD5 {local} but `{key}` in bucket s3 has MD5 {downloaded}"
        )),
        "{t}"
    );
    assert!(t.contains("the block in DIR is kept (never overwritten)"), "{t}");
    same_blocks(&store, &into, 0..6, ".blk.gz", "s3");
}

#[test]
fn a_bucket_whose_plugin_cannot_read_is_an_error_for_restore_and_verify_deep() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let buckets =
        format!("{}{}", dir_bucket(dir, "a", "blockferry_fs"), dir_bucket(dir, "old", "blockferry_old_contract"));
    let config = write_config(dir, "", "blocks", "none", &buckets);
    let t = ok(with(&config, &["run", "--generate", "4", "--block-size", "3000", "--exit-when-drained"]));
    assert!(t.contains("bucket a: 4 uploaded") && t.contains("bucket old: 4 uploaded"), "{t}");
    assert_eq!(
        fs::read(dir.join("old").join(file(3, ".blk"))).unwrap(),
        fs::read(dir.join("blocks").join(file(3, ".blk"))).unwrap()
    );

    let into = dir.join("restored");
    let t = fails(2, restore(&config, "old", "0..4", &into));
    assert!(
        t.contains(
            "error: cannot restore from bucket old: plugin blockferry_old_contract/old cannot read objects to restore \
             them: it exports no bucket-reader"
        ),
        "{t}"
    );
    assert!(!into.exists() || block_files(&into).is_empty(), "nothing restored");

    // Plain verify works with it (its stat reports no MD5); --deep cannot.
    let t = ok(with(&config, &["verify"]));
    assert!(t.contains("bucket old: 0 matching, 0 missing, 0 mismatched, 4 unknown MD5"), "{t}");
    let t = fails(1, with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket a: 4 matching, 0 missing, 0 mismatched"), "{t}");
    let line = t.lines().find(|l| l.starts_with("bucket old:")).unwrap_or_else(|| panic!("{t}"));
    assert!(
        line.starts_with(
            "bucket old: error: plugin blockferry_old_contract/old cannot read objects for verify --deep: it exports \
             no bucket-reader"
        ),
        "{t}"
    );
    assert!(t.contains("problems found"), "{t}");
}

#[test]
fn zstd_blocks_in_the_block_nodes_layout_upload_restore_and_mix_with_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir_all(dir.join("bn")).unwrap();
    let bucket = format!(
        "[[buckets]]\nname = \"bn\"\nplugin = {:?}\ndirectory = \"bn\"\nkey_template = \"blocks/{{number:bn}}{{ext}}\"\n",
        plugin_path("blockferry_fs").display().to_string()
    );
    // Blocks 0-2 stored gzipped, then the compression changes: 3-5 in zstd.
    let generate = ["run", "--generate", "3", "--block-size", "5000", "--exit-when-drained"];
    ok(with(&write_config(dir, "", "blocks", "gzip", &bucket), &generate));
    let config = write_config(dir, "", "blocks", "zstd", &bucket);
    let t = ok(with(&config, &generate));
    assert!(t.contains("bucket bn: 3 uploaded"), "{t}");
    let store = dir.join("blocks");
    for n in 0..6 {
        let ext = if n < 3 { ".blk.gz" } else { ".blk.zstd" };
        // The block node's key: 19 digits split 4/4/4/4/3.
        let object = dir.join(format!("bn/blocks/0000/0000/0000/0000/{n:03}{ext}"));
        assert_eq!(fs::read(&object).unwrap(), fs::read(store.join(file(n, ext))).unwrap(), "block {n}");
        if n >= 3 {
            // Decompressed by an independent zstd (the command-line tool).
            let out = std::process::Command::new("zstd")
                .args(["-d", "-c", object.to_str().unwrap()])
                .output()
                .expect("the zstd command: install it with scripts/install-test-servers.sh");
            assert!(out.status.success(), "zstd -d: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, blockferry_sim::block_bytes(n, 5000), "block {n} decompressed");
        }
    }
    // The mixed store verifies clean, deep.
    let t = ok(with(&config, &["verify", "--deep"]));
    assert!(t.contains("bucket bn: 6 matching, 0 missing, 0 mismatched"), "{t}");
    // Restore of the zstd blocks from the block node's layout.
    let into = dir.join("restored");
    let t = ok(restore(&config, "bn", "3..6", &into));
    assert!(t.contains(": 3 restored, 0 skipped (already there), 0 missing, 0 unverified, 0 failed;"), "{t}");
    same_blocks(&store, &into, 3..6, ".blk.zstd", "bn");
    // And import reads the block node's layout back, numbering by directory.
    let imported = write_config(dir, "mode = \"file\"\n", "imported", "none", "");
    let t = ok(with(&imported, &["import", dir.join("bn").to_str().unwrap()]));
    assert!(t.contains("imported 6 blocks"), "{t}");
    for n in 0..6 {
        assert_eq!(fs::read(dir.join("imported").join(file(n, ".blk"))).unwrap(), blockferry_sim::block_bytes(n, 5000));
    }
}
