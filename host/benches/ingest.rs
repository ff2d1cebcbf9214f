//! Ingest: the consensus-node simulator publishing over real gRPC (loopback)
//! to blockferry's ingest endpoint, each block fsynced (file and `.meta`)
//! before its acknowledgement. Reports throughput (MB/s, blocks/s) and the
//! latency from a block's `BlockEnd` leaving the publisher to its
//! acknowledgement arriving (p50, p99, max), at full speed and at mainnet
//! rate (one 1 MiB block every 2 s).
//!
//! `cargo bench -p blockferry --bench ingest`; `INGEST_MAINNET_BLOCKS=N` sets
//! how many blocks the mainnet-rate run publishes (default 15, 30 s).

mod report;

use std::sync::Arc;
use std::time::Duration;

use blockferry::buffer::BlockBuffer;
use blockferry::config::{BufferConfig, Compression, IngestConfig};
use blockferry::ingest::Ingest;
use blockferry::store::BlockStore;
use blockferry_sim::{PublisherOptions, publish};

/// One run on a fresh store: `blocks` blocks of `size` bytes, `interval`
/// apart; returns the p99 acknowledgement latency in milliseconds.
async fn run(label: &str, blocks: u64, size: usize, interval: Duration) -> f64 {
    let dir = tempfile::tempdir_in(std::env::var_os("INGEST_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let store = Arc::new(BlockStore::open(dir.path(), Compression::None).unwrap());
    let buffer = Arc::new(BlockBuffer::new(BufferConfig::default(), false));
    let ingest = Ingest::new(store, buffer, vec!["bucket".into()], IngestConfig::default(), Arc::new(|_| {})).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(ingest.serve(listener, std::future::pending()));
    let options =
        PublisherOptions { endpoint, first_block: 0, blocks, block_size: size, interval, ..Default::default() };
    let report = publish(&options).await.expect("publish");
    assert!(report.complete(), "{}", report.summary());
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "{label:<34} {blocks:>6} blocks  {:>8.1} MB/s  {:>8.1} blocks/s  ack latency p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        report.mb_per_s(),
        report.blocks_per_s(),
        ms(report.p50()),
        ms(report.p99()),
        ms(report.max()),
    );
    server.abort();
    ms(report.p99())
}

fn main() {
    let mainnet: u64 = std::env::var("INGEST_MAINNET_BLOCKS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        run("full speed, 64 KiB blocks", 2000, 64 * 1024, Duration::ZERO).await;
        run("full speed, 1 MiB blocks", 300, 1024 * 1024, Duration::ZERO).await;
        run("full speed, 8 MiB blocks", 40, 8 * 1024 * 1024, Duration::ZERO).await;
        let p99 = run("mainnet rate (2 s), 1 MiB blocks", mainnet, 1024 * 1024, Duration::from_secs(2)).await;
        report::row(
            &format!("ingest → durable → acknowledged at mainnet rate (1 MiB per 2 s, {mainnet} blocks), p99"),
            p99,
            "ms",
            None,
            report::Goal::AtMost(20.0),
        );
    });
}
