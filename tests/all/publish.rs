//! Streaming to block nodes, against the block-node simulator
//! over real gRPC: one test per row of the EndOfStream and BehindPublisher
//! tables, per response kind, the rate limit, the timeouts, priority
//! switch-over and switch-back, packing at the soft limit, the hard-limit
//! error and graceful close.

use std::sync::Arc;
use std::time::Duration;

use blockferry::buffer::{Block, BlockBuffer};
use blockferry::config::{BlockNodeConfig, BufferConfig, Compression, PublishConfig};
use blockferry::publish::Publisher;
use blockferry::publish::packer::pack;
use blockferry::store::BlockStore;
use blockferry_proto::api::publish_stream_response::{BehindPublisher, EndOfStream, ResendBlock, Response, SkipBlock};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamResponse};
use blockferry_sim::block_node::{Action, BlockNode, RequestKind, Trigger};
use blockferry_sim::generate_block;

const WAIT: Duration = Duration::from_secs(20);
const SIZE: usize = 8 * 1024;

/// A store, a buffer waiting for block-node acks, and a publisher to `nodes`.
struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<BlockStore>,
    buffer: Arc<BlockBuffer>,
    publisher: Option<Publisher>,
}

/// Settings that make every delay of a test short, and the fixed retry delay long
/// (so a node that must not be retried soon is visibly not retried).
fn fast() -> PublishConfig {
    PublishConfig {
        pipeline_operation_timeout_ms: 1_000,
        retry_delay_ms: 60_000,
        initial_backoff_ms: 100,
        max_backoff_ms: 400,
        end_of_stream_schedule_delay_ms: 60_000,
        ack_latency_bound_ms: 5_000,
        probe_interval_ms: 100,
        ..PublishConfig::default()
    }
}

fn node(bn: &BlockNode, priority: u32) -> BlockNodeConfig {
    BlockNodeConfig {
        address: "127.0.0.1".into(),
        port: bn.addr().port(),
        priority,
        soft_limit_bytes: 2_097_152,
        hard_limit_bytes: 6_292_480,
    }
}

impl Rig {
    fn start(config: PublishConfig, nodes: Vec<BlockNodeConfig>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), Compression::None).unwrap());
        let buffer = Arc::new(BlockBuffer::new(BufferConfig::default(), true));
        let publisher = Some(Publisher::start(config, nodes, buffer.clone(), Some(store.clone()), None));
        Rig { _dir: dir, store, buffer, publisher }
    }

    /// Blocks arriving from the consensus node: stored, then buffered.
    fn produce(&self, numbers: std::ops::Range<u64>, size: usize) {
        for n in numbers {
            let block = Block::new(n, generate_block(n, size));
            self.store.write_block(n, &block.encode(), &[]).unwrap();
            self.buffer.insert(Arc::new(block));
        }
    }

    fn publisher(&self) -> &Publisher {
        self.publisher.as_ref().unwrap()
    }

    async fn shutdown(mut self) {
        self.publisher.take().unwrap().shutdown().await;
    }
}

async fn wait_until(what: impl std::fmt::Display, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn end_of_stream(code: EndOfStreamCode, block: u64) -> PublishStreamResponse {
    PublishStreamResponse {
        response: Some(Response::EndStream(EndOfStream {
            status: code as i32,
            block_number: block,
            proximate_block_number: 0,
        })),
    }
}

fn respond(r: Response) -> PublishStreamResponse {
    PublishStreamResponse { response: Some(r) }
}

/// The EndStream codes a node received.
fn end_streams(bn: &BlockNode) -> Vec<EndStreamCode> {
    bn.end_streams().iter().map(|e| e.code).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn end_of_stream_codes_that_switch_to_another_node_now() {
    for code in
        [EndOfStreamCode::Success, EndOfStreamCode::Error, EndOfStreamCode::PersistenceFailed, EndOfStreamCode::Unknown]
    {
        let (a, b) = (BlockNode::start().await, BlockNode::start().await);
        a.script(Trigger::OnBlockEnd(5).then(Action::Respond(end_of_stream(code, 4))));
        let rig = Rig::start(fast(), vec![node(&a, 0), node(&b, 1)]);
        rig.produce(0..10, SIZE);
        // The other node takes over at once, from the lowest unacknowledged block.
        wait_until("the other node has every block", || (5..10).all(|n| b.blocks().contains_key(&n))).await;
        assert_eq!(b.block_order().first(), Some(&5), "{code:?}: starts where the first node stopped");
        // The first is retried only after the fixed delay (60 s here).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.connections(), 1, "{code:?}: not retried before the fixed delay");
        let closed = rig
            .publisher()
            .counters()
            .get("connections_closed_total", &format!("127.0.0.1:{},end_of_stream", a.addr().port()));
        assert_eq!(closed, 1, "{code:?}");
        rig.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn end_of_stream_codes_that_retry_the_same_node_with_backoff_at_the_next_block() {
    for code in [
        EndOfStreamCode::Timeout,
        EndOfStreamCode::DuplicateBlock,
        EndOfStreamCode::BadBlockProof,
        EndOfStreamCode::InvalidRequest,
    ] {
        let (a, b) = (BlockNode::start().await, BlockNode::start().await);
        // The node ends the stream at block 5 saying it holds block 2.
        a.script(Trigger::OnBlockEnd(5).then(Action::Respond(end_of_stream(code, 2))));
        let rig = Rig::start(fast(), vec![node(&a, 0), node(&b, 1)]);
        rig.produce(0..8, SIZE);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(a.connections() >= 2 && (0..8).all(|n| a.blocks().contains_key(&n))) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{code:?}: the node is not back with every block: {:?} {:?}",
                a.block_order(),
                a.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(a.connections(), 2, "{code:?}: {:?}", a.events());
        // The second stream starts at block_number + 1 = 3, on the same node.
        let order = a.block_order();
        assert_eq!(&order[..7], &[0, 1, 2, 3, 4, 5, 3], "{code:?}: restart at block_number + 1: {order:?}");
        assert_eq!(b.connections(), 0, "{code:?}: no switch to another node");
        rig.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_publisher_with_the_block_held_stays_connected_and_rewinds() {
    let a = BlockNode::start().await;
    a.script(
        Trigger::OnBlockEnd(6)
            .then(Action::Respond(respond(Response::NodeBehindPublisher(BehindPublisher { block_number: 2 })))),
    );
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..10, SIZE);
    wait_until("block 9 arrives", || a.blocks().contains_key(&9)).await;
    assert_eq!(a.connections(), 1, "stayed connected");
    // From the rewind on (block 7 may have been sent before the response
    // arrived), blocks 3-9 again, in order.
    let order = a.block_order();
    let at = order.iter().position(|n| *n == 6).unwrap();
    let again = at + 1 + order[at + 1..].iter().position(|n| *n == 3).expect("rewound to block 3");
    assert!(again <= at + 2, "rewound at once: {order:?}");
    assert_eq!(&order[again..], &[3, 4, 5, 6, 7, 8, 9], "rewound to block_number + 1: {order:?}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_publisher_too_far_behind_ends_with_too_far_behind() {
    let a = BlockNode::start().await;
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(10..14, SIZE);
    wait_until("block 13 arrives", || a.blocks().contains_key(&13)).await;
    // Blocks 0-9 were never held here.
    a.respond_now(respond(Response::NodeBehindPublisher(BehindPublisher { block_number: 2 })));
    wait_until("EndStream arrives", || !a.end_streams().is_empty()).await;
    assert_eq!(end_streams(&a), vec![EndStreamCode::TooFarBehind]);
    let e = &a.end_streams()[0];
    assert_eq!((e.earliest, e.latest), (10, 13), "it says what it holds");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_publisher_asking_for_a_future_block_ends_with_error() {
    let a = BlockNode::start().await;
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..4, SIZE);
    wait_until("block 3 arrives", || a.blocks().contains_key(&3)).await;
    a.respond_now(respond(Response::NodeBehindPublisher(BehindPublisher { block_number: 50 })));
    wait_until("EndStream arrives", || !a.end_streams().is_empty()).await;
    assert_eq!(end_streams(&a), vec![EndStreamCode::Error]);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledgements_reach_the_buffer() {
    let a = BlockNode::start().await;
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..5, SIZE);
    wait_until("every block is acknowledged", || rig.buffer.highest_acked() == Some(4)).await;
    assert_eq!(rig.buffer.state().unacked_blocks, 0);
    assert_eq!(rig.publisher().counters().ack_latency().count(), 5, "one header-sent → ack latency per block");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_block_moves_to_the_next_block() {
    // A small HTTP/2 window and a big block 3 (eight requests): the skip,
    // answered to its first request, arrives while most of it is unsent.
    let a = BlockNode::builder().window(256 * 1024).start().await.unwrap();
    a.script(Trigger::OnHeader(3).then(Action::Respond(respond(Response::SkipBlock(SkipBlock { block_number: 3 })))));
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..3, SIZE);
    rig.produce(3..4, 16 * 1024 * 1024);
    rig.produce(4..6, SIZE);
    wait_until("block 5 arrives", || a.blocks().contains_key(&5)).await;
    assert!(!a.block_order().contains(&3), "block 3 was skipped, never ended: {:?}", a.block_order());
    assert_eq!(a.connections(), 1);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_block_rewinds_and_a_block_no_longer_held_ends_the_stream() {
    let a = BlockNode::start().await;
    a.script(
        Trigger::OnBlockEnd(5).then(Action::Respond(respond(Response::ResendBlock(ResendBlock { block_number: 1 })))),
    );
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..8, SIZE);
    wait_until("block 7 arrives", || a.blocks().contains_key(&7)).await;
    // From the resend on (block 6 may have been sent before the request
    // arrived), blocks 1-7 again, in order.
    let order = a.block_order();
    let at = order.iter().position(|n| *n == 5).unwrap();
    let again = at + 1 + order[at + 1..].iter().position(|n| *n == 1).expect("block 1 resent");
    assert!(again <= at + 2, "resent at once: {order:?}");
    assert_eq!(&order[again..], &[1, 2, 3, 4, 5, 6, 7], "resent from block 1: {order:?}");

    // A resend of a block held nowhere: TOO_FAR_BEHIND.
    a.respond_now(respond(Response::ResendBlock(ResendBlock { block_number: 100_000 })));
    wait_until("EndStream arrives", || !a.end_streams().is_empty()).await;
    assert_eq!(end_streams(&a), vec![EndStreamCode::TooFarBehind]);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn evicted_blocks_are_resent_from_the_store() {
    let a = BlockNode::start().await;
    let rig = Rig::start(fast(), vec![node(&a, 0)]);
    rig.produce(0..6, SIZE);
    wait_until("acknowledged", || rig.buffer.highest_acked() == Some(5)).await;
    // Pruned from memory; still on disk.
    rig.buffer.prune(std::time::Instant::now() + Duration::from_secs(3600));
    assert!(rig.buffer.get(1).is_none());
    a.respond_now(respond(Response::ResendBlock(ResendBlock { block_number: 1 })));
    wait_until("block 1 arrives twice", || a.block_order().iter().filter(|n| **n == 1).count() == 2).await;
    assert_eq!(a.blocks()[&1], generate_block(1, SIZE), "byte for byte from the store");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_end_of_streams_reschedule_the_node() {
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    a.script(Trigger::OnStreamStart.then(Action::Respond(end_of_stream(EndOfStreamCode::Timeout, 0))).always());
    let config = PublishConfig { max_end_of_streams: 2, end_of_stream_time_frame_ms: 30_000, ..fast() };
    let rig = Rig::start(config, vec![node(&a, 0), node(&b, 1)]);
    rig.produce(0..3, SIZE);
    wait_until("the other node takes over", || b.blocks().contains_key(&2)).await;
    assert_eq!(a.connections(), 3, "the third EndOfStream within the frame exceeds 2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.connections(), 3, "rescheduled after endOfStreamScheduleDelay (60 s)");
    assert_eq!(
        rig.publisher().counters().get("end_of_stream_rate_limited_total", &format!("127.0.0.1:{}", a.addr().port())),
        1
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_answers_the_stream_times_out_and_fails_over() {
    // Accepts TCP connections and says nothing: no HTTP/2, no stream.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = silent.accept().await.unwrap();
            held.push(socket);
        }
    });
    let b = BlockNode::start().await;
    let silent_node = BlockNodeConfig { port, ..node(&b, 0) };
    let rig = Rig::start(fast(), vec![silent_node, node(&b, 1)]);
    rig.produce(0..3, SIZE);
    wait_until("the other node has the blocks", || (0..3).all(|n| b.blocks().contains_key(&n))).await;
    assert!(rig.publisher().counters().get("timeouts_total", &format!("127.0.0.1:{port}")) >= 1);
    rig.shutdown().await;
    hold.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_stops_reading_times_out_sending() {
    // Small HTTP/2 windows: a stream nobody reads fills quickly.
    let a = BlockNode::builder().window(64 * 1024).start().await.unwrap();
    let b = BlockNode::start().await;
    a.script(Trigger::OnHeader(1).then(Action::Stall));
    let rig = Rig::start(fast(), vec![node(&a, 0), node(&b, 1)]);
    rig.produce(0..6, 512 * 1024);
    wait_until("the other node has the blocks", || (1..6).all(|n| b.blocks().contains_key(&n))).await;
    let closed =
        rig.publisher().counters().get("connections_closed_total", &format!("127.0.0.1:{},timeout", a.addr().port()));
    assert_eq!(closed, 1);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_acknowledges_is_detected_as_stalled() {
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    a.ack_nothing(true);
    let rig = Rig::start(PublishConfig { ack_latency_bound_ms: 300, ..fast() }, vec![node(&a, 0), node(&b, 1)]);
    rig.produce(0..4, SIZE);
    wait_until("the other node acknowledged every block", || rig.buffer.highest_acked() == Some(3)).await;
    let closed =
        rig.publisher().counters().get("connections_closed_total", &format!("127.0.0.1:{},stalled", a.addr().port()));
    assert_eq!(closed, 1);
    assert_eq!(b.block_order().first(), Some(&0), "the other node gets everything unacknowledged");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_switch_over_and_switch_back() {
    let (a, b) = (BlockNode::start().await, BlockNode::start().await);
    let a_addr = a.addr();
    let rig = Rig::start(fast(), vec![node(&a, 0), node(&b, 1)]);
    rig.produce(0..3, SIZE);
    wait_until("the preferred node has blocks 0-2", || (0..3).all(|n| a.blocks().contains_key(&n))).await;
    assert_eq!(b.connections(), 0, "the lower-priority node is not used while the better one works");

    a.kill();
    drop(a);
    rig.produce(3..6, SIZE);
    wait_until("the other node has blocks 3-5", || (3..6).all(|n| b.blocks().contains_key(&n))).await;

    // The preferred node comes back: blockferry switches back, closing the
    // other gracefully (EndStream RESET after a whole block).
    let a = BlockNode::start_on(a_addr).await.unwrap();
    wait_until("the preferred node is used again", || a.connections() >= 1).await;
    wait_until("the other node got EndStream RESET", || end_streams(&b) == vec![EndStreamCode::Reset]).await;
    rig.produce(6..9, SIZE);
    wait_until("the preferred node has blocks 6-8", || (6..9).all(|n| a.blocks().contains_key(&n))).await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_packed_to_the_soft_limit_counting_framing_exactly() {
    let a = BlockNode::start().await;
    let soft = 20_000;
    let rig = Rig::start(fast(), vec![BlockNodeConfig { soft_limit_bytes: soft, ..node(&a, 0) }]);
    rig.produce(0..4, 256 * 1024);
    wait_until("acknowledged", || rig.buffer.highest_acked() == Some(3)).await;
    let sizes: Vec<usize> =
        a.requests().iter().filter(|r| matches!(r.kind, RequestKind::Items { .. })).map(|r| r.encoded_len).collect();
    // Exactly the requests the packer plans, byte for byte.
    let mut expected = Vec::new();
    for n in 0..4 {
        let items = generate_block(n, 256 * 1024);
        for range in pack(&items, soft, 6_292_480).unwrap() {
            expected.push(blockferry_proto::framing::items_request_len(
                items[range].iter().map(|i| blockferry_proto::framing::item_frame_len(i.len())).sum(),
            ));
        }
    }
    assert_eq!(sizes, expected);
    assert!(sizes.iter().filter(|s| **s > soft).count() > 0 || sizes.iter().all(|s| *s <= soft));
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_above_the_hard_limit_ends_the_stream_with_error() {
    let a = BlockNode::start().await;
    let rig = Rig::start(
        fast(),
        vec![BlockNodeConfig { soft_limit_bytes: 100_000, hard_limit_bytes: 1_000_000, ..node(&a, 0) }],
    );
    rig.produce(0..1, SIZE);
    // Generated blocks of 8 MiB carry an item above 2 MiB.
    rig.produce(1..2, 8 * 1024 * 1024);
    wait_until("EndStream arrives", || !a.end_streams().is_empty()).await;
    assert_eq!(end_streams(&a), vec![EndStreamCode::Error]);
    assert!(a.blocks().contains_key(&0) && !a.blocks().contains_key(&1));
    assert_eq!(rig.publisher().counters().get("item_too_large_total", &format!("127.0.0.1:{}", a.addr().port())), 1);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_periodic_reset_closes_gracefully_after_a_whole_block() {
    let a = BlockNode::start().await;
    let rig = Rig::start(PublishConfig { stream_reset_period_ms: 400, ..fast() }, vec![node(&a, 0)]);
    rig.produce(0..3, SIZE);
    wait_until("a second stream", || a.connections() >= 2).await;
    rig.produce(3..6, SIZE);
    wait_until("block 5 arrives", || a.blocks().contains_key(&5)).await;
    // On the first stream: whole blocks, then EndStream RESET last.
    let first: Vec<RequestKind> = a.requests().into_iter().filter(|r| r.stream == 1).map(|r| r.kind).collect();
    assert!(matches!(first.last(), Some(RequestKind::EndStream { .. })), "{first:?}");
    assert!(matches!(first[first.len() - 2], RequestKind::BlockEnd(_)), "the block in flight was finished: {first:?}");
    assert_eq!(end_streams(&a)[0], EndStreamCode::Reset);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_ends_its_side_times_out_closing_the_stream() {
    let a = BlockNode::start().await;
    // After block 1 the node reads nothing more and never ends the stream.
    a.script(Trigger::OnBlockEnd(1).then(Action::Stall));
    let config = PublishConfig { stream_reset_period_ms: 300, pipeline_operation_timeout_ms: 300, ..fast() };
    let rig = Rig::start(config, vec![node(&a, 0)]);
    rig.produce(0..2, SIZE);
    // The periodic reset closes gracefully; the node never ends its side.
    let label = format!("127.0.0.1:{},timeout", a.addr().port());
    wait_until("the close timed out", || rig.publisher().counters().get("connections_closed_total", &label) >= 1).await;
    // The node is tried again (after its backoff) on a new stream.
    wait_until("a new stream", || a.connections() >= 2).await;
    rig.shutdown().await;
}
