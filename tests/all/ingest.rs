//! Ingest from the consensus node, against the real binary: the
//! consensus-node simulator (and raw publish sessions) over real gRPC.
//! Blocks are stored byte for byte and acknowledged once durable; a
//! duplicate, a gap, a malformed request, an oversize request, a block
//! without proof, a store that cannot write and a second publisher each get a
//! block node's answer, and nothing is lost or half-written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::sidecar::Sidecar;
use crate::common::*;
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_proto::framing::split_block;
use blockferry_proto::stream::{BlockItem, block_item::Item};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamResponse};
use blockferry_sim::{PublishError, PublisherOptions, Session, block_bytes, generate_block, publish};
use bytes::Bytes;
use prost::Message;

const WAIT: Duration = Duration::from_secs(20);

/// A config in `dir`: store in `dir/blocks` (mode `file`: no uploads) unless
/// `bucket` adds an `fs` bucket in `dir/bucket`; `extra` is appended.
fn config(dir: &Path, bucket: bool, extra: &str) -> PathBuf {
    let mode = if bucket { "file-and-bucket" } else { "file" };
    let mut text = format!(
        "mode = \"{mode}\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n{extra}\n",
        workspace().join("target/test-plugin-cache").display().to_string()
    );
    if bucket {
        std::fs::create_dir_all(dir.join("bucket")).unwrap();
        text += &format!(
            "[[buckets]]\nname = \"local\"\nplugin = {:?}\ndirectory = \"bucket\"\n",
            plugin_path("blockferry_fs").display().to_string()
        );
    }
    let path = dir.join("blockferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn store_file(dir: &Path, number: u64) -> PathBuf {
    dir.join("blocks").join(format!("{number:036}.blk"))
}

fn stored_numbers(dir: &Path) -> Vec<u64> {
    let mut numbers: Vec<u64> = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".blk")?.parse().ok())
        .collect();
    numbers.sort();
    numbers
}

fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blocks/.tmp")).map(|d| d.count()).unwrap_or(0)
}

fn response(r: Option<PublishStreamResponse>) -> Response {
    r.expect("a response, not the end of the stream").response.expect("a response with content")
}

fn end_of_stream(r: Response) -> (EndOfStreamCode, u64) {
    match r {
        Response::EndStream(e) => (EndOfStreamCode::try_from(e.status).unwrap(), e.block_number),
        other => panic!("expected EndOfStream, got {other:?}"),
    }
}

/// Publish blocks `first..first + count` with the simulator.
async fn feed(sidecar: &Sidecar, first: u64, count: u64, size: usize) -> blockferry_sim::PublishReport {
    publish(&PublisherOptions::new(sidecar.endpoint(), first, count, size)).await.unwrap()
}

/// Send one whole block on a session: its items in one request, then `BlockEnd`.
async fn send_block(session: &Session, number: u64, items: Vec<Bytes>) {
    session.send_items(items).await.unwrap();
    session.send_block_end(number).await.unwrap();
}

fn item(item: Item) -> Bytes {
    BlockItem { item: Some(item) }.encode_to_vec().into()
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_are_stored_byte_for_byte_acknowledged_when_durable_and_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), true, ""), dir.path(), &[]);

    // Small blocks, then blocks with items above the 2 MB soft limit.
    let report = feed(&sidecar, 0, 20, 24 * 1024).await;
    assert!(report.complete(), "{}", report.summary());
    let report = feed(&sidecar, 20, 3, 5 * 1024 * 1024).await;
    assert!(report.complete(), "{}", report.summary());
    let acks: Vec<u64> = report
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(Response::Acknowledgement(a)) => Some(a.block_number),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![20, 21, 22], "acknowledged in order");

    for n in 0..23 {
        let size = if n < 20 { 24 * 1024 } else { 5 * 1024 * 1024 };
        let stored = std::fs::read(store_file(dir.path(), n)).unwrap();
        assert!(stored == block_bytes(n, size), "block {n} is stored byte for byte");
        // It re-parses to the very items that were sent.
        assert_eq!(split_block(&Bytes::from(stored)).unwrap(), generate_block(n, size));
    }

    // Acknowledged only once durable: right after its acknowledgement a
    // block's file and `.meta` are in place.
    let mut session = Session::connect(&sidecar.endpoint()).await.unwrap();
    for n in 23..26 {
        send_block(&session, n, generate_block(n, 8192)).await;
        assert_eq!(response(session.next_response(WAIT).await.unwrap()), ack(n));
        assert_eq!(std::fs::read(store_file(dir.path(), n)).unwrap(), block_bytes(n, 8192));
        let meta = blockferry::store::BlockStore::open(dir.path().join("blocks"), Default::default())
            .unwrap()
            .read_meta(n)
            .unwrap();
        assert_eq!(meta.size, block_bytes(n, 8192).len() as u64);
    }
    session.close().await.unwrap();

    // Every block reaches the bucket too.
    let deadline = std::time::Instant::now() + WAIT;
    while (0..26).any(|n| !dir.path().join(format!("bucket/{n:036}.blk")).exists()) {
        assert!(std::time::Instant::now() < deadline, "uploads did not finish: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(dir.path().join(format!("bucket/{:036}.blk", 21))).unwrap(), block_bytes(21, 5 << 20));
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}

fn ack(n: u64) -> Response {
    Response::Acknowledgement(blockferry_proto::api::publish_stream_response::BlockAcknowledgement { block_number: n })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_is_skipped_and_different_bytes_never_replace_the_stored_block() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), false, ""), dir.path(), &[]);
    assert!(feed(&sidecar, 10, 3, 4096).await.complete());

    // The same block again: SkipBlock, nothing else; the stream goes on.
    let mut session = Session::connect(&sidecar.endpoint()).await.unwrap();
    send_block(&session, 11, generate_block(11, 4096)).await;
    assert_eq!(
        response(session.next_response(WAIT).await.unwrap()),
        Response::SkipBlock(blockferry_proto::api::publish_stream_response::SkipBlock { block_number: 11 })
    );
    send_block(&session, 13, generate_block(13, 4096)).await;
    assert_eq!(response(session.next_response(WAIT).await.unwrap()), ack(13));

    // A publisher that stops sending a skipped block part-way (as a consensus
    // node does) and goes on with the next block: no complaint.
    session.send_items(generate_block(11, 4096)[..2].to_vec()).await.unwrap();
    send_block(&session, 14, generate_block(14, 4096)).await;
    assert!(matches!(response(session.next_response(WAIT).await.unwrap()), Response::SkipBlock(_)));
    assert_eq!(response(session.next_response(WAIT).await.unwrap()), ack(14));

    // Block 12 again, with other bytes: skipped, then refused as a duplicate;
    // the stored copy stays.
    let mut other = generate_block(12, 4096);
    other[1] = item(Item::SignedTransaction(Bytes::from_static(b"a different transaction")));
    send_block(&session, 12, other).await;
    assert!(matches!(response(session.next_response(WAIT).await.unwrap()), Response::SkipBlock(_)));
    assert_eq!(
        end_of_stream(response(session.next_response(WAIT).await.unwrap())),
        (EndOfStreamCode::DuplicateBlock, 14)
    );
    assert_eq!(std::fs::read(store_file(dir.path(), 12)).unwrap(), block_bytes(12, 4096));
    assert!(sidecar.log().contains("block 12 is already stored with MD5"), "{}", sidecar.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_asks_for_the_next_block_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), false, ""), dir.path(), &[]);
    assert!(feed(&sidecar, 0, 5, 4096).await.complete());

    let mut session = Session::connect(&sidecar.endpoint()).await.unwrap();
    send_block(&session, 9, generate_block(9, 4096)).await;
    assert_eq!(
        response(session.next_response(WAIT).await.unwrap()),
        Response::NodeBehindPublisher(blockferry_proto::api::publish_stream_response::BehindPublisher {
            block_number: 4
        })
    );
    send_block(&session, 5, generate_block(5, 4096)).await;
    assert_eq!(response(session.next_response(WAIT).await.unwrap()), ack(5));
    session.close().await.unwrap();
    assert_eq!(stored_numbers(dir.path()), (0..6).collect::<Vec<_>>(), "block 9 was not stored across the gap");
    assert!(feed(&sidecar, 6, 4, 4096).await.complete());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_end_the_stream_with_invalid_request_and_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    // A small hard limit, so an oversize request is cheap to send.
    let sidecar = Sidecar::start(
        &config(dir.path(), false, "[ingest]\nhard_limit_bytes = 1048576\nmax_block_bytes = 1048576\n"),
        dir.path(),
        &[],
    );
    assert!(feed(&sidecar, 0, 2, 4096).await.complete());
    let header = generate_block(2, 4096)[0].clone();
    let proof = item(Item::BlockProof(Bytes::from_static(b"proof")));
    let tx = |n: usize| item(Item::SignedTransaction(Bytes::from(vec![7u8; n])));

    let cases: Vec<(&str, Vec<Vec<Bytes>>, &str)> = vec![
        ("garbage item", vec![vec![header.clone(), Bytes::from_static(&[0x0a, 0x05, 1])]], "not a valid protobuf"),
        ("items before a header", vec![vec![tx(10), proof.clone()]], "before any block_header"),
        ("block without proof", vec![vec![header.clone(), tx(10)]], "without a block_proof"),
        ("oversize request", vec![vec![header.clone(), tx(1_100_000)]], "hard_limit_bytes"),
        ("block over max_block_bytes", vec![vec![header.clone(), tx(700_000)], vec![tx(700_000)]], "max_block_bytes"),
    ];
    for (case, requests, logged) in cases {
        let mut session = Session::connect(&sidecar.endpoint()).await.unwrap();
        for items in requests {
            // The server may end the stream before it reads everything.
            let _ = session.send_items(items).await;
        }
        let _ = session.send_block_end(2).await;
        let r = response(session.next_response(WAIT).await.unwrap_or_else(|e| panic!("{case}: {e}")));
        assert_eq!(end_of_stream(r), (EndOfStreamCode::InvalidRequest, 1), "{case}");
        assert!(sidecar.log().contains(logged), "{case}: the log names the problem: {}", sidecar.log());
        assert_eq!(stored_numbers(dir.path()), vec![0, 1], "{case}: nothing stored");
        assert_eq!(tmp_files(dir.path()), 0, "{case}: nothing half-written");
    }

    // The publisher's EndStream mid-block: the partial block is dropped.
    let session = Session::connect(&sidecar.endpoint()).await.unwrap();
    session.send_items(vec![header.clone(), tx(10)]).await.unwrap();
    session.send_end_stream(EndStreamCode::Error, 0, 2).await.unwrap();
    let rest = session.close().await.unwrap();
    assert!(rest.is_empty(), "no response to an EndStream: {rest:?}");
    assert_eq!(stored_numbers(dir.path()), vec![0, 1]);
    assert!(sidecar.log().contains("publisher ended its stream with ERROR; incomplete block 2 dropped"));

    // And the next publisher carries on where the store is.
    assert!(feed(&sidecar, 2, 2, 4096).await.complete());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_write_answers_persistence_failed_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), false, ""), dir.path(), &[]);
    assert!(feed(&sidecar, 0, 3, 4096).await.complete());

    // Block 3's place in the store is taken by a non-empty directory, so
    // moving the written file into place fails (whoever runs the test).
    let blocker = store_file(dir.path(), 3);
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let mut session = Session::connect(&sidecar.endpoint()).await.unwrap();
    send_block(&session, 3, generate_block(3, 4096)).await;
    assert_eq!(
        end_of_stream(response(session.next_response(WAIT).await.unwrap())),
        (EndOfStreamCode::PersistenceFailed, 2)
    );
    assert!(sidecar.log().contains("cannot store the block"), "{}", sidecar.log());
    assert!(!dir.path().join("blocks").join(format!("{:036}.meta", 3)).exists(), "no .meta for an unstored block");
    assert_eq!(tmp_files(dir.path()), 0, "no temporary file left");

    // Space back: the node resends from the last stored block + 1.
    std::fs::remove_dir_all(&blocker).unwrap();
    let report = feed(&sidecar, 3, 3, 4096).await;
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(std::fs::read(store_file(dir.path(), 3)).unwrap(), block_bytes(3, 4096));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_publisher_is_refused_clearly_until_the_first_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&config(dir.path(), false, ""), dir.path(), &[]);
    let first = Session::connect(&sidecar.endpoint()).await.unwrap();
    send_block(&first, 0, generate_block(0, 4096)).await;
    let err = match Session::connect(&sidecar.endpoint()).await {
        Ok(_) => panic!("a second publisher was accepted"),
        Err(e) => e,
    };
    match &err {
        PublishError::Status { code, message } => {
            assert_eq!(*code, tonic::Code::ResourceExhausted);
            assert!(message.contains("one publisher at a time"), "{message}");
        }
        other => panic!("expected a gRPC status, got {other}"),
    }
    first.close().await.unwrap();
    // The slot is free again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match Session::connect(&sidecar.endpoint()).await {
            Ok(s) => {
                s.close().await.unwrap();
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "slot never freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(feed(&sidecar, 1, 2, 4096).await.complete());
}
