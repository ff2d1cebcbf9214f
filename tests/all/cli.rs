//! The `blockferry` binary: `plugin check`, `run`, `init`.

use crate::common::*;

#[test]
fn plugin_check_accepts_the_bundled_providers() {
    for (name, provider) in
        [("blockferry_fs", "fs"), ("blockferry_misbehave", "misbehave"), ("blockferry_plugin_template", "template")]
    {
        let path = plugin_path(name);
        let out = blockferry(&["plugin", "check", path.to_str().unwrap()]);
        let t = text(&out);
        assert!(out.status.success(), "{name}: {t}");
        let world = if provider == "fs" { "reading-provider" } else { "provider" };
        assert!(t.contains(&format!("blockferry:uploader/{world}@0.1.3")), "{t}");
        assert!(t.contains(&format!("provider: {provider}")), "{t}");
        assert!(t.contains("blockferry:uploader/host@0.1.3"), "lists imports: {t}");
        assert!(t.contains(if provider == "fs" { "reads:    yes" } else { "reads:    no" }), "{t}");
    }
}

#[test]
fn plugin_check_refuses_bad_files_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("readme.wasm");
    std::fs::write(&text_file, "hello").unwrap();
    let cases = [
        (plugin_path("blockferry_wrong_version"), "0.2.0"),
        (plugin_path("blockferry-wrong-world"), "wasi:cli/run"),
        (text_file, "not a WebAssembly component"),
    ];
    for (path, expected) in cases {
        let out = blockferry(&["plugin", "check", path.to_str().unwrap()]);
        let t = text(&out);
        assert!(!out.status.success(), "{}: {t}", path.display());
        assert!(t.contains(expected), "{}: {t}", path.display());
    }
}

#[test]
fn run_on_the_embedded_default_uploads_generated_blocks_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = blockferry(&["run", "--dir", d, "--generate", "12", "--exit-when-drained"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("bucket local: 12 uploaded, 0 already present, 0 hash mismatches"), "{t}");
    let objects = std::fs::read_dir(dir.path().join("bucket"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(objects, 12);
    // Forget the uploads locally: the next start re-uploads and finds them present.
    for entry in std::fs::read_dir(dir.path().join("blocks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "meta") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let again = blockferry(&["run", "--dir", d, "--exit-when-drained"]);
    assert!(text(&again).contains("bucket local: 0 uploaded, 12 already present"), "{}", text(&again));
}

#[test]
fn init_writes_the_example_config_which_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bf.toml");
    let out = blockferry(&["init", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let config = blockferry::config::Config::load(&path).expect("the example config loads");
    assert_eq!(config.buckets.len(), 1);
    assert_eq!(config.buckets[0].name, "local");
    // It lists the defaults, so what it says is what a missing key means.
    use blockferry::config::{BufferConfig, HttpConfig, IngestConfig, LogConfig, PublishConfig, UploadConfig};
    assert_eq!(format!("{:?}", config.ingest), format!("{:?}", IngestConfig::default()));
    assert_eq!(format!("{:?}", config.buffer), format!("{:?}", BufferConfig::default()));
    assert_eq!(format!("{:?}", config.upload), format!("{:?}", UploadConfig::default()));
    assert_eq!(format!("{:?}", config.publish), format!("{:?}", PublishConfig::default()));
    assert_eq!(format!("{:?}", config.http), format!("{:?}", HttpConfig::default()));
    assert_eq!(format!("{:?}", config.log), format!("{:?}", LogConfig::default()));
    // It refuses to overwrite.
    let again = blockferry(&["init", path.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again).contains("--force"), "{}", text(&again));
}

#[test]
fn a_conflicting_object_takes_the_hash_mismatch_path_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join(format!("{:036}.blk", 3)), b"another node's block 3").unwrap();
    let config = dir.path().join("bf.toml");
    std::fs::write(
        &config,
        format!(
            "[upload]\nlocal_retention_hours = 0\n[[buckets]]\nname = \"local\"\nplugin = {:?}\ndirectory = \"bucket\"\n",
            plugin_path("blockferry_fs")
        ),
    )
    .unwrap();
    let run = || blockferry(&["run", "--config", config.to_str().unwrap(), "--exit-when-drained"]);
    let out = blockferry(&["run", "--config", config.to_str().unwrap(), "--generate", "6", "--exit-when-drained"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("5 uploaded, 0 already present, 1 hash mismatches"), "{t}");
    let line = t.lines().find(|l| l.contains("hash mismatch:")).unwrap_or_else(|| panic!("no mismatch log line: {t}"));
    for part in ["bucket=local", "block=3", "local_md5=", "remote_md5="] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // Retention (period 0) deleted the five safe blocks and kept the mismatched one.
    assert!(t.contains("retention: 5 deleted, 1 retained"), "{t}");
    let blocks = dir.path().join("data/blocks");
    let kept: Vec<String> = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blocks.join(format!("{:036}.meta", 3))).unwrap()).unwrap();
    assert_eq!(meta["hash_mismatch"], true);
    assert_eq!(meta["buckets"]["local"]["state"], "hash-mismatch");
    // Never retried: the next start has nothing to do and keeps the block.
    let again = run();
    let t = text(&again);
    assert!(t.contains("0 uploaded, 0 already present, 0 hash mismatches, 0 failed"), "{t}");
    assert!(t.contains("retention: 0 deleted, 1 retained"), "{t}");
    assert_eq!(std::fs::read(bucket.join(format!("{:036}.blk", 3))).unwrap(), b"another node's block 3");
}
