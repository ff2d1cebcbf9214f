//! What plugins print and what the sandbox refuses reaches the host's log,
//! tagged with the plugin and bucket.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use blockferry::plugin::{BlockBody, BucketClient};
use common::*;

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

#[tokio::test]
async fn stdout_stderr_and_refusals_become_tagged_log_lines() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();

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
