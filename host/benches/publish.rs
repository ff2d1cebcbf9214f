//! Streaming to a block node: blockferry's publisher beside a bare tonic
//! bidirectional stream sending the same requests (the same packing, the
//! same `BlockEnd`s) to the same block-node simulator, in one run. Reports
//! MB/s of each and their ratio, and the publisher's header-sent →
//! acknowledged latency at a paced rate.
//!
//! `cargo bench -p blockferry --bench publish`; `PUBLISH_BLOCKS=N` and
//! `PUBLISH_BLOCK_SIZE=BYTES` change the workload (default 200 × 1 MiB).

mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockferry::buffer::{Block, BlockBuffer};
use blockferry::config::{BlockNodeConfig, BufferConfig, PublishConfig};
use blockferry::publish::Publisher;
use blockferry::publish::packer::pack;
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_sim::block_node::BlockNode;
use blockferry_sim::{Session, generate_block};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn node_config(node: &BlockNode) -> BlockNodeConfig {
    BlockNodeConfig {
        address: "127.0.0.1".into(),
        port: node.addr().port(),
        priority: 0,
        soft_limit_bytes: 2_097_152,
        hard_limit_bytes: 6_292_480,
    }
}

/// Block 0 first (the stream is open and warm), then time blocks 1..=n.
async fn bare_tonic(blocks: &[Arc<Block>]) -> Duration {
    let node = BlockNode::builder().keep_items(false).start().await.unwrap();
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    let send = |block: &Arc<Block>| {
        let requests = pack(&block.items, 2_097_152, 6_292_480).unwrap();
        (requests, block.clone())
    };
    let mut started = None;
    for (i, block) in blocks.iter().enumerate() {
        if i == 1 {
            started = Some(Instant::now());
        }
        let (requests, block) = send(block);
        for range in requests {
            session.send_items(block.items[range].to_vec()).await.unwrap();
        }
        session.send_block_end(block.number).await.unwrap();
        if i == 0 {
            wait_ack(&mut session, 0).await;
        }
    }
    wait_ack(&mut session, blocks.len() as u64 - 1).await;
    started.unwrap().elapsed()
}

async fn wait_ack(session: &mut Session, number: u64) {
    loop {
        let r = session.next_response(Duration::from_secs(60)).await.unwrap().expect("a response");
        if let Some(Response::Acknowledgement(a)) = r.response
            && a.block_number >= number
        {
            return;
        }
    }
}

/// The publisher streams the same blocks as they enter its buffer.
async fn publisher(blocks: &[Arc<Block>], pace: Duration) -> (Duration, Publisher, BlockNode) {
    let node = BlockNode::builder().keep_items(false).start().await.unwrap();
    let buffer =
        Arc::new(BlockBuffer::new(BufferConfig { max_bytes: 8 << 30, ttl_secs: 100_000, ..Default::default() }, true));
    let publisher = Publisher::start(PublishConfig::default(), vec![node_config(&node)], buffer.clone(), None, None);
    buffer.insert(blocks[0].clone());
    while buffer.highest_acked() != Some(0) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last = blocks.len() as u64 - 1;
    let started = Instant::now();
    for block in &blocks[1..] {
        buffer.insert(block.clone());
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    while buffer.highest_acked() != Some(last) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    (started.elapsed(), publisher, node)
}

fn main() {
    let n = env("PUBLISH_BLOCKS", 200) as u64;
    let size = env("PUBLISH_BLOCK_SIZE", 1024 * 1024);
    let blocks: Vec<Arc<Block>> = (0..=n).map(|i| Arc::new(Block::new(i, generate_block(i, size)))).collect();
    let bytes: u64 = blocks[1..].iter().map(|b| b.size).sum();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mb_s = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        let bare = bare_tonic(&blocks).await;
        let (ours, p, _node) = publisher(&blocks, Duration::ZERO).await;
        p.shutdown().await;
        println!("{n} blocks of {size} bytes to the block-node simulator:");
        println!("  bare tonic stream   {:>8.1} MB/s", mb_s(bare));
        println!(
            "  blockferry publish  {:>8.1} MB/s   ratio {:.2}",
            mb_s(ours),
            bare.as_secs_f64() / ours.as_secs_f64()
        );
        report::row(
            &format!(
                "publisher streaming {n} × {} KiB blocks to the block-node simulator, vs a bare tonic stream",
                size / 1024
            ),
            mb_s(ours),
            "MB/s",
            Some(mb_s(bare)),
            report::Goal::RatioAtLeast(0.8),
        );

        // Latency at a paced rate: one block every 50 ms.
        let paced: Vec<Arc<Block>> = blocks.iter().take(41).cloned().collect();
        let (_, p, _node) = publisher(&paced, Duration::from_millis(50)).await;
        let h = p.counters().ack_latency();
        println!(
            "  header sent → acknowledged, one block per 50 ms: mean {:.2} ms, p50 ≤ {} ms, p99 ≤ {} ms ({} blocks)",
            h.sum() / h.count() as f64 * 1e3,
            h.quantile_bound(0.5).unwrap_or(f64::NAN) * 1e3,
            h.quantile_bound(0.99).unwrap_or(f64::NAN) * 1e3,
            h.count()
        );
        p.shutdown().await;
    });
}
