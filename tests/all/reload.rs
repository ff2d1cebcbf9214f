//! Live changes against the real binary: config reloads add, change and
//! remove buckets while blocks stream in; a broken config is rejected and the
//! running one keeps working; a plugin file replaced while uploads run is
//! hot-swapped with every block landing exactly once; a broken replacement is
//! refused and the old plugin keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::sidecar::{Sidecar, http_get};
use crate::common::*;
use blockferry_sim::{PublisherOptions, publish};

const SIZE: usize = 8192;

/// One `fs` bucket table: `name`, its plugin file, its key template.
fn bucket(name: &str, plugin: &Path, key_template: &str) -> String {
    format!(
        "[[buckets]]\nname = \"{name}\"\nplugin = {:?}\ndirectory = \"{name}\"\nkey_template = \"{key_template}\"\n",
        plugin.display().to_string()
    )
}

/// Write the config: a store, the shared plugin cache, fast retries, and `buckets`.
fn write_config(dir: &Path, buckets: &[String]) -> PathBuf {
    for name in ["a", "b"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    let path = dir.join("blockferry.toml");
    let text = format!(
        "[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
         [upload]\nretry_initial_backoff_ms = 50\nretry_max_backoff_ms = 200\n{}",
        workspace().join("target/test-plugin-cache").display().to_string(),
        buckets.concat()
    );
    // Through a rename, as editors save: the watcher never reads half a file.
    let tmp = dir.join(".blockferry.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The objects (not the provider's bookkeeping) in a bucket directory.
fn objects(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The value of a metric line `name{labels} value`.
fn metric(sidecar: &Sidecar, name_and_labels: &str) -> Option<f64> {
    let text = http_get(&sidecar.url("/metrics")).1;
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn feed(sidecar: &Sidecar, first: u64, blocks: u64) {
    let report = publish(&PublisherOptions::new(sidecar.endpoint(), first, blocks, SIZE)).await.unwrap();
    assert!(report.complete(), "{}", report.summary());
}

async fn wait_for(what: &str, sidecar: &Sidecar, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}:\n{}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the config generation in force is `generation`.
async fn wait_for_generation(sidecar: &Sidecar, generation: u64) {
    wait_for(&format!("config generation {generation}"), sidecar, || {
        metric(sidecar, "blockferry_config_generation") == Some(generation as f64)
    })
    .await;
}

/// The `.meta` of block `n` as JSON.
fn meta(dir: &Path, n: u64) -> serde_json::Value {
    let path = dir.join("blocks").join(format!("{n:036}.meta"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_are_added_changed_and_removed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, fs) = (dir.path(), plugin_path("blockferry_fs"));
    let config = write_config(d, &[bucket("a", &fs, "{number}{ext}")]);
    let sidecar = Sidecar::start(&config, d, &[]);
    feed(&sidecar, 0, 10).await;
    wait_for("bucket a holds blocks 0-9", &sidecar, || objects(&d.join("a")).len() == 10).await;

    // Added: bucket b's backlog (every stored block) drains.
    write_config(d, &[bucket("a", &fs, "{number}{ext}"), bucket("b", &fs, "{number}{ext}")]);
    wait_for_generation(&sidecar, 2).await;
    wait_for("bucket b holds blocks 0-9", &sidecar, || objects(&d.join("b")).len() == 10).await;
    assert!(sidecar.log().contains("added=[\"b\"]"), "{}", sidecar.log());

    // Changed: b's key template applies to the blocks uploaded from now on.
    write_config(d, &[bucket("a", &fs, "{number}{ext}"), bucket("b", &fs, "new-{number}{ext}")]);
    wait_for_generation(&sidecar, 3).await;
    assert!(sidecar.log().contains("reopened=[\"b\"]"), "{}", sidecar.log());
    feed(&sidecar, 10, 2).await;
    wait_for("b holds 10-11 under the new keys", &sidecar, || {
        objects(&d.join("b")).iter().filter(|o| o.starts_with("new-")).count() == 2
    })
    .await;
    assert_eq!(objects(&d.join("b")).len(), 12, "nothing uploaded twice under both templates");

    // Removed: a gets nothing more; its entries in the old `.meta` files stay.
    write_config(d, &[bucket("b", &fs, "new-{number}{ext}")]);
    wait_for_generation(&sidecar, 4).await;
    feed(&sidecar, 12, 3).await;
    wait_for("b holds 12-14", &sidecar, || objects(&d.join("b")).len() == 15).await;
    assert_eq!(objects(&d.join("a")).len(), 12, "a removed bucket receives no uploads");
    assert!(meta(d, 5)["buckets"].get("a").is_some(), "a removed bucket's status is kept: {}", meta(d, 5));
    assert!(meta(d, 13)["buckets"].get("a").is_none(), "{}", meta(d, 13));
    assert!(sidecar.log().contains("bucket removed"), "{}", sidecar.log());

    // A broken config is rejected with the start-up error; the running one keeps working.
    std::fs::write(&config, "[store]\ndir = \"blocks\"\n[[buckets]]\nname = \"b\"\nconcurrency = \"many\"\n").unwrap();
    wait_for("the rejection", &sidecar, || metric(&sidecar, "blockferry_config_reloads_rejected_total") == Some(1.0))
        .await;
    assert!(sidecar.log().contains("config reload rejected, the running config stays in force"), "{}", sidecar.log());
    assert!(sidecar.log().contains("concurrency"), "the error names the key: {}", sidecar.log());
    feed(&sidecar, 15, 2).await;
    wait_for("b still uploads (15-16)", &sidecar, || objects(&d.join("b")).len() == 17).await;
    assert_eq!(metric(&sidecar, "blockferry_config_generation"), Some(4.0));

    // SIGHUP reloads at once (and does not stop the process).
    write_config(d, &[bucket("a", &fs, "{number}{ext}"), bucket("b", &fs, "new-{number}{ext}")]);
    wait_for_generation(&sidecar, 5).await;
    // Re-added: a resumes with the blocks it missed.
    wait_for("a catches up (0-16)", &sidecar, || objects(&d.join("a")).len() == 17).await;
    sidecar.signal(libc::SIGHUP);
    wait_for_generation(&sidecar, 6).await;
    assert!(sidecar.log().contains("SIGHUP: reloading the config"), "{}", sidecar.log());

    // `blockferry status` shows the generation in force.
    let http = format!("127.0.0.1:{}", sidecar.http_port);
    let out = blockferry(&["status", "--config", config.to_str().unwrap(), "--http-listen", &http]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("config generation 6 loaded"), "{}", text(&out));
    for bucket in ["a", "b"] {
        let uploaded =
            metric(&sidecar, &format!("blockferry_upload_succeeded_total{{bucket=\"{bucket}\",provider=\"fs\"}}"));
        assert!(uploaded.is_some(), "bucket {bucket} in /metrics");
    }
    stop(sidecar);
}

/// A copy of the `fs` provider that differs in one custom section: another
/// valid build of the same provider.
fn rebuilt(fs: &Path, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(fs).unwrap();
    let name = b"blockferry-test-build";
    let payload: Vec<u8> = [&[name.len() as u8][..], name, tag.as_bytes()].concat();
    bytes.push(0); // custom section
    bytes.push(payload.len() as u8);
    bytes.extend(payload);
    bytes
}

/// Replace `path` the way an installer does: write beside it, then rename.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar with bucket `a` whose plugin is a copy of the `fs` provider in `d`
/// (to be replaced by the test).
fn start_with_own_plugin(d: &Path) -> (PathBuf, Sidecar) {
    let plugin = d.join("fs.wasm");
    std::fs::copy(plugin_path("blockferry_fs"), &plugin).unwrap();
    let config = write_config(d, &[bucket("a", &plugin, "{number}{ext}")]);
    (plugin, Sidecar::start(&config, d, &[]))
}

/// Stop the sidecar; it must exit cleanly.
fn stop(sidecar: Sidecar) {
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_replaced_while_uploads_run_lands_every_block_exactly_once() {
    const BLOCKS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (plugin, sidecar) = start_with_own_plugin(d);

    // A stream of blocks, one every 15 ms; the plugin is replaced mid-stream.
    let options = PublisherOptions {
        interval: Duration::from_millis(15),
        ..PublisherOptions::new(sidecar.endpoint(), 0, BLOCKS, SIZE)
    };
    let stream = tokio::spawn(async move { publish(&options).await });
    wait_for("uploads running", &sidecar, || objects(&d.join("a")).len() >= 20).await;
    let new = rebuilt(&plugin_path("blockferry_fs"), "v2");
    replace(&plugin, &new);
    wait_for("the swap", &sidecar, || sidecar.log().contains("plugin swapped")).await;
    let at_swap = objects(&d.join("a")).len() as u64;
    let report = stream.await.unwrap().unwrap();
    assert!(report.complete(), "{}", report.summary());
    wait_for("every block uploaded", &sidecar, || objects(&d.join("a")).len() as u64 == BLOCKS).await;
    // An object exists a moment before the host records its outcome: wait for the outcomes.
    let labels = "{bucket=\"a\",provider=\"fs\"}";
    let outcomes = || {
        ["succeeded", "already_present"]
            .iter()
            .map(|o| metric(&sidecar, &format!("blockferry_upload_{o}_total{labels}")).unwrap_or(0.0))
            .sum::<f64>()
    };
    wait_for("every outcome recorded", &sidecar, || outcomes() >= BLOCKS as f64).await;

    assert!(at_swap < BLOCKS, "the swap happened while blocks were still arriving ({at_swap} uploaded)");
    assert_eq!(metric(&sidecar, &format!("blockferry_upload_succeeded_total{labels}")), Some(BLOCKS as f64));
    assert_eq!(
        metric(&sidecar, &format!("blockferry_upload_already_present_total{labels}")),
        Some(0.0),
        "no block uploaded twice"
    );
    assert_eq!(metric(&sidecar, &format!("blockferry_upload_failed_total{labels}")), Some(0.0));
    assert_eq!(metric(&sidecar, &format!("blockferry_plugin_swaps_total{labels}")), Some(1.0));
    let new_sha = blockferry::plugin::sha256_hex(&new);
    assert!(sidecar.log().contains(&new_sha), "the swap names the new component: {}", sidecar.log());
    for n in 0..BLOCKS {
        assert_eq!(meta(d, n)["buckets"]["a"]["state"], "uploaded", "block {n}: {}", meta(d, n));
    }
    stop(sidecar);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_replacement_plugin_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (plugin, sidecar) = start_with_own_plugin(d);
    feed(&sidecar, 0, 5).await;
    wait_for("a holds 0-4", &sidecar, || objects(&d.join("a")).len() == 5).await;

    // A core module is not a component: refused, with the reason and the fix.
    replace(&plugin, &wat::parse_str("(module)").unwrap());
    wait_for("the rejection", &sidecar, || metric(&sidecar, "blockferry_config_reloads_rejected_total") == Some(1.0))
        .await;
    let log = sidecar.log();
    assert!(log.contains("config reload rejected"), "{log}");
    assert!(log.contains("is not a WebAssembly component"), "{log}");
    assert!(log.contains("bucket a"), "the error names the bucket: {log}");
    // The old component, still loaded, keeps uploading.
    feed(&sidecar, 5, 5).await;
    wait_for("a holds 0-9", &sidecar, || objects(&d.join("a")).len() == 10).await;
    let labels = "{bucket=\"a\",provider=\"fs\"}";
    assert_eq!(metric(&sidecar, &format!("blockferry_plugin_swaps_total{labels}")), Some(0.0));
    assert_eq!(metric(&sidecar, "blockferry_config_generation"), Some(1.0));

    // The file fixed: the next change swaps the good build in.
    replace(&plugin, &rebuilt(&plugin_path("blockferry_fs"), "fixed"));
    wait_for_generation(&sidecar, 2).await;
    assert_eq!(metric(&sidecar, &format!("blockferry_plugin_swaps_total{labels}")), Some(1.0));
    feed(&sidecar, 10, 2).await;
    wait_for("a holds 0-11", &sidecar, || objects(&d.join("a")).len() == 12).await;
    stop(sidecar);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_credentials_reopen_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = d.join("credentials.toml");
    let write_creds = |token: &str| {
        let tmp = d.join(".credentials.tmp");
        std::fs::write(&tmp, format!("[buckets.a]\napi_token = \"{token}\"\n")).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &creds).unwrap();
    };
    write_creds("first-token-1111");
    let config = write_config(d, &[bucket("a", &plugin_path("blockferry_fs"), "{number}{ext}")]);
    let text_now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("credentials = \"credentials.toml\"\n{text_now}")).unwrap();
    let sidecar = Sidecar::start(&config, d, &[]);
    feed(&sidecar, 0, 3).await;
    wait_for("a holds 0-2", &sidecar, || objects(&d.join("a")).len() == 3).await;

    write_creds("second-token-2222");
    wait_for_generation(&sidecar, 2).await;
    assert!(sidecar.log().contains("reopened=[\"a\"]"), "{}", sidecar.log());
    assert!(!sidecar.log().contains("second-token"), "a secret never reaches the log");
    feed(&sidecar, 3, 3).await;
    wait_for("a holds 0-5", &sidecar, || objects(&d.join("a")).len() == 6).await;
    stop(sidecar);
}
