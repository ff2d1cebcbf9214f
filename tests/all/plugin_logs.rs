//! What plugins print and what the sandbox refuses reaches the host's log,
//! tagged with the plugin and bucket.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;
use blockferry::plugin::{BlockBody, BucketClient, Outcome};

/// A `tracing` writer collecting everything into one buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged by this test process (tests tell their lines apart by bucket name).
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();
        captured
    })
}

#[tokio::test]
async fn stdout_stderr_and_refusals_become_tagged_log_lines() {
    let captured = captured();

    let runtime = runtime();
    let client = BucketClient::open(load(&runtime, "blockferry_misbehave"), spec("logs")).await.unwrap();
    let body = bytes(10, 1);
    client.put_block(&block(1, "print", &body), &BlockBody::from_bytes(body.clone())).await.unwrap();
    let refused =
        client.put_block(&block(2, "egress:http://127.0.0.1:9/nope", &body), &BlockBody::from_bytes(body)).await;
    assert!(refused.is_err());

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        log.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in:\n{log}")).to_string()
    };
    let out = line("hello from stdout");
    assert!(out.contains("INFO") && out.contains("blockferry_misbehave/logs") && out.contains("stdout"), "{out}");
    let err = line("hello from stderr");
    assert!(err.contains("WARN") && err.contains("blockferry_misbehave/logs"), "{err}");
    let refusal = line("refused outbound request");
    assert!(refusal.contains("127.0.0.1:9") && refusal.contains("blockferry_misbehave/logs"), "{refusal}");
}

#[tokio::test]
async fn a_flooding_plugin_logs_a_bounded_amount_with_its_secrets_redacted() {
    let captured = captured();
    const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";
    const PER_MINUTE: u32 = 100;
    let runtime = runtime();
    let mut bad = spec("flood");
    bad.settings = vec![("secret_access_key".into(), SECRET.into()), ("region".into(), "eu-west-1".into())];
    bad.secrets = vec!["secret_access_key".into()];
    bad.log_lines_per_minute = PER_MINUTE;
    bad.memory_limit = 64 << 20;
    bad.call_timeout = Duration::from_secs(120);
    let bad = BucketClient::open(load(&runtime, "blockferry_misbehave"), bad).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut good = spec("beside-flood");
    good.directory = Some(dir.path().to_path_buf());
    let good = BucketClient::open(load(&runtime, "blockferry_fs"), good).await.unwrap();

    // The plugin says its secret in host.log, stdout, stderr and its error.
    let body = bytes(10, 1);
    let err = permanent(put(&bad, 1, "leak", &body).await.unwrap_err());
    assert!(!err.contains(SECRET) && err.contains("[redacted]") && err.contains("eu-west-1"), "{err}");

    // Then floods every channel, while the good bucket gets every block.
    let flood = async {
        for (n, key) in ["log-long:16777216", "stderr-flood:20000000", "stdout-flood:20000000", "log-flood:20000"]
            .iter()
            .enumerate()
        {
            assert_eq!(put(&bad, n as u64 + 2, key, &body).await.unwrap(), Outcome::Uploaded, "{key}");
        }
    };
    let steady = async {
        for n in 0..20u64 {
            let block = bytes(4096, n);
            assert_eq!(put(&good, n, &format!("{n:036}.blk"), &block).await.unwrap(), Outcome::Uploaded);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let started = std::time::Instant::now();
    tokio::join!(flood, steady);
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    assert_eq!(objects_in(dir.path()), 20, "the good bucket got every block");

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("misbehave/flood")).collect();
    let bytes_logged: usize = lines.iter().map(|l| l.len()).sum();
    eprintln!(
        "flood of 20,000 host.log lines, a 16 MiB line, 20 MB of stdout, 20 MB of stderr without a newline \
         in {:.1} s: {} lines, {bytes_logged} bytes logged",
        minutes * 60.0,
        lines.len()
    );
    // The budget (a minute's worth at once, refilled per second) plus the
    // "lines dropped" summaries, which are at most one per admitted line or call.
    let budget = (f64::from(PER_MINUTE) * (1.0 + minutes)).ceil() as usize + 1;
    assert!(lines.len() <= 2 * budget + 6, "{} lines logged, budget {budget}", lines.len());
    assert!(bytes_logged <= lines.len() * (8 * 1024 + 512), "{bytes_logged} bytes in {} lines", lines.len());
    assert!(lines.iter().all(|l| l.len() <= 8 * 1024 + 512), "a line longer than the cut");
    assert!(lines.iter().any(|l| l.contains("lines dropped")), "no dropped-lines summary");
    // The 16 MiB host.log line and the newline-less stderr were each logged once, cut.
    let cut: Vec<&&str> = lines.iter().filter(|l| l.contains("line cut at 8192 bytes")).collect();
    assert!(cut.iter().any(|l| l.contains("host.log")) && cut.iter().any(|l| l.contains("stderr")), "{cut:?}");
    assert!(!log.contains(SECRET), "the secret reached the log");
    let leaks = lines.iter().filter(|l| l.contains("my settings: [redacted] eu-west-1")).count();
    assert_eq!(leaks, 3, "host.log, stdout and stderr each logged redacted:\n{}", lines.join("\n"));
}
