//! End to end: consensus-node simulator → the real blockferry binary → two
//! block-node simulators. The active block node is killed mid-stream; the
//! other receives every block from where the first stopped, in order, none
//! missing, byte for byte.

mod common;

use std::time::Duration;

use blockferry_sim::block_node::BlockNode;
use blockferry_sim::{PublisherOptions, generate_block, publish};
use common::sidecar::Sidecar;
use common::*;

const BLOCKS: u64 = 60;
const SIZE: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn the_active_block_node_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    let config = dir.path().join("blockferry.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"grpc\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [publish]\npipeline_operation_timeout_ms = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n\
             [[block_nodes]]\naddress = \"127.0.0.1\"\nport = {}\npriority = 0\n\
             [[block_nodes]]\naddress = \"127.0.0.1\"\nport = {}\npriority = 1\n",
            workspace().join("target/test-plugin-cache").display().to_string(),
            a.addr().port(),
            b.addr().port()
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start(&config, dir.path(), &[]);

    // The consensus node publishes at a steady pace.
    let options = PublisherOptions {
        endpoint: sidecar.endpoint(),
        first_block: 0,
        blocks: BLOCKS,
        block_size: SIZE,
        interval: Duration::from_millis(20),
        ..PublisherOptions::default()
    };
    let feed = tokio::spawn(async move { publish(&options).await });

    // Kill the preferred node once it has a third of the blocks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.blocks().len() < (BLOCKS / 3) as usize {
        assert!(std::time::Instant::now() < deadline, "node a got too little: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill();
    let had = a.blocks();
    let report = feed.await.unwrap().unwrap();
    assert!(report.complete(), "{}", report.summary());

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !b.blocks().contains_key(&(BLOCKS - 1)) {
        assert!(std::time::Instant::now() < deadline, "node b did not get every block: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From where the first stopped (at or before the first block it lacked),
    // in order, none missing.
    let order = b.block_order();
    let first = order[0];
    let first_missing_on_a = (0..BLOCKS).find(|n| !had.contains_key(n)).unwrap();
    assert!(first <= first_missing_on_a, "b starts at {first}, a lacked {first_missing_on_a}");
    assert_eq!(order, (first..BLOCKS).collect::<Vec<_>>(), "in order, none missing");
    for n in first..BLOCKS {
        assert_eq!(b.blocks()[&n], generate_block(n, SIZE), "block {n} byte for byte");
    }
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}
