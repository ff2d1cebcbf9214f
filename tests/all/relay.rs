//! End to end: consensus-node simulator → the real blockferry binary → two
//! block-node simulators. The active block node is killed mid-stream; the
//! other receives every block from where the first stopped, in order, none
//! missing, byte for byte.

use std::time::Duration;

use crate::common::sidecar::{Sidecar, http_get};
use crate::common::*;
use blockferry_sim::block_node::{Action, BlockNode, Trigger};
use blockferry_sim::{PublisherOptions, generate_block, publish};

const BLOCKS: u64 = 60;
const SIZE: usize = 16 * 1024;

/// A config streaming (mode `grpc`) to block nodes on `ports`, in priority order.
fn config_text(ports: &[u16]) -> String {
    let mut text = format!(
        "mode = \"grpc\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
         [publish]\npipeline_operation_timeout_ms = 1000\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n",
        workspace().join("target/test-plugin-cache").display().to_string(),
    );
    for (priority, port) in ports.iter().enumerate() {
        text += &format!("[[block_nodes]]\naddress = \"127.0.0.1\"\nport = {port}\npriority = {priority}\n");
    }
    text
}

async fn feed(sidecar: &Sidecar, first: u64, blocks: u64) {
    let report = publish(&PublisherOptions::new(sidecar.endpoint(), first, blocks, SIZE)).await.unwrap();
    assert!(report.complete(), "{}", report.summary());
}

async fn wait_for(what: &str, sidecar: &Sidecar, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_block_node_list_follows_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    let config = dir.path().join("blockferry.toml");
    std::fs::write(&config, config_text(&[a.addr().port()])).unwrap();
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    feed(&sidecar, 0, 5).await;
    wait_for("node a has blocks 0-4", &sidecar, || (0..5).all(|n| a.blocks().contains_key(&n))).await;

    // A broken file is rejected, and the running list stays in force.
    std::fs::write(&config, "mode = \"grpc\"\n[[block_nodes]]\naddress = \"\"\nport = 0\n").unwrap();
    wait_for("the rejection is logged", &sidecar, || sidecar.log().contains("config reload rejected")).await;
    assert!(sidecar.log().contains("block_nodes[0].address"), "the same clear error as at start-up");
    feed(&sidecar, 5, 2).await;
    wait_for("node a has blocks 5-6", &sidecar, || a.blocks().contains_key(&6)).await;

    // Now node b replaces node a: a's stream closes gracefully, b takes over.
    std::fs::write(&config, config_text(&[b.addr().port()])).unwrap();
    wait_for("node a got EndStream RESET", &sidecar, || !a.end_streams().is_empty()).await;
    feed(&sidecar, 7, 5).await;
    wait_for("node b has blocks 7-11", &sidecar, || (7..12).all(|n| b.blocks().contains_key(&n))).await;
    assert!(!a.blocks().contains_key(&11), "the removed node gets nothing more");
    // The streaming metrics show it.
    let metrics = http_get(&sidecar.url("/metrics")).1;
    let b_node = format!("node=\"127.0.0.1:{}\"", b.addr().port());
    assert!(metrics.contains("blockferry_publish_connected 1"), "{metrics}");
    assert!(metrics.contains(&format!("blockferry_publish_connections_opened_total{{{b_node}}} 1")), "{metrics}");
    let missing = crate::common::metrics_list::missing(&metrics, |name| name.starts_with("blockferry_publish_"));
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(
        metrics.contains("blockferry_config_generation 2"),
        "one reload applied, the broken one rejected: {metrics}"
    );
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_active_block_node_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    let config = dir.path().join("blockferry.toml");
    std::fs::write(&config, config_text(&[a.addr().port(), b.addr().port()])).unwrap();
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

/// A fault for block `n` of a node, from a seeded roll: the EndOfStream codes,
/// BehindPublisher, a dropped or disconnected call, a slow answer, a stall.
fn random_fault(roll: u64, n: u64) -> Action {
    use blockferry_proto::api::publish_stream_response::{BehindPublisher, EndOfStream, Response};
    use blockferry_proto::{EndOfStreamCode as Code, PublishStreamResponse};
    let respond = |r| Action::Respond(PublishStreamResponse { response: Some(r) });
    let end = |code: Code| {
        respond(Response::EndStream(EndOfStream {
            status: code as i32,
            block_number: n.saturating_sub(1),
            proximate_block_number: 0,
        }))
    };
    match roll % 10 {
        0 => end(Code::Error),
        1 => end(Code::Timeout),
        2 => end(Code::BadBlockProof),
        3 => end(Code::PersistenceFailed),
        4 => end(Code::Success),
        5 => respond(Response::NodeBehindPublisher(BehindPublisher { block_number: n.saturating_sub(3) })),
        6 => Action::Drop,
        7 => Action::Disconnect,
        8 => Action::Delay(Duration::from_millis(150)),
        _ => Action::Stall,
    }
}

/// One schedule per round (`BLOCKFERRY_FAULT_ROUNDS`, default 1: the short
/// run), each from its own seed; a long run sets more rounds.
#[tokio::test(flavor = "multi_thread")]
async fn block_nodes_failing_at_random_never_cost_a_block() {
    let rounds: u64 = std::env::var("BLOCKFERRY_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut total = 0;
    for round in 0..rounds {
        total += random_schedule(0x5eed_f417 + round).await;
    }
    println!(
        "{rounds} schedules, {total} faults injected across two block nodes; {} blocks, none lost",
        rounds * BLOCKS
    );
}

/// Two block nodes failing on the schedule drawn from `seed`: every block
/// must still reach one, byte for byte, and be acknowledged. Returns the
/// faults injected.
async fn random_schedule(initial: u64) -> usize {
    let mut seed = initial;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    // About one block in six gets a fault on each node.
    let mut faults = 0;
    for node in [&a, &b] {
        for n in 0..BLOCKS {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let roll = seed >> 33;
            if roll.is_multiple_of(6) {
                node.script(Trigger::OnBlockEnd(n).then(random_fault(roll / 6, n)));
                faults += 1;
            }
        }
    }
    let config = dir.path().join("blockferry.toml");
    std::fs::write(&config, config_text(&[a.addr().port(), b.addr().port()])).unwrap();
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    let options = PublisherOptions {
        interval: Duration::from_millis(10),
        ..PublisherOptions::new(sidecar.endpoint(), 0, BLOCKS, SIZE)
    };
    let report = publish(&options).await.unwrap();
    assert!(report.complete(), "{}", report.summary());

    // Every block reaches a block node, byte for byte, and is acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let acked_all = || http_get(&sidecar.url("/api/status")).1.contains("\"unacked_blocks\":0");
    while !(0..BLOCKS).all(|n| a.blocks().contains_key(&n) || b.blocks().contains_key(&n)) || !acked_all() {
        assert!(std::time::Instant::now() < deadline, "blocks lost to {faults} faults: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..BLOCKS {
        let got = a.blocks().get(&n).or(b.blocks().get(&n)).cloned().unwrap();
        assert_eq!(got, generate_block(n, SIZE), "block {n} byte for byte");
    }
    println!("seed {initial:#x}: {faults} faults injected across two block nodes; {BLOCKS} blocks, none lost");
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
    faults
}
