//! The operators' view of a running host (the real binary): `/metrics`,
//! `/healthz`, `/readyz`, `/api/status`, the status page rendered by a real
//! headless browser (Debian's `chromium`, installed by
//! `scripts/install-test-servers.sh`), and logs that never show a secret.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::sidecar::{Sidecar, http_get as get};
use crate::common::*;
use blockferry_sim::{PublisherOptions, publish};

const SECRET: &str = "sup3r-s3cret-t0ken-4242";

/// The value of a metric line `name{labels} value` (first match; labels as written).
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A config with one `fs` bucket and a credentials file holding [`SECRET`];
/// `extra` is appended (more buckets).
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let creds = dir.join("credentials.toml");
    std::fs::write(&creds, format!("[buckets.local]\napi_token = \"{SECRET}\"\n")).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let path = dir.join("blockferry.toml");
    std::fs::write(
        &path,
        format!(
            "credentials = \"credentials.toml\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [http]\nhistory_sample_secs = 1\n\
             [[buckets]]\nname = \"local\"\nplugin = {:?}\ndirectory = \"bucket\"\n{extra}",
            workspace().join("target/test-plugin-cache").display().to_string(),
            plugin_path("blockferry_fs").display().to_string(),
        ),
    )
    .unwrap();
    path
}

async fn feed(sidecar: &Sidecar, first: u64, blocks: u64) {
    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), first, blocks, 8192)).await.unwrap().complete());
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness_follow_the_running_host() {
    let dir = tempfile::tempdir().unwrap();
    // A second bucket whose plugin reaches for a host it may not: every
    // upload fails (permanent, refused egress).
    let flaky = format!(
        "[[buckets]]\nname = \"flaky\"\nplugin = {:?}\nkey_template = \"egress:http://127.0.0.1:9/{{number}}\"\n",
        plugin_path("blockferry_misbehave").display().to_string()
    );
    // Another node's different block 3 is already in the `fs` bucket: a mismatch.
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    std::fs::write(dir.path().join(format!("bucket/{:036}.blk", 3)), b"another node's block 3").unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), &flaky), dir.path(), &[]);
    assert_eq!(get(&sidecar.url("/healthz")).0, 200);
    wait_for("ready", || get(&sidecar.url("/readyz")).0 == 200).await;

    feed(&sidecar, 0, 12).await;
    wait_for("12 uploads counted", || {
        metric(&get(&sidecar.url("/metrics")).1, "blockferry_upload_succeeded_total{bucket=\"local\",provider=\"fs\"}")
            == Some(11.0)
    })
    .await;
    let (status, scraped) = get(&sidecar.url("/metrics"));
    assert_eq!(status, 200);
    for (line, value) in [
        ("blockferry_ingest_blocks_total", 12.0),
        ("blockferry_store_blocks_written_total", 12.0),
        ("blockferry_upload_pending_blocks{bucket=\"local\"}", 0.0),
        ("blockferry_upload_hash_mismatch_total{bucket=\"local\",provider=\"fs\"}", 1.0),
        ("blockferry_upload_failed_total{bucket=\"local\",provider=\"fs\"}", 0.0),
        ("blockferry_upload_pending_blocks{bucket=\"flaky\"}", 12.0),
        ("blockferry_ingest_latest_block", 11.0),
        ("blockferry_buffer_backpressure", 0.0),
        ("blockferry_ready", 1.0),
        ("blockferry_plugin_errors_total{bucket=\"local\",provider=\"fs\",kind=\"trap\"}", 0.0),
    ] {
        assert_eq!(metric(&scraped, line), Some(value), "{line} in\n{scraped}");
    }
    // Histograms with base units, and counts that match.
    assert_eq!(
        metric(&scraped, "blockferry_upload_duration_seconds_count{bucket=\"local\",provider=\"fs\"}"),
        Some(11.0)
    );
    // The failing bucket: failed attempts, a permanent plugin error, refused egress.
    let flaky = |name: &str| metric(&scraped, &format!("{name}{{bucket=\"flaky\",provider=\"misbehave\"}}"));
    assert!(flaky("blockferry_upload_failed_total") >= Some(1.0), "{scraped}");
    assert!(flaky("blockferry_plugin_egress_refused_total") >= Some(1.0), "{scraped}");
    assert_eq!(flaky("blockferry_upload_succeeded_total"), Some(0.0));
    let permanent = "blockferry_plugin_errors_total{bucket=\"flaky\",provider=\"misbehave\",kind=\"permanent\"}";
    assert!(metric(&scraped, permanent) >= Some(1.0), "{scraped}");
    assert!(metric(&scraped, "blockferry_upload_lag_seconds{bucket=\"flaky\"}") > Some(0.0), "the flaky bucket lags");
    assert_eq!(metric(&scraped, "blockferry_store_write_duration_seconds_count"), Some(12.0));
    assert!(metric(&scraped, "blockferry_plugin_calls_total{bucket=\"local\",provider=\"fs\"}").unwrap() >= 12.0);
    // Every metric the alert rules and the dashboard may use is exported
    // (the publish family when streaming to block nodes: tests/all/relay.rs).
    let missing = crate::common::metrics_list::missing(&scraped, |name| !name.starts_with("blockferry_publish_"));
    assert!(missing.is_empty(), "not exported: {missing:?}");

    // The store turns unwritable: not ready, with the reason; writable again: ready.
    let tmp = dir.path().join("blocks/.tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    wait_for("not ready", || get(&sidecar.url("/readyz")).0 == 503).await;
    let (_, why) = get(&sidecar.url("/readyz"));
    assert!(why.contains("the block store is not writable"), "{why}");
    assert_eq!(metric(&get(&sidecar.url("/metrics")).1, "blockferry_ready"), Some(0.0));
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    wait_for("ready again", || get(&sidecar.url("/readyz")).0 == 200).await;

    // A full run's logs (debug level) and every endpoint never show the secret.
    let status_json = get(&sidecar.url("/api/status")).1;
    let metrics_text = get(&sidecar.url("/metrics")).1;
    let out = sidecar.stop();
    let logs = text(&out);
    assert!(logs.contains("DEBUG"), "the run logged at debug level");
    for (what, body) in [("logs", &logs), ("/api/status", &status_json), ("/metrics", &metrics_text)] {
        assert!(!body.contains(SECRET), "the secret appears in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_host_s_state_in_a_real_browser() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium is not installed: run scripts/install-test-servers.sh");
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), ""), dir.path(), &[]);
    feed(&sidecar, 0, 7).await;
    wait_for("7 uploads", || get(&sidecar.url("/api/status")).1.contains("\"uploaded\":7")).await;
    // Two lag samples, for the chart.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let profile = dir.path().join("chromium-profile");
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(sidecar.url("/"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page loaded its data: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the page shows matches the running host.
    let status: serde_json::Value = serde_json::from_str(&get(&sidecar.url("/api/status")).1).unwrap();
    let cell = |class: &str| {
        let marker = format!("class=\"{class}\">");
        let at = dom.find(&marker).unwrap_or_else(|| panic!("no {class} cell in {dom}")) + marker.len();
        dom[at..at + dom[at..].find('<').unwrap()].to_string()
    };
    assert_eq!(cell("name"), "local");
    assert_eq!(cell("provider"), "fs");
    assert_eq!(cell("uploaded"), status["buckets"][0]["uploaded"].to_string());
    assert_eq!(cell("uploaded"), "7");
    assert_eq!(cell("pending"), "0");
    assert_eq!(cell("mismatched"), "0");
    assert!(dom.contains("<polyline"), "the lag chart is drawn");
    let text_of = |id: &str| {
        let marker = format!("id=\"{id}\"");
        let at = dom.find(&marker).unwrap() + marker.len();
        let start = at + dom[at..].find('>').unwrap() + 1;
        dom[start..start + dom[start..].find('<').unwrap()].to_string()
    };
    assert_eq!(text_of("ready"), "yes");
    assert_eq!(text_of("latest"), "6");
    assert_eq!(text_of("backpressure"), "off");
    assert_eq!(text_of("saturation"), "0 %");
    assert!(text_of("block-node").starts_with("not streaming"));
    sidecar.stop();
}

#[test]
fn the_log_level_comes_from_the_config_unless_rust_log_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let run = |level: &str, rust_log: Option<&str>| {
        let base = std::fs::read_to_string(&path).unwrap();
        let base = match base.find("[log]") {
            Some(at) => base[..at].to_string(),
            None => base,
        };
        std::fs::write(&path, format!("{base}[log]\nlevel = \"{level}\"\n")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_blockferry"));
        command.args(["run", "--config", path.to_str().unwrap(), "--generate", "2", "--exit-when-drained"]);
        command.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]).env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run("debug", None).contains("DEBUG"), "debug from the config");
    let quiet = run("error", None);
    assert!(!quiet.contains("INFO") && !quiet.contains("DEBUG"), "error from the config: {quiet}");
    assert!(run("error", Some("info")).contains("INFO"), "RUST_LOG wins");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_plugin_cannot_starve_the_good_bucket_flood_the_log_or_leak_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    // Every upload of the hostile bucket opens streams until refused, floods
    // host.log, stdout and stderr, and fails saying its credential.
    let hostile = format!(
        "[[buckets]]\nname = \"hostile\"\nplugin = {:?}\nlog_lines_per_minute = 60\nconcurrency = 2\n\
         [buckets.settings]\nmode = \"hostile\"\n",
        plugin_path("blockferry_misbehave").display().to_string()
    );
    let path = config(dir.path(), &hostile);
    std::fs::write(
        dir.path().join("credentials.toml"),
        format!("[buckets.local]\napi_token = \"{SECRET}\"\n[buckets.hostile]\nsecret_key = \"{SECRET}\"\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let sidecar = Sidecar::start(&path, dir.path(), &[]);
    wait_for("ready", || get(&sidecar.url("/readyz")).0 == 200).await;
    feed(&sidecar, 0, 20).await;
    // The good bucket gets every block.
    wait_for("20 uploads to the good bucket", || {
        metric(&get(&sidecar.url("/metrics")).1, "blockferry_upload_succeeded_total{bucket=\"local\",provider=\"fs\"}")
            == Some(20.0)
    })
    .await;
    assert_eq!(objects_in(&dir.path().join("bucket")), 20);
    // The hostile bucket has failed a few times over meanwhile.
    wait_for("hostile attempts", || {
        metric(
            &get(&sidecar.url("/metrics")).1,
            "blockferry_upload_failed_total{bucket=\"hostile\",provider=\"misbehave\"}",
        )
        .is_some_and(|n| n >= 4.0)
    })
    .await;
    let (status, scraped) = get(&sidecar.url("/metrics"));
    assert_eq!(status, 200);
    let (_, api) = get(&sidecar.url("/api/status"));
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let output = sidecar.stop();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();

    // Its log lines stay within its budget (a minute's worth at once, then
    // 60 a minute, plus the dropped-lines summaries), each within 8 KiB.
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("misbehave/hostile")).collect();
    let budget = (60.0 * (1.0 + minutes)).ceil() as usize;
    assert!(lines.len() <= 2 * budget + 100, "{} lines for a budget of {budget}", lines.len());
    assert!(lines.iter().all(|l| l.len() <= 9 * 1024), "a plugin line over the cut");
    assert!(lines.iter().any(|l| l.contains("lines dropped")), "no dropped-lines summary");
    assert!(log.len() < 4 << 20, "{} bytes of log", log.len());
    // Its secret reaches no log, metric, status page or .meta file.
    assert!(log.contains("[redacted]"), "the plugin's words are not in the log");
    for (what, text) in [("log", &log), ("metrics", &scraped), ("status", &api)] {
        assert!(!text.contains(SECRET), "the secret appears in the {what}");
    }
    for file in files_under(&dir.path().join("blocks")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret is in {}", file.display());
    }
    let metas = files_under(&dir.path().join("blocks"));
    let meta_text: String = metas
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "meta"))
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect();
    assert!(meta_text.contains("[redacted]"), "the hostile bucket's error is not in the .meta files");
}
