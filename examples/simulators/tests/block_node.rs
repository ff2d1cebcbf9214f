//! The block node simulator over real gRPC on 127.0.0.1, driven by the
//! crate's own consensus node (`publish`) and raw `Session`s.

use std::time::Duration;

use blockferry_proto::api::publish_stream_request::{EndStream, Request};
use blockferry_proto::api::publish_stream_response::{EndOfStream, Response};
use blockferry_proto::api::{BlockEnd, BlockItemSet};
use blockferry_proto::framing::{item_frame_len, items_request_len};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamRequest, PublishStreamResponse};
use blockferry_sim::block_node::{
    Action, BlockNode, EndStreamRecord, Event, RequestKind, Rule, StreamEnd, Trigger, ack, behind_publisher,
    end_of_stream, resend_block, skip_block,
};
use blockferry_sim::{PublishError, PublishReport, PublisherOptions, Session, generate_block, publish};
use prost::Message;

/// Generous: nothing should take this long.
const LONG: Duration = Duration::from_secs(30);
/// How long "no response" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn options(node: &BlockNode, first_block: u64, blocks: u64, block_size: usize) -> PublisherOptions {
    let base = PublisherOptions::new(node.endpoint(), first_block, blocks, block_size);
    PublisherOptions { ack_timeout: Duration::from_secs(60), ..base }
}

async fn run(opts: &PublisherOptions) -> PublishReport {
    publish(opts).await.unwrap_or_else(|e| panic!("publish failed: {e}"))
}

/// Send block `n` (`size` bytes) whole: its items in one request, then its `BlockEnd`.
async fn send_block(session: &Session, n: u64, size: usize) {
    session.send_items(generate_block(n, size)).await.unwrap();
    session.send_block_end(n).await.unwrap();
}

/// The next response (the stream must not have ended).
async fn next(session: &mut Session) -> PublishStreamResponse {
    session.next_response(LONG).await.unwrap().expect("a response, not the end of the stream")
}

/// No response arrives for a while.
async fn assert_quiet(session: &mut Session) {
    match session.next_response(QUIET).await {
        Err(PublishError::ResponseTimeout(_)) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

fn end_of_stream_of(response: &PublishStreamResponse) -> Option<EndOfStream> {
    match response.response {
        Some(Response::EndStream(end)) => Some(end),
        _ => None,
    }
}

#[tokio::test]
async fn blocks_arrive_acknowledged_in_order_byte_for_byte() {
    let node = BlockNode::start().await;
    let size = 16 * 1024;
    let opts = PublisherOptions { soft_limit: 4096, ..options(&node, 0, 20, size) };
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.latencies.len(), 20, "one acknowledgement per block");

    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert_eq!(node.block_order(), (0..20).collect::<Vec<_>>());
    let blocks = node.blocks();
    assert_eq!(blocks.len(), 20);
    for (n, items) in &blocks {
        assert!(*items == generate_block(*n, size), "block {n} arrived with other bytes");
    }
    assert_eq!(node.responses(), (0..20).map(|n| (1, ack(n))).collect::<Vec<_>>());
    assert_eq!(report.responses, (0..20).map(ack).collect::<Vec<_>>());
    assert_eq!(
        node.end_streams(),
        [EndStreamRecord { stream: 1, code: EndStreamCode::Reset, earliest: 0, latest: 19 }]
    );
    assert_eq!(node.connections(), 1);
    assert_eq!(node.record().stream_end(1), Some(&StreamEnd::PublisherEndStream));
    assert!(node.events().iter().any(|e| matches!(e, Event::StreamOpened { stream: 1, peer: Some(_) })));
}

#[tokio::test]
async fn requests_record_their_exact_encoded_lengths() {
    let node = BlockNode::start().await;
    let (size, soft_limit) = (64 * 1024, 8192);
    let opts = PublisherOptions { soft_limit, ..options(&node, 7, 3, size) };
    let report = run(&opts).await;
    assert!(report.complete(), "{}", report.summary());
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);

    let requests = node.requests();
    assert_eq!(requests.len() as u64, report.requests_sent);
    let mut items = (7..10).flat_map(|n| generate_block(n, size)).collect::<Vec<_>>().into_iter();
    let mut item_requests = 0;
    for (i, record) in requests.iter().enumerate() {
        assert_eq!(record.stream, 1);
        let request = match &record.kind {
            RequestKind::Items { count, item_lens } => {
                item_requests += 1;
                assert_eq!(*count, item_lens.len());
                let block_items: Vec<_> = items.by_ref().take(*count).collect();
                assert_eq!(block_items.iter().map(|i| i.len()).collect::<Vec<_>>(), *item_lens);
                let frames: usize = item_lens.iter().map(|l| item_frame_len(*l)).sum();
                assert_eq!(record.encoded_len, items_request_len(frames), "request {i}");
                assert!(record.encoded_len <= soft_limit || *count == 1, "request {i} above the soft limit");
                if let Some(RequestKind::Items { item_lens: next, .. }) = requests.get(i + 1).map(|r| &r.kind) {
                    let with_next = items_request_len(frames + item_frame_len(next[0]));
                    assert!(with_next > soft_limit, "request {i} had room for the next item");
                }
                Request::BlockItems(BlockItemSet { block_items })
            }
            RequestKind::BlockEnd(n) => Request::EndOfBlock(BlockEnd { block_number: *n }),
            RequestKind::EndStream { code, earliest, latest } => Request::EndStream(EndStream {
                end_code: *code as i32,
                earliest_block_number: *earliest,
                latest_block_number: *latest,
            }),
            RequestKind::Empty => panic!("request {i} is empty"),
        };
        let expected = PublishStreamRequest { request: Some(request) }.encoded_len();
        assert_eq!(record.encoded_len, expected, "request {i}: {:?}", record.kind);
    }
    assert!(items.next().is_none(), "every item arrived");
    assert!(item_requests > 3 * 8, "{item_requests} item requests");
    let ends: Vec<u64> =
        requests.iter().filter_map(|r| if let RequestKind::BlockEnd(n) = r.kind { Some(n) } else { None }).collect();
    assert_eq!(ends, [7, 8, 9]);
}

#[tokio::test]
async fn end_of_stream_is_the_last_response_of_the_stream() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(1).then(Action::Respond(end_of_stream(EndOfStreamCode::Error, 0))));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));
    send_block(&session, 1, 4096).await;
    assert_eq!(next(&mut session).await, end_of_stream(EndOfStreamCode::Error, 0));
    assert_eq!(session.next_response(LONG).await.unwrap(), None, "the node ended the stream");
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert_eq!(node.record().stream_end(1), Some(&StreamEnd::EndOfStream));
    // Block 1 arrived whole; EndOfStream replaced its acknowledgement.
    assert_eq!(node.block_order(), [0, 1]);
    assert!(!node.responses().iter().any(|(_, r)| *r == ack(1)));

    // The consensus node reports it and stops.
    let node = BlockNode::start().await;
    let end = end_of_stream(EndOfStreamCode::Timeout, 3);
    node.script(Trigger::OnBlockEnd(4).then(Action::Respond(end)));
    let report = run(&options(&node, 0, 10, 4096)).await;
    assert!(!report.complete());
    assert_eq!(report.end_of_stream, end_of_stream_of(&end));
    assert_eq!(report.acknowledged_up_to, Some(3));
}

#[tokio::test]
async fn skip_resend_and_behind_arrive_as_scripted() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnHeader(1).then(Action::Respond(skip_block(1))));
    node.script(Trigger::OnBlockEnd(2).then(Action::Respond(resend_block(1))));
    node.script(Trigger::OnHeader(3).then(Action::Respond(behind_publisher(2))));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    let mut responses = Vec::new();
    for n in 0..4 {
        send_block(&session, n, 4096).await;
    }
    for _ in 0..6 {
        responses.push(next(&mut session).await);
    }
    // A response at a header comes before the block's acknowledgement; one at
    // BlockEnd replaces it.
    assert_eq!(responses, [ack(0), skip_block(1), ack(1), resend_block(1), behind_publisher(2), ack(3)]);
    assert_quiet(&mut session).await;
    assert_eq!(node.block_order(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn resend_block_gets_the_blocks_again_from_the_publisher() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(5).then(Action::Respond(resend_block(3))));
    let size = 8 * 1024;
    // One block at a time, so no later block is on its way when ResendBlock arrives.
    let report = run(&PublisherOptions { max_unacked: 1, ..options(&node, 0, 10, size) }).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.resent, 1);
    assert_eq!(node.block_order(), [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9]);
    for (n, items) in node.blocks() {
        assert!(items == generate_block(n, size), "block {n}");
    }
}

#[tokio::test]
async fn withhold_ack_leaves_one_block_unacknowledged() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(1).then(Action::WithholdAck));
    node.script(Trigger::OnHeader(3).then(Action::WithholdAck));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    for n in 0..5 {
        send_block(&session, n, 4096).await;
    }
    assert_eq!(next(&mut session).await, ack(0));
    assert_eq!(next(&mut session).await, ack(2));
    assert_eq!(next(&mut session).await, ack(4));
    assert_quiet(&mut session).await;
    assert_eq!(node.block_order(), [0, 1, 2, 3, 4], "withheld blocks are still received");
}

#[tokio::test]
async fn delay_holds_the_ack_while_the_node_reads_on() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(1).then(Action::Delay(Duration::from_secs(2))));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));
    send_block(&session, 1, 4096).await;
    send_block(&session, 2, 4096).await;
    // The node reads block 2 while block 1's acknowledgement waits.
    assert!(node.wait_for_block(2, LONG).await);
    assert_quiet(&mut session).await;
    // Acknowledgements stay in order: block 2's waits behind block 1's.
    assert_eq!(next(&mut session).await, ack(1));
    assert_eq!(next(&mut session).await, ack(2));
}

#[tokio::test]
async fn delay_at_stream_start_delays_every_answer() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnStreamStart.then(Action::Delay(Duration::from_millis(50))).always());
    let report = run(&options(&node, 0, 5, 4096)).await;
    assert!(report.complete(), "{}", report.summary());
    assert!(report.latencies.iter().all(|l| *l >= Duration::from_millis(50)), "{:?}", report.latencies);
}

#[tokio::test]
async fn stall_goes_silent_with_the_call_open_until_resumed() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnHeader(1).then(Action::Stall));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));
    send_block(&session, 1, 4096).await;
    assert_quiet(&mut session).await;
    {
        let record = node.record();
        assert_eq!(record.open_streams, 1);
        assert_eq!(record.stream_end(1), None);
        assert!(!record.requests.iter().any(|r| r.kind == RequestKind::BlockEnd(1)), "BlockEnd(1) was read");
    }
    // The call (and its connection) is alive: the node can still speak on it.
    assert_eq!(node.respond_now(behind_publisher(0)), 1);
    assert_eq!(next(&mut session).await, behind_publisher(0));
    node.resume();
    assert_eq!(next(&mut session).await, ack(1));
    assert_eq!(node.block_order(), [0, 1]);
}

#[tokio::test]
async fn a_node_stalled_from_the_start_times_the_publisher_out() {
    let node = BlockNode::builder().window(65_535).start().await.unwrap();
    node.script(Trigger::OnStreamStart.then(Action::Stall));
    let opts = PublisherOptions { ack_timeout: Duration::from_millis(500), ..options(&node, 0, 20, 64 * 1024) };
    let err = publish(&opts).await.unwrap_err();
    assert!(matches!(err, PublishError::AckTimeout { last_acknowledged: None, .. }), "{err:?}");
    assert!(node.requests().is_empty(), "a stalled node reads nothing");
}

#[tokio::test]
async fn drop_ends_the_call_with_a_status() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(2).then(Action::Drop));
    let err = publish(&options(&node, 0, 10, 4096)).await.unwrap_err();
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::Unavailable, .. }), "{err:?}");
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert_eq!(node.record().stream_end(1), Some(&StreamEnd::Dropped(tonic::Code::Unavailable)));
    assert_eq!(node.block_order()[..3], [0, 1, 2]);

    node.script(Trigger::OnHeader(0).then(Action::DropWith(tonic::Code::Internal)));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    let err = session.next_response(LONG).await.unwrap_err();
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::Internal, .. }), "{err:?}");

    // At the start of a stream, dropping is refusing the call.
    node.script(Trigger::OnStreamStart.then(Action::Drop));
    let err = Session::connect(&node.endpoint()).await.err().expect("refused");
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::Unavailable, .. }), "{err:?}");
    assert_eq!(node.connections(), 3);
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
}

#[tokio::test]
async fn disconnect_cuts_the_connection_and_the_node_serves_on() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(1).then(Action::Disconnect));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));
    send_block(&session, 1, 4096).await;
    let result = session.next_response(LONG).await;
    assert!(matches!(result, Err(PublishError::Status { .. })), "{result:?}");
    assert!(node.wait_for(LONG, |r| r.stream_end(1).is_some()).await);
    assert_eq!(node.record().stream_end(1), Some(&StreamEnd::Disconnected));

    let mut again = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&again, 2, 4096).await;
    assert_eq!(next(&mut again).await, ack(2));
    assert_eq!(node.block_order(), [0, 1, 2]);
}

#[tokio::test]
async fn kill_fails_connections_and_start_on_the_same_address_serves_again() {
    let node = BlockNode::start().await;
    let addr = node.addr();
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));

    node.kill();
    assert!(!node.is_running());
    let result = session.next_response(LONG).await;
    assert!(matches!(result, Err(PublishError::Status { .. })), "{result:?}");
    let err = Session::connect(&node.endpoint()).await.err().expect("nothing listens");
    assert!(matches!(err, PublishError::Connect { .. }), "{err:?}");
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert_eq!(node.record().stream_end(1), Some(&StreamEnd::Killed));
    assert!(node.events().contains(&Event::Killed));

    let second = BlockNode::start_on(addr).await.unwrap();
    assert_eq!(second.endpoint(), node.endpoint());
    let mut session = Session::connect(&second.endpoint()).await.unwrap();
    send_block(&session, 1, 4096).await;
    assert_eq!(next(&mut session).await, ack(1));
    assert_eq!(second.block_order(), [1]);
    assert_eq!(node.block_order(), [0], "the first node's record stays");
}

#[tokio::test]
async fn restart_serves_again_keeping_the_record_and_a_scripted_kill_crashes_the_node() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(3).then(Action::Kill));
    let err = publish(&options(&node, 0, 10, 4096)).await.unwrap_err();
    assert!(matches!(err, PublishError::Status { .. } | PublishError::SendClosed), "{err:?}");
    assert!(!node.is_running());
    assert_eq!(node.block_order()[..4], [0, 1, 2, 3]);

    node.restart().await.unwrap();
    assert!(node.restart().await.is_err(), "already running");
    node.set_latest(Some(3));
    let report = run(&options(&node, 4, 3, 4096)).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(node.latest(), Some(6));
    assert_eq!(node.connections(), 2);
    assert!(node.events().contains(&Event::Restarted));
}

#[tokio::test]
async fn ack_nothing_accepts_blocks_and_never_acknowledges() {
    let node = BlockNode::start().await;
    node.ack_nothing(true);
    let opts =
        PublisherOptions { max_unacked: 3, ack_timeout: Duration::from_millis(500), ..options(&node, 0, 10, 4096) };
    let err = publish(&opts).await.unwrap_err();
    assert!(matches!(err, PublishError::AckTimeout { last_acknowledged: None, .. }), "{err:?}");
    assert!(node.wait_for(LONG, |r| r.block_order.len() == 3).await);
    assert_eq!(node.block_order(), [0, 1, 2]);
    assert!(node.responses().is_empty());

    node.ack_nothing(false);
    let report = run(&options(&node, 0, 2, 4096)).await;
    assert!(report.complete(), "{}", report.summary());
}

#[tokio::test]
async fn respond_now_reaches_every_open_stream() {
    let node = BlockNode::start().await;
    let mut one = Session::connect(&node.endpoint()).await.unwrap();
    let mut two = Session::connect(&node.endpoint()).await.unwrap();
    assert!(node.wait_for(LONG, |r| r.open_streams == 2).await);
    assert_eq!(node.respond_now(behind_publisher(7)), 2);
    assert_eq!(next(&mut one).await, behind_publisher(7));
    assert_eq!(next(&mut two).await, behind_publisher(7));

    // Both streams at once, each with its own blocks.
    send_block(&one, 8, 4096).await;
    send_block(&two, 9, 4096).await;
    assert_eq!(next(&mut one).await, ack(8));
    assert_eq!(next(&mut two).await, ack(9));
    let received: Vec<_> = node
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BlockReceived { stream, number, .. } => Some((stream, number)),
            _ => None,
        })
        .collect();
    assert!(received.contains(&(1, 8)) && received.contains(&(2, 9)), "{received:?}");

    assert!(node.respond_on(1, end_of_stream(EndOfStreamCode::Success, 9)));
    assert_eq!(next(&mut one).await, end_of_stream(EndOfStreamCode::Success, 9));
    assert_eq!(one.next_response(LONG).await.unwrap(), None);
    assert!(node.wait_for(LONG, |r| r.open_streams == 1).await);
    assert!(!node.respond_on(1, ack(9)), "stream 1 is over");
    assert_eq!(node.respond_now(ack(9)), 1);
    assert_eq!(next(&mut two).await, ack(9));
    assert_eq!(two.close().await.unwrap(), []);
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert_eq!(node.connections(), 2);
    assert_eq!(node.record().stream_end(2), Some(&StreamEnd::PublisherClosed));
}

#[tokio::test]
async fn rules_fire_once_unless_always_and_only_on_their_stream() {
    let node = BlockNode::start().await;
    node.script(Trigger::OnBlockEnd(0).then(Action::Respond(skip_block(100))));
    node.script(Rule::new(Trigger::OnBlockEnd(1), Action::Respond(skip_block(101))).always());
    node.script(Trigger::OnBlockEnd(2).then(Action::Respond(skip_block(102))).on_stream(2));
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut session = Session::connect(&node.endpoint()).await.unwrap();
        for n in 0..3 {
            send_block(&session, n, 4096).await;
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut session).await);
        }
        answers.push(got);
        session.close().await.unwrap();
    }
    assert_eq!(answers[0], [skip_block(100), skip_block(101), ack(2)]);
    assert_eq!(answers[1], [ack(0), skip_block(101), skip_block(102)]);
    let fired = node.events().iter().filter(|e| matches!(e, Event::Fired { .. })).count();
    assert_eq!(fired, 4);
}

#[tokio::test]
async fn latest_answers_old_blocks_skip_and_gaps_behind() {
    let node = BlockNode::start().await;
    node.set_latest(Some(4));
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 3, 4096).await;
    assert_eq!(next(&mut session).await, skip_block(3));
    send_block(&session, 7, 4096).await;
    assert_eq!(next(&mut session).await, behind_publisher(4));
    send_block(&session, 5, 4096).await;
    assert_eq!(next(&mut session).await, ack(5));
    assert_quiet(&mut session).await;
    assert_eq!(node.latest(), Some(5));
    assert_eq!(node.block_order(), [5], "blocks it has, or beyond a gap, are not kept");
    let refused: Vec<_> = node
        .events()
        .into_iter()
        .filter_map(|e| if let Event::BlockRefused { number, .. } = e { Some(number) } else { None })
        .collect();
    assert_eq!(refused, [3, 7]);
}

#[tokio::test]
async fn a_request_above_the_hard_limit_ends_the_call_with_a_status() {
    let node = BlockNode::builder().hard_limit(16 * 1024).start().await.unwrap();
    let mut session = Session::connect(&node.endpoint()).await.unwrap();
    send_block(&session, 0, 4096).await;
    assert_eq!(next(&mut session).await, ack(0));
    session.send_items(generate_block(1, 64 * 1024)).await.unwrap();
    let err = session.next_response(LONG).await.unwrap_err();
    assert!(matches!(&err, PublishError::Status { code: tonic::Code::OutOfRange, .. }), "{err:?}");
    assert!(node.wait_for(LONG, |r| r.open_streams == 0).await);
    assert!(matches!(
        node.record().stream_end(1),
        Some(StreamEnd::RequestFailed { code: tonic::Code::OutOfRange, .. })
    ));
    assert_eq!(node.requests().len(), 2, "the large request was not decoded");
}

#[tokio::test]
async fn the_binary_prints_blocks_and_end_streams() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_block-node-sim"))
        .args(["--listen", "127.0.0.1:0", "--end-of-stream-at", "3", "--code", "timeout"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(LONG, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line: {first}"));
    let opts =
        PublisherOptions { endpoint: format!("http://{addr}"), blocks: 5, block_size: 4096, ..Default::default() };
    let report = run(&opts).await;
    assert_eq!(report.end_of_stream.map(|e| (e.status, e.block_number)), Some((EndOfStreamCode::Timeout as i32, 2)));

    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("ended")) {
        let line = tokio::time::timeout(LONG, lines.next_line()).await.unwrap().unwrap().expect("a line");
        printed.push(line);
    }
    let text = printed.join("\n");
    for expected in ["stream 1 opened by 127.0.0.1:", "block 0: ", "block 3: ", "sent EndOfStream TIMEOUT block 2"] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    child.kill().await.unwrap();
}
