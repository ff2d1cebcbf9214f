//! The publisher and the session against a block node test double over real
//! gRPC on 127.0.0.1.

mod fake_node;

use std::time::Duration;

use blockferry_proto::api::publish_stream_response::{BlockAcknowledgement, Response};
use blockferry_proto::framing::{item_frame_len, items_request_len};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamRequest};
use blockferry_sim::{PublishError, PublishReport, PublisherOptions, Session, block_bytes, generate_block, publish};
use bytes::Bytes;
use fake_node::{Behaviour, FakeNode, Record, Seen};

fn options(node: &FakeNode, first_block: u64, blocks: u64, block_size: usize) -> PublisherOptions {
    let base = PublisherOptions::new(node.endpoint.clone(), first_block, blocks, block_size);
    PublisherOptions { ack_timeout: Duration::from_secs(60), ..base }
}

async fn run(opts: &PublisherOptions) -> PublishReport {
    publish(opts).await.unwrap_or_else(|e| panic!("publish failed: {e}"))
}

/// Every complete block is exactly the generated one.
fn assert_blocks_exact(record: &Record, block_size: usize) {
    for (n, bytes) in &record.complete {
        assert!(*bytes == block_bytes(*n, block_size), "block {n} arrived with other bytes");
    }
}

/// No request above the soft limit unless it is a single item; an item above
/// it goes alone; requests are packed greedily (the next item would not fit).
/// Returns how many items went alone because they exceed the limit.
fn assert_packing(record: &Record, soft_limit: usize) -> usize {
    let mut alone = 0;
    for (i, seen) in record.requests.iter().enumerate() {
        let Seen::Items { encoded_len, item_lens } = seen else { continue };
        let frames: usize = item_lens.iter().map(|l| item_frame_len(*l)).sum();
        assert_eq!(*encoded_len, items_request_len(frames), "request {i}: framing counted exactly");
        if *encoded_len > soft_limit {
            assert_eq!(item_lens.len(), 1, "request {i} of {encoded_len} bytes has {} items", item_lens.len());
        }
        if item_lens.iter().any(|l| items_request_len(item_frame_len(*l)) > soft_limit) {
            assert_eq!(item_lens.len(), 1, "request {i}: an item above the soft limit went with others");
            alone += 1;
        }
        if let Some(Seen::Items { item_lens: next, .. }) = record.requests.get(i + 1) {
            let with_next = items_request_len(frames + item_frame_len(next[0]));
            assert!(with_next > soft_limit, "request {i} had room for the next item ({with_next} bytes)");
        }
    }
    alone
}

#[tokio::test]
async fn big_blocks_arrive_byte_for_byte_packed_to_the_soft_limit() {
    let node = FakeNode::start(Behaviour::default()).await;
    let size = 8 << 20;
    let opts = options(&node, 10, 3, size);
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.acknowledged_up_to, Some(12));
    assert_eq!(report.acknowledged(), 3);
    assert_eq!(report.latencies.len(), 3);
    assert_eq!(report.blocks_sent, 3);
    assert_eq!((report.skipped, report.resent, report.behind), (0, 0, 0));
    assert!(report.end_of_stream.is_none());
    assert!(report.p50().is_some() && report.p99() <= report.max());

    let record = node.record();
    assert_eq!(record.complete_numbers(), [10, 11, 12]);
    assert!(record.abandoned.is_empty());
    assert_blocks_exact(&record, size);
    let block_total: usize = record.complete.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(report.bytes_sent, block_total as u64);
    assert!(assert_packing(&record, opts.soft_limit) >= 3, "each 8 MiB block has an item above 2 MB");
    // Every request reached the node, the last one EndStream RESET over the whole run.
    assert_eq!(report.requests_sent, record.requests.len() as u64);
    let end = record.end_stream.expect("EndStream");
    assert_eq!(end.end_code, EndStreamCode::Reset as i32);
    assert_eq!((end.earliest_block_number, end.latest_block_number), (10, 12));
}

#[tokio::test]
async fn small_soft_limit_packs_many_requests_per_block() {
    let node = FakeNode::start(Behaviour::default()).await;
    let opts = PublisherOptions { soft_limit: 4096, ..options(&node, 0, 20, 64 * 1024) };
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    let record = node.record();
    assert_eq!(record.complete_numbers(), (0..20).collect::<Vec<_>>());
    assert_blocks_exact(&record, opts.block_size);
    assert_packing(&record, opts.soft_limit);
    assert!(record.requests.len() > 20 * 16, "{} requests", record.requests.len());
}

#[tokio::test]
async fn resend_block_sends_the_blocks_from_n_again() {
    let node = FakeNode::start(Behaviour { resend_at_end: Some((5, 3)), ..Default::default() }).await;
    let opts = options(&node, 0, 10, 16 * 1024);
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.resent, 1);
    let record = node.record();
    for n in 0..10 {
        let expected = if (3..=5).contains(&n) { 2 } else { 1 };
        assert_eq!(record.arrivals(n), expected, "block {n}: {:?}", record.complete_numbers());
    }
    assert_blocks_exact(&record, opts.block_size);
}

#[tokio::test]
async fn skip_block_before_it_starts_is_never_sent() {
    // One unacknowledged block at a time: SkipBlock(4) arrives before block 4 starts.
    let node = FakeNode::start(Behaviour { skip_at_end: Some((3, 4)), ..Default::default() }).await;
    let opts = PublisherOptions { max_unacked: 1, ..options(&node, 0, 8, 8 * 1024) };
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.skipped, 1);
    assert_eq!(report.blocks_sent, 7);
    let record = node.record();
    assert!(!record.headers.contains(&4), "block 4 was sent: {:?}", record.headers);
    assert_eq!(record.complete_numbers(), [0, 1, 2, 3, 5, 6, 7]);
    assert_blocks_exact(&record, opts.block_size);
}

#[tokio::test]
async fn skip_block_mid_block_stops_its_items() {
    // SkipBlock(2) at block 2's header; the node reads nothing more for a
    // second, so at most its HTTP/2 window of block 2 is in flight.
    let pause = Duration::from_secs(1);
    let node = FakeNode::start(Behaviour { skip_on_header: Some((2, pause)), ..Default::default() }).await;
    let opts = PublisherOptions { soft_limit: 32 * 1024, ..options(&node, 0, 4, 4 << 20) };
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.skipped, 1);
    let record = node.record();
    assert_eq!(record.abandoned, [2]);
    assert_eq!(record.complete_numbers(), [0, 1, 3]);
    assert!(!record.requests.contains(&Seen::BlockEnd(2)));
    assert_blocks_exact(&record, opts.block_size);
}

#[tokio::test]
async fn behind_publisher_rewinds_to_the_next_block_it_needs() {
    let node = FakeNode::start(Behaviour { behind_on_header: Some((6, 3)), ..Default::default() }).await;
    let opts = options(&node, 0, 9, 8 * 1024);
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.behind, 1);
    let record = node.record();
    for n in 0..9 {
        let expected = if (4..=5).contains(&n) { 2 } else { 1 };
        assert_eq!(record.arrivals(n), expected, "block {n}: {:?}", record.complete_numbers());
    }
    assert_blocks_exact(&record, opts.block_size);
}

#[tokio::test]
async fn behind_publisher_before_the_first_block_ends_too_far_behind() {
    let node = FakeNode::start(Behaviour { behind_on_header: Some((5, 2)), ..Default::default() }).await;
    let opts = options(&node, 5, 4, 8 * 1024);
    let report = run(&opts).await;
    assert!(!report.complete());
    assert_eq!(report.behind, 1);
    assert_eq!(report.acknowledged_up_to, None);
    let end = node.record().end_stream.expect("EndStream");
    assert_eq!(end.end_code, EndStreamCode::TooFarBehind as i32);
    assert_eq!(end.earliest_block_number, 5);
}

#[tokio::test]
async fn max_unacked_stalls_the_publisher_until_acks_come() {
    let node = FakeNode::start(Behaviour { hold_acks: true, ..Default::default() }).await;
    let opts = PublisherOptions { max_unacked: 5, ..options(&node, 0, 12, 8 * 1024) };
    let publisher = tokio::spawn({
        let opts = opts.clone();
        async move { publish(&opts).await }
    });
    node.wait_for("5 blocks", |r| r.complete.len() == 5).await;
    // Give the publisher every chance to send more than it may.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let record = node.record();
        assert_eq!(record.complete_numbers(), [0, 1, 2, 3, 4]);
        assert_eq!(record.headers, [0, 1, 2, 3, 4], "no item of block 5 before an acknowledgement");
        assert_eq!(record.block_ends(), 5);
    }
    node.release_acks();
    let report = publisher.await.unwrap().unwrap();
    assert!(report.complete(), "{}", report.summary());
    assert!(report.stalled > Duration::ZERO);
    assert_eq!(report.latencies.len(), 12);
    assert_eq!(node.record().complete_numbers(), (0..12).collect::<Vec<_>>());
}

#[tokio::test]
async fn end_of_stream_ends_publish_with_a_report_carrying_it() {
    let node =
        FakeNode::start(Behaviour { end_at_end: Some((4, EndOfStreamCode::PersistenceFailed)), ..Default::default() })
            .await;
    let report = run(&options(&node, 0, 10, 8 * 1024)).await;
    assert!(!report.complete());
    let end = report.end_of_stream.expect("EndOfStream in the report");
    assert_eq!(end.status, EndOfStreamCode::PersistenceFailed as i32);
    assert_eq!(end.block_number, 3);
    assert_eq!(report.acknowledged_up_to, Some(3));
    assert!(matches!(report.responses.last().and_then(|r| r.response), Some(Response::EndStream(_))));
    assert!(report.summary().contains("EndOfStream: PERSISTENCE_FAILED at block 3"), "{}", report.summary());
}

#[tokio::test]
async fn a_status_mid_stream_is_an_error_naming_it() {
    let node = FakeNode::start(Behaviour { fail_at_end: Some((2, "disk on fire".into())), ..Default::default() }).await;
    let err = publish(&options(&node, 0, 5, 4096)).await.unwrap_err();
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::Internal, .. }), "{err:?}");
    assert!(err.to_string().contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn interval_spaces_block_ends_from_the_start() {
    let node = FakeNode::start(Behaviour::default()).await;
    let interval = Duration::from_millis(40);
    let report = run(&PublisherOptions { interval, ..options(&node, 0, 4, 4096) }).await;
    assert!(report.complete(), "{}", report.summary());
    // Block 3's BlockEnd cannot go out before start + 3 intervals.
    assert!(report.elapsed >= 3 * interval, "{:?}", report.elapsed);
}

#[tokio::test]
async fn no_acknowledgement_times_out_naming_the_last_block() {
    let node = FakeNode::start(Behaviour { hold_acks: true, ..Default::default() }).await;
    let opts =
        PublisherOptions { max_unacked: 2, ack_timeout: Duration::from_millis(300), ..options(&node, 0, 5, 4096) };
    let err = publish(&opts).await.unwrap_err();
    match &err {
        PublishError::AckTimeout { last_acknowledged: None, waited } => assert_eq!(*waited, opts.ack_timeout),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("last acknowledged block: none"), "{err}");
}

#[tokio::test]
async fn connect_failure_names_the_endpoint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let opts = PublisherOptions { endpoint: endpoint.clone(), ..Default::default() };
    let err = publish(&opts).await.unwrap_err();
    assert!(matches!(err, PublishError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&endpoint) && text.contains("check that blockferry is running"), "{text}");
}

#[tokio::test]
async fn session_round_trip() {
    let node = FakeNode::start(Behaviour::default()).await;
    // A bare host:port is accepted too.
    let mut session = Session::connect(node.endpoint.trim_start_matches("http://")).await.unwrap();
    session.send_items(generate_block(0, 4096)).await.unwrap();
    session.send_block_end(0).await.unwrap();
    let response = session.next_response(Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(response.response, Some(Response::Acknowledgement(BlockAcknowledgement { block_number: 0 })));
    session.send_end_stream(EndStreamCode::Reset, 0, 0).await.unwrap();
    // The node ends the call after EndStream.
    assert_eq!(session.next_response(Duration::from_secs(30)).await.unwrap(), None);
    let record = node.record();
    assert_eq!(record.complete, [(0, block_bytes(0, 4096))]);
    assert_eq!(record.end_stream.map(|e| e.end_code), Some(EndStreamCode::Reset as i32));
}

#[tokio::test]
async fn session_sends_anything_and_closes_cleanly() {
    let node = FakeNode::start(Behaviour::default()).await;
    let mut session = Session::connect(&node.endpoint).await.unwrap();
    session.send(PublishStreamRequest { request: None }).await.unwrap();
    let garbage = Bytes::from_static(b"\xff\xff not an item");
    session.send_items(vec![garbage.clone()]).await.unwrap();
    let err = session.next_response(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(err, PublishError::ResponseTimeout(_)), "{err:?}");
    assert_eq!(session.close().await.unwrap(), []);
    let record = node.record();
    assert!(record.inbound_ended, "the node saw the end of the request stream");
    assert_eq!(record.requests[0], Seen::Empty);
    assert!(matches!(&record.requests[1], Seen::Items { item_lens, .. } if item_lens == &[garbage.len()]));
}

#[tokio::test]
async fn session_refused_with_a_status_carries_its_message() {
    let refusal = "blockferry accepts one publisher at a time and 127.0.0.1:1234 is streaming now";
    let node = FakeNode::start(Behaviour { refuse: Some(refusal.into()), ..Default::default() }).await;
    let err = Session::connect(&node.endpoint).await.err().expect("refused");
    match &err {
        PublishError::Status { code, message } => {
            assert_eq!(*code, tonic::Code::ResourceExhausted);
            assert_eq!(message, refusal);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(refusal));
    // The publisher reports it the same way.
    let err = publish(&options(&node, 0, 1, 4096)).await.unwrap_err();
    assert!(err.to_string().contains(refusal), "{err}");
    assert_eq!(node.record().calls, 2);
}

#[tokio::test]
async fn session_next_response_names_a_status() {
    let node = FakeNode::start(Behaviour { fail_at_end: Some((0, "no room".into())), ..Default::default() }).await;
    let mut session = Session::connect(&node.endpoint).await.unwrap();
    session.send_items(generate_block(0, 4096)).await.unwrap();
    session.send_block_end(0).await.unwrap();
    let err = session.next_response(Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::Internal, message } if message == "no room"));
}
