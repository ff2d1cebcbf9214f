//! The block buffer's backpressure, end to end over real gRPC: the
//! consensus-node simulator publishes to the ingest endpoint while nothing
//! acknowledges blocks downstream; the buffer saturates, ingest stops
//! acknowledging and reading, the simulator stalls; acknowledgements bring
//! saturation below the recovery threshold and everything flows again, with
//! no block lost or reordered.

use std::sync::Arc;
use std::time::Duration;

use blockferry::buffer::BlockBuffer;
use blockferry::config::{BufferConfig, IngestConfig};
use blockferry::ingest::Ingest;
use blockferry::store::BlockStore;
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_sim::{PublisherOptions, block_bytes, publish};

/// Ideal buffer size: 10 blocks (TTL 10 s ÷ 1 s period).
fn buffer_config() -> BufferConfig {
    BufferConfig { ttl_secs: 10, block_period_ms: 1000, ..BufferConfig::default() }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn saturation_stalls_the_publisher_and_recovery_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(dir.path(), Default::default()).unwrap());
    // Streaming is on: blocks wait for block-node acknowledgements, which
    // this test gives by hand.
    let buffer = Arc::new(BlockBuffer::new(buffer_config(), true));
    let ingest =
        Ingest::new(store.clone(), buffer.clone(), Vec::new(), IngestConfig::default(), Arc::new(|_| {})).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ingest.clone().serve(listener, std::future::pending()));

    let options = PublisherOptions { endpoint, first_block: 0, blocks: 40, block_size: 4096, ..Default::default() };
    let publisher = tokio::spawn(async move { publish(&options).await });

    // Ten unacknowledged blocks fill the buffer: backpressure engages and the
    // tenth block's acknowledgement is held.
    wait_until("the buffer is saturated", || buffer.backpressure()).await;
    assert_eq!(buffer.state().unacked_blocks, 10);
    assert_eq!(ingest.counters().blocks.load(std::sync::atomic::Ordering::Relaxed), 10);
    // While it is engaged, ingest reads nothing more: nothing else is stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.numbers().unwrap(), (0..10).collect::<Vec<_>>(), "ingest stopped reading the stream");
    assert!(!publisher.is_finished());

    // One acknowledgement (90 %) does not release it: no flapping.
    buffer.acknowledge(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(buffer.backpressure());
    assert_eq!(store.numbers().unwrap().len(), 10);

    // Down to 70 %: released; block nodes keep acknowledging what arrives.
    buffer.acknowledge(2);
    wait_until("backpressure is released", || !buffer.backpressure()).await;
    let acker = tokio::spawn({
        let buffer = buffer.clone();
        async move {
            loop {
                if let Some(latest) = buffer.state().latest {
                    buffer.acknowledge(latest);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let report = publisher.await.unwrap().unwrap();
    acker.abort();
    assert!(report.complete(), "{}", report.summary());
    assert!(buffer.counters().backpressure_engaged.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // Nothing lost or reordered: every block stored byte for byte, and the
    // acknowledgements came in increasing order.
    assert_eq!(store.numbers().unwrap(), (0..40).collect::<Vec<_>>());
    for n in 0..40 {
        let meta = store.read_meta(n).unwrap();
        assert_eq!(std::fs::read(store.block_path(&meta)).unwrap(), block_bytes(n, 4096), "block {n}");
    }
    let acks: Vec<u64> = report
        .responses
        .iter()
        .filter_map(|r| match r.response {
            Some(Response::Acknowledgement(ref a)) => Some(a.block_number),
            _ => None,
        })
        .collect();
    assert_eq!(acks, (0..40).collect::<Vec<_>>());
}
